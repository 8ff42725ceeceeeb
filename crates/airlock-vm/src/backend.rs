//! The microVM tier behind the CLI's `Backend` seam.
//!
//! ```text
//! airlock start ─ supervisor (host) ── policy gate, broker ── control.sock ◄── airlock exec/stop
//!                  └─ jail: a namespace-tier sandbox (same mounts, seccomp, network as ever)
//!                      ├─ virtiofsd  shares the jail's view of the host (system dirs, workspace)
//!                      └─ qemu       guest kernel + Airlock's initramfs; user-mode network
//!                          └─ guest: airlock-guest (PID 1) → overlay root on the sandbox disk
//! ```
//!
//! The VMM runs inside the namespace tier, so both layers must fall before the host is reached:
//! a guest that breaks out of QEMU lands in a sandbox with no host files, no capabilities
//! outside it, seccomp and a network that only leads to the gate. The guest's network is QEMU's
//! user-mode stack, whose sockets live in the jail's network namespace: every connection the
//! guest makes goes through the same policy gate, DNS and logs as a namespace sandbox's.

use std::io::IsTerminal;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_core::backend::{Backend, BackendError, ExecRequest, Outcome};
use airlock_core::spec::{Isolation, RuntimeState, SandboxSpec, WorkspaceMode};
use airlock_core::store::{Store, process_is};
use airlock_ns::NamespaceBackend;
use airlock_ns::mounts::ExtraBind;
use airlock_ns::supervisor::{Jail, JailMounts};
use airlock_vm_proto::{Exec, Message, Setup, WinSize};

use crate::broker::{Broker, Client, Publisher, boot_failure, read_fd, write_fd};
use crate::error::{Result, VmError};
use crate::kernel::GuestKernel;
use crate::kvm::Accel;
use crate::qemu::VmConfig;

/// Where the jail shows the VM's files (inside the jail only).
const JAIL_VM_DIR: &str = "/run/airlock/vm";
const JAIL_BOOT: &str = "/run/airlock/boot";
const JAIL_BIN: &str = "/run/airlock/bin";
const JAIL_DISK: &str = "/run/airlock/disk.img";
/// What virtiofsd serves: the sandbox's view of the host, without the jail's own /proc, /sys,
/// /dev, /run or /tmp (see `MountPlan::share_tree`).
const JAIL_SHARE: &str = "/run/airlock/share";

/// The guest's side of QEMU's user-mode network.
const GUEST_ADDRESS: &str = "10.0.2.15/24";
const GUEST_GATEWAY: &str = "10.0.2.2";
const GUEST_RESOLVER: &str = "10.0.2.3";

/// What QEMU itself may use on top of the guest's RAM (device state, TCG's translated code),
/// plus what the guest may write into the jail's in-memory layers.
const VMM_OVERHEAD_BYTES: u64 = 1 << 30;
/// How long after `--timeout` the jail itself is killed, if the client did not end it first.
const TIMEOUT_BACKSTOP_SECS: f64 = 10.0;

/// How much of the guest's console Airlock keeps (the rest is read and dropped).
const CONSOLE_LOG_BYTES: u64 = 1 << 20;

/// Default guest memory and disk size when the sandbox sets none.
const DEFAULT_MEMORY_MIB: u64 = 2048;
const DEFAULT_DISK_BYTES: u64 = 16 << 30;

/// How long a guest may take to boot: TCG is slow (seconds), KVM fast (sub-second).
fn boot_timeout(accel: &Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(30),
        Accel::Tcg { .. } => Duration::from_secs(180),
    }
}

#[derive(Debug, Default)]
pub struct VmBackend;

fn tier(e: VmError) -> BackendError {
    BackendError::Tier(Box::new(e))
}

/// The user's `[vm]` settings in config.toml (kernel, memory, disk).
#[derive(Debug, Default)]
struct VmSettings {
    kernel: Option<PathBuf>,
    memory_mib: Option<u64>,
    disk_bytes: Option<u64>,
}

fn settings() -> VmSettings {
    let mut s = VmSettings::default();
    let table = airlock_ns::net::user_config_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.parse::<toml::Table>().ok());
    if let Some(vm) = table
        .as_ref()
        .and_then(|t| t.get("vm"))
        .and_then(|v| v.as_table())
    {
        s.kernel = vm.get("kernel").and_then(|v| v.as_str()).map(PathBuf::from);
        s.memory_mib = vm
            .get("memory")
            .and_then(|v| v.as_str())
            .and_then(|m| airlock_core::units::parse_size(m).ok())
            .map(|b| b >> 20);
        s.disk_bytes = vm
            .get("disk")
            .and_then(|v| v.as_str())
            .and_then(|m| airlock_core::units::parse_size(m).ok());
    }
    if let Some(k) = std::env::var_os("AIRLOCK_VM_KERNEL").filter(|v| !v.is_empty()) {
        s.kernel = Some(PathBuf::from(k));
    }
    s
}

/// The guest agent binary Airlock ships: `AIRLOCK_GUEST_AGENT`, next to this executable, or in
/// the build tree (`cargo build-guest`).
pub fn guest_agent() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_GUEST_AGENT").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return check_static(&p).map(|_| p);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("airlock-guest"));
        // target/{debug,release}/airlock → target/x86_64-unknown-linux-gnu/release/airlock-guest
        if let Some(target) = dir.parent() {
            candidates.push(target.join(format!(
                "{}-unknown-linux-gnu/release/airlock-guest",
                std::env::consts::ARCH
            )));
        }
    }
    candidates.push("/usr/local/lib/airlock/airlock-guest".into());
    candidates.push("/usr/lib/airlock/airlock-guest".into());
    // A plain `cargo build` leaves a dynamic airlock-guest next to `airlock`: skip it.
    let mut skipped = Vec::new();
    for c in &candidates {
        if c.is_file() {
            match check_static(c) {
                Ok(()) => return Ok(c.clone()),
                Err(e) => skipped.push(e.to_string()),
            }
        }
    }
    if let Some(why) = skipped.first() {
        return Err(VmError::Setup(why.clone()));
    }
    Err(VmError::Setup(format!(
        "the guest agent (airlock-guest) is not installed; build it with `cargo build-guest` in Airlock's source tree (a static binary) and put it next to `airlock`, or set AIRLOCK_GUEST_AGENT (looked in: {})",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The agent is the guest's PID 1 in an initramfs without a dynamic loader: it must be static.
/// (A dynamic ELF names its loader in a PT_INTERP segment, whose path sits near the start.)
fn check_static(p: &Path) -> Result<()> {
    let mut head = vec![0u8; 4096];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(p).map_err(VmError::io_path(p))?;
        f.read(&mut head).map_err(VmError::io_path(p))?
    };
    head.truncate(n);
    if !head.starts_with(b"\x7fELF") {
        return Err(VmError::Setup(format!(
            "{} is not an executable (ELF) file",
            p.display()
        )));
    }
    if head.windows(14).any(|w| w == b"/lib64/ld-linu") {
        return Err(VmError::Setup(format!(
            "{} is dynamically linked; the guest agent must be static: rebuild it with `cargo build-guest`",
            p.display()
        )));
    }
    Ok(())
}

/// What a VM boots from.
struct Assets {
    kernel: GuestKernel,
    initramfs: PathBuf,
    qemu: PathBuf,
    virtiofsd: PathBuf,
}

/// The guest kernel this user's settings choose (`AIRLOCK_VM_KERNEL`, `[vm] kernel`, else the
/// newest host kernel with its modules).
pub fn guest_kernel() -> Result<GuestKernel> {
    GuestKernel::find(settings().kernel.as_deref())
}

fn assets(store: &Store, docker: bool, s: &VmSettings) -> Result<Assets> {
    let kernel = GuestKernel::find(s.kernel.as_deref())?;
    let qemu = crate::qemu::find_qemu()?;
    let virtiofsd = crate::qemu::find_virtiofsd()?;
    let agent = guest_agent()?;
    let cache = store.paths.data.join("cache").join("vm");
    airlock_core::store::mkdir_private(&store.paths.data.join("cache"))
        .and_then(|_| airlock_core::store::mkdir_private(&cache))
        .map_err(|e| VmError::Setup(format!("creating {}: {e}", cache.display())))?;
    let initramfs = crate::initramfs::cached(&cache, &agent, &kernel, docker)?;
    Ok(Assets {
        kernel,
        initramfs,
        qemu,
        virtiofsd,
    })
}

fn disk_path(store: &Store, name: &str) -> PathBuf {
    store.paths.sandbox_dir(name).join("vm").join("disk.img")
}

fn control_socket(store: &Store, name: &str) -> PathBuf {
    store.runtime_dir(name).join("control.sock")
}

fn vm_dir(store: &Store, name: &str) -> PathBuf {
    store.runtime_dir(name).join("vm")
}

/// Quote one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// vCPUs: `--cpus` (rounded up, at most the host's), else up to 2. Under TCG one: emulating
/// several vCPUs on a small host gains little, and a guest kernel under multi-threaded TCG was
/// seen here stuck in soft lockups with both vCPUs spinning (runc starting a container).
fn cpus_of(spec: &SandboxSpec, accel: &Accel) -> u32 {
    if matches!(accel, Accel::Tcg { .. }) {
        return 1;
    }
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    match spec.limits.cpus {
        Some(c) => (c.ceil() as u32).clamp(1, host),
        None => host.min(2),
    }
}

fn memory_mib_of(spec: &SandboxSpec, s: &VmSettings) -> u64 {
    spec.limits
        .memory_bytes
        .map(|b| (b >> 20).max(256))
        .or(s.memory_mib)
        .unwrap_or(DEFAULT_MEMORY_MIB)
}

/// The jail that runs the VMM: the sandbox's own spec (network, workspace, user), with limits
/// meant for the guest turned into limits for the VMM. `--memory` is the guest's RAM; the jail's
/// memory cgroup gets that plus QEMU's own overhead, and also bounds what the guest writes into
/// the jail's in-memory layers through the file server. Where no cgroup can be had (rootless on
/// cgroup v1) the jail gets no address-space rlimit instead (see `supervisor::start_jail`).
fn jail_spec(spec: &SandboxSpec, memory_mib: u64) -> SandboxSpec {
    let mut j = spec.clone();
    // The VM's published ports are served by its broker, not by the jail's publisher.
    j.network.publish.clear();
    // A socket cannot cross into the guest (`--ssh-agent` is refused for VMs; never give it to
    // the VMM).
    j.ssh_agent = false;
    // The guest mounts the cache directories from its own disk (`Setup::cache_dirs`); the jail
    // serves the workspace without them.
    j.cache_dirs.clear();
    j.limits.memory_bytes = Some((memory_mib << 20) + VMM_OVERHEAD_BYTES);
    // QEMU's and virtiofsd's threads count as tasks; the guest's processes do not.
    j.limits.pids = Some(1024);
    // The timeout is the client's to enforce (exit code 124); the jail's is a backstop, and the
    // only one for a detached `start --timeout`.
    j.limits.timeout_secs = spec.limits.timeout_secs.map(|t| t + TIMEOUT_BACKSTOP_SECS);
    j
}

fn start_vm(store: &Store, spec: &SandboxSpec, foreground: bool) -> Result<RuntimeState> {
    let settings = settings();
    let assets = assets(store, spec.docker, &settings)?;
    let accel = crate::kvm::probe(&store.paths.runtime);
    if let Accel::Tcg { why } = &accel {
        eprintln!(
            "airlock: note: the VM runs without hardware acceleration (QEMU TCG, slow): {why}"
        );
    }
    let disk = disk_path(store, &spec.name);
    if !disk.exists() {
        return Err(VmError::Setup(format!(
            "sandbox {} has no VM disk ({}); it was not created for --isolation vm — recreate it",
            spec.name,
            disk.display()
        )));
    }
    let vmdir = vm_dir(store, &spec.name);
    let _ = std::fs::remove_dir_all(&vmdir);
    airlock_core::store::mkdir_private(&store.runtime_dir(&spec.name))
        .and_then(|_| airlock_core::store::mkdir_private(&vmdir))
        .map_err(|e| VmError::Setup(format!("creating {}: {e}", vmdir.display())))?;
    let inside = |f: &str| PathBuf::from(JAIL_VM_DIR).join(f);
    let memory_mib = memory_mib_of(spec, &settings);
    let cpus = cpus_of(spec, &accel);
    // Published ports are served by the supervisor through the guest agent (see
    // `broker::Publisher`), not by QEMU's forwarding, which only reaches the guest's eth0.
    let forwards = Vec::new();
    let publish = spec.network.publish.clone();
    let machine = crate::qemu::machine(&assets.qemu, &accel, &store.paths.runtime);
    let config = VmConfig {
        machine,
        accel: accel.clone(),
        cpus,
        memory_mib,
        kernel: PathBuf::from(JAIL_BOOT).join("vmlinuz"),
        initramfs: PathBuf::from(JAIL_BOOT).join("initramfs"),
        disk: PathBuf::from(JAIL_DISK),
        fs_socket: inside("fs.sock"),
        agent_socket: inside("agent.sock"),
        console_pipe: inside("console"),
        forwards,
        cmdline_extra: String::new(),
    };
    // QEMU finds its accelerator and device modules next to its own path: run it where it is
    // when the jail shows that path (the system directories), else from a bind.
    let qemu_visible = ["/usr/", "/opt/"]
        .iter()
        .any(|d| assets.qemu.starts_with(d));
    let qemu_bin = if qemu_visible {
        assets.qemu.display().to_string()
    } else {
        format!("{JAIL_BIN}/qemu-system-x86_64")
    };
    let virtiofsd_bin = format!("{JAIL_BIN}/virtiofsd");
    // The guest's console goes through a FIFO: the first MiB is kept in console.log (enough for
    // any boot; unbuffered, so it is there while the guest runs), the rest is drained away, so a guest writing to its console without end cannot
    // fill the host's runtime directory.
    let script = format!(
        "exec >>{log} 2>&1\n\
         mkfifo {con_in} {con_out} || exit 125\n\
         {{ stdbuf -o0 head -c {CONSOLE_LOG_BYTES} >{con_log}; exec cat >/dev/null; }} <>{con_out} &\n\
         {virtiofsd} \"$@\" &\n\
         i=0\n\
         while [ ! -S {fs} ]; do\n\
         i=$((i+1)); if [ $i -gt 1000 ]; then echo 'airlock: virtiofsd did not create its socket'; exit 125; fi\n\
         sleep 0.01\n\
         done\n\
         exec {qemu} {qargs}\n",
        log = sh_quote(&inside("vmm.log").display().to_string()),
        con_in = sh_quote(&inside("console.in").display().to_string()),
        con_out = sh_quote(&inside("console.out").display().to_string()),
        con_log = sh_quote(&inside("console.log").display().to_string()),
        virtiofsd = sh_quote(&virtiofsd_bin),
        fs = sh_quote(&inside("fs.sock").display().to_string()),
        qemu = sh_quote(&qemu_bin),
        qargs = crate::qemu::qemu_args(&config)
            .iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        script,
        "airlock-vmm".into(),
    ];
    argv.extend(crate::qemu::virtiofsd_args(
        &inside("fs.sock"),
        Path::new(JAIL_SHARE),
    ));
    let ro = |host: &Path, inside: &str| ExtraBind {
        host: host.to_path_buf(),
        inside: PathBuf::from(inside),
        readonly: true,
    };
    let mounts = JailMounts {
        binds: vec![
            ExtraBind {
                host: vmdir.clone(),
                inside: PathBuf::from(JAIL_VM_DIR),
                readonly: false,
            },
            ro(&assets.kernel.image, &format!("{JAIL_BOOT}/vmlinuz")),
            ro(&assets.initramfs, &format!("{JAIL_BOOT}/initramfs")),
            ro(&assets.virtiofsd, &virtiofsd_bin),
            ExtraBind {
                host: disk.clone(),
                inside: PathBuf::from(JAIL_DISK),
                readonly: false,
            },
        ]
        .into_iter()
        .chain((!qemu_visible).then(|| ro(&assets.qemu, &qemu_bin)))
        .collect(),
        share_tree: Some(PathBuf::from(JAIL_SHARE)),
        devices: match accel {
            Accel::Kvm => vec!["kvm".into()],
            Accel::Tcg { .. } => vec![],
        },
    };
    let setup = Setup {
        hostname: spec.name.clone(),
        workspace: spec.workspace.display().to_string(),
        workspace_readonly: spec.mode == WorkspaceMode::Ro,
        home: spec.user.home.display().to_string(),
        disk: "/dev/vda".into(),
        docker: spec.docker,
        net_address: GUEST_ADDRESS.into(),
        net_gateway: GUEST_GATEWAY.into(),
        net_resolver: GUEST_RESOLVER.into(),
        time_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        cache_dirs: spec
            .cache_dirs
            .iter()
            .map(|d| spec.workspace.join(d).display().to_string())
            .collect(),
        user_ids: (spec.user.uid, spec.user.gid),
        cache_create: match spec.mode {
            WorkspaceMode::Cow => airlock_vm_proto::CacheCreate::Last,
            WorkspaceMode::Clone => airlock_vm_proto::CacheCreate::All,
            WorkspaceMode::Rw | WorkspaceMode::Ro => airlock_vm_proto::CacheCreate::None,
        },
    };
    let agent_sock = vmdir.join("agent.sock");
    let control = control_socket(store, &spec.name);
    let logs = [vmdir.join("vmm.log"), vmdir.join("console.log")];
    let timeout = boot_timeout(&accel);
    let ready: airlock_ns::supervisor::JailReady = Box::new(move |init_pid| {
        let ticks = airlock_core::store::process_start_ticks(init_pid).unwrap_or(0);
        let alive = move || process_is(init_pid, ticks);
        let started = Broker::start(&agent_sock, &control, setup, timeout, &alive)
            .and_then(|b| Ok((b, Publisher::start(&control, &publish)?)));
        match started {
            Ok(b) => Ok(Box::new(b) as Box<dyn std::any::Any>),
            Err(e) => {
                let paths: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
                Err(boot_failure(&e, &paths))
            }
        }
    });
    let jail = Jail {
        mounts,
        die_with_caller: foreground,
        main: ExecRequest {
            argv,
            ..Default::default()
        },
        ready,
    };
    let mut state = airlock_ns::supervisor::start_jail(store, &jail_spec(spec, memory_mib), jail)
        .map_err(|e| VmError::Setup(e.to_string()))?;
    // The jail's own system mode describes QEMU's view, not the guest's.
    state.system_mode =
        "cow: the guest's root is an overlay on the sandbox's disk (install with `airlock exec --root`)"
            .into();
    state.vm = Some(format!(
        "QEMU {} ({}), {cpus} vCPU, {memory_mib} MiB, guest kernel {}",
        machine.as_str(),
        crate::kvm::describe(&accel),
        assets.kernel.version
    ));
    let _ = store.write_runtime(&spec.name, &state);
    Ok(state)
}

/// Signals forwarded to the command in the guest.
const FORWARDED: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGWINCH,
];

fn winsize(fd: i32) -> Option<WinSize> {
    // SAFETY: winsize is plain old data; all-zero is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize we pass.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
        Some(WinSize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    } else {
        None
    }
}

/// Run `req` in the guest with our stdio; returns its exit code (124 on `deadline`). A host
/// executable copied in for the occasion is deleted afterwards.
fn exec_vm(
    store: &Store,
    spec: &SandboxSpec,
    req: &ExecRequest,
    deadline: Option<Instant>,
) -> Result<i32> {
    let copied = req
        .host_executable
        .as_ref()
        .map(|_| format!("/run/airlock-exe-{}", std::process::id()));
    let result = exec_vm_inner(store, spec, req, deadline, copied.as_deref());
    if let Some(path) = copied
        && let Ok(mut c) = Client::connect(&control_socket(store, &spec.name))
    {
        let _ = c.send(Message::Exec(Exec {
            argv: vec!["rm".into(), "-f".into(), path],
            env: vec![("PATH".into(), airlock_ns::process::DEFAULT_PATH.into())],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            tty: None,
        }));
        let _ = c.set_timeout(Some(Duration::from_secs(10)));
        while let Ok(Some(m)) = c.recv() {
            if matches!(m, Message::Exited { .. } | Message::Error(_)) {
                break;
            }
        }
    }
    result
}

fn exec_vm_inner(
    store: &Store,
    spec: &SandboxSpec,
    req: &ExecRequest,
    deadline: Option<Instant>,
    copied: Option<&str>,
) -> Result<i32> {
    let mut client = Client::connect(&control_socket(store, &spec.name))?;
    let mut argv: Vec<String> = if req.argv.is_empty() {
        vec![spec.user.shell.display().to_string(), "-l".into()]
    } else {
        req.argv.clone()
    };
    if let (Some(exe), Some(path)) = (&req.host_executable, copied) {
        let data = std::fs::read(exe).map_err(VmError::io_path(exe))?;
        client.write_file(path, 0o755, &data)?;
        argv[0] = path.to_string();
    }
    // A terminal that reports no size (0 rows) still gets one: the classic 24x80.
    let tty = req
        .tty
        .then(|| winsize(0).unwrap_or(WinSize { rows: 24, cols: 80 }));
    let env = airlock_ns::process::sandbox_env(spec, &req.env, tty.is_some())
        .into_iter()
        .map(|(k, v)| {
            // The gate's proxy is the user-mode network's gateway, seen from the guest.
            let v = v.replace(
                &airlock_ns::net::PROXY_ADDR.to_string(),
                &format!("{GUEST_GATEWAY}:3128"),
            );
            (k, v)
        })
        .collect();
    let cwd = req
        .workdir
        .clone()
        .unwrap_or_else(|| spec.workspace.clone());
    client.send(Message::Exec(Exec {
        argv,
        env,
        cwd: String::from_utf8_lossy(cwd.as_os_str().as_bytes()).into_owned(),
        uid: if req.as_root { 0 } else { spec.user.uid },
        gid: if req.as_root { 0 } else { spec.user.gid },
        tty,
    }))?;
    match client.recv()? {
        Some(Message::Started { .. }) => {}
        Some(Message::Error(e)) => return Err(VmError::Guest(e)),
        other => {
            return Err(VmError::Guest(format!(
                "unexpected answer to exec: {other:?}"
            )));
        }
    }
    let _raw = tty.and_then(|_| airlock_ns::pty::RawMode::enter(0));
    // Signals: blocked here, taken by a thread that forwards them.
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: initialising and filling a local sigset, then blocking it in this thread (threads
    // spawned below inherit the mask).
    unsafe {
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    {
        let mut w = client.writer()?;
        let is_tty = tty.is_some();
        std::thread::spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: waiting for one of the blocked signals.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                let m = if sig == libc::SIGWINCH {
                    match (is_tty, winsize(0)) {
                        (true, Some(ws)) => Message::Resize(ws),
                        _ => continue,
                    }
                } else {
                    Message::Signal(sig)
                };
                if airlock_vm_proto::Frame::new(0, m).write_to(&mut w).is_err() {
                    return;
                }
            }
        });
    }
    // Stdin keeps to the guest's window: at most STDIN_WINDOW pieces unacknowledged.
    let credit = std::sync::Arc::new((
        std::sync::Mutex::new(airlock_vm_proto::STDIN_WINDOW),
        std::sync::Condvar::new(),
    ));
    {
        let mut w = client.writer()?;
        let credit = credit.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; airlock_vm_proto::CHUNK];
            loop {
                match read_fd(0, &mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = airlock_vm_proto::Frame::new(0, Message::StdinEof).write_to(&mut w);
                        return;
                    }
                    Ok(n) => {
                        {
                            let (left, more) = &*credit;
                            let mut left = left.lock().unwrap_or_else(|e| e.into_inner());
                            while *left == 0 {
                                left = more.wait(left).unwrap_or_else(|e| e.into_inner());
                            }
                            *left -= 1;
                        }
                        if airlock_vm_proto::Frame::new(0, Message::Stdin(buf[..n].to_vec()))
                            .write_to(&mut w)
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut timed_out = false;
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() && !timed_out {
                timed_out = true;
                client.send(Message::Signal(libc::SIGKILL))?;
                client.set_timeout(Some(Duration::from_secs(10)))?;
            } else if !timed_out {
                client.set_timeout(Some(left))?;
            }
        }
        match client.recv() {
            Ok(Some(Message::Stdout(d))) => write_fd(1, &d),
            Ok(Some(Message::StdinCredit(n))) => {
                let (left, more) = &*credit;
                *left.lock().unwrap_or_else(|e| e.into_inner()) += n;
                more.notify_one();
            }
            Ok(Some(Message::Stderr(d))) => write_fd(2, &d),
            Ok(Some(Message::Exited { code })) => return Ok(if timed_out { 124 } else { code }),
            Ok(Some(Message::Error(e))) => return Err(VmError::Guest(e)),
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(VmError::Guest(
                    "the VM stopped while the command ran".into(),
                ));
            }
            Err(VmError::Proto(airlock_vm_proto::ProtoError::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if timed_out {
                    return Ok(124);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Ask the guest to power off (it syncs its disk first), then make sure the jail is gone.
fn stop_vm(store: &Store, spec: &SandboxSpec, state: &RuntimeState, grace: Duration) -> Result<()> {
    if !process_is(state.init_pid, state.init_start_ticks) {
        return Ok(());
    }
    if let Ok(mut c) = Client::connect(&control_socket(store, &spec.name)) {
        let _ = c.send(Message::Shutdown);
    }
    // A guest that ignores the request (or hangs) is stopped with its VMM.
    let clean = airlock_ns::supervisor::wait_gone(
        state.init_pid,
        state.init_start_ticks,
        grace.max(Duration::from_secs(10)),
    );
    if !clean {
        airlock_ns::supervisor::stop(state, grace).map_err(|e| VmError::Setup(e.to_string()))?;
    } else {
        airlock_ns::supervisor::wait_gone(
            state.supervisor_pid,
            state.supervisor_start_ticks,
            Duration::from_secs(5),
        );
    }
    Ok(())
}

impl Backend for VmBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Vm
    }

    fn preflight(&self) -> std::result::Result<(), BackendError> {
        NamespaceBackend.preflight()?;
        crate::qemu::find_qemu().map_err(tier)?;
        crate::qemu::find_virtiofsd().map_err(tier)?;
        guest_kernel().map_err(tier)?;
        guest_agent().map_err(tier)?;
        Ok(())
    }

    fn prepare(&self, spec: &SandboxSpec, dir: &Path) -> std::result::Result<(), BackendError> {
        NamespaceBackend.prepare(spec, dir)?;
        let vm = dir.join("vm");
        std::fs::create_dir_all(&vm).map_err(|e| tier(VmError::io_path(&vm)(e)))?;
        crate::disk::create_disk(
            &vm.join("disk.img"),
            settings().disk_bytes.unwrap_or(DEFAULT_DISK_BYTES),
        )
        .map_err(tier)
    }

    fn start(
        &self,
        store: &Store,
        spec: &SandboxSpec,
    ) -> std::result::Result<RuntimeState, BackendError> {
        start_vm(store, spec, false).map_err(tier)
    }

    fn run(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        req: &ExecRequest,
        on_ready: &mut dyn FnMut(),
        _on_ended: &mut dyn FnMut(),
    ) -> std::result::Result<Outcome, BackendError> {
        // `on_ended` is not called: the sandbox's files go after `run` returns, once the VM's
        // detached supervisor has ended (see `stop_vm`).
        let deadline = spec
            .limits
            .timeout_secs
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        let state = start_vm(store, spec, true).map_err(tier)?;
        on_ready();
        let result = exec_vm(store, spec, req, deadline);
        let stopped = stop_vm(store, spec, &state, Duration::from_secs(10));
        let code = result.map_err(tier)?;
        stopped.map_err(tier)?;
        Ok(
            if deadline.is_some_and(|d| Instant::now() >= d) && code == 124 {
                Outcome::TimedOut
            } else {
                Outcome::Exited(code)
            },
        )
    }

    fn exec(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        state: &RuntimeState,
        req: &ExecRequest,
    ) -> std::result::Result<i32, BackendError> {
        if !process_is(state.init_pid, state.init_start_ticks) {
            return Err(tier(VmError::NotRunning(format!(
                "sandbox {} is not running",
                spec.name
            ))));
        }
        let mut req = req.clone();
        req.tty = req.tty && std::io::stdin().is_terminal();
        exec_vm(store, spec, &req, None).map_err(tier)
    }

    fn stop(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        state: &RuntimeState,
        grace: Duration,
    ) -> std::result::Result<(), BackendError> {
        stop_vm(store, spec, state, grace).map_err(tier)
    }

    fn reap(
        &self,
        store: &Store,
        name: &str,
        state: Option<&RuntimeState>,
    ) -> std::result::Result<Vec<String>, BackendError> {
        // The VMM lives in the jail's pid namespace: reaping the jail ends it too.
        NamespaceBackend.reap(store, name, state)
    }
}
