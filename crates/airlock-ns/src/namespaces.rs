//! Linux namespaces: creating them, mapping ids into the user namespace, and joining them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::error::{NsError, Result};

/// The namespaces every sandbox gets at creation. The cgroup namespace is unshared by the child
/// after its supervisor has moved it into the sandbox's cgroup, so that cgroup becomes its root;
/// the network namespace is made by the child on a thread of its own while it builds its
/// filesystem, and joined before anything can see the network (`init::NetSetup`).
pub const SANDBOX_CLONE_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// Namespaces joined by `exec`, in the order they must be entered: the user namespace first, so
/// that the others (owned by it) can be joined without privileges on the host.
pub const JOIN_ORDER: &[(&str, libc::c_int)] = &[
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("pid", libc::CLONE_NEWPID),
];

/// Fork-like `clone(2)`: returns `Ok(0)` in the child and the child's pid in the parent.
///
/// Only call from a single-threaded process (Airlock's CLI never starts threads before this).
pub fn clone_process(flags: libc::c_int) -> Result<i32> {
    // SAFETY: raw clone without CLONE_VM and with a NULL stack behaves like fork(2): the child runs
    // on a copy-on-write copy of our stack. The caller guarantees the process is single-threaded,
    // so no lock can be held by another thread across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::ENOSPC) | Some(libc::EUSERS)
                if flags & libc::CLONE_NEWUSER != 0 =>
            {
                NsError::UserNamespaces(userns_hint(&err))
            }
            _ => NsError::sys("clone", err),
        });
    }
    Ok(rc as i32)
}

/// Start `child` in a new process that shares our memory until it calls `execve` or exits
/// (`CLONE_VM | CLONE_VFORK` on a stack of its own, as glibc's `posix_spawn` does); we are
/// suspended until then. Unlike a fork, no page tables are copied and neither process takes
/// copy-on-write faults afterwards: ~1 ms less for a process as large as Airlock's on every
/// command the init starts. Returns the child's pid.
///
/// `child` must not return (it would be ended with status 127), and until its `execve` it must only make system calls that change
/// per-process state (credentials, signal dispositions, fds, limits, seccomp): our memory is
/// its memory, so it must not drop (free) anything of ours either. Only call from a
/// single-threaded process.
pub fn spawn_vfork(child: &mut dyn FnMut()) -> Result<i32> {
    const STACK: usize = 256 * 1024;
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&mut &mut dyn FnMut` below, alive while we run: the parent is
        // suspended (CLONE_VFORK) until this child has exec'd or exited.
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut()) };
        f();
        // SAFETY: `child` must not return; if it does, end the process without touching the
        // memory it shares with its suspended parent.
        unsafe { libc::_exit(127) }
    }
    // SAFETY: an anonymous private mapping for the child's stack; checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(NsError::last("allocating a stack for the command"));
    }
    // A guard page at the bottom: an overflow faults instead of writing into our memory.
    // SAFETY: the first page of the mapping we just made.
    if unsafe { libc::mprotect(stack, 4096, libc::PROT_NONE) } != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: unmapping what we mapped above.
        unsafe { libc::munmap(stack, STACK) };
        return Err(NsError::sys("guarding the command's stack", err));
    }
    let mut f: &mut dyn FnMut() = child;
    // SAFETY: the stack grows down from the end of our mapping; `entry` never returns into
    // anything but `_exit`/`execve`; `f` outlives the child's use of it (CLONE_VFORK).
    let pid = unsafe {
        libc::clone(
            entry,
            (stack as *mut u8).add(STACK).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut f as *mut &mut dyn FnMut()).cast(),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: the child no longer runs on this stack: it has exec'd or exited.
    unsafe { libc::munmap(stack, STACK) };
    if pid < 0 {
        return Err(NsError::sys("starting the command", err));
    }
    Ok(pid)
}

/// Why creating a user namespace failed, naming the setting that controls it.
pub fn userns_hint(err: &std::io::Error) -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return "the sysctl user.max_user_namespaces is 0; enable them with `sudo sysctl -w user.max_user_namespaces=15000`".into();
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return "the sysctl kernel.unprivileged_userns_clone is 0; enable them with `sudo sysctl -w kernel.unprivileged_userns_clone=1`".into();
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1); allow airlock with an AppArmor profile granting `userns,` or run `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`".into();
    }
    if err.raw_os_error() == Some(libc::ENOSPC) || err.raw_os_error() == Some(libc::EUSERS) {
        return format!(
            "{err}: the limit user.max_user_namespaces is reached; stop some sandboxes or raise it with sysctl"
        );
    }
    format!(
        "{err}; check that the kernel allows user namespaces (CONFIG_USER_NS) and that no seccomp or container policy of the host forbids them"
    )
}

/// The uid/gid mapping of a sandbox's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    pub uid_map: String,
    pub gid_map: String,
    /// Unprivileged callers must write "deny" to /proc/PID/setgroups before gid_map.
    pub deny_setgroups: bool,
    /// Whether a full range of ids is mapped (so `chown`, apt-get and friends work inside).
    pub full_range: bool,
    /// For a root invoker: the first host id of the sandbox's range (inside id 0). Host files
    /// are shown with their own owners through idmapped mounts (see [`crate::idmapped`]).
    pub shifted_base: Option<u32>,
}

/// How many ids a root invoker's sandbox gets (inside 0..65535), like a subordinate range.
pub const SHIFTED_RANGE: u32 = 65536;
/// Root invokers' sandboxes get their range from slots of [`SHIFTED_RANGE`] ids starting here:
/// 0x40000000-0x5fffffff, inside the block systemd documents for container ranges
/// (524288-1879048191) and far above the subordinate ranges `useradd` hands out (100000+).
const SHIFTED_FIRST: u32 = 0x4000_0000;
const SHIFTED_SLOTS: u64 = 8192;

impl IdMap {
    /// Root never stays root: a root invoker's sandbox maps inside ids 0..65535 onto a range of
    /// unused host ids picked from the sandbox's name (so two sandboxes rarely share one), and
    /// host files keep their owners inside through idmapped mounts. Everyone else maps exactly
    /// their own uid and gid.
    pub fn for_invoker(euid: u32, egid: u32, sandbox: &str) -> IdMap {
        if euid == 0 {
            let slot = airlock_core::units::fnv1a(sandbox.bytes()) % SHIFTED_SLOTS;
            let base = SHIFTED_FIRST + slot as u32 * SHIFTED_RANGE;
            let line = format!("0 {base} {SHIFTED_RANGE}\n");
            IdMap {
                uid_map: line.clone(),
                gid_map: line,
                deny_setgroups: false,
                full_range: true,
                shifted_base: Some(base),
            }
        } else {
            IdMap {
                uid_map: format!("{euid} {euid} 1\n"),
                gid_map: format!("{egid} {egid} 1\n"),
                deny_setgroups: true,
                full_range: false,
                shifted_base: None,
            }
        }
    }

    /// Also map host group `host_gid` (a device's group, e.g. kvm's) into a shifted range, at an
    /// inside id above the range; returns that inside id for the process that needs the device.
    pub fn map_host_group(&mut self, host_gid: u32) -> Option<u32> {
        self.shifted_base?;
        let inside = SHIFTED_RANGE + self.gid_map.lines().count() as u32 - 1;
        self.gid_map.push_str(&format!("{inside} {host_gid} 1\n"));
        Some(inside)
    }

    /// What `inspect` says about the sandbox's ids.
    pub fn describe(&self) -> String {
        match self.shifted_base {
            Some(base) => format!(
                "root inside is host uid {base} (ids 0-{} map to {base}-{}); host files keep their owners through idmapped mounts",
                SHIFTED_RANGE - 1,
                base as u64 + SHIFTED_RANGE as u64 - 1
            ),
            None => format!(
                "only your own uid/gid are mapped ({})",
                self.uid_map.split_whitespace().next().unwrap_or("?")
            ),
        }
    }

    /// Write the maps of the freshly cloned `pid` (from its parent, in the parent's user namespace).
    pub fn write(&self, pid: i32) -> Result<()> {
        let proc = format!("/proc/{pid}");
        let w = |file: &str, data: &str| {
            let path = format!("{proc}/{file}");
            std::fs::write(&path, data).map_err(|e| NsError::path(path, e))
        };
        w("uid_map", &self.uid_map)?;
        if self.deny_setgroups {
            w("setgroups", "deny")?;
        }
        w("gid_map", &self.gid_map)
    }
}

/// Host groups of the device nodes `devices` (names under /dev) that a shifted sandbox must map
/// in for its processes to open them (root's group needs no mapping: such a node is world-usable
/// or not usable at all). The n-th one is inside gid [`SHIFTED_RANGE`] + n.
pub fn device_groups(devices: &[String]) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut gids: Vec<u32> = Vec::new();
    for d in devices {
        if let Ok(m) = std::fs::metadata(Path::new("/dev").join(d))
            && m.gid() != 0
            && !gids.contains(&m.gid())
        {
            gids.push(m.gid());
        }
    }
    gids
}

/// A handle on a running sandbox's namespaces: a pidfd of its init.
///
/// `setns(pidfd, flags)` (Linux 5.8+) joins every namespace in one atomic step and, unlike
/// opening `/proc/PID/ns/*`, needs no ptrace access to the init, which is deliberately not
/// dumpable (so the agent cannot ptrace it or open its /proc files).
pub struct NsFds {
    pidfd: OwnedFd,
}

impl NsFds {
    pub fn open(pid: i32) -> Result<NsFds> {
        // SAFETY: pidfd_open takes a pid and flags; the returned fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(NsError::last(format!(
                "pidfd_open({pid}) for the sandbox's init"
            )));
        }
        // SAFETY: fresh fd owned by nobody else.
        Ok(NsFds {
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Enter every namespace (the pid namespace applies to children created afterwards).
    /// Must run in a single-threaded process.
    pub fn join(&self) -> Result<()> {
        let flags = JOIN_ORDER.iter().fold(0, |acc, (_, f)| acc | f);
        // SAFETY: setns on a pidfd we own; the process is single-threaded.
        if unsafe { libc::setns(self.pidfd.as_raw_fd(), flags) } != 0 {
            return Err(NsError::last("joining the sandbox's namespaces"));
        }
        Ok(())
    }
}

/// Bring up `lo` in the current network namespace (the sandbox's only interface for now).
pub fn loopback_up() -> Result<()> {
    // SAFETY: plain socket creation; the fd is wrapped in OwnedFd immediately.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(NsError::last("socket for configuring lo"));
    }
    // SAFETY: raw is a fresh, valid fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which lives across the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(NsError::last("reading the flags of lo"));
        }
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(NsError::last("bringing up lo"));
        }
    }
    Ok(())
}

/// Quick check that this host lets us create the namespaces we need, with a useful message if not.
pub fn preflight() -> Result<()> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Err(NsError::UserNamespaces(
            "this kernel has no user namespaces (CONFIG_USER_NS); use a kernel that has them or --isolation vm".into(),
        ));
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err(NsError::UserNamespaces(userns_hint(
            &std::io::Error::from_raw_os_error(libc::ENOSPC),
        )));
    }
    Ok(())
}
