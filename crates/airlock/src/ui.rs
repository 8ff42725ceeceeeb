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
    let (y, m, d, hh, mm, ss) = airlock_core::units::utc_datetime(secs as i64);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::format_time(1_795_737_600), "2026-11-27 00:00:00Z");
    }
}
