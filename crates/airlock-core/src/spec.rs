//! What a sandbox is. A [`SandboxSpec`] is written once at creation and read by every command.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the host workspace appears inside the sandbox (always at the same absolute path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceMode {
    /// Copy-on-write (overlayfs): the agent writes freely, the host directory is untouched.
    #[default]
    Cow,
    /// The host directory itself, read-write: changes are live on the host.
    Rw,
    /// The host directory, read-only.
    Ro,
    /// A git clone of the host repository, private to the sandbox; the host repository is
    /// visible read-only at `/run/airlock/source`. The work comes back with `git fetch`.
    Clone,
}

impl WorkspaceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceMode::Cow => "cow",
            WorkspaceMode::Rw => "rw",
            WorkspaceMode::Ro => "ro",
            WorkspaceMode::Clone => "clone",
        }
    }
}

/// Which isolation tier runs the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Linux namespaces + seccomp + cgroups: starts in milliseconds, shares the host kernel.
    #[default]
    Namespace,
    /// A microVM with its own kernel (QEMU).
    Vm,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Namespace => "namespace",
            Isolation::Vm => "vm",
        }
    }
}

/// Resource limits requested by the user. `None` means "no limit beyond the host's".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub timeout_secs: Option<f64>,
}

/// Network settings given at creation (`--net`, `--allow`, `--deny`, `--host-port`, `-p`).
/// Kept as text here; the network tier parses and validates them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// `none` (default), `balanced` or `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Host loopback ports reachable inside as `host.airlock.internal:PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
    /// Sandbox services published on the host (`-p`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<PortMap>,
}

/// `-p [HOST_IP:]HOST_PORT:SANDBOX_PORT`: the host listens on `host_ip:host_port` and forwards each
/// connection to `sandbox_port` on the sandbox's loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub host_ip: std::net::IpAddr,
    pub host_port: u16,
    pub sandbox_port: u16,
}

impl PortMap {
    /// Parse `[HOST_IP:]HOST_PORT:SANDBOX_PORT` (IPv6 host addresses in brackets).
    pub fn parse(s: &str) -> Result<PortMap, String> {
        let bad = || {
            format!(
                "invalid port mapping {s:?}: expected [HOST_IP:]HOST_PORT:SANDBOX_PORT, e.g. 8080:3000 or 127.0.0.1:8080:3000"
            )
        };
        let (rest, sandbox) = s.rsplit_once(':').ok_or_else(bad)?;
        let sandbox_port: u16 = sandbox.parse().map_err(|_| bad())?;
        let (ip, host) = match rest.rsplit_once(':') {
            Some((ip, host)) => (
                ip.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| bad())?,
                host,
            ),
            None => (std::net::IpAddr::from([127, 0, 0, 1]), rest),
        };
        let host_port: u16 = host.parse().map_err(|_| bad())?;
        if host_port == 0 || sandbox_port == 0 {
            return Err(bad());
        }
        Ok(PortMap {
            host_ip: ip,
            host_port,
            sandbox_port,
        })
    }
}

impl std::fmt::Display for PortMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            std::net::IpAddr::V6(ip) => {
                write!(f, "[{ip}]:{} -> {}", self.host_port, self.sandbox_port)
            }
            ip => write!(f, "{ip}:{} -> {}", self.host_port, self.sandbox_port),
        }
    }
}

/// A credential of a sandbox: which service, and the placeholder the sandbox holds instead of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialSpec {
    pub service: String,
    pub env: String,
    pub hosts: Vec<String>,
    pub header: String,
    pub format: String,
    /// `airlock-placeholder-<random>`: what the sandbox's environment holds.
    pub placeholder: String,
}

/// The identity the agent runs as inside: by default the invoking user's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
    pub shell: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub name: String,
    /// Absolute, canonical host path of the workspace.
    pub workspace: PathBuf,
    pub mode: WorkspaceMode,
    pub isolation: Isolation,
    pub limits: Limits,
    /// Extra environment (from `-e` and `--env-file`), in order.
    pub env: Vec<(String, String)>,
    pub user: SandboxUser,
    #[serde(default)]
    pub network: NetworkSpec,
    /// The kit this sandbox was created for (`airlock run KIT`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit: Option<String>,
    /// Credentials injected at the gate: the sandbox sees only their placeholders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialSpec>,
    /// Forward the caller's SSH agent (`--ssh-agent`): off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ssh_agent: bool,
    /// The template this sandbox starts from (`--template`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Run a private Docker daemon in the sandbox (`--docker`, microVM tier only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker: bool,
    /// Workspace subdirectories (relative, normalized) kept out of the workspace's copy-on-write
    /// layer (`--cache-dir`): each is a plain directory of the sandbox's own, mounted over that
    /// path, for build outputs and dependency trees. Never part of diff, review or apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_dirs: Vec<PathBuf>,
    /// Delete the sandbox when its command exits (`run --rm`).
    pub ephemeral: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// What a running sandbox is, as recorded by its supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeState {
    /// Host pid of the sandbox's init (PID 1 inside).
    pub init_pid: i32,
    /// The init's start time in clock ticks since boot (/proc/PID/stat field 22): guards against pid reuse.
    pub init_start_ticks: u64,
    /// Host pid of the supervising process.
    pub supervisor_pid: i32,
    pub supervisor_start_ticks: u64,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// How limits are enforced, e.g. "cgroup v1" or "rlimits (rootless on cgroup v1: no cgroup available)".
    pub limits_enforcement: String,
    /// Cgroup directories created for the sandbox (removed at stop).
    pub cgroups: Vec<PathBuf>,
    /// Whether the system directories are copy-on-write ("cow") or read-only ("ro"), and why.
    pub system_mode: String,
    /// How the sandbox's network is wired.
    #[serde(default)]
    pub network: String,
    /// For a microVM sandbox: the accelerator, vCPUs, memory and guest kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// How the sandbox's ids map to the host's (root inside is never root outside).
    #[serde(default)]
    pub ids: String,
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
