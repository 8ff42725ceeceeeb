//! PID 1 of a sandbox. It finishes the sandbox's setup from inside (cgroup namespace, hostname,
//! loopback, filesystem), starts the first command, then reaps zombies and forwards signals.
//! When it exits the kernel kills every other process of the sandbox's pid namespace, and it
//! dies itself (PR_SET_PDEATHSIG) when its supervisor dies, even by SIGKILL.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use airlock_seccomp::SeccompProgram;

use crate::caps;
use crate::mounts::MountPlan;
use crate::namespaces;
use crate::process::{CommandSpec, Confinement};

/// Signals the init forwards to the first command (or, without one, treats as "stop").
pub const FORWARDED: &[libc::c_int] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Messages on the setup channel between supervisor and init (a SOCK_SEQPACKET pair).
pub const MSG_GO: u8 = b'G';
/// Sent once the init is in the sandbox's cgroup (it sets up its mounts meanwhile).
pub const MSG_IN_CGROUP: u8 = b'C';
pub const MSG_READY: u8 = b'R';
pub const MSG_ERROR: u8 = b'E';
/// Sent by the init once the sandbox's last other process is gone, with the first command's exit
/// status in the next byte, just before it exits itself (see `supervisor::supervise`).
pub const MSG_ENDED: u8 = b'X';

/// Send one message on a setup channel (errors are the receiver's to notice).
pub(crate) fn send(sock: RawFd, msg: &[u8]) {
    // SAFETY: writing a valid buffer to a socket we hold.
    unsafe { libc::send(sock, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
}

/// Send one message with descriptors attached (the "go" with a shifted sandbox's idmapped
/// clones). Errors are the receiver's to notice, like [`send`].
pub(crate) fn send_with_fds(sock: RawFd, msg: &[u8], fds: &[RawFd]) {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    let _ = sendmsg::<()>(
        sock,
        &[std::io::IoSlice::new(msg)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
}

/// Receive one message and the descriptors attached to it (`None` on EOF or error).
fn recv_with_fds(sock: RawFd) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 16];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 64]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return None;
    }
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in our table; we own them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    (n > 0).then(|| (buf[..n].to_vec(), fds))
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process without running the forked copy's destructors.
    unsafe { libc::_exit(code) }
}

/// The child side of the sandbox's creation. Never returns.
pub fn run(
    sock: RawFd,
    ports: RawFd,
    cgroup_procs: &[RawFd],
    plan: &MountPlan,
    hostname: &str,
    seccomp: &SeccompProgram,
    main: Option<&CommandSpec>,
) -> ! {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    // Into the sandbox's cgroup before anything else runs here (see `cgroups::join_self`; the
    // descriptors were opened by the supervisor before the clone, so this needs no id map), while
    // still single-threaded: the whole process moves, and the network thread is born in it.
    // The network needs neither our id maps nor the filesystem: it is built on that thread while
    // the supervisor writes the maps and this thread builds the filesystem (the supervisor reads
    // the sockets, or an error, after it sent the "go").
    let net = match crate::cgroups::join_self(cgroup_procs)
        .and_then(|()| set_hostname(hostname))
        .and_then(|()| NetSetup::spawn(plan, sock))
    {
        Ok(n) => n,
        Err(msg) => {
            let mut m = vec![MSG_ERROR];
            m.extend_from_slice(msg.as_bytes());
            send(sock, &m);
            exit(1);
        }
    };
    // EOF here means the supervisor died before writing our id maps: nothing to do.
    let staged = match recv_with_fds(sock) {
        // All the clones the plan expects, or nothing is built (a truncated message would
        // otherwise shift every host path onto the wrong clone).
        Some((msg, fds))
            if msg.first() == Some(&MSG_GO) && fds.len() == plan.staged_sources.len() =>
        {
            fds
        }
        _ => exit(1),
    };
    if let Err(msg) = setup(plan, sock, staged, net) {
        let mut m = vec![MSG_ERROR];
        m.extend_from_slice(msg.as_bytes());
        send(sock, &m);
        exit(1);
    }
    if plan.shifted {
        // Changing our ids cleared the parent-death signal: arm it again, then make sure the
        // supervisor did not die meanwhile (its end of the setup channel would be closed).
        let mut p = libc::pollfd {
            fd: sock,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: prctl with integer arguments; poll on one pollfd that lives across the call.
        let gone = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            libc::poll(&mut p, 1, 0) != 0
                && p.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
        };
        if gone {
            exit(1);
        }
    }
    // Nothing of the supervisor's descriptors (locks, state files) stays open in the sandbox.
    close_all_except(&[0, 1, 2, sock, ports]);
    send(sock, &[MSG_READY]);

    // The filter goes on before the command is started, so the command inherits it instead of
    // attaching a second copy (the kernel prepares its per-syscall cache at every attach). What
    // the init does from here on (start the command, drop capabilities, reap) passes the filter.
    if seccomp.apply().is_err() {
        exit(1);
    }
    let main_pid = match main {
        Some(cmd) => {
            match namespaces::spawn_vfork(&mut || cmd.exec(Confinement::Inherited, Some(sock))) {
                Ok(pid) => Some(pid),
                Err(e) => {
                    eprintln!("airlock: starting the command: {e}");
                    exit(126);
                }
            }
        }
        None => None,
    };
    // The init stays dumpable (`airlock exec` joins its namespaces through a pidfd, which needs
    // ptrace access), so it must hold nothing worth stealing: no capability beyond what it needs
    // to end the sandbox's processes (an agent without it cannot ptrace it at all), and no copy
    // of the host's environment or command line in its memory (/proc/1/environ, /proc/1/cmdline).
    if let Err(e) = caps::keep_only(&[caps::CAP_KILL]) {
        eprintln!("airlock: dropping the init's capabilities: {e}");
        exit(1);
    }
    scrub_inherited_memory();
    // SAFETY: pointing stdio at /dev/null (inside the sandbox). The channel stays open for the
    // end-of-sandbox message (`MSG_ENDED`).
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    reap_loop(main_pid, ports, sock)
}

fn set_hostname(hostname: &str) -> Result<(), String> {
    // SAFETY: sethostname with a valid buffer.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
        return Err(format!(
            "setting the hostname: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The sandbox's network namespace, built on a thread of the init's own: the thread unshares a
/// new network namespace (affecting only itself), brings `lo` up, creates the network's ways out
/// there while it holds the namespace's capabilities, hands them to the supervisor, and returns
/// the namespace; [`NetSetup::enter`] then moves the init into it. Creating a network namespace
/// is the costliest namespace to make (~0.45 ms here); this way it overlaps the filesystem's
/// construction instead of preceding it (the clone creates the others).
struct NetSetup(Option<std::thread::JoinHandle<Result<OwnedFd, String>>>);

impl NetSetup {
    fn spawn(plan: &MountPlan, sock: RawFd) -> Result<NetSetup, String> {
        let capture = plan.network_capture;
        let thread = std::thread::Builder::new()
            .name("airlock-init-net".into())
            .stack_size(256 * 1024)
            .spawn(move || -> Result<OwnedFd, String> {
                // SAFETY: unshare with a flag; a new network namespace for this thread only.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(format!(
                        "creating the network namespace: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                let ns = std::fs::File::open("/proc/thread-self/ns/net")
                    .map(OwnedFd::from)
                    .map_err(|e| format!("opening the new network namespace: {e}"))?;
                namespaces::loopback_up().map_err(|e| e.to_string())?;
                airlock_core::startup::trace("init: network namespace, lo");
                let sockets =
                    crate::net::InsideSockets::create(capture).map_err(|e| e.to_string())?;
                sockets.send(sock).map_err(|e| e.to_string())?;
                airlock_core::startup::trace("init: network sockets handed over");
                Ok(ns)
            })
            .map_err(|e| format!("starting the network setup: {e}"))?;
        Ok(NetSetup(Some(thread)))
    }

    /// Waits for the network thread and joins its namespace (idempotent). Nothing that shows
    /// the network (sysfs, the command) may come before this: until then the init is in the
    /// namespace the host gave it.
    fn enter(&mut self) -> Result<(), String> {
        let Some(thread) = self.0.take() else {
            return Ok(());
        };
        let ns = thread
            .join()
            .map_err(|_| "the network setup thread failed".to_string())??;
        // SAFETY: setns on a namespace descriptor we own; affects this thread only, and the
        // process is single-threaded again.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "entering the network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }
}

/// The filesystem, the network namespace, the cgroup namespace and (shifted) root's ids inside.
fn setup(
    plan: &MountPlan,
    sock: RawFd,
    staged: Vec<OwnedFd>,
    mut net: NetSetup,
) -> Result<(), String> {
    let applied = plan.apply(staged, &mut || {
        net.enter().map_err(crate::error::NsError::Setup)
    });
    // In every case (an error or not), the network thread is done before anything else is said
    // on the channel, and the init is in the sandbox's network namespace before it goes on.
    net.enter()?;
    applied.map_err(|e| e.message())?;
    airlock_core::startup::trace("init: filesystem built");
    // We joined the sandbox's cgroup first thing; once the supervisor confirms the sandbox is
    // set up on its side, a new cgroup namespace makes that cgroup our root.
    let mut msg = [0u8; 1];
    // SAFETY: reading one byte into a local buffer; unshare with a flag.
    unsafe {
        if libc::read(sock, msg.as_mut_ptr().cast(), 1) != 1 || msg[0] != MSG_IN_CGROUP {
            return Err("the supervisor went away during setup".into());
        }
        if libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
            return Err(format!(
                "creating the cgroup namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if plan.shifted {
        become_ns_root()?;
    }
    Ok(())
}

/// In a shifted sandbox, take root's ids inside (an unprivileged range on the host) and drop the
/// host's supplementary groups: until now this process still had the host's root ids (unmapped
/// here), which it needed to reach its own setup files. Capabilities in the sandbox's user
/// namespace are kept (root inside is the namespace's owner of them).
pub(crate) fn become_ns_root() -> Result<(), String> {
    // SAFETY: credential syscalls with integer arguments and a NULL list of length 0.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(0, 0, 0) != 0
            || libc::setresuid(0, 0, 0) != 0
        {
            return Err(format!(
                "taking root's ids inside the sandbox: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Close every descriptor of this process except `keep`.
pub(crate) fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().map(|&f| f as u32).collect();
    keep.sort_unstable();
    let mut from = 0u32;
    for k in keep {
        if k > from {
            // SAFETY: closing a range of our own descriptors.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
        }
        from = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// End the sandbox: tell the supervisor that nothing else of it runs any more, then exit.
fn end(sock: RawFd, code: i32) -> ! {
    send(sock, &[MSG_ENDED, code.clamp(0, 255) as u8]);
    exit(code)
}

/// Wait for signals and port requests: reap every child, forward termination signals, and open
/// connections to the sandbox's own loopback services for published ports (`-p`). With a first
/// command, exit with its status when it ends; without, exit once asked to stop and every
/// process is gone (either way through [`end`]).
fn reap_loop(main_pid: Option<i32>, ports: RawFd, sock: RawFd) -> ! {
    // SAFETY: signal-set manipulation on locals; signalfd/poll/read on our own descriptors;
    // waitpid/kill on our own pid namespace.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for s in FORWARDED {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        let mut ports_open = ports >= 0;
        let mut stopping = false;
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: sfd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: if ports_open { ports } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(fds.as_mut_ptr(), 2, -1) < 0 {
                continue;
            }
            if fds[1].revents != 0 {
                ports_open = serve_port_request(ports);
            }
            if fds[0].revents == 0 {
                continue;
            }
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let n = libc::read(
                sfd,
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            );
            let sig = if n > 0 {
                info.ssi_signo as libc::c_int
            } else {
                libc::SIGCHLD
            };
            if sig == libc::SIGCHLD {
                loop {
                    let mut status = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid <= 0 {
                        if pid < 0 && stopping && main_pid.is_none() {
                            end(sock, 0);
                        }
                        break;
                    }
                    if Some(pid) == main_pid {
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        // The first command is done: the sandbox ends with it.
                        libc::kill(-1, libc::SIGKILL);
                        while libc::waitpid(-1, std::ptr::null_mut(), 0) > 0 {}
                        end(sock, code);
                    }
                }
                continue;
            }
            match main_pid {
                Some(pid) => {
                    libc::kill(pid, sig);
                }
                None => {
                    stopping = true;
                    if libc::kill(-1, libc::SIGTERM) != 0 {
                        // No process left besides us.
                        end(sock, 0);
                    }
                }
            }
        }
    }
}

/// One request on the ports channel: `c` + a port (big-endian u16). Connects to that port on
/// the sandbox's loopback (IPv4, then IPv6) and hands the connected socket back, or answers `e`.
/// Returns false once the supervisor has closed the channel.
fn serve_port_request(ports: RawFd) -> bool {
    let mut req = [0u8; 8];
    // SAFETY: receiving into a local buffer.
    let n = unsafe { libc::recv(ports, req.as_mut_ptr().cast(), req.len(), 0) };
    if n <= 0 {
        return false;
    }
    if n != 3 || req[0] != b'c' {
        send(ports, b"e");
        return true;
    }
    let port = u16::from_be_bytes([req[1], req[2]]);
    // Bounded: a service that never accepts must not hold up the init's signal handling.
    let timeout = std::time::Duration::from_secs(1);
    let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let stream = std::net::TcpStream::connect_timeout(&v4, timeout)
        .or_else(|_| std::net::TcpStream::connect_timeout(&v6, timeout));
    match stream {
        Ok(s) => {
            if crate::pty::send_fd(ports, std::os::fd::AsRawFd::as_raw_fd(&s)).is_err() {
                send(ports, b"e");
            }
        }
        Err(_) => send(ports, b"e"),
    }
    true
}

/// Overwrite the command line and environment inherited from the host in our own memory, so
/// /proc/1/cmdline and /proc/1/environ show nothing of the host (secrets passed with `-e`, the
/// caller's environment). The kernel reports where they are in /proc/self/stat (fields 48–51).
fn scrub_inherited_memory() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return;
    };
    // Fields from 3 on; arg_start is field 48.
    let f: Vec<usize> = rest
        .split_whitespace()
        .skip(45)
        .take(4)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 4 {
        return;
    }
    let name = b"airlock-init\0";
    for (start, end) in [(f[0], f[1]), (f[2], f[3])] {
        if end <= start || end - start > 1 << 20 {
            continue;
        }
        // SAFETY: [start, end) is our own initial argument/environment area on the main stack, as
        // reported by the kernel; the init reads neither again (std's copies are not used).
        unsafe {
            std::ptr::write_bytes(start as *mut u8, 0, end - start);
            if start == f[0] && end - start >= name.len() {
                std::ptr::copy_nonoverlapping(name.as_ptr(), start as *mut u8, name.len());
            }
        }
    }
}
