//! airlock-probe: what can a process started here reach?
//!
//! [`run_probe`] checks, bounded in time and never destructive: secrets in the
//! environment, readable credential files, control sockets, network reachability,
//! and the process/kernel surface (including writable persistence places). It
//! returns a [`Report`] that serialises to a versioned JSON document
//! ([`JSON_SCHEMA`]) and renders for humans ([`Report::render_human`],
//! [`render_compare`]). Secret values are never stored in a report: only names,
//! paths and redacted hints. See `README.md` beside this crate for the design.

mod checks;
mod model;
mod net_targets;
mod render;
mod util;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use model::{Category, Context, ContextKind, Finding, Report, SCHEMA_VERSION, Severity};
pub use net_targets::{BUILTIN_TARGETS, NetTarget, NetTargetKind, NetTargets, TargetAddr};
pub use render::render_compare;
pub use util::redact;

/// JSON Schema (draft 2020-12) of [`Report`] as written by [`Report::to_json`];
/// the same text as `schema/report.v1.json`.
pub const JSON_SCHEMA: &str = include_str!("../schema/report.v1.json");

/// Loopback ports checked on 127.0.0.1 and ::1 (a fixed short list of common services).
pub const LOOPBACK_PORTS: &[u16] = &[
    22, 80, 443, 2375, 2376, 3000, 3306, 5000, 5432, 5900, 6379, 8000, 8080, 8443, 9000, 9200,
    11211, 27017,
];

/// Errors of this crate. Each says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot read net targets file {path}: {source}; pass an existing readable file, `builtin` or `none`"
    )]
    NetTargetsRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "net targets file {path}, line {line}: {message}; expected lines like `metadata 169.254.169.254:80`, `outbound 1.1.1.1:443`, `gateway default:80`, `dns {{random}}.example.com`"
    )]
    NetTargetsParse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid probe report JSON: {0}; pass the output of `airlock __probe --json`")]
    Json(#[source] serde_json::Error),
    #[error(
        "unsupported report schema_version {found} (this airlock reads version {supported}); run the same airlock version on both sides"
    )]
    SchemaVersion { found: String, supported: u32 },
    #[error("unknown severity `{0}`; use one of high, medium, low, info")]
    BadSeverity(String),
}

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The home directory to inspect for credential files and persistence places.
    pub home: PathBuf,
    /// The agent's workspace: `.env` files and persistence places inside it are not findings.
    pub workspace: Option<PathBuf>,
    /// The environment to inspect (also used for `DOCKER_HOST`, `SSH_AUTH_SOCK`,
    /// `XDG_RUNTIME_DIR`, `DISPLAY`, …). [`ProbeOptions::from_env`] captures the process's own.
    pub env: Vec<(String, String)>,
    /// Non-loopback network targets; [`NetTargets::None`] makes no attempt beyond loopback.
    pub net_targets: NetTargets,
    /// Timeout of each network attempt (clamped to 10 ms ..= 2 s); e.g. 300 ms.
    pub timeout: Duration,
    /// Extra loopback ports to check besides [`LOOPBACK_PORTS`].
    pub extra_loopback_ports: Vec<u16>,
    /// Recorded in the report's context: `host` or `sandbox`.
    pub context: ContextKind,
    /// Recorded in the report's context.
    pub sandbox_name: Option<String>,
}

impl ProbeOptions {
    /// Options for the current process: `$HOME` (or `/`), the current directory as the
    /// workspace, the process environment, a 300 ms timeout, context `host`.
    /// The network targets must be chosen explicitly.
    pub fn from_env(net_targets: NetTargets) -> ProbeOptions {
        let env: Vec<(String, String)> = std::env::vars_os()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let home = env
            .iter()
            .find(|(k, _)| k == "HOME")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| PathBuf::from("/"));
        ProbeOptions {
            home,
            workspace: std::env::current_dir().ok(),
            env,
            net_targets,
            timeout: Duration::from_millis(300),
            extra_loopback_ports: Vec::new(),
            context: ContextKind::Host,
            sandbox_name: None,
        }
    }
}

/// Shared state of one probe run.
pub(crate) struct Ctx<'a> {
    pub opts: &'a ProbeOptions,
    pub env: HashMap<String, String>,
    pub home: PathBuf,
    pub workspace: Option<PathBuf>,
    pub uid: u32,
    pub euid: u32,
    pub initial_userns: bool,
    pub timeout: Duration,
    pub net_log: Mutex<Vec<String>>,
}

impl Ctx<'_> {
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `$XDG_RUNTIME_DIR`, or `/run/user/UID`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.var("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", self.uid)))
    }

    pub fn in_workspace(&self, path: &Path) -> bool {
        match &self.workspace {
            Some(ws) => {
                path.starts_with(ws) || std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(ws))
            }
            None => false,
        }
    }

    pub fn log_net(&self, what: String) {
        if let Ok(mut l) = self.net_log.lock() {
            l.push(what);
        }
    }
}

/// Run every check and return the report. Never panics (a panicking check is caught and
/// reported as an `probe.check_failed` info finding), never writes or signals anything,
/// and is bounded in time (network attempts run in parallel with `opts.timeout` each).
pub fn run_probe(opts: &ProbeOptions) -> Report {
    let start = Instant::now();
    let uid = nix::unistd::getuid().as_raw();
    let euid = nix::unistd::geteuid().as_raw();
    // The initial user namespace always has the same inode (PROC_USER_INIT_INO). An identity
    // uid_map alone does not tell: a sandbox started by root maps all ids onto themselves.
    let initial_userns = std::fs::read_link("/proc/self/ns/user")
        .map(|l| l.to_string_lossy() == "user:[4026531837]")
        .unwrap_or(true);
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let ctx = Ctx {
        opts,
        env: opts.env.iter().cloned().collect(),
        home: canon(&opts.home),
        workspace: opts.workspace.as_deref().map(canon),
        uid,
        euid,
        initial_userns,
        timeout: opts
            .timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(2)),
        net_log: Mutex::new(Vec::new()),
    };

    let mut findings = Vec::new();
    type Check = fn(&Ctx, &mut Vec<Finding>);
    let all: [(&str, Check); 5] = [
        ("env", checks::env::check),
        ("files", checks::files::check),
        ("sockets", checks::sockets::check),
        ("network", checks::network::check),
        ("process", checks::process::check),
    ];
    for (name, check) in all {
        let mut local = Vec::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&ctx, &mut local)));
        findings.append(&mut local);
        if r.is_err() {
            findings.push(Finding::new(
                "probe.check_failed",
                Category::Process,
                Severity::Info,
                name,
                format!("The {name} checks stopped early"),
                "an internal error interrupted this group of checks; its results may be incomplete",
                "report this as an airlock bug",
            ));
        }
    }

    let uts = nix::sys::utsname::uname().ok();
    let field = |f: Option<&std::ffi::OsStr>| {
        f.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let context = Context {
        kind: opts.context,
        sandbox: opts.sandbox_name.clone(),
        hostname: field(uts.as_ref().map(|u| u.nodename())),
        uid,
        gid: nix::unistd::getgid().as_raw(),
        kernel: field(uts.as_ref().map(|u| u.release())),
        time: util::now_rfc3339(),
        probe_version: env!("CARGO_PKG_VERSION").to_string(),
        initial_user_namespace: initial_userns,
        net_targets: opts.net_targets.label().to_string(),
        net_attempts: ctx.net_log.lock().map(|l| l.clone()).unwrap_or_default(),
        duration_ms: start.elapsed().as_millis() as u64,
    };
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        context,
        findings,
    };
    report.sort();
    report
}
