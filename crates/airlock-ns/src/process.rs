//! Starting a command inside a sandbox: the last steps before `execve`, shared by the sandbox's
//! first command (started by its init) and by `airlock exec`.
//!
//! Everything is prepared before fork ([`CommandSpec::new`]); after fork the child only makes
//! syscalls, so the order of the steps below is the security argument:
//! new session (no controlling terminal: TIOCSTI cannot reach the caller's terminal) → PTY →
//! rlimits → bounding set → drop to the sandbox user → no_new_privs → cwd → every fd above 2
//! close-on-exec → seccomp → exec.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use airlock_core::spec::{CredentialSpec, SandboxSpec};
use airlock_seccomp::SeccompProgram;

use crate::caps;
use crate::error::{NsError, Result};
use crate::rlimits::Rlimits;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host environment variables passed through to the sandbox (plus `LC_*`).
const ENV_ALLOWLIST: &[&str] = &["TERM", "LANG", "LANGUAGE", "TZ", "COLORTERM", "NO_COLOR"];

pub struct CommandSpec {
    argv: Vec<CString>,
    env: Vec<CString>,
    path_dirs: Vec<Vec<u8>>,
    workdir: CString,
    uid: u32,
    gid: u32,
    set_groups: bool,
    /// Supplementary groups besides `gid` (the groups of devices a jail's VMM opens).
    extra_groups: Vec<u32>,
    /// Started by root: take root's ids inside before anything else (see
    /// [`crate::init::become_ns_root`]); `airlock exec` arrives with the host's.
    ns_root_first: bool,
    tty: bool,
    rlimits: Rlimits,
    host_exe: Option<OwnedFd>,
}

fn cstring(s: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| NsError::Setup("an argument or variable contains a NUL byte".into()))
}

/// The environment of a sandboxed command: a fresh one, never the host's.
pub fn sandbox_env(
    spec: &SandboxSpec,
    extra: &[(String, String)],
    tty: bool,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), spec.user.home.display().to_string()),
        ("USER".into(), spec.user.name.clone()),
        ("LOGNAME".into(), spec.user.name.clone()),
        ("SHELL".into(), spec.user.shell.display().to_string()),
        ("HOSTNAME".into(), spec.name.clone()),
        ("AIRLOCK_SANDBOX".into(), spec.name.clone()),
    ];
    for (k, v) in std::env::vars() {
        if ENV_ALLOWLIST.contains(&k.as_str()) || k.starts_with("LC_") {
            env.push((k, v));
        }
    }
    // Proxy-aware clients go straight to the policy gate; everything else is captured anyway.
    env.extend(airlock_net::proxy_env(&crate::net::proxy_url()));
    if spec.ssh_agent {
        env.push(("SSH_AUTH_SOCK".into(), crate::mounts::SSH_AGENT_SOCK.into()));
    }
    if !spec.credentials.is_empty() {
        // Every common TLS stack trusts the bundle that holds the sandbox's CA.
        for k in [
            "SSL_CERT_FILE",
            "NODE_EXTRA_CA_CERTS",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            env.push((k.into(), crate::net::TRUST_BUNDLE.into()));
        }
    }
    if tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    for (k, v) in spec.env.iter().chain(extra) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    let git = git_credential_env(&spec.credentials, &env);
    if !git.is_empty() {
        env.retain(|(k, _)| k != "GIT_CONFIG_COUNT");
        env.extend(git);
    }
    env
}

/// The user name a code host's git over HTTPS takes with a token as password.
fn git_token_user(service: &str) -> Option<&'static str> {
    match service {
        "github" => Some("x-access-token"),
        _ => None,
    }
}

/// `git` over HTTPS to the hosts of a code-host credential sends
/// `Authorization: Basic base64(user:PLACEHOLDER)`, set through `GIT_CONFIG_*` (no file in the
/// sandbox); the gate swaps the placeholder inside it for the real token. Numbered after the
/// `GIT_CONFIG_*` entries `env` already has; includes the new `GIT_CONFIG_COUNT`.
pub fn git_credential_env(
    credentials: &[CredentialSpec],
    env: &[(String, String)],
) -> Vec<(String, String)> {
    let mut entries = Vec::new();
    for c in credentials {
        let Some(user) = git_token_user(&c.service) else {
            continue;
        };
        let header = format!(
            "Authorization: {}",
            airlock_net::inject::basic_authorization(user, &c.placeholder)
        );
        for host in c.hosts.iter().filter(|h| !h.contains('*')) {
            entries.push((format!("http.https://{host}/.extraHeader"), header.clone()));
        }
    }
    if entries.is_empty() {
        return entries;
    }
    let first: usize = env
        .iter()
        .rev()
        .find(|(k, _)| k == "GIT_CONFIG_COUNT")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut out = vec![(
        "GIT_CONFIG_COUNT".to_string(),
        (first + entries.len()).to_string(),
    )];
    for (i, (k, v)) in entries.into_iter().enumerate() {
        out.push((format!("GIT_CONFIG_KEY_{}", first + i), k));
        out.push((format!("GIT_CONFIG_VALUE_{}", first + i), v));
    }
    out
}

/// How a command gets the sandbox's seccomp filter.
#[derive(Clone, Copy)]
pub enum Confinement<'a> {
    /// Install it right before `execve` (a command started from outside, `airlock exec`).
    Install(&'a SeccompProgram),
    /// The process that started the command had installed it already (the sandbox's init, whose
    /// filter children inherit): attaching it a second time would only cost time. Checked with
    /// `PR_GET_SECCOMP` before `execve`.
    Inherited,
}

impl CommandSpec {
    pub fn new(
        spec: &SandboxSpec,
        argv: &[String],
        extra_env: &[(String, String)],
        workdir: &Path,
        tty: bool,
        rlimits: Rlimits,
        host_exe: Option<&Path>,
    ) -> Result<CommandSpec> {
        let argv: Vec<String> = if argv.is_empty() {
            vec![spec.user.shell.display().to_string(), "-l".into()]
        } else {
            argv.to_vec()
        };
        let env = sandbox_env(spec, extra_env, tty);
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let host_exe = match host_exe {
            Some(p) => Some(sealed_copy(p)?),
            None => None,
        };
        Ok(CommandSpec {
            argv: argv.iter().map(cstring).collect::<Result<_>>()?,
            env: env
                .iter()
                .map(|(k, v)| cstring(format!("{k}={v}")))
                .collect::<Result<_>>()?,
            path_dirs: path
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| d.as_bytes().to_vec())
                .collect(),
            workdir: cstring(workdir.as_os_str().as_bytes())?,
            uid: spec.user.uid,
            gid: spec.user.gid,
            set_groups: spec.user.uid == 0,
            extra_groups: Vec::new(),
            // SAFETY: geteuid cannot fail.
            ns_root_first: unsafe { libc::geteuid() } == 0,
            tty,
            rlimits,
            host_exe,
        })
    }

    pub fn tty(&self) -> bool {
        self.tty
    }

    /// Add supplementary groups (inside ids) to the command's.
    pub fn with_extra_groups(mut self, groups: Vec<u32>) -> CommandSpec {
        self.extra_groups = groups;
        self
    }

    /// Become the command. Runs in a freshly forked, single-threaded child that is already in all
    /// of the sandbox's namespaces. `pty_sock` carries the PTY master to the caller when `tty`.
    pub fn exec(&self, seccomp: Confinement<'_>, pty_sock: Option<RawFd>) -> ! {
        let code = match self.prepare(seccomp, pty_sock) {
            Ok(()) => self.execute(),
            Err((code, msg)) => {
                die(&msg);
                code
            }
        };
        // SAFETY: _exit is always safe; it skips destructors of the forked copy of our state.
        unsafe { libc::_exit(code) }
    }

    fn prepare(
        &self,
        seccomp: Confinement<'_>,
        pty_sock: Option<RawFd>,
    ) -> std::result::Result<(), (i32, String)> {
        let fail = |what: &str| (126, format!("{what}: {}", std::io::Error::last_os_error()));
        // SAFETY: the calls below only take integers or pointers to locals that outlive them.
        unsafe {
            // Dispositions first, then the mask: no handler of the parent's may run here (a
            // command started by the init shares its memory until exec, see `spawn_vfork`).
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            if libc::setsid() < 0 {
                return Err(fail("setsid"));
            }
            if self.ns_root_first {
                crate::init::become_ns_root().map_err(|e| (126, e))?;
            }
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
        if self.tty {
            let sock = pty_sock.ok_or((126, "internal: no PTY channel".to_string()))?;
            crate::pty::open_and_hand_over(sock)
                .map_err(|e| (126, format!("allocating a terminal: {e}")))?;
        }
        self.rlimits
            .apply()
            .map_err(|e| (126, format!("setting rlimits: {e}")))?;
        caps::restrict_bounding_set()
            .map_err(|e| (126, format!("restricting capabilities: {e}")))?;
        // SAFETY: credential syscalls with integer arguments / a pointer to a local.
        unsafe {
            if self.set_groups {
                let mut g = vec![self.gid];
                g.extend_from_slice(&self.extra_groups);
                if libc::setgroups(g.len(), g.as_ptr()) != 0 {
                    return Err(fail("setgroups"));
                }
            }
            if libc::setresgid(self.gid, self.gid, self.gid) != 0 {
                return Err(fail("setresgid"));
            }
            if libc::setresuid(self.uid, self.uid, self.uid) != 0 {
                return Err(fail("setresuid"));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(fail("no_new_privs"));
            }
            if libc::chdir(self.workdir.as_ptr()) != 0 {
                return Err((
                    126,
                    format!(
                        "working directory {}: {}",
                        self.workdir.to_string_lossy(),
                        std::io::Error::last_os_error()
                    ),
                ));
            }
            // Every descriptor above stderr is closed at exec: nothing of the host leaks in.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(fail("close_range"));
            }
        }
        match seccomp {
            Confinement::Install(p) => p
                .apply()
                .map_err(|e| (126, format!("installing the seccomp filter: {e}")))?,
            Confinement::Inherited => {
                // Fail closed: never run the command unfiltered because a caller was wrong.
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } != 2 {
                    return Err((126, "internal: the seccomp filter was not inherited".into()));
                }
            }
        }
        Ok(())
    }

    fn execute(&self) -> i32 {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        if let Some(fd) = &self.host_exe {
            // SAFETY: argv/envp are NULL-terminated arrays of valid strings that outlive the call.
            unsafe {
                libc::execveat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    argv.as_ptr() as *const *mut libc::c_char,
                    envp.as_ptr() as *const *mut libc::c_char,
                    libc::AT_EMPTY_PATH,
                )
            };
            die(&format!(
                "cannot execute the probe: {}",
                std::io::Error::last_os_error()
            ));
            return 126;
        }
        let name = self.argv[0].as_bytes();
        let mut last_err = std::io::Error::from_raw_os_error(libc::ENOENT);
        let candidates: Vec<CString> = if name.contains(&b'/') {
            vec![self.argv[0].clone()]
        } else {
            self.path_dirs
                .iter()
                .filter_map(|d| {
                    let mut p = d.clone();
                    p.push(b'/');
                    p.extend_from_slice(name);
                    CString::new(p).ok()
                })
                .collect()
        };
        for c in &candidates {
            // SAFETY: as above.
            unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
                || last_err.raw_os_error() == Some(libc::ENOENT)
            {
                last_err = e;
            }
        }
        let code = if last_err.raw_os_error() == Some(libc::ENOENT) {
            127
        } else {
            126
        };
        die(&format!(
            "cannot run {:?} in the sandbox: {last_err}",
            self.argv[0]
        ));
        code
    }
}

/// A sealed in-memory copy of the host executable `path`, to execute inside a sandbox: the
/// sandboxed process's /proc/PID/exe then points at the sealed copy, never at a host file that a
/// process inside could reopen for writing (the CVE-2019-5736 class).
fn sealed_copy(path: &Path) -> Result<OwnedFd> {
    use std::io::Write;
    // SAFETY: memfd_create with a valid name; the fd is owned immediately.
    let fd = unsafe {
        libc::memfd_create(
            c"airlock-exe".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(NsError::last("memfd_create for the executable"));
    }
    // SAFETY: fresh fd owned by nobody else.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let bytes = std::fs::read(path).map_err(|e| NsError::path(path, e))?;
    let mut f = std::fs::File::from(memfd);
    f.write_all(&bytes)
        .map_err(|e| NsError::sys("copying the executable", e))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own memfd.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(NsError::last("sealing the executable's copy"));
    }
    Ok(OwnedFd::from(f))
}

/// Write an error to stderr without allocating more than needed.
fn die(msg: &str) {
    let line = format!("airlock: {msg}\n");
    // SAFETY: writing a valid buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(service: &str, hosts: &[&str]) -> CredentialSpec {
        CredentialSpec {
            service: service.into(),
            env: "X".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            header: "authorization".into(),
            format: "Bearer {secret}".into(),
            placeholder: "airlock-placeholder-0011".into(),
        }
    }

    #[test]
    fn git_sends_the_github_placeholder_as_basic_auth() {
        let creds = [
            cred("anthropic", &["api.anthropic.com"]),
            cred("github", &["github.com", "*.github.com"]),
        ];
        let header = "Authorization: Basic eC1hY2Nlc3MtdG9rZW46YWlybG9jay1wbGFjZWhvbGRlci0wMDEx";
        assert_eq!(
            git_credential_env(&creds, &[]),
            vec![
                ("GIT_CONFIG_COUNT".into(), "1".into()),
                (
                    "GIT_CONFIG_KEY_0".into(),
                    "http.https://github.com/.extraHeader".into()
                ),
                ("GIT_CONFIG_VALUE_0".into(), header.into()),
            ]
        );
        // After the user's own entries.
        let mine = [("GIT_CONFIG_COUNT".to_string(), "2".to_string())];
        let env = git_credential_env(&creds, &mine);
        assert_eq!(env[0], ("GIT_CONFIG_COUNT".into(), "3".into()));
        assert_eq!(env[1].0, "GIT_CONFIG_KEY_2");
        // No code-host credential: nothing.
        assert!(git_credential_env(&creds[..1], &[]).is_empty());
    }
}
