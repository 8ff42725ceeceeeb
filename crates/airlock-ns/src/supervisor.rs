//! The host side of a sandbox: creating it (clone, id maps, cgroup), supervising its first
//! command or keeping it running detached, joining it for `exec`, and stopping it.
//!
//! Process model:
//! ```text
//! airlock run            (supervisor: relays the PTY, forwards signals, enforces --timeout)
//!  └─ init  [PID 1 in the sandbox; dies with the supervisor]
//!      └─ the command
//! airlock start → airlock (detached supervisor) └─ init
//! airlock exec  → (joins the namespaces)        └─ the command [in the sandbox's pid namespace]
//! ```

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_core::backend::{ExecRequest, Outcome};
use airlock_core::spec::{RuntimeState, SandboxSpec, now_secs};
use airlock_core::store::{Store, process_is, process_start_ticks};
use airlock_seccomp::SeccompProgram;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cgroups::{self, Cgroup, Placement};
use crate::error::{NsError, Result};
use crate::init::{self, MSG_ERROR, MSG_GO, MSG_IN_CGROUP, MSG_READY};
use crate::layers::Layers;
use crate::mounts::{ExtraBind, MountPlan};
use crate::namespaces::{self, IdMap, NsFds, SANDBOX_CLONE_FLAGS};
use crate::process::{CommandSpec, Confinement};
use crate::pty;
use crate::rlimits::Rlimits;

/// The seccomp filter, compiled once per policy text, architecture and build of the compiler,
/// and kept in Airlock's state (`<data>/cache/seccomp-<hash>.bpf`, never visible inside a
/// sandbox), so starting or joining a sandbox only reads it back.
///
/// What is read back is installed as is, so it is only read from a directory and a file that
/// belong to the user running Airlock and that nobody else can write (planting a filter there
/// takes the user's own rights, which can change Airlock's binary and configuration just as
/// well); anything else is compiled again. Filters of other builds are deleted when a new one
/// is written.
pub fn seccomp_program(store: &Store) -> Result<SeccompProgram> {
    // Known at build time: hashing the 22 KB policy at every start cost ~0.05 ms. The compiler's
    // id is part of the key, so a filter compiled by another build of it is not reused.
    const KEY: u64 = airlock_core::units::fnv1a_continue(
        airlock_core::units::fnv1a_continue(
            airlock_core::units::fnv1a_continue(
                airlock_core::units::FNV1A_OFFSET,
                airlock_seccomp::DEFAULT_POLICY_TOML.as_bytes(),
            ),
            std::env::consts::ARCH.as_bytes(),
        ),
        airlock_seccomp::COMPILER_ID.as_bytes(),
    );
    let dir = store.paths.data.join("cache");
    let name = format!("seccomp-{KEY:016x}.bpf");
    let path = dir.join(&name);
    if let Some(bytes) = read_private(&dir, &path)
        && let Ok(p) = SeccompProgram::from_bytes(&bytes)
    {
        return Ok(p);
    }
    let p = SeccompProgram::compile_default()?;
    if airlock_core::store::mkdir_private(&dir).is_ok() && private_dir(&dir) {
        let _ = airlock_core::store::write_atomic(&path, &p.to_bytes());
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with("seccomp-") && n.ends_with(".bpf") && n != name {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(p)
}

/// `dir` is a directory (not a symlink) of the effective user that only it can write.
fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir).is_ok_and(|m| {
        m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0
    })
}

/// The contents of `path` in `dir`, if both are the effective user's and only it can write them.
fn read_private(dir: &Path, path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if !private_dir(dir) {
        return None;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o022 != 0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    f.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Signals the supervisor handles through a signalfd (blocked before any fork, so children
/// inherit them blocked: init waits for them, commands unblock them before exec).
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

fn signal_fd() -> Result<SignalFd> {
    let set = handled_signals();
    set.thread_block()
        .map_err(|e| NsError::sys("blocking signals", e.into()))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| NsError::sys("signalfd", e.into()))
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two-element array we pass.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(NsError::last("socketpair"));
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn recv(sock: RawFd, buf: &mut [u8]) -> usize {
    loop {
        // SAFETY: receiving into a valid buffer.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
        // ECONNRESET: the peer closed its end with messages of ours unread (an init that failed
        // before reading "in cgroup"). The kernel reports that error once, before the messages
        // still queued for us, which carry what went wrong: read on.
        if n < 0
            && matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EINTR | libc::ECONNRESET)
            )
        {
            continue;
        }
        return n.max(0) as usize;
    }
}

/// How limits are enforced for a sandbox on this host.
pub struct Enforcement {
    pub cgroup: Option<Cgroup>,
    pub rlimits: Rlimits,
    pub description: String,
}

fn enforcement(store: &Store, spec: &SandboxSpec) -> Enforcement {
    let h = cgroups::detect();
    match cgroups::create(
        &h,
        &cgroups::scope_for(&store.paths.data),
        &spec.name,
        &spec.limits,
    ) {
        Placement::Cgroup(cg) => Enforcement {
            description: format!("cgroup v{}", cg.version),
            cgroup: Some(cg),
            rlimits: Rlimits::default(),
        },
        Placement::Unavailable(why) => Enforcement {
            cgroup: None,
            rlimits: Rlimits::fallback(&spec.limits, false),
            description: format!("rlimits ({why})"),
        },
    }
}

/// Rlimits of a running sandbox, for processes joining it.
fn rlimits_of(spec: &SandboxSpec, state: &RuntimeState) -> Rlimits {
    Rlimits::fallback(&spec.limits, !state.cgroups.is_empty())
}

pub struct Booted {
    /// Credentials to inject at the gate (their CA is already in the sandbox's trust bundle).
    pub init_pid: i32,
    /// Channel to the init for connections to published ports.
    pub ports: OwnedFd,
    /// The sandbox's network, served since its sockets arrived (see [`start_network`]).
    pub net: Option<crate::net::SandboxNet>,
    pub sock: OwnedFd,
    pub enforcement: Enforcement,
    pub system_mode: String,
    /// How the sandbox's ids map to the host's (for `inspect`).
    pub ids: String,
}

fn describe_ids(idmap: &IdMap, sources: Option<&crate::idmapped::Sources>) -> String {
    let mut d = idmap.describe();
    if let Some(s) = sources.filter(|s| !s.not_idmapped.is_empty()) {
        let paths: Vec<String> = s
            .not_idmapped
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        d.push_str(&format!(
            "; not idmappable, so owned by nobody inside: {}",
            paths.join(", ")
        ));
    }
    d
}

/// Create the sandbox's namespaces and init. `main` becomes the first command.
fn boot(
    store: &Store,
    spec: &SandboxSpec,
    seccomp: &SeccompProgram,
    enforcement: Enforcement,
    main: Option<&CommandSpec>,
    extras: &JailMounts,
) -> Result<Booted> {
    // Whatever fails, the sandbox's cgroup does not outlive the attempt.
    let cgroup_dirs = enforcement
        .cgroup
        .as_ref()
        .map(|c| c.dirs.clone())
        .unwrap_or_default();
    boot_inner(store, spec, seccomp, enforcement, main, extras).inspect_err(|_| {
        cgroups::remove_dirs(&cgroup_dirs);
    })
}

fn boot_inner(
    store: &Store,
    spec: &SandboxSpec,
    seccomp: &SeccompProgram,
    enforcement: Enforcement,
    main: Option<&CommandSpec>,
    extras: &JailMounts,
) -> Result<Booted> {
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut idmap = IdMap::for_invoker(euid, egid, &spec.name);
    // A jail's devices (kvm) are reached through their group, mapped in for a shifted sandbox.
    for gid in namespaces::device_groups(&extras.devices) {
        idmap.map_host_group(gid);
    }
    let runtime = store.runtime_dir(&spec.name);
    let scratch = store.paths.sandbox_scratch();
    std::fs::create_dir_all(&scratch).map_err(|e| NsError::path(&scratch, e))?;
    let layers = Layers::new(&store.paths.sandbox_dir(&spec.name));
    if idmap.full_range && !spec.ephemeral {
        // A sandbox created rootless and started as root gains its system layers here.
        layers.create(true)?;
    }
    let state_dirs = [store.paths.data.clone(), store.paths.runtime.clone()];
    let mut plan = MountPlan::for_sandbox(spec, layers, scratch, idmap.full_range, &state_dirs);
    plan.resolv_conf = Some(crate::net::resolv_conf());
    let (network_capture, policy) = crate::net::needs_capture(store, spec);
    plan.network_capture = network_capture;
    plan.extra_binds = extras.binds.clone();
    plan.extra_devices = extras.devices.clone();
    plan.share_tree = extras.share_tree.clone();
    if spec.ssh_agent {
        let sock = std::env::var_os("SSH_AUTH_SOCK")
            .map(PathBuf::from)
            .filter(|p| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(p)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false)
            });
        plan.ssh_agent = Some(sock.ok_or_else(|| {
            NsError::Setup("--ssh-agent: SSH_AUTH_SOCK does not name an agent socket here; start ssh-agent (or drop --ssh-agent)".into())
        })?);
    }
    let credentials = crate::net::Credentials::prepare(store, spec)?;
    if let Some(c) = &credentials {
        std::fs::create_dir_all(&runtime).map_err(|e| NsError::path(&runtime, e))?;
        let bundle = runtime.join("ca-bundle.crt");
        std::fs::write(&bundle, c.trust_bundle()).map_err(|e| NsError::path(&bundle, e))?;
        plan.trust_bundle = Some(bundle);
    }
    if let Some(t) = &spec.template {
        let dir = store.paths.templates().join(t);
        if !dir.is_dir() {
            return Err(NsError::Setup(format!(
                "the template {t:?} of this sandbox no longer exists (see `airlock template ls`)"
            )));
        }
        plan.template = Some(dir);
    }
    plan.volatile_layers = spec.ephemeral;
    if idmap.shifted_base.is_some() {
        plan.shifted = true;
        plan.staged_sources = plan.host_sources();
    }
    let system_mode = if idmap.full_range {
        "cow".to_string()
    } else {
        "ro (rootless: the host's system files belong to ids that cannot be mapped; install into $HOME, or run as root or with --isolation vm for a writable system)".to_string()
    };
    let (parent_sock, child_sock) = seqpacket_pair()?;
    let (ports_sock, ports_child) = seqpacket_pair()?;
    // The child moves itself into its cgroup through these (opened here, with our credentials).
    let cgroup_procs = match &enforcement.cgroup {
        Some(cg) => cgroups::open_procs(&cg.dirs)?,
        None => Vec::new(),
    };
    airlock_core::startup::trace("boot: plan ready, cloning");

    let pid = match namespaces::clone_process(SANDBOX_CLONE_FLAGS) {
        Ok(0) => {
            drop(parent_sock);
            drop(ports_sock);
            let procs: Vec<RawFd> = cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
            init::run(
                child_sock.as_raw_fd(),
                ports_child.as_raw_fd(),
                &procs,
                &plan,
                &spec.name,
                seccomp,
                main,
            )
        }
        Ok(pid) => pid,
        Err(e) => {
            if let Some(cg) = &enforcement.cgroup {
                cgroups::remove(cg);
            }
            return Err(e);
        }
    };
    drop(child_sock);
    drop(ports_child);
    drop(cgroup_procs);
    airlock_core::startup::trace("boot: cloned");
    let fail = |e: NsError| {
        // SAFETY: killing and reaping the child we just created.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if let Some(cg) = &enforcement.cgroup {
            cgroups::remove(cg);
        }
        e
    };
    if let Err(e) = idmap.write(pid) {
        return Err(fail(e));
    }
    airlock_core::startup::trace("boot: id maps written");
    // A shifted sandbox reads host paths through idmapped clones, sent with the "go".
    let sources = if plan.shifted {
        match crate::idmapped::clone_sources(pid, &plan.staged_sources) {
            Ok(s) => Some(s),
            Err(e) => return Err(fail(e)),
        }
    } else {
        None
    };
    let raw: Vec<RawFd> = sources
        .iter()
        .flat_map(|s| s.fds.iter().map(|f| f.as_raw_fd()))
        .collect();
    // The child joins its cgroup itself, first thing after GO (see `cgroups::join_self`).
    init::send_with_fds(parent_sock.as_raw_fd(), &[MSG_GO], &raw);
    drop(raw);
    let ids = describe_ids(&idmap, sources.as_ref());
    drop(sources);
    init::send(parent_sock.as_raw_fd(), &[MSG_IN_CGROUP]);
    airlock_core::startup::trace("boot: maps written, in cgroup");
    // First the network sockets (or an early error), then "ready" (or the error).
    let (sockets, mut buf, mut n) = match crate::net::InsideSockets::recv(parent_sock.as_raw_fd()) {
        Ok(Ok(sockets)) => (Some(sockets), vec![0u8; 4096], 0),
        Ok(Err(bytes)) => {
            let n = bytes.len();
            (None, bytes, n)
        }
        Err(e) => return Err(fail(e)),
    };
    // The network is served from now on, while the init builds its filesystem (the other core's
    // work): nothing inside can connect before the init is ready, and starting it here takes its
    // ~0.4 ms off the start path. It stops with the value, on every path out of here.
    let net = match sockets {
        Some(sockets) => {
            match start_network(store, spec, sockets, credentials, policy, &ports_sock) {
                Ok(net) => Some(net),
                Err(e) => return Err(fail(e)),
            }
        }
        None => None,
    };
    airlock_core::startup::trace("boot: network served");
    if net.is_some() {
        n = recv(parent_sock.as_raw_fd(), &mut buf);
    }
    match buf.first() {
        Some(&MSG_READY) if n >= 1 => Ok(Booted {
            init_pid: pid,
            ports: ports_sock,
            net,
            sock: parent_sock,
            enforcement,
            system_mode,
            ids,
        }),
        Some(&MSG_ERROR) if n >= 1 => {
            let msg = String::from_utf8_lossy(&buf[1..n]).into_owned();
            Err(fail(NsError::Setup(msg)))
        }
        _ => Err(fail(NsError::Setup(
            "the sandbox's init exited during setup".into(),
        ))),
    }
}

/// Serve the sandbox's network (gate, resolver, capture) for as long as the value lives.
fn start_network(
    store: &Store,
    spec: &SandboxSpec,
    sockets: crate::net::InsideSockets,
    credentials: Option<crate::net::Credentials>,
    policy: Option<airlock_net::Policy>,
    ports: &OwnedFd,
) -> Result<crate::net::SandboxNet> {
    let ports = ports
        .try_clone()
        .map_err(|e| NsError::sys("the ports channel", e))?;
    let mut net = crate::net::SandboxNet::start(store, spec, sockets, credentials, policy)?;
    net.publisher = Some(crate::ports::Publisher::start(
        ports,
        &spec.network.publish,
    )?);
    net.watch(
        spec.clone(),
        crate::net::paths(store, spec),
        Duration::from_millis(500),
    );
    Ok(net)
}

fn runtime_state(booted: &Booted, net: Option<&crate::net::SandboxNet>) -> RuntimeState {
    let me = std::process::id() as i32;
    RuntimeState {
        init_pid: booted.init_pid,
        init_start_ticks: process_start_ticks(booted.init_pid).unwrap_or(0),
        supervisor_pid: me,
        supervisor_start_ticks: process_start_ticks(me).unwrap_or(0),
        started_at: now_secs(),
        limits_enforcement: booted.enforcement.description.clone(),
        cgroups: booted
            .enforcement
            .cgroup
            .as_ref()
            .map(|c| c.dirs.clone())
            .unwrap_or_default(),
        system_mode: booted.system_mode.clone(),
        ids: booted.ids.clone(),
        network: net
            .map(|n| n.description.clone())
            .unwrap_or_else(|| "loopback only".into()),
        vm: None,
    }
}

fn finish(store: &Store, spec: &SandboxSpec, booted: &Booted) {
    if let Some(cg) = &booted.enforcement.cgroup {
        cgroups::remove(cg);
    }
    let _ = store.clear_runtime(&spec.name);
}

fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// How supervision ended.
struct Ended {
    outcome: Outcome,
    /// Whether the child was reaped; if not, it announced its end on the `ended` channel (see
    /// [`supervise`]) and the caller reaps it with [`reap`].
    reaped: bool,
}

/// Wait for `child` (our own child process) to end, relaying the PTY and forwarding signals to
/// `forward_to`. At `deadline` the sandbox is killed through `kill_on_timeout`.
///
/// `ended` is the sandbox init's end of the setup channel: the init announces there that the
/// sandbox's last process is gone, with the command's exit status ([`init::MSG_ENDED`]), just
/// before it exits itself. Its own exit then takes the kernel ~0.5-1 ms (unmounting the
/// sandbox's ~40 mounts, ending its namespaces): the caller cleans up meanwhile instead of after.
fn supervise(
    sigfd: &mut SignalFd,
    child: i32,
    forward_to: i32,
    pty_master: Option<OwnedFd>,
    deadline: Option<Instant>,
    kill_on_timeout: i32,
    mut ended: Option<RawFd>,
) -> Ended {
    let _raw = pty_master.as_ref().and_then(|_| pty::RawMode::enter(0));
    if let Some(m) = &pty_master {
        // SAFETY: fcntl on our own fd.
        unsafe { libc::fcntl(m.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }
    let mut stdin_open = pty_master.is_some();
    let mut master_open = pty_master.is_some();
    let mut buf = vec![0u8; 64 * 1024];
    let mut timed_out = false;
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ended.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(m) = &pty_master {
            fds.push(libc::pollfd {
                fd: if master_open { m.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
            fds.push(libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = match deadline {
            Some(d) if !timed_out => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            _ => -1,
        };
        // SAFETY: polling an array of pollfds that lives across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n == 0 && deadline.is_some() && !timed_out {
            timed_out = true;
            // SAFETY: killing the sandbox's init (our child) or command.
            unsafe { libc::kill(kill_on_timeout, libc::SIGKILL) };
            continue;
        }
        if n < 0 {
            continue;
        }
        if let Some(fd) = ended
            && fds[1].revents != 0
        {
            let mut msg = [0u8; 8];
            if recv(fd, &mut msg) == 2 && msg[0] == init::MSG_ENDED && !timed_out {
                if let Some(m) = &pty_master {
                    drain(m.as_raw_fd(), &mut buf);
                }
                return Ended {
                    outcome: Outcome::Exited(i32::from(msg[1])),
                    reaped: false,
                };
            }
            // Anything else (the channel closed as the init died, a timeout's kill): the child's
            // exit is what counts.
            ended = None;
        }
        if let Some(m) = &pty_master {
            if fds[2].revents != 0 {
                // SAFETY: reading into a valid buffer from our fd.
                let r = unsafe { libc::read(m.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    pty::write_all(1, &buf[..r as usize]);
                } else if r == 0
                    || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
                {
                    master_open = false;
                }
            }
            if fds[3].revents != 0 {
                // SAFETY: as above.
                let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    pty::write_all(m.as_raw_fd(), &buf[..r as usize]);
                } else {
                    stdin_open = false;
                }
            }
        }
        if fds[0].revents != 0 {
            while let Ok(Some(info)) = sigfd.read_signal() {
                let sig = info.ssi_signo as libc::c_int;
                if sig == libc::SIGCHLD {
                    continue;
                }
                if sig == libc::SIGWINCH {
                    if let Some(m) = &pty_master {
                        pty::copy_winsize(0, m.as_raw_fd());
                    }
                    continue;
                }
                // SAFETY: forwarding a signal to the process we supervise.
                unsafe { libc::kill(forward_to, sig) };
            }
            let mut status = 0;
            // SAFETY: reaping our own child.
            if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
                if let Some(m) = &pty_master {
                    drain(m.as_raw_fd(), &mut buf);
                }
                let outcome = if timed_out {
                    Outcome::TimedOut
                } else {
                    Outcome::Exited(exit_code(status))
                };
                return Ended {
                    outcome,
                    reaped: true,
                };
            }
        }
    }
}

/// Copy what is left in the PTY after the command ended.
fn drain(master: RawFd, buf: &mut [u8]) {
    loop {
        // SAFETY: reading into a valid buffer from our non-blocking fd.
        let r = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            return;
        }
        pty::write_all(1, &buf[..r as usize]);
    }
}

/// Receive the PTY master from a command starting inside, size it, and let the command go on.
fn accept_pty(sock: RawFd) -> Result<OwnedFd> {
    let master = pty::recv_fd(sock)
        .map_err(|e| NsError::sys("receiving the terminal", e))?
        .ok_or_else(|| NsError::Setup("the command ended before its terminal was set up".into()))?;
    pty::copy_winsize(0, master.as_raw_fd());
    // SAFETY: one byte on our end of the channel.
    unsafe { libc::send(sock, b"A".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    Ok(master)
}

/// Reap `pid`, our own child, waiting for it to exit.
fn reap(pid: i32) {
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        if r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// `airlock run`: start the sandbox with `req` as its first command and supervise it here.
/// `on_ended` runs once nothing of the sandbox runs any more, while the kernel may still be
/// ending its namespaces (see [`supervise`]).
pub fn run_foreground(
    store: &Store,
    spec: &SandboxSpec,
    req: &ExecRequest,
    on_ready: &mut dyn FnMut(),
    on_ended: &mut dyn FnMut(),
) -> Result<Outcome> {
    airlock_core::startup::trace("run: start");
    let seccomp = seccomp_program(store)?;
    airlock_core::startup::trace("run: seccomp compiled");
    let workdir = req
        .workdir
        .clone()
        .unwrap_or_else(|| spec.workspace.clone());
    let mut sigfd = signal_fd()?;
    let enforcement = enforcement(store, spec);
    airlock_core::startup::trace("run: limits placed");
    let cmd = match CommandSpec::new(
        spec,
        &req.argv,
        &req.env,
        &workdir,
        req.tty,
        enforcement.rlimits,
        req.host_executable.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            if let Some(cg) = &enforcement.cgroup {
                cgroups::remove(cg);
            }
            return Err(e);
        }
    };
    let booted = boot(
        store,
        spec,
        &seccomp,
        enforcement,
        Some(&cmd),
        &JailMounts::default(),
    );
    let mut booted = booted?;
    airlock_core::startup::trace("boot: init ready");
    let mut net = booted.net.take();
    let _ = store.write_runtime(&spec.name, &runtime_state(&booted, net.as_ref()));
    airlock_core::startup::trace("run: state written");
    on_ready();
    let master = if req.tty {
        Some(accept_pty(booted.sock.as_raw_fd())?)
    } else {
        None
    };
    let deadline = spec
        .limits
        .timeout_secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    airlock_core::startup::trace("network up, supervising");
    let ended = supervise(
        &mut sigfd,
        booted.init_pid,
        booted.init_pid,
        master,
        deadline,
        booted.init_pid,
        Some(booted.sock.as_raw_fd()),
    );
    airlock_core::startup::trace("sandbox ended");
    if let Some(n) = net.as_mut() {
        n.request_stop();
    }
    let _ = store.clear_runtime(&spec.name);
    // The gate has logged its last decision once it is down; the caller may delete the log.
    drop(net);
    airlock_core::startup::trace("network down");
    on_ended();
    airlock_core::startup::trace("caller done");
    if !ended.reaped {
        reap(booted.init_pid);
    }
    airlock_core::startup::trace("init reaped");
    // The runtime state went before `on_ended`; what is left is the cgroup, empty now.
    if let Some(cg) = &booted.enforcement.cgroup {
        cgroups::remove(cg);
    }
    Ok(ended.outcome)
}

/// `airlock start`: start the sandbox under a detached supervisor and return once it runs.
pub fn start_detached(store: &Store, spec: &SandboxSpec) -> Result<RuntimeState> {
    start_supervised(store, spec, None)
}

/// What a jail adds to an ordinary sandbox's filesystem.
#[derive(Debug, Clone, Default)]
pub struct JailMounts {
    pub binds: Vec<ExtraBind>,
    pub devices: Vec<String>,
    /// See [`MountPlan::share_tree`].
    pub share_tree: Option<PathBuf>,
}

/// Called in the detached supervisor once the jail and its network run, with the jail's init pid.
/// What it returns lives as long as the jail; an error stops the jail and is what `start` reports.
pub type JailReady = Box<dyn FnOnce(i32) -> std::result::Result<Box<dyn std::any::Any>, String>>;

/// A sandbox that hosts another tier's machinery: the microVM tier runs its VMM (QEMU) and file
/// server (virtiofsd) in one, so a VMM escape still lands in a namespace sandbox with no host
/// files, no capabilities outside it, seccomp, and only the policy gate for a network.
pub struct Jail {
    pub mounts: JailMounts,
    /// End the jail when the process that started it dies (a foreground `run`): the detached
    /// supervisor gets SIGTERM then, and stops the jail as `airlock stop` would.
    pub die_with_caller: bool,
    /// The jail's main command; the jail stops when it exits.
    pub main: ExecRequest,
    pub ready: JailReady,
}

/// Start a [`Jail`] under a detached supervisor; returns once `ready` succeeded.
pub fn start_jail(store: &Store, spec: &SandboxSpec, jail: Jail) -> Result<RuntimeState> {
    start_supervised(store, spec, Some(jail))
}

fn start_supervised(store: &Store, spec: &SandboxSpec, jail: Option<Jail>) -> Result<RuntimeState> {
    let seccomp = seccomp_program(store)?;
    let (report_r, report_w) = seqpacket_pair()?;
    let log = store.runtime_dir(&spec.name).join("supervisor.log");
    std::fs::create_dir_all(store.runtime_dir(&spec.name))
        .map_err(|e| NsError::path(store.runtime_dir(&spec.name), e))?;
    // SAFETY: getpid cannot fail.
    let caller = unsafe { libc::getpid() };
    match namespaces::clone_process(0)? {
        0 => {
            drop(report_r);
            if jail.as_ref().is_some_and(|j| j.die_with_caller) {
                // SAFETY: prctl with integer arguments; getppid cannot fail.
                unsafe {
                    libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGTERM as libc::c_ulong,
                        0,
                        0,
                        0,
                    );
                    if libc::getppid() != caller {
                        // The caller died before the death signal was armed.
                        libc::_exit(1);
                    }
                }
            }
            let code = supervisor_main(store, spec, &seccomp, report_w, &log, jail);
            // SAFETY: ending the forked supervisor.
            unsafe { libc::_exit(code) }
        }
        pid => {
            drop(report_w);
            let mut buf = vec![0u8; 16384];
            airlock_core::startup::trace("start: supervisor forked");
            let n = recv(report_r.as_raw_fd(), &mut buf);
            airlock_core::startup::trace("start: supervisor reported");
            // The supervisor stays alive (reparented once we exit); reap it only if it failed.
            if n >= 1 && buf[0] == MSG_READY {
                store.read_runtime(&spec.name)?.ok_or_else(|| {
                    NsError::Setup("the supervisor did not record the sandbox's state".into())
                })
            } else {
                // SAFETY: reaping the failed supervisor, our child.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                let msg = if n > 1 {
                    String::from_utf8_lossy(&buf[1..n]).into_owned()
                } else {
                    format!("the supervisor exited; see {}", log.display())
                };
                Err(NsError::Setup(msg))
            }
        }
    }
}

fn supervisor_main(
    store: &Store,
    spec: &SandboxSpec,
    seccomp: &SeccompProgram,
    report: OwnedFd,
    log: &PathBuf,
    jail: Option<Jail>,
) -> i32 {
    // SAFETY: detaching from the caller's session and stdio.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            libc::dup2(f.as_raw_fd(), 2);
        }
    }
    // The gate's sockets must never kill the supervisor, whatever the caller's SIGPIPE disposition.
    // SAFETY: setting one signal's disposition in the single-threaded daemon.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The caller's lifecycle lock and any other descriptor must not live on in the daemon.
    init::close_all_except(&[0, 1, 2, report.as_raw_fd()]);
    let send_report = |msg: &[u8]| {
        // SAFETY: a message on our end of the report channel.
        unsafe {
            libc::send(
                report.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        };
    };
    let mut sigfd = match signal_fd() {
        Ok(s) => s,
        Err(e) => {
            send_report(format!("E{}", e.message()).as_bytes());
            return 1;
        }
    };
    airlock_core::startup::trace("start: supervisor detached");
    let mut enforcement = enforcement(store, spec);
    if jail.is_some() && enforcement.cgroup.is_none() {
        // A VMM reserves far more address space than it uses (QEMU's TCG translation cache alone
        // reserves 1 GiB): an address-space rlimit standing in for a memory cgroup would stop it
        // from starting. The guest's RAM size still bounds the guest.
        enforcement.rlimits.address_space = None;
    }
    let (main, mounts, ready) = match jail {
        Some(j) => {
            let workdir = j
                .main
                .workdir
                .clone()
                .unwrap_or_else(|| spec.workspace.clone());
            match CommandSpec::new(
                spec,
                &j.main.argv,
                &j.main.env,
                &workdir,
                false,
                enforcement.rlimits,
                j.main.host_executable.as_deref(),
            ) {
                Ok(c) => {
                    // SAFETY: geteuid cannot fail.
                    let groups = if unsafe { libc::geteuid() } == 0 {
                        let n = namespaces::device_groups(&j.mounts.devices).len() as u32;
                        (0..n).map(|i| namespaces::SHIFTED_RANGE + i).collect()
                    } else {
                        Vec::new()
                    };
                    (Some(c.with_extra_groups(groups)), j.mounts, Some(j.ready))
                }
                Err(e) => {
                    if let Some(cg) = &enforcement.cgroup {
                        cgroups::remove(cg);
                    }
                    send_report(format!("E{}", e.message()).as_bytes());
                    return 1;
                }
            }
        }
        None => (None, JailMounts::default(), None),
    };
    let mut booted = match boot(store, spec, seccomp, enforcement, main.as_ref(), &mounts) {
        Ok(b) => b,
        Err(e) => {
            send_report(format!("E{}", e.message()).as_bytes());
            return 1;
        }
    };
    airlock_core::startup::trace("start: booted");
    let net = booted.net.take();
    if let Err(e) = store.write_runtime(&spec.name, &runtime_state(&booted, net.as_ref())) {
        // SAFETY: killing our own child, the init.
        unsafe { libc::kill(booted.init_pid, libc::SIGKILL) };
        send_report(format!("E{e}").as_bytes());
        return 1;
    }
    // A jail is ready when what it hosts is (a VM: its guest answered).
    let _hosted = match ready.map(|r| r(booted.init_pid)) {
        Some(Err(msg)) => {
            // SAFETY: killing and reaping our own child, the init.
            unsafe {
                libc::kill(booted.init_pid, libc::SIGKILL);
                libc::waitpid(booted.init_pid, std::ptr::null_mut(), 0);
            }
            drop(net);
            finish(store, spec, &booted);
            send_report(format!("E{msg}").as_bytes());
            return 1;
        }
        Some(Ok(h)) => Some(h),
        None => None,
    };
    airlock_core::startup::trace("start: state written, ready");
    send_report(&[MSG_READY]);
    drop(report);
    let deadline = spec
        .limits
        .timeout_secs
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    supervise(
        &mut sigfd,
        booted.init_pid,
        booted.init_pid,
        None,
        deadline,
        booted.init_pid,
        None,
    );
    finish(store, spec, &booted);
    0
}

/// `airlock exec`: run a command in a running sandbox with the caller's stdio or a PTY.
pub fn exec(
    store: &Store,
    spec: &SandboxSpec,
    state: &RuntimeState,
    req: &ExecRequest,
) -> Result<i32> {
    if !process_is(state.init_pid, state.init_start_ticks) {
        return Err(NsError::NotRunning(spec.name.clone()));
    }
    airlock_core::startup::trace("exec: start");
    let nsfds = NsFds::open(state.init_pid)?;
    // The fds pin the namespaces; make sure they belong to the process we meant (no pid reuse).
    if !process_is(state.init_pid, state.init_start_ticks) {
        return Err(NsError::NotRunning(spec.name.clone()));
    }
    let cgroup_procs = cgroups::open_procs(&state.cgroups)?;
    let seccomp = seccomp_program(store)?;
    airlock_core::startup::trace("exec: seccomp compiled");
    let workdir = req
        .workdir
        .clone()
        .unwrap_or_else(|| spec.workspace.clone());
    let cmd = CommandSpec::new(
        spec,
        &req.argv,
        &req.env,
        &workdir,
        req.tty,
        rlimits_of(spec, state),
        req.host_executable.as_deref(),
    )?;
    let (parent_sock, child_sock) = seqpacket_pair()?;
    let mut sigfd = signal_fd()?;

    // The intermediate joins the sandbox's cgroup and namespaces and starts the command there as
    // our child (CLONE_PARENT), then exits. It shares our memory until it exits (`spawn_vfork`:
    // no copy of this large process's page tables), so it drops nothing of ours and ends with
    // `_exit`; it is never visible inside the sandbox (it stays in the host's pid namespace).
    let intermediate = namespaces::spawn_vfork(&mut || {
        // Not dumpable until the command's execve: processes already in the sandbox cannot
        // ptrace this child (nor, through the memory it shares, us) while it still holds host
        // descriptors. Dumpability belongs to the memory: it is ours too from here on.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        let report_and_exit = |msg: String, code: i32| -> ! {
            init::send(child_sock.as_raw_fd(), msg.as_bytes());
            // SAFETY: ending the forked intermediate without running destructors.
            unsafe { libc::_exit(code) }
        };
        let fail = |msg: String| -> ! { report_and_exit(format!("E{msg}"), 1) };
        let procs: Vec<RawFd> = cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = cgroups::join_self(&procs) {
            fail(e);
        }
        if let Err(e) = nsfds.join() {
            fail(e.to_string());
        }
        // The command is a fork, not another vfork: before its execve it is visible inside the
        // sandbox (it could be stopped there, which would hold us in a vfork wait), and with a
        // terminal it waits for our "accept" of its PTY, which we could not send from one.
        match namespaces::clone_process(libc::CLONE_PARENT) {
            Ok(0) => cmd.exec(Confinement::Install(&seccomp), Some(child_sock.as_raw_fd())),
            Ok(pid) => report_and_exit(format!("p{pid}"), 0),
            Err(e) => fail(format!("starting the command: {e}")),
        }
    })?;
    drop(child_sock);
    drop(nsfds);
    drop(cgroup_procs);
    // The intermediate reports the command's pid (or an error) and exits.
    let mut buf = vec![0u8; 4096];
    let n = recv(parent_sock.as_raw_fd(), &mut buf);
    // SAFETY: reaping the intermediate, our child.
    unsafe { libc::waitpid(intermediate, std::ptr::null_mut(), 0) };
    // The intermediate made our shared memory non-dumpable; we are back in the host's
    // namespaces alone with it, as dumpable as before.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let pid: i32 = match buf.first() {
        Some(b'p') => std::str::from_utf8(&buf[1..n])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Some(b'E') => {
            return Err(NsError::Setup(
                String::from_utf8_lossy(&buf[1..n]).into_owned(),
            ));
        }
        _ => 0,
    };
    if pid <= 0 {
        return Err(NsError::Setup(
            "could not start the command in the sandbox".into(),
        ));
    }
    airlock_core::startup::trace("exec: command started");
    let master = if req.tty {
        Some(accept_pty(parent_sock.as_raw_fd())?)
    } else {
        None
    };
    match supervise(&mut sigfd, pid, pid, master, None, pid, None).outcome {
        Outcome::Exited(c) => Ok(c),
        Outcome::TimedOut => Ok(124),
    }
}

/// `airlock stop`: TERM the sandbox's init (which TERMs everything inside), KILL after `grace`.
pub fn stop(state: &RuntimeState, grace: Duration) -> Result<()> {
    if !process_is(state.init_pid, state.init_start_ticks) {
        return Ok(());
    }
    // SAFETY: signalling the init we recorded, checked against its start time just above.
    unsafe { libc::kill(state.init_pid, libc::SIGTERM) };
    if !wait_gone(state.init_pid, state.init_start_ticks, grace) {
        if process_is(state.init_pid, state.init_start_ticks) {
            // SAFETY: as above.
            unsafe { libc::kill(state.init_pid, libc::SIGKILL) };
        }
        wait_gone(
            state.init_pid,
            state.init_start_ticks,
            Duration::from_secs(5),
        );
    }
    // The supervisor cleans up (cgroups, runtime state) once its init is gone.
    wait_gone(
        state.supervisor_pid,
        state.supervisor_start_ticks,
        Duration::from_secs(5),
    );
    Ok(())
}

/// Wait until process `pid` (started at `ticks`) is gone, up to `limit`.
pub fn wait_gone(pid: i32, ticks: u64, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    // SAFETY: pidfd_open on a pid; the fd (if any) is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    let pidfd = (fd >= 0).then(|| {
        // SAFETY: fresh fd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    while process_is(pid, ticks) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match &pidfd {
            Some(p) => {
                let mut pfd = libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: polling one pollfd on the stack.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as i32) };
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Our end of the setup channel of an init that failed: it sent `error` and closed its end
    /// with our "in cgroup" unread (it reads that only once the filesystem is built).
    fn channel_of_a_failed_init(error: &[u8]) -> OwnedFd {
        let (ours, theirs) = seqpacket_pair().unwrap();
        init::send(ours.as_raw_fd(), &[MSG_IN_CGROUP]);
        init::send(theirs.as_raw_fd(), error);
        ours
    }

    /// The kernel fails the next receive on [`channel_of_a_failed_init`] with ECONNRESET before
    /// the queued error: the error must still be read, or the user sees "the init exited during
    /// setup" instead of what went wrong (seen under load).
    #[test]
    fn a_message_sent_before_the_peer_closed_with_ours_unread_is_still_received() {
        let ours = channel_of_a_failed_init(b"Esetup failed");
        let mut buf = [0u8; 64];
        let n = recv(ours.as_raw_fd(), &mut buf);
        assert_eq!(&buf[..n], b"Esetup failed");
        assert_eq!(recv(ours.as_raw_fd(), &mut buf), 0, "then the end");
    }

    /// What the init's network thread says about the paths it could not set up reaches the
    /// supervisor intact, each in its place (the sandbox's network description quotes them).
    #[test]
    fn the_network_setup_errors_arrive_each_in_its_place() {
        let (ours, theirs) = seqpacket_pair().unwrap();
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let sent = crate::net::InsideSockets {
            proxy: null(),
            dns_udp: null(),
            dns_tcp: null(),
            tun: None,
            tun_error: Some("no /dev/net/tun".into()),
            capture: Vec::new(),
            capture_error: None,
            pacing_error: Some("read-only file system".into()),
        };
        sent.send(theirs.as_raw_fd()).unwrap();
        let got = match crate::net::InsideSockets::recv(ours.as_raw_fd()) {
            Ok(Ok(s)) => s,
            Ok(Err(bytes)) => panic!("not the sockets: {bytes:?}"),
            Err(e) => panic!("{e}"),
        };
        assert!(got.tun.is_none() && got.capture.is_empty());
        assert_eq!(got.tun_error.as_deref(), Some("no /dev/net/tun"));
        assert_eq!(got.capture_error, None);
        assert_eq!(got.pacing_error.as_deref(), Some("read-only file system"));
    }

    /// The same for the first message, which [`crate::net::InsideSockets::recv`] reads.
    #[test]
    fn an_early_error_is_received_when_the_init_closed_with_ours_unread() {
        let ours = channel_of_a_failed_init(b"Eno network");
        match crate::net::InsideSockets::recv(ours.as_raw_fd()) {
            Ok(Err(bytes)) => assert_eq!(bytes, b"Eno network"),
            Ok(Ok(_)) => panic!("sockets from nowhere"),
            Err(e) => panic!("{e}"),
        }
    }

    /// A cached filter is only read from a directory and a file of the user's that nobody else
    /// can write, and never through a symlink.
    #[test]
    fn cached_filters_are_read_only_from_private_files() {
        let base = std::env::temp_dir().join(format!("airlock-cache-test-{}", std::process::id()));
        let dir = base.join("cache");
        airlock_core::store::mkdir_private(&dir).unwrap();
        let file = dir.join("seccomp-x.bpf");
        std::fs::write(&file, b"filter").unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&file, 0o600);
        assert_eq!(read_private(&dir, &file).as_deref(), Some(&b"filter"[..]));
        mode(&file, 0o666);
        assert_eq!(read_private(&dir, &file), None, "a file others can write");
        mode(&file, 0o644);
        mode(&dir, 0o777);
        assert_eq!(
            read_private(&dir, &file),
            None,
            "a directory others can write"
        );
        mode(&dir, 0o700);
        let link = dir.join("seccomp-link.bpf");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_private(&dir, &link), None, "a symlink");
        let linked_dir = base.join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        assert!(!private_dir(&linked_dir), "a symlinked directory");
        assert_eq!(read_private(&dir, &file).as_deref(), Some(&b"filter"[..]));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
