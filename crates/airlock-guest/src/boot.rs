//! PID 1's own work: bring the initramfs up (mounts, kernel modules), find the host's port,
//! assemble the sandbox on `Setup`, and power off on `Shutdown`. Only meaningful in the VM; the
//! host side's end-to-end test exercises it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_vm_proto::{CacheCreate, PORT_NAME, SHARE_TAG, Setup};

use crate::agent::{self, Mode};
use crate::exec::{self, Command, Stdio};
use crate::reaper::{Reaper, lock};
use crate::sys::{self, check, fd_path};
use crate::{AGENT, ChildStage, Context, GuestError, Result, log};

/// Where the sandbox's root is assembled.
pub const NEWROOT: &str = "/newroot";

/// How long the host's port may take to appear.
const PORT_WAIT: Duration = Duration::from_secs(10);
/// How long dockerd may take to open its socket.
const DOCKER_WAIT: Duration = Duration::from_secs(30);

/// The life of PID 1: boot, serve the host, power off. Never returns (PID 1 must not exit).
pub fn run_as_init() -> ! {
    std::panic::set_hook(Box::new(|info| {
        log!("internal error: {info}; powering off");
        // SAFETY: sync and reboot have no memory effects.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }));
    mount_early();
    sys::ensure_std_fds_open();
    log!("{AGENT} on kernel {}", sys::kernel_release());
    load_modules();
    let reaper = match Reaper::start() {
        Ok(reaper) => reaper,
        Err(e) => {
            log!("cannot start the reaper: {e}");
            power_off()
        }
    };
    let (port, path) = match find_port(PORT_WAIT) {
        Ok(found) => found,
        Err(e) => {
            log!("{e}");
            power_off()
        }
    };
    let writer = match port.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log!("cannot duplicate {}: {e}", path.display());
            power_off()
        }
    };
    log!("serving the host on {}", path.display());
    agent::serve(
        BufReader::with_capacity(256 << 10, port),
        writer,
        Mode::Vm,
        reaper,
    );
    power_off()
}

/// The kernel's filesystems for the initramfs.
fn mount_early() {
    let nosuid = libc::MS_NOSUID;
    let quiet = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
        ("devtmpfs", "/dev", "devtmpfs", nosuid, "mode=0755"),
        ("proc", "/proc", "proc", quiet, ""),
        ("sysfs", "/sys", "sysfs", quiet, ""),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=0755",
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid | libc::MS_NODEV,
            "mode=1777",
        ),
    ];
    for (source, target, fstype, flags, data) in mounts {
        let _ = fs::create_dir_all(target);
        match sys::mount(source, target, fstype, flags, data) {
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                log!("cannot mount {fstype} at {target}: {}", sys::errno_text(&e));
            }
            _ => {}
        }
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(to, link);
    }
}

/// Load the modules listed in /modules.order, in order.
fn load_modules() {
    let order = match fs::read_to_string("/modules.order") {
        Ok(order) => order,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            log!("cannot read /modules.order: {e}");
            return;
        }
    };
    let (mut loaded, mut present, mut failed) = (0, 0, 0);
    for name in order.lines().map(str::trim) {
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let path = Path::new("/lib/modules").join(name);
        match load_module(&path) {
            Ok(()) => loaded += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => present += 1,
            Err(e) => {
                failed += 1;
                log!("cannot load {}: {}", path.display(), sys::errno_text(&e));
            }
        }
    }
    log!("kernel modules: {loaded} loaded, {present} built in or already loaded, {failed} failed");
}

fn load_module(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let name = path.to_string_lossy();
    // MODULE_INIT_COMPRESSED_FILE (Linux 6.4): the kernel decompresses.
    let flags: libc::c_uint = if [".xz", ".zst", ".gz"].iter().any(|s| name.ends_with(s)) {
        4
    } else {
        0
    };
    // SAFETY: finit_module reads the module from a descriptor we own; empty parameters.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The device of the virtio-serial port named `PORT_NAME`, opened read-write.
fn find_port(wait: Duration) -> Result<(File, PathBuf)> {
    let deadline = Instant::now() + wait;
    loop {
        let mut seen = Vec::new();
        for entry in fs::read_dir("/sys/class/virtio-ports")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
            let name = name.trim();
            if name != PORT_NAME {
                seen.push(format!("{} ({name})", entry.file_name().to_string_lossy()));
                continue;
            }
            let dev = Path::new("/dev").join(entry.file_name());
            match OpenOptions::new().read(true).write(true).open(&dev) {
                Ok(port) => return Ok((port, dev)),
                // devtmpfs creates the node a little after sysfs shows the port.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context(|| format!("open {}", dev.display())),
            }
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Refused(format!(
                "no virtio-serial port named {PORT_NAME} appeared within {} s (ports: {})",
                wait.as_secs(),
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                }
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Assemble the sandbox at /newroot (see the crate's docs); the kernel release for `Ready`.
pub fn setup(setup: &Setup, reaper: &Reaper) -> Result<String> {
    let started = Instant::now();
    set_clock(setup.time_unix_ms)?;
    if !setup.hostname.is_empty() {
        // SAFETY: a pointer and length of a live string.
        check(unsafe { libc::sethostname(setup.hostname.as_ptr().cast(), setup.hostname.len()) })
            .context(|| format!("set the hostname {:?}", setup.hostname))?;
    }

    // The host's share is the root's lower layer; the disk holds its upper layer.
    mount(SHARE_TAG, "/host", "virtiofs", 0, "")?;
    if !sys::wait_for_path(Path::new(&setup.disk), Duration::from_secs(5)) {
        return Err(GuestError::Refused(format!(
            "the sandbox disk {} did not appear",
            setup.disk
        )));
    }
    mount(&setup.disk, "/disk", "ext4", libc::MS_NOATIME, "")?;
    for dir in ["/disk/root/upper", "/disk/root/work"] {
        fs::create_dir_all(dir).context(|| format!("create {dir}"))?;
    }
    mount(
        "overlay",
        NEWROOT,
        "overlay",
        0,
        "lowerdir=/host,upperdir=/disk/root/upper,workdir=/disk/root/work",
    )?;

    let root = Path::new(NEWROOT);
    let quiet = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount_in_root(root, "/proc", "proc", "proc", quiet, "")?;
    let sys_ro = if setup.docker { 0 } else { libc::MS_RDONLY };
    mount_in_root(root, "/sys", "sysfs", "sysfs", quiet | sys_ro, "")?;
    let dev = sys::ensure_dir_in_root(root, "/dev")?;
    mount("/dev", &fd_path(&dev), "", libc::MS_BIND | libc::MS_REC, "")
        .map_err(|e| rename_target(e, "/dev", "/newroot/dev"))?;
    let safe = libc::MS_NOSUID | libc::MS_NODEV;
    mount_in_root(root, "/tmp", "tmpfs", "tmpfs", safe, "mode=1777")?;
    mount_in_root(root, "/run", "tmpfs", "tmpfs", safe, "mode=0755")?;
    if setup.docker {
        mount_in_root(root, "/sys/fs/cgroup", "cgroup2", "cgroup2", quiet, "")?;
    }

    // The home, then the workspace (often inside the home): the host side's own layers, not
    // the disk's overlay, so they behave as in the namespace tier.
    if !setup.home.is_empty() && setup.home != setup.workspace {
        bind_from_host(root, &setup.home, false, "the home")?;
    }
    bind_from_host(
        root,
        &setup.workspace,
        setup.workspace_readonly,
        "the workspace",
    )?;

    if !setup.cache_dirs.is_empty() {
        mount_cache_dirs(root, setup)?;
    }

    write_resolv_conf(root, &setup.net_resolver)?;
    let iface = crate::netcfg::configure(
        &setup.net_address,
        &setup.net_gateway,
        Duration::from_secs(5),
    )?;
    if setup.docker {
        start_docker(root, reaper, setup.user_ids.1)?;
    }
    log!(
        "sandbox ready in {} ms (network: {}, docker: {})",
        started.elapsed().as_millis(),
        iface.as_deref().unwrap_or("off"),
        if setup.docker { "on" } else { "off" }
    );
    Ok(sys::kernel_release())
}

fn set_clock(unix_ms: u64) -> Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec we pass.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
        .context(|| "set the clock".into())?;
    Ok(())
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    sys::mount(source, target, fstype, flags, data).context(|| match fstype {
        "" => format!("bind {source} at {target}"),
        _ => format!("mount {fstype} {source} at {target}"),
    })
}

/// Mount at a directory of the sandbox's root (created if missing, resolved inside the root).
fn mount_in_root(
    root: &Path,
    path: &str,
    source: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<()> {
    let target = sys::ensure_dir_in_root(root, path)?;
    sys::mount(source, &fd_path(&target), fstype, flags, data)
        .context(|| format!("mount {fstype} at {}{path}", root.display()))
}

fn rename_target(e: GuestError, from: &str, to: &str) -> GuestError {
    match e {
        GuestError::Sys { source, .. } => GuestError::Sys {
            what: format!("bind {from} at {to}"),
            source,
        },
        other => other,
    }
}

/// /etc/resolv.conf of the sandbox names the VM's resolver (a fresh file in the overlay: the
/// host's stays as it is, and a symlink there is replaced, not followed).
fn write_resolv_conf(root: &Path, resolver: &str) -> Result<()> {
    if resolver.is_empty() {
        return Ok(());
    }
    let what = || format!("write {}/etc/resolv.conf", root.display());
    let etc = sys::ensure_dir_in_root(root, "/etc")?;
    // SAFETY: a valid dirfd and a NUL-terminated single name.
    let removed = unsafe { libc::unlinkat(etc.as_raw_fd(), c"resolv.conf".as_ptr(), 0) };
    if removed != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e).context(what);
        }
    }
    // SAFETY: a valid dirfd and a NUL-terminated single name; returns a fresh descriptor.
    let fd = check(unsafe {
        libc::openat(
            etc.as_raw_fd(),
            c"resolv.conf".as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        )
    })
    .context(what)?;
    // SAFETY: a fresh descriptor we own.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(format!("nameserver {resolver}\n").as_bytes())
        .context(what)
}

/// Start the sandbox's Docker daemon (its storage on the sandbox disk) and wait for its socket.
fn start_docker(root: &Path, reaper: &Reaper, user_gid: u32) -> Result<()> {
    // Docker's overlay2 cannot stack on the root's overlay: give it the disk's ext4 directly.
    fs::create_dir_all("/disk/docker").context(|| "create /disk/docker".into())?;
    let storage = sys::ensure_dir_in_root(root, "/var/lib/docker")?;
    mount("/disk/docker", &fd_path(&storage), "", libc::MS_BIND, "")
        .map_err(|e| rename_target(e, "/disk/docker", "/newroot/var/lib/docker"))?;

    let command = Command {
        argv: [
            "dockerd",
            "--data-root",
            "/var/lib/docker",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            // The socket's group is the sandbox user's (dockerd makes it root:GROUP 0660 itself,
            // after it appears: changing its mode from here raced with that). The VM is the
            // boundary: the sandbox's user runs `docker` without being root in the guest.
            "--group",
            &user_gid.to_string(),
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("PATH".into(), exec::DEFAULT_PATH.into())],
        cwd: "/".into(),
        ids: None,
        stdio: Stdio::LogFile("/var/log/dockerd.log".into()),
        root: root.to_owned(),
    };
    let exited: Arc<Mutex<Option<i32>>> = Arc::default();
    let started = Arc::new(AtomicBool::new(false));
    let (status, running) = (exited.clone(), started.clone());
    let on_exit = Box::new(move |s: i32| {
        let code = crate::reaper::exit_code(s);
        if running.load(Ordering::Relaxed) {
            log!("dockerd exited with status {code} (see /var/log/dockerd.log in the sandbox)");
        }
        *lock(&status) = Some(code);
    });
    match exec::spawn(&command, reaper, on_exit) {
        Ok(_) => started.store(true, Ordering::Relaxed),
        Err(GuestError::Spawn {
            stage: ChildStage::Exec,
            message,
        }) => {
            return Err(GuestError::Refused(format!(
                "Docker is not installed in the sandbox's root: {message}"
            )));
        }
        Err(e) => return Err(e),
    }
    let socket = root.join("run/docker.sock");
    let deadline = Instant::now() + DOCKER_WAIT;
    // Ready once dockerd has given the socket to the user's group (it binds with no permission
    // bits, then chowns and chmods).
    let ready = || {
        use std::os::unix::fs::MetadataExt;
        socket
            .symlink_metadata()
            .is_ok_and(|m| m.gid() == user_gid && m.mode() & 0o060 == 0o060)
    };
    while !ready() {
        if let Some(code) = *lock(&exited) {
            return Err(GuestError::Refused(format!(
                "dockerd exited with status {code} before it was ready; see /var/log/dockerd.log in the sandbox"
            )));
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Refused(format!(
                "dockerd did not open /run/docker.sock to the sandbox's user within {} s; see /var/log/dockerd.log in the sandbox",
                DOCKER_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Show the host share's `path` at the same path in the sandbox's root (read-only if asked).
/// Cache directories (`--cache-dir`): directories of the sandbox disk's own over workspace
/// subdirectories, at the guest's native file speed instead of through the file share, kept with
/// the disk. Their mount points are never reached through a symlink (in a kept sandbox the agent
/// chose what is there); missing components are made as `cache_create` says (the directory
/// itself in a copy-on-write workspace, any of the path in a clone, none in a host workspace).
fn mount_cache_dirs(root: &Path, setup: &Setup) -> Result<()> {
    // One nosuid,nodev view of the disk's cache area: binds of its subdirectories keep its flags.
    let area = "/disk/caches";
    fs::create_dir_all(area).context(|| format!("create {area}"))?;
    fs::create_dir_all("/caches").context(|| "create /caches".into())?;
    mount(area, "/caches", "", libc::MS_BIND, "")?;
    let safe = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    mount("", "/caches", "", safe, "")?;
    let (uid, gid) = setup.user_ids;
    for (i, path) in setup.cache_dirs.iter().enumerate() {
        let store = format!("/caches/{i}");
        fs::create_dir_all(&store).context(|| format!("create {store}"))?;
        let store_c = sys::cstring(&store, "a path")?;
        // SAFETY: chown of a directory we just made, NUL-terminated path.
        check(unsafe { libc::chown(store_c.as_ptr(), uid, gid) })
            .context(|| format!("give {store} to the sandbox's user"))?;
        let shown = format!("{NEWROOT}{path}");
        let refuse = |why: &str| GuestError::Refused(format!("cache directory {path}: {why}"));
        let comps = sys::components_in_root(path)?;
        let mut at = String::new();
        let mut target = None;
        for (n, name) in comps.iter().enumerate() {
            let parent = if at.is_empty() {
                "/".to_string()
            } else {
                at.clone()
            };
            at.push('/');
            at.push_str(name);
            let make = match setup.cache_create {
                CacheCreate::All => true,
                CacheCreate::Last => n + 1 == comps.len(),
                CacheCreate::None => false,
            };
            let opened = match sys::open_dir_in_root_no_symlinks(root, &at) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && make => {
                    let dir = sys::open_dir_in_root_no_symlinks(root, &parent)
                        .map_err(|e| refuse(&format!("opening {parent}: {e}")))?;
                    let name_c = sys::cstring(name, "a path")?;
                    // SAFETY: a valid directory descriptor and a NUL-terminated single name.
                    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name_c.as_ptr(), 0o755) })
                        .map_err(|e| refuse(&format!("making {at}: {e}")))?;
                    // SAFETY: as above; the directory was just made by us.
                    unsafe {
                        libc::fchownat(
                            dir.as_raw_fd(),
                            name_c.as_ptr(),
                            uid,
                            gid,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    };
                    sys::open_dir_in_root_no_symlinks(root, &at)
                }
                other => other,
            };
            target = Some(opened.map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => refuse(&format!(
                    "{at} is a symlink or a file inside the sandbox, not a directory; if the host's workspace has it so, make it a directory there; in a copy-on-write workspace `airlock diff` and `airlock apply` what you want to keep, then `airlock reset SANDBOX` discards the sandbox's changes; in a clone, remove that entry from the sandbox's clone on the host with `rm` (not `rm -r`)"
                )),
                Some(libc::ENOENT) if n + 1 == comps.len() => refuse(&format!(
                    "{at} does not exist; in a live (rw) or read-only workspace a cache directory must exist on the host"
                )),
                Some(libc::ENOENT) => refuse(&format!(
                    "{at} does not exist in the sandbox's workspace; the directory a cache directory is in must exist: make it on the host"
                )),
                _ => refuse(&format!("{at}: {e}")),
            })?);
        }
        let Some(target) = target else {
            return Err(refuse("not a subdirectory of the workspace"));
        };
        sys::mount(&store, &fd_path(&target), "", libc::MS_BIND, "")
            .context(|| format!("bind a cache directory at {shown}"))?;
    }
    Ok(())
}

fn bind_from_host(root: &Path, path: &str, readonly: bool, what: &str) -> Result<()> {
    let source = sys::open_in_root(
        Path::new("/host"),
        path,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .context(|| format!("open {what} /host{path}"))?;
    let target = sys::ensure_dir_in_root(root, path)?;
    let shown = format!("{NEWROOT}{path}");
    sys::mount(
        &fd_path(&source),
        &fd_path(&target),
        "",
        libc::MS_BIND | libc::MS_REC,
        "",
    )
    .context(|| format!("bind {what} at {shown}"))?;
    if readonly {
        // The descriptor opened before the bind is the directory underneath; reopen.
        let mounted = sys::open_in_root(root, path, libc::O_PATH | libc::O_DIRECTORY, 0)
            .context(|| format!("open {shown}"))?;
        let flags =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        sys::mount("", &fd_path(&mounted), "", flags, "")
            .context(|| format!("make {what} {shown} read-only"))?;
    }
    Ok(())
}

/// Stop everything, flush the disks, power off.
pub fn power_off() -> ! {
    log!("shutting down");
    stop_all_processes();
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    unmount_sandbox();
    // SAFETY: sync has no preconditions; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    log!("cannot power off: {}", io::Error::last_os_error());
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// SIGTERM to every process, up to 2 s to go, then SIGKILL (the reaper collects them).
fn stop_all_processes() {
    // SAFETY: kill(-1) signals every process but PID 1 itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while user_processes() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(1);
    while user_processes() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes other than PID 1 and kernel threads (which have no command line; neither do
/// zombies).
fn user_processes() -> usize {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.is_empty()
                && name != "1"
                && name.bytes().all(|b| b.is_ascii_digit())
                && fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty())
        })
        .count()
}

/// Unmount the sandbox's mounts, the disk and the share, innermost first (lazily if busy).
fn unmount_sandbox() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points = mount_points(&mountinfo, &[NEWROOT, "/disk", "/host"]);
    points.reverse();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_str()) else {
            continue;
        };
        // SAFETY: a NUL-terminated path.
        let clean = unsafe { libc::umount2(c.as_ptr(), 0) } == 0;
        // SAFETY: as above.
        if !clean && unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            log!("cannot unmount {point}: {}", io::Error::last_os_error());
        }
    }
}

/// The mount points in `mountinfo` at or below any of `tops`, in mount order.
pub fn mount_points(mountinfo: &str, tops: &[&str]) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| {
            tops.iter().any(|top| {
                p == top
                    || p.strip_prefix(top)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(d) = octal
        {
            let value = d.iter().fold(0u32, |v, b| (v << 3) | u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_mounts_are_found_innermost_last() {
        let info = "\
22 1 0:20 / / rw - rootfs rootfs rw
23 22 0:21 / /dev rw - devtmpfs dev rw
30 22 0:30 / /host rw - virtiofs airlock rw
31 22 253:0 / /disk rw - ext4 /dev/vda rw
32 22 0:31 / /newroot rw - overlay overlay rw
33 32 0:32 / /newroot/proc rw - proc proc rw
34 32 0:30 /home/u/my\\040work /newroot/home/u/my\\040work rw - virtiofs airlock rw
35 22 0:33 / /newrootx rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points(info, &[NEWROOT, "/disk", "/host"]),
            [
                "/host",
                "/disk",
                "/newroot",
                "/newroot/proc",
                "/newroot/home/u/my work"
            ]
        );
    }
}
