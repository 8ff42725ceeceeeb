//! Messages to the user: on stderr, coloured only on a terminal (and never with NO_COLOR).

use std::io::IsTerminal;

pub fn color_stderr() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

pub fn color_stdout() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

fn paint(code: &str, s: &str, on: bool) -> String {
    if on {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn error(msg: &str) {
    eprintln!("{} {msg}", paint("1;31", "airlock: error:", color_stderr()));
}

pub fn note(msg: &str) {
    eprintln!("{} {msg}", paint("2", "airlock:", color_stderr()));
}

pub fn warn(msg: &str) {
    eprintln!(
        "{} {msg}",
        paint("1;33", "airlock: warning:", color_stderr())
    );
}

pub fn bold(s: &str) -> String {
    paint("1", s, color_stdout())
}

pub fn state_colored(state: &str) -> String {
    let code = if state == "running" { "32" } else { "2" };
    paint(code, state, color_stdout())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::format_time(1_795_737_600), "2026-11-27 00:00:00Z");
    }
}
