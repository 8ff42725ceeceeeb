//! The per-sandbox decision log.
//!
//! Every decision (allowed or refused) is one JSON object on one line,
//! appended with `O_APPEND` in a single `write(2)`, so concurrent writers
//! (the gate and the DNS resolver, several tasks) never interleave lines.
//! [`read_log`] reads a log, [`LogFollower`] / [`follow`] tail it
//! (`airlock policy log --follow`) and [`format_human`] renders one record.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::policy::Verdict;

/// Errors of the log module.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened, read or written.
    #[error("{action} decision log {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// How a connection or query reached the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionPath {
    /// Plain HTTP through the proxy (absolute-URI request).
    ProxyHttp,
    /// HTTP CONNECT through the proxy.
    ProxyConnect,
    /// SOCKS5 CONNECT.
    Socks5,
    /// A TCP connection captured without proxy settings.
    Transparent,
    /// A DNS query to Airlock's resolver.
    Dns,
}

impl DecisionPath {
    /// The wire name (`proxy-http`, `proxy-connect`, `socks5`, `transparent`, `dns`).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionPath::ProxyHttp => "proxy-http",
            DecisionPath::ProxyConnect => "proxy-connect",
            DecisionPath::Socks5 => "socks5",
            DecisionPath::Transparent => "transparent",
            DecisionPath::Dns => "dns",
        }
    }
}

/// Allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
}

/// One logged decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    /// The sandbox name.
    pub sandbox: String,
    /// The destination name, when there was one.
    #[serde(default)]
    pub name: Option<String>,
    /// The destination address, when known.
    #[serde(default)]
    pub addr: Option<IpAddr>,
    /// The destination port (0 for DNS).
    pub port: u16,
    /// How it reached the gate.
    pub path: DecisionPath,
    /// Allowed or refused.
    pub verdict: VerdictKind,
    /// The rule that decided.
    pub rule: String,
    /// For DNS: the addresses answered to the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<IpAddr>,
}

impl Decision {
    /// A record of `verdict`, timestamped now.
    pub fn new(
        sandbox: &str,
        path: DecisionPath,
        name: Option<&str>,
        addr: Option<IpAddr>,
        port: u16,
        verdict: &Verdict,
    ) -> Decision {
        Decision {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            sandbox: sandbox.to_string(),
            name: name.map(str::to_string),
            addr,
            port,
            path,
            verdict: if verdict.allowed {
                VerdictKind::Allow
            } else {
                VerdictKind::Deny
            },
            rule: verdict.rule.clone(),
            answers: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Sink {
    file: File,
    path: PathBuf,
    warned: AtomicBool,
}

/// An append-only decision log for one sandbox; cheap to clone.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    sandbox: Arc<str>,
    sink: Option<Arc<Sink>>,
}

impl DecisionLog {
    /// Opens (creating if needed, mode 0600, parent directories too) the log
    /// file of `sandbox` for appending.
    pub fn open(path: &Path, sandbox: &str) -> Result<DecisionLog, LogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LogError::Io {
                action: "cannot create the directory of",
                path: path.to_path_buf(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| LogError::Io {
                action: "cannot open",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(DecisionLog {
            sandbox: sandbox.into(),
            sink: Some(Arc::new(Sink {
                file,
                path: path.to_path_buf(),
                warned: AtomicBool::new(false),
            })),
        })
    }

    /// A log that records nothing (decisions are still made).
    pub fn disabled(sandbox: &str) -> DecisionLog {
        DecisionLog {
            sandbox: sandbox.into(),
            sink: None,
        }
    }

    /// The sandbox name records carry.
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    /// The log file, when enabled.
    pub fn path(&self) -> Option<&Path> {
        self.sink.as_ref().map(|s| s.path.as_path())
    }

    /// Appends one record as one line in one `write(2)`.
    pub fn append(&self, decision: &Decision) -> Result<(), LogError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(decision).unwrap_or_default();
        line.push(b'\n');
        // With O_APPEND every write lands at the end of the file atomically
        // with respect to other appenders; a regular file accepts the whole
        // buffer in one call. The loop only covers a short write (disk full
        // mid-write), where interleaving no longer matters.
        let mut rest = &line[..];
        while !rest.is_empty() {
            match (&sink.file).write(rest) {
                Ok(0) => {
                    return Err(LogError::Io {
                        action: "cannot append to",
                        path: sink.path.clone(),
                        source: std::io::Error::from(std::io::ErrorKind::WriteZero),
                    });
                }
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(LogError::Io {
                        action: "cannot append to",
                        path: sink.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Records a decision; a failure to write is reported once on stderr and
    /// never changes the decision.
    pub fn record(&self, decision: Decision) {
        if let Err(e) = self.append(&decision)
            && let Some(sink) = &self.sink
            && !sink.warned.swap(true, Ordering::Relaxed)
        {
            eprintln!("airlock: {e} (further log errors are not shown)");
        }
    }

    /// Builds and records a decision for this sandbox.
    pub fn decide(
        &self,
        path: DecisionPath,
        name: Option<&str>,
        addr: Option<IpAddr>,
        port: u16,
        verdict: &Verdict,
    ) {
        self.record(Decision::new(
            &self.sandbox,
            path,
            name,
            addr,
            port,
            verdict,
        ));
    }
}

/// Reads every record of a log. Lines that are not valid records (a line
/// being written, a damaged line) are skipped.
pub fn read_log(path: &Path) -> Result<Vec<Decision>, LogError> {
    let mut f = LogFollower::open(path, true)?;
    f.poll()
}

/// Tails a log: each [`LogFollower::poll`] returns the records appended
/// since the previous one. Handles a partially written last line and a log
/// that was truncated or replaced (starts over).
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    partial: Vec<u8>,
}

impl LogFollower {
    /// Starts following `path`, from the beginning or from its current end.
    /// A file that does not exist yet is waited for.
    pub fn open(path: &Path, from_start: bool) -> Result<LogFollower, LogError> {
        let mut f = LogFollower {
            path: path.to_path_buf(),
            file: None,
            offset: 0,
            partial: Vec::new(),
        };
        f.reopen()?;
        if !from_start && let Some(file) = &f.file {
            f.offset = file
                .metadata()
                .map_err(|source| f.io("cannot stat", source))?
                .len();
        }
        Ok(f)
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> LogError {
        LogError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }

    fn reopen(&mut self) -> Result<(), LogError> {
        match File::open(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.file = None;
                Ok(())
            }
            Err(e) => Err(self.io("cannot open", e)),
        }
    }

    /// The records appended since the last call (possibly none).
    pub fn poll(&mut self) -> Result<Vec<Decision>, LogError> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(file) = &mut self.file else {
            return Ok(Vec::new());
        };
        let len = file
            .metadata()
            .map_err(|source| LogError::Io {
                action: "cannot stat",
                path: self.path.clone(),
                source,
            })?
            .len();
        // Replaced (rotated) or truncated: start over.
        let replaced = match (std::fs::metadata(&self.path), file.metadata()) {
            (Ok(now), Ok(open)) => {
                use std::os::unix::fs::MetadataExt;
                now.ino() != open.ino() || now.dev() != open.dev()
            }
            _ => false,
        };
        if replaced || len < self.offset {
            self.offset = 0;
            self.partial.clear();
            if replaced {
                self.reopen()?;
                return self.poll();
            }
        }
        let Some(file) = &mut self.file else {
            return Ok(Vec::new());
        };
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(self.offset))
            .and_then(|_| file.read_to_end(&mut buf))
            .map_err(|source| LogError::Io {
                action: "cannot read",
                path: self.path.clone(),
                source,
            })?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut out = Vec::new();
        let complete = match self.partial.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None => return Ok(out),
        };
        for line in self.partial[..complete].split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if let Ok(d) = serde_json::from_slice::<Decision>(line) {
                out.push(d);
            }
        }
        self.partial.drain(..complete);
        Ok(out)
    }
}

/// Follows a log until `each` breaks: calls `each` for every record (from
/// the start when `from_start`), then waits `interval` between polls.
pub fn follow(
    path: &Path,
    from_start: bool,
    interval: Duration,
    mut each: impl FnMut(&Decision) -> ControlFlow<()>,
) -> Result<(), LogError> {
    let mut f = LogFollower::open(path, from_start)?;
    loop {
        for d in f.poll()? {
            if each(&d).is_break() {
                return Ok(());
            }
        }
        std::thread::sleep(interval);
    }
}

/// One record for people:
/// `2025-01-02T03:04:05.678Z deny  proxy-connect evil.test:443 (203.0.113.9)  deny *.evil.test (flag)`.
pub fn format_human(d: &Decision) -> String {
    let verdict = match d.verdict {
        VerdictKind::Allow => "allow",
        VerdictKind::Deny => "DENY ",
    };
    let dest = match (&d.name, d.addr) {
        (Some(n), Some(a)) if d.port != 0 => format!("{n}:{} ({a})", d.port),
        (Some(n), Some(a)) => format!("{n} ({a})"),
        (Some(n), None) if d.port != 0 => format!("{n}:{}", d.port),
        (Some(n), None) => n.clone(),
        (None, Some(a @ IpAddr::V6(_))) => format!("[{a}]:{}", d.port),
        (None, Some(a)) => format!("{a}:{}", d.port),
        (None, None) => format!("?:{}", d.port),
    };
    let mut s = format!(
        "{} {verdict} {:<13} {dest}  {}",
        d.time,
        d.path.as_str(),
        d.rule
    );
    if !d.answers.is_empty() {
        let a: Vec<String> = d.answers.iter().map(|a| a.to_string()).collect();
        s.push_str(&format!(" -> {}", a.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Reason, Verdict};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("airlock-net-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("logs").join("sb.jsonl")
    }

    #[test]
    fn append_read_follow_format() {
        let path = tmp("basic");
        let log = DecisionLog::open(&path, "sb").unwrap();
        let mut follower = LogFollower::open(&path, false).unwrap();
        log.decide(
            DecisionPath::ProxyConnect,
            Some("evil.test"),
            None,
            443,
            &Verdict::deny(Reason::DenyRule, "deny *.evil.test (flag)"),
        );
        log.decide(
            DecisionPath::Transparent,
            None,
            Some("203.0.113.9".parse().unwrap()),
            80,
            &Verdict::allow(Reason::AllowRule, "allow 203.0.113.0/24 (flag)"),
        );
        let all = read_log(&path).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].verdict, VerdictKind::Deny);
        assert_eq!(all[0].rule, "deny *.evil.test (flag)");
        assert_eq!(all[0].sandbox, "sb");
        assert!(all[0].time.ends_with('Z'));
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(raw.contains("\"path\":\"proxy-connect\""), "{raw}");
        assert_eq!(follower.poll().unwrap().len(), 2);
        assert!(follower.poll().unwrap().is_empty());

        // A partial line is held back until complete.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let line = serde_json::to_string(&all[0]).unwrap();
        f.write_all(&line.as_bytes()[..10]).unwrap();
        assert!(follower.poll().unwrap().is_empty());
        f.write_all(&line.as_bytes()[10..]).unwrap();
        f.write_all(b"\n").unwrap();
        assert_eq!(follower.poll().unwrap(), vec![all[0].clone()]);

        let h = format_human(&all[0]);
        assert!(h.contains("DENY"), "{h}");
        assert!(h.contains("proxy-connect"), "{h}");
        assert!(h.contains("evil.test:443"), "{h}");
        assert!(h.contains("deny *.evil.test (flag)"), "{h}");
        assert!(format_human(&all[1]).contains("203.0.113.9:80"));

        // Truncation starts over.
        std::fs::write(&path, "").unwrap();
        log.decide(
            DecisionPath::Dns,
            Some("x.test"),
            None,
            0,
            &Verdict::deny(Reason::Default, "default"),
        );
        assert_eq!(follower.poll().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_appends_do_not_interleave() {
        let path = tmp("conc");
        let log = DecisionLog::open(&path, "sb").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let name = format!("host-{t}-{i}-{}.test", "x".repeat(200));
                        log.decide(
                            DecisionPath::Dns,
                            Some(&name),
                            None,
                            0,
                            &Verdict::allow(Reason::AllowRule, "allow"),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let raw = std::fs::read_to_string(&path).unwrap();
        assert_eq!(raw.lines().count(), 800);
        assert_eq!(read_log(&path).unwrap().len(), 800);
    }

    #[test]
    fn follow_stops_when_told() {
        let path = tmp("follow");
        let log = DecisionLog::open(&path, "sb").unwrap();
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    log.decide(
                        DecisionPath::Socks5,
                        Some("a.test"),
                        None,
                        443,
                        &Verdict::allow(Reason::AllowRule, "allow a.test (flag)"),
                    );
                }
            })
        };
        let mut seen = 0;
        follow(&path, true, Duration::from_millis(5), |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        writer.join().unwrap();
        assert_eq!(seen, 3);
    }
}
