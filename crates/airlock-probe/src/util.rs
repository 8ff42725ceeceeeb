//! Small helpers shared by the checks: bounded reads, writability, redaction.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

/// Read at most `max` bytes from the start of a regular file. `None` when the file is
/// missing, unreadable or not a regular file. Opens with `O_NONBLOCK` so a FIFO planted
/// under a credential name cannot block the probe.
pub(crate) fn read_head(path: &Path, max: usize) -> Option<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut buf = Vec::with_capacity(max.min(meta.len() as usize));
    file.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// True if `path` is a regular file we can open for reading.
pub(crate) fn readable_file(path: &Path) -> bool {
    File::open(path)
        .ok()
        .and_then(|f| f.metadata().ok())
        .is_some_and(|m| m.is_file())
}

/// List a directory, at most `max` entries; `None` when it cannot be listed.
pub(crate) fn list_dir(path: &Path, max: usize) -> Option<Vec<PathBuf>> {
    let rd = fs::read_dir(path).ok()?;
    let mut out: Vec<PathBuf> = rd
        .take(max)
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    out.sort();
    Some(out)
}

/// Whether the effective ids may write `path` (`faccessat(AT_EACCESS)`; never writes).
pub(crate) fn writable(path: &Path) -> bool {
    nix::unistd::faccessat(
        nix::fcntl::AT_FDCWD,
        path,
        AccessFlags::W_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    )
    .is_ok()
}

/// Whether `path` can be modified: written if it exists, else created in its parent.
/// Returns a short note ("writable" / "can be created"), or `None`.
pub(crate) fn modifiable(path: &Path) -> Option<&'static str> {
    if fs::symlink_metadata(path).is_ok() {
        writable(path).then_some("writable")
    } else {
        let mut parent = path.parent()?;
        // Walk up to the nearest existing directory: creating missing parents is also possible.
        while fs::symlink_metadata(parent).is_err() {
            parent = parent.parent()?;
        }
        (fs::metadata(parent).is_ok_and(|m| m.is_dir()) && writable(parent))
            .then_some("can be created")
    }
}

/// Redacted hint of a secret value: at most 4 leading characters (fewer for short
/// values) and the length, e.g. `sk-a…(51 chars)`.
pub fn redact(value: &str) -> String {
    let n = value.chars().count();
    let show = if n >= 16 {
        4
    } else if n >= 8 {
        2
    } else {
        0
    };
    let head: String = value.chars().take(show).collect();
    format!("{head}…({n} chars)")
}

/// Shannon entropy in bits per character.
pub(crate) fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    let bytes = s.as_bytes();
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Display a path relative to home as `~/…`.
pub(crate) fn tilde(path: &Path, home: &Path) -> String {
    match path.strip_prefix(home) {
        Ok(rest) if rest.as_os_str().is_empty() => "~".to_string(),
        Ok(rest) => format!("~/{}", rest.display()),
        Err(_) => path.display().to_string(),
    }
}

/// Current time as RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (y, m, d, hh, mm, ss) = airlock_core::units::utc_datetime(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// A random lowercase label (for DNS probes of names nobody has looked up before).
pub(crate) fn random_label(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    let ok = File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9)
            ^ u64::from(std::process::id());
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_value() {
        let v = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
        let r = redact(v);
        assert!(r.starts_with("sk-a…("));
        assert!(!r.contains("ant-api"));
        assert_eq!(redact("abc"), "…(3 chars)");
        assert_eq!(redact("abcdefghij"), "ab…(10 chars)");
    }

    #[test]
    fn entropy_orders() {
        assert!(entropy("aaaaaaaa") < 0.1);
        assert!(entropy("aZ3kP9qL2mX7vB4nR8tY1wE6") > 4.0);
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z'));
        assert!(t.starts_with("20"));
    }

    #[test]
    fn label_is_alnum() {
        let l = random_label(16);
        assert_eq!(l.len(), 16);
        assert!(l.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
