//! Parsing of the small value languages users type: sizes, durations, CPU counts, sandbox names.

use std::time::Duration;

use crate::CoreError;

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidValue {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `512m`, `2g`, `1.5GiB`, `1048576` (bytes). Binary multiples: k = 1024.
pub fn parse_size(s: &str) -> Result<u64, CoreError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        invalid(
            "size",
            s,
            "expected a number with an optional unit, e.g. 512m or 2g",
        )
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(invalid("size", s, "unknown unit; use b, k, m, g or t")),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid("size", s, "must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

/// `90` (seconds), `30s`, `5m`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, CoreError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid("duration", s, "empty; use e.g. 30s, 5m or 1h"));
    }
    if let Ok(secs) = t.parse::<u64>() {
        return nonzero(Duration::from_secs(secs), s);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| invalid("duration", s, "a number needs a unit (ms, s, m, h, d)"))?;
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num
            .parse()
            .map_err(|_| invalid("duration", s, "expected e.g. 30s, 5m, 1h30m"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            _ => return Err(invalid("duration", s, "unknown unit; use ms, s, m, h or d")),
        };
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    nonzero(total, s)
}

fn nonzero(d: Duration, s: &str) -> Result<Duration, CoreError> {
    if d.is_zero() {
        Err(invalid("duration", s, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// `1`, `0.5`, `2.25`: fractional CPUs, at most 1024.
pub fn parse_cpus(s: &str) -> Result<f64, CoreError> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| invalid("CPU count", s, "expected a number such as 1 or 0.5"))?;
    if !(0.01..=1024.0).contains(&n) {
        return Err(invalid("CPU count", s, "must be between 0.01 and 1024"));
    }
    Ok(n)
}

/// Sandbox names double as the sandbox's hostname: 1–63 of `a-z`, `0-9`, `-`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), CoreError> {
    let bad = |reason| {
        Err(CoreError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad(
            "use only lowercase letters, digits and '-' (it becomes the sandbox's hostname)",
        );
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// A readable random name such as `brisk-otter-3f2a`.
pub fn generate_name() -> String {
    const ADJ: &[&str] = &[
        "brisk", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky", "mellow",
        "nimble", "proud", "quiet", "rapid", "sunny", "tidy", "vivid", "witty", "zesty", "bold",
    ];
    const NOUN: &[&str] = &[
        "otter", "falcon", "badger", "heron", "lynx", "marten", "osprey", "panda", "quokka",
        "raven", "stoat", "tapir", "walrus", "yak", "zebra", "gecko", "ibis", "koala", "lemur",
        "moose",
    ];
    let mut buf = [0u8; 6];
    random_bytes(&mut buf);
    let a = ADJ[buf[0] as usize % ADJ.len()];
    let n = NOUN[buf[1] as usize % NOUN.len()];
    format!("{a}-{n}-{:02x}{:02x}", buf[2], buf[3])
}

/// Fill `buf` from the kernel's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own mutably.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
}

/// Seconds since the Unix epoch as UTC `(year, month, day, hour, minute, second)`
/// (Howard Hinnant's civil-from-days algorithm; no time-zone database needed).
pub fn utc_datetime(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// FNV-1a, 64 bit: a stable, dependency-free hash for naming things after their content (cache
/// files, cgroup scopes). Not for security.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV1A_OFFSET, fnv1a_step)
}

/// Where an FNV-1a hash starts, for [`fnv1a_continue`].
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// [`fnv1a`] continued over `bytes` from the hash `h`, at compile time too (a cache key of
/// data built into the binary need not be computed at every start).
pub const fn fnv1a_continue(mut h: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        h = fnv1a_step(h, bytes[i]);
        i += 1;
    }
    h
}

const fn fnv1a_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
}

/// `1.5 GiB`, `512 MiB`, `12 KiB`, `7 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Undo D-Bus address escaping (`%XX` bytes), as in `DBUS_SESSION_BUS_ADDRESS`.
pub fn dbus_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_over_pieces_is_fnv1a_over_the_whole() {
        let (a, b) = (b"the policy".as_slice(), b"x86_64".as_slice());
        assert_eq!(
            fnv1a_continue(fnv1a_continue(FNV1A_OFFSET, a), b),
            fnv1a(a.iter().chain(b).copied())
        );
        assert_ne!(fnv1a(a.iter().copied()), fnv1a(b.iter().copied()));
    }

    #[test]
    fn dbus_addresses_are_unescaped() {
        assert_eq!(dbus_unescape("/tmp/a%20b"), "/tmp/a b");
        assert_eq!(dbus_unescape("/tmp/x%2"), "/tmp/x%2");
        assert_eq!(dbus_unescape("/plain"), "/plain");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5x").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("10").is_ok());
    }

    #[test]
    fn names() {
        assert!(validate_name("dev-1").is_ok());
        assert!(validate_name("Dev").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a_b").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
        let g = generate_name();
        assert!(validate_name(&g).is_ok(), "{g}");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("two").is_err());
    }
}
