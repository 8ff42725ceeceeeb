//! Real-kernel tests: fork a child, install the default filter in it, make
//! syscalls, and check what the kernel answers. No mocks.
//!
//! The child is forked from the (multi-threaded) test harness, so it sticks to
//! raw libc calls, never allocates, reports through a pipe from a fixed-size
//! stack buffer, and always leaves with `_exit`. Each child runs in its own
//! process group, which the parent kills when done (and on timeout), so no
//! process outlives its test.
//!
//! Arguments are chosen so that a call is harmless even if the filter were
//! somehow not in force (the tests run as root); every child first checks a
//! canary (`mount` on a non-existent path: ENOENT without the filter, EPERM with).

use std::ffi::CString;
use std::fmt::{self, Write as _};
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use airlock_seccomp::{SeccompProgram, syscall_number};

const CLONE_NEWTIME: libc::c_int = 0x80;
const TIOCLINUX: u64 = 0x541C;
/// Obsolete (libc deprecates the constant), but the kernel still accepts it.
const SOCK_PACKET: libc::c_int = 10;
const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
const CANARY_PATH: &std::ffi::CStr = c"/nonexistent-airlock-seccomp-test-dir";

fn program() -> &'static SeccompProgram {
    static PROGRAM: OnceLock<SeccompProgram> = OnceLock::new();
    PROGRAM.get_or_init(|| SeccompProgram::compile_default().expect("default policy compiles"))
}

/// Fixed-capacity, allocation-free message buffer for the child.
struct Report {
    buf: [u8; 4096],
    len: usize,
    failed: bool,
    /// Write end of the report pipe (for redirecting an exec'd program's output).
    pipe: libc::c_int,
}

impl fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Report {
    /// Records a failure unless `ret == -1 && errno == want`.
    fn expect_errno(&mut self, what: &str, ret: libc::c_long, want: i32) {
        let e = errno();
        if ret != -1 || e != want {
            self.failed = true;
            let _ = writeln!(
                self,
                "{what}: expected errno {want}, got ret={ret} errno={e}"
            );
        }
    }

    /// Records a failure unless `ret >= 0`.
    fn expect_ok(&mut self, what: &str, ret: libc::c_long) {
        if ret < 0 {
            self.failed = true;
            let _ = writeln!(
                self,
                "{what}: expected success, got ret={ret} errno={}",
                errno()
            );
        }
    }

    fn fail(&mut self, msg: fmt::Arguments<'_>) {
        self.failed = true;
        let _ = self.write_fmt(msg);
        let _ = self.write_str("\n");
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
}

/// Forks a child that (if `filtered`) installs the default filter and checks
/// the canary, then runs `body`. Returns how the child ended and its report.
fn in_child(filtered: bool, body: impl FnOnce(&mut Report)) -> (Outcome, String) {
    let prog = program();
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (rd, wr) = (fds[0], fds[1]);

    // SAFETY: the child only calls async-signal-safe libc functions, writes
    // into a stack buffer and leaves with `_exit`, never returning here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let mut report = Report {
            buf: [0; 4096],
            len: 0,
            failed: false,
            pipe: wr,
        };
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on our own process / fds. No core dumps: some
        // children are meant to die of SIGSYS.
        unsafe {
            libc::setpgid(0, 0);
            libc::close(rd);
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        }
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if filtered {
                if let Err(e) = prog.apply() {
                    // Display of io::Error for an OS error does not allocate much;
                    // this path only runs when the test is failing anyway.
                    report.fail(format_args!("apply failed: {e}"));
                    return;
                }
                // SAFETY: valid NUL-terminated strings; the target does not exist.
                let ret = unsafe {
                    libc::mount(
                        c"none".as_ptr(),
                        CANARY_PATH.as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
                report.expect_errno("canary mount", ret.into(), libc::EPERM);
                if report.failed {
                    return;
                }
            }
            body(&mut report);
        }));
        let code = match run {
            Ok(()) if !report.failed => 0,
            Ok(()) => 1,
            Err(_) => 101,
        };
        // SAFETY: writing our own initialised buffer to our pipe, then exiting
        // without running any of the parent's atexit handlers or destructors.
        unsafe {
            libc::write(wr, report.buf.as_ptr().cast(), report.len);
            libc::_exit(code);
        }
    }

    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(wr) };
    // Wait for the child to end without reaping it (WNOWAIT): while it is a
    // zombie its pid, and so its process group id, cannot be reused, so the
    // group kill below can only hit processes this test created.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut timed_out = false;
    loop {
        // SAFETY: all-zero is a valid siginfo_t; `info` is a valid out-pointer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child; `info` is valid for writing.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        assert_eq!(r, 0, "waitid: {}", io::Error::last_os_error());
        // SAFETY: waitid filled `info` (si_pid stays 0 while the child runs).
        if unsafe { info.si_pid() } == pid {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Kill whatever is left in the child's process group (normally nothing,
    // or everything on timeout), then reap the child.
    let mut status = 0;
    // SAFETY: signalling the process group we created; reaping our child.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
    assert!(!timed_out, "child timed out");
    let outcome = if libc::WIFEXITED(status) {
        Outcome::Exited(libc::WEXITSTATUS(status))
    } else {
        Outcome::Signaled(libc::WTERMSIG(status))
    };

    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // SAFETY: O_NONBLOCK on our own read end so a leaked writer cannot hang us.
    unsafe { libc::fcntl(rd, libc::F_SETFL, libc::O_NONBLOCK) };
    loop {
        // SAFETY: reading into a valid buffer of the given length.
        let n = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: closing our read end.
    unsafe { libc::close(rd) };
    (outcome, String::from_utf8_lossy(&out).into_owned())
}

fn assert_child_ok(filtered: bool, body: impl FnOnce(&mut Report)) {
    let (outcome, report) = in_child(filtered, body);
    assert_eq!(outcome, Outcome::Exited(0), "child failed:\n{report}");
}

fn sys(nr: libc::c_long, args: [u64; 6]) -> libc::c_long {
    // SAFETY: callers pass arguments that are invalid or harmless for `nr`
    // (bad pointers make the kernel answer EFAULT; it never writes to them).
    unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) }
}

#[test]
fn namespace_creation_is_denied() {
    assert_child_ok(true, |r| {
        for (name, flag) in [
            ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
            ("CLONE_NEWNS", libc::CLONE_NEWNS),
            ("CLONE_NEWPID", libc::CLONE_NEWPID),
            ("CLONE_NEWNET", libc::CLONE_NEWNET),
            ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
            ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
            ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
            ("CLONE_NEWTIME", CLONE_NEWTIME),
        ] {
            // SAFETY: unshare takes only flags.
            let ret = unsafe { libc::unshare(flag) };
            let _ = writeln!(r, "unshare({name})");
            r.expect_errno(name, ret.into(), libc::EPERM);
            // SAFETY: as above.
            let ret = unsafe { libc::unshare(flag | libc::CLONE_FILES) };
            r.expect_errno("unshare(NEW* | CLONE_FILES)", ret.into(), libc::EPERM);

            // Raw clone(2) with the namespace flag: must fail before creating a child.
            let ret = sys(
                libc::SYS_clone,
                [(flag | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0],
            );
            if ret == 0 {
                // SAFETY: we are an unexpected grandchild; leave immediately.
                unsafe { libc::_exit(0) };
            }
            if ret > 0 {
                // SAFETY: reap the unexpected grandchild.
                unsafe { libc::waitpid(ret as libc::pid_t, std::ptr::null_mut(), 0) };
            }
            r.expect_errno("clone(NEW*)", ret, libc::EPERM);
        }
        // Non-namespace unshare keeps working.
        // SAFETY: unshare takes only flags.
        r.expect_ok(
            "unshare(CLONE_FILES)",
            unsafe { libc::unshare(libc::CLONE_FILES) }.into(),
        );
        // SAFETY: as above.
        r.expect_ok(
            "unshare(CLONE_FS)",
            unsafe { libc::unshare(libc::CLONE_FS) }.into(),
        );
        // setns is denied outright (EBADF without the filter).
        // SAFETY: invalid fd; setns only takes integers.
        r.expect_errno("setns", unsafe { libc::setns(-1, 0) }.into(), libc::EPERM);
        // clone3 answers ENOSYS (EINVAL without the filter, for size 0).
        r.expect_errno("clone3", sys(libc::SYS_clone3, [0; 6]), libc::ENOSYS);
        // Raw clone3 with a valid struct must not create a child either.
        let mut args = [0u64; 11]; // struct clone_args (CLONE_ARGS_SIZE_VER2 = 88 bytes)
        args[4] = libc::SIGCHLD as u64; // exit_signal
        let ret = sys(libc::SYS_clone3, [args.as_mut_ptr() as u64, 88, 0, 0, 0, 0]);
        if ret == 0 {
            // SAFETY: unexpected grandchild; leave immediately.
            unsafe { libc::_exit(0) };
        }
        r.expect_errno("clone3(valid args)", ret, libc::ENOSYS);
    });
}

#[test]
fn mount_api_and_kernel_surface_are_denied() {
    assert_child_ok(true, |r| {
        // SAFETY (all calls in this test): invalid/null arguments; the kernel
        // rejects them or seccomp answers first; nothing is written to our memory.
        r.expect_errno(
            "umount2",
            unsafe { libc::umount2(CANARY_PATH.as_ptr(), 0) }.into(),
            libc::EPERM,
        );
        r.expect_errno(
            "bpf",
            sys(libc::SYS_bpf, [u64::MAX, 0, 0, 0, 0, 0]),
            libc::EPERM,
        );
        // KEYCTL_GET_KEYRING_ID(KEY_SPEC_SESSION_KEYRING, create = 0)
        r.expect_errno(
            "keyctl",
            sys(libc::SYS_keyctl, [0, (-3i64) as u64, 0, 0, 0, 0]),
            libc::EPERM,
        );
        r.expect_errno("add_key", sys(libc::SYS_add_key, [0; 6]), libc::EPERM);
        let mut params = [0u8; 120]; // struct io_uring_params
        r.expect_errno(
            "io_uring_setup",
            sys(
                libc::SYS_io_uring_setup,
                [1, params.as_mut_ptr() as u64, 0, 0, 0, 0],
            ),
            libc::EPERM,
        );
        r.expect_errno(
            "open_by_handle_at",
            sys(
                libc::SYS_open_by_handle_at,
                [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0],
            ),
            libc::EPERM,
        );
        r.expect_errno(
            "name_to_handle_at",
            sys(
                libc::SYS_name_to_handle_at,
                [libc::AT_FDCWD as u64, 0, 0, 0, 0, 0],
            ),
            libc::EPERM,
        );
        r.expect_errno(
            "perf_event_open",
            sys(libc::SYS_perf_event_open, [0; 6]),
            libc::EPERM,
        );
        r.expect_errno(
            "userfaultfd",
            sys(
                libc::SYS_userfaultfd,
                [libc::O_CLOEXEC as u64, 0, 0, 0, 0, 0],
            ),
            libc::EPERM,
        );
        r.expect_errno("fsopen", sys(libc::SYS_fsopen, [0; 6]), libc::EPERM);
        r.expect_errno(
            "open_tree",
            sys(libc::SYS_open_tree, [u64::MAX, 0, 0, 0, 0, 0]),
            libc::EPERM,
        );
        r.expect_errno("pivot_root", sys(libc::SYS_pivot_root, [0; 6]), libc::EPERM);
        r.expect_errno(
            "syslog",
            sys(libc::SYS_syslog, [3, 0, 0, 0, 0, 0]),
            libc::EPERM,
        );
    });
}

/// Every unconditionally denied syscall of the compiled policy, called with
/// all-ones arguments (invalid for every one of them), answers its errno.
#[test]
fn every_unconditional_rule_is_enforced_by_the_kernel() {
    let calls: Vec<(&'static str, libc::c_long, i32)> = program()
        .rules()
        .iter()
        .filter(|rule| rule.when.is_none())
        .map(|rule| {
            let nr = syscall_number(rule.syscall).expect("compiled rules exist on this arch");
            let errno = if rule.errno == "ENOSYS" {
                libc::ENOSYS
            } else {
                libc::EPERM
            };
            (rule.syscall, nr as libc::c_long, errno)
        })
        .collect();
    assert!(calls.len() > 40, "{}", calls.len());
    assert_child_ok(true, |r| {
        for &(name, nr, want) in &calls {
            r.expect_errno(name, sys(nr, [u64::MAX; 6]), want);
        }
    });
}

#[test]
fn personality_aslr_off_is_denied_but_query_works() {
    assert_child_ok(true, |r| {
        // SAFETY (all): personality takes one integer.
        let current = unsafe { libc::personality(0xffff_ffff) };
        r.expect_ok("personality(0xffffffff)", current.into());
        r.expect_errno(
            "personality(ADDR_NO_RANDOMIZE)",
            unsafe { libc::personality(ADDR_NO_RANDOMIZE) }.into(),
            libc::EPERM,
        );
        r.expect_ok(
            "personality(PER_LINUX)",
            unsafe { libc::personality(0) }.into(),
        );
        let after = unsafe { libc::personality(0xffff_ffff) };
        if after & ADDR_NO_RANDOMIZE as i32 != 0 {
            r.fail(format_args!("ASLR got disabled: persona {after:#x}"));
        }
    });
}

#[test]
fn terminal_injection_is_denied() {
    // SAFETY: opening a pty master; no memory involved.
    let ptm = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(ptm >= 0, "posix_openpt: {}", io::Error::last_os_error());
    assert_child_ok(true, |r| {
        let c = b'x';
        let fd = ptm as u64;
        let cp = &c as *const u8 as u64;
        r.expect_errno(
            "ioctl(TIOCSTI)",
            sys(libc::SYS_ioctl, [fd, libc::TIOCSTI, cp, 0, 0, 0]),
            libc::EPERM,
        );
        // The kernel ignores the upper half of the request; so does the filter.
        r.expect_errno(
            "ioctl(TIOCSTI | 1<<32)",
            sys(
                libc::SYS_ioctl,
                [fd, libc::TIOCSTI | (1 << 32), cp, 0, 0, 0],
            ),
            libc::EPERM,
        );
        r.expect_errno(
            "ioctl(TIOCLINUX)",
            sys(libc::SYS_ioctl, [fd, TIOCLINUX, cp, 0, 0, 0]),
            libc::EPERM,
        );
        let mut ws = [0u16; 4]; // struct winsize
        r.expect_ok(
            "ioctl(TIOCGWINSZ)",
            sys(
                libc::SYS_ioctl,
                [fd, libc::TIOCGWINSZ, ws.as_mut_ptr() as u64, 0, 0, 0],
            ),
        );
    });
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(ptm) };
}

#[test]
fn raw_and_packet_sockets_are_denied_ordinary_sockets_work() {
    assert_child_ok(true, |r| {
        let mut socket = |what: &str, domain: i32, ty: i32, proto: i32, ok: bool| {
            // SAFETY: socket takes only integers; we close what we get.
            let fd = unsafe { libc::socket(domain, ty, proto) };
            if ok {
                r.expect_ok(what, fd.into());
            } else {
                r.expect_errno(what, fd.into(), libc::EPERM);
            }
            if fd >= 0 {
                // SAFETY: closing our own fd.
                unsafe { libc::close(fd) };
            }
        };
        let eth_p_all = i32::from(0x0003u16.to_be());
        socket(
            "AF_PACKET/SOCK_RAW",
            libc::AF_PACKET,
            libc::SOCK_RAW,
            eth_p_all,
            false,
        );
        socket(
            "AF_PACKET/SOCK_DGRAM",
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            false,
        );
        socket(
            "AF_INET/SOCK_RAW|CLOEXEC",
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            1,
            false,
        );
        socket(
            "AF_INET/SOCK_RAW|NONBLOCK",
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            255,
            false,
        );
        socket(
            "AF_INET6/SOCK_RAW",
            libc::AF_INET6,
            libc::SOCK_RAW,
            58,
            false,
        );
        socket("AF_INET/SOCK_PACKET", libc::AF_INET, SOCK_PACKET, 0, false);
        socket("AF_VSOCK", libc::AF_VSOCK, libc::SOCK_STREAM, 0, false);
        socket(
            "AF_INET/SOCK_STREAM",
            libc::AF_INET,
            libc::SOCK_STREAM,
            0,
            true,
        );
        socket(
            "AF_INET/SOCK_DGRAM|CLOEXEC",
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            true,
        );
        socket(
            "AF_INET6/SOCK_STREAM",
            libc::AF_INET6,
            libc::SOCK_STREAM,
            0,
            true,
        );
        socket(
            "AF_UNIX/SOCK_STREAM",
            libc::AF_UNIX,
            libc::SOCK_STREAM,
            0,
            true,
        );
        socket(
            "AF_NETLINK/SOCK_RAW (ip)",
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            0,
            true,
        );
    });
}

extern "C" fn thread_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    arg
}

#[test]
fn ordinary_process_and_thread_creation_still_work() {
    let sh = CString::new("/bin/sh").expect("no NUL");
    let dash_c = CString::new("-c").expect("no NUL");
    // Runs a pipeline, so the shell forks and execs under the filter as well.
    let script = CString::new("echo ok | cat >/dev/null && exit 3").expect("no NUL");
    assert_child_ok(true, move |r| {
        // SAFETY (all calls below): plain process-management syscalls on our
        // own children; grandchildren only `_exit` or `execv`.
        r.expect_ok("getpid", unsafe { libc::getpid() }.into());

        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(7) };
        }
        r.expect_ok("fork", pid.into());
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7) {
            r.fail(format_args!("forked child: status {status:#x}"));
        }

        // vfork-style clone with SIGCHLD only (what posix_spawn falls back to).
        let pid = sys(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]);
        if pid == 0 {
            unsafe { libc::_exit(8) };
        }
        r.expect_ok("clone(SIGCHLD)", pid);
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };

        // pthread_create: glibc tries clone3 (ENOSYS) and falls back to clone.
        let mut thread: libc::pthread_t = 0;
        let rc = unsafe {
            libc::pthread_create(
                &mut thread,
                std::ptr::null(),
                thread_main,
                42usize as *mut libc::c_void,
            )
        };
        if rc != 0 {
            r.fail(format_args!("pthread_create: {rc}"));
        } else {
            let mut out: *mut libc::c_void = std::ptr::null_mut();
            unsafe { libc::pthread_join(thread, &mut out) };
            if out as usize != 42 {
                r.fail(format_args!("thread returned {}", out as usize));
            }
        }

        // execve works, and the exec'd shell can fork/exec in turn.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let argv = [
                sh.as_ptr(),
                dash_c.as_ptr(),
                script.as_ptr(),
                std::ptr::null(),
            ];
            unsafe {
                libc::execv(sh.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3) {
            r.fail(format_args!("/bin/sh under the filter: status {status:#x}"));
        }
    });
}

#[test]
fn debugging_syscalls_stay_allowed() {
    assert_child_ok(true, |r| {
        // SAFETY (all): operations on our own process and our own child,
        // which is killed and reaped at the end.
        let me = unsafe { libc::getpid() };
        let src = [1u8, 2, 3, 4];
        let mut dst = [0u8; 4];
        let local = libc::iovec {
            iov_base: dst.as_mut_ptr().cast(),
            iov_len: 4,
        };
        let remote = libc::iovec {
            iov_base: src.as_ptr() as *mut libc::c_void,
            iov_len: 4,
        };
        let n = unsafe { libc::process_vm_readv(me, &local, 1, &remote, 1, 0) };
        r.expect_ok("process_vm_readv", n as libc::c_long);
        if dst != src {
            r.fail(format_args!("process_vm_readv copied {dst:?}"));
        }
        let kcmp = sys(libc::SYS_kcmp, [me as u64, me as u64, 0, 0, 0, 0]); // KCMP_FILE 0 vs 0
        if kcmp == -1 && errno() == libc::EPERM {
            r.fail(format_args!("kcmp denied"));
        }

        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                unsafe { libc::pause() };
            }
        }
        let ret = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) };
        r.expect_ok("ptrace(PTRACE_ATTACH)", ret);
        if ret == 0 {
            let mut status = 0;
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if !libc::WIFSTOPPED(status) {
                r.fail(format_args!("tracee not stopped: {status:#x}"));
            }
            let ret = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
            r.expect_ok("ptrace(PTRACE_DETACH)", ret);
        }
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    });
}

#[test]
fn unknown_syscall_numbers_get_enosys() {
    let ceiling = program().unknown_syscall_ceiling().expect("ceiling is on") as u64;
    assert_child_ok(true, |r| {
        let nr = (ceiling + 1) as libc::c_long;
        r.expect_errno("ceiling + 1", sys(nr, [0; 6]), libc::ENOSYS);
        r.expect_errno("nr 1000", sys(1000, [0; 6]), libc::ENOSYS);
        // nr -1 passes the guard; the kernel itself answers ENOSYS.
        r.expect_errno("nr -1", sys(-1, [0; 6]), libc::ENOSYS);
    });
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_abi_syscall_kills_the_process() {
    let (outcome, report) = in_child(true, |_| {
        // x32 getpid. Must never return.
        sys(0x4000_0000 | libc::SYS_getpid, [0; 6]);
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS), "{report}");
}

#[cfg(target_arch = "x86_64")]
fn int80_getpid() -> i32 {
    let ret: i32;
    // SAFETY: `int 0x80` with eax = 20 is the i386 getpid(), which takes no
    // arguments and touches no memory; the kernel clobbers r8-r11 for 64-bit
    // callers of int 0x80, declared below.
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("eax") 20i32 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "x86_64")]
#[test]
fn foreign_arch_syscall_kills_the_process() {
    // Without the filter: works where the kernel has IA32 emulation enabled.
    let (baseline, _) = in_child(false, |r| {
        // SAFETY: getpid takes no arguments.
        let me = unsafe { libc::getpid() };
        if int80_getpid() != me {
            r.fail(format_args!("int 0x80 getpid mismatch"));
        }
    });
    if baseline != Outcome::Exited(0) {
        eprintln!("skipping: kernel has no IA32 emulation ({baseline:?})");
        return;
    }
    let (outcome, report) = in_child(true, |_| {
        int80_getpid();
    });
    assert_eq!(outcome, Outcome::Signaled(libc::SIGSYS), "{report}");
}

/// Without the filter the same probes succeed or fail differently, so the
/// filtered results above really come from the filter.
#[test]
fn baseline_without_filter_differs() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root (unprivileged mount fails with EPERM anyway)");
        return;
    }
    assert_child_ok(false, |r| {
        // SAFETY: valid strings; the target does not exist.
        let ret = unsafe {
            libc::mount(
                c"none".as_ptr(),
                CANARY_PATH.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if ret != -1 || errno() == libc::EPERM {
            r.fail(format_args!(
                "unfiltered mount: ret={ret} errno={}",
                errno()
            ));
        }
        let ret = sys(libc::SYS_clone3, [0; 6]);
        if ret != -1 || errno() == libc::ENOSYS {
            r.fail(format_args!(
                "unfiltered clone3: ret={ret} errno={}",
                errno()
            ));
        }
        // SAFETY: personality takes one integer.
        let ret = unsafe { libc::personality(ADDR_NO_RANDOMIZE) };
        if ret < 0 && errno() == libc::EPERM {
            r.fail(format_args!(
                "unfiltered personality(ADDR_NO_RANDOMIZE) got EPERM"
            ));
        }
    });
}

/// The filter survives `execve`: re-run this test binary under the filter and
/// let a probe test check it from a fresh (multi-threaded Rust) process.
#[test]
fn filter_survives_execve() {
    let exe = CString::new(
        std::env::current_exe()
            .expect("current_exe")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("no NUL in path");
    let args: Vec<CString> = [
        "kernel-test",
        "--exact",
        "probe_after_execve",
        "--nocapture",
        "--test-threads=1",
    ]
    .iter()
    .map(|a| CString::new(*a).expect("no NUL"))
    .collect();
    let env = CString::new("AIRLOCK_SECCOMP_PROBE=1").expect("no NUL");
    let path = CString::new("PATH=/usr/bin:/bin").expect("no NUL");
    let (outcome, report) = in_child(true, |r| {
        let mut argv: [*const libc::c_char; 6] = [std::ptr::null(); 6];
        for (slot, a) in argv.iter_mut().zip(&args) {
            *slot = a.as_ptr();
        }
        let envp = [env.as_ptr(), path.as_ptr(), std::ptr::null()];
        // SAFETY: the probe's output goes to the report pipe (shown only on
        // failure, and kept out of this harness's own output); then exec with
        // NUL-terminated argv/envp arrays of valid C strings.
        unsafe {
            libc::dup2(r.pipe, 1);
            libc::dup2(r.pipe, 2);
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        r.fail(format_args!("execve failed: errno {}", errno()));
    });
    assert_eq!(
        outcome,
        Outcome::Exited(0),
        "probe under the filter failed:\n{report}"
    );
}

/// Runs only when re-executed by `filter_survives_execve`.
#[test]
fn probe_after_execve() {
    if std::env::var_os("AIRLOCK_SECCOMP_PROBE").is_none() {
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "not in seccomp filter mode"
    );
    // SAFETY: unshare takes only flags.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    assert_eq!((ret, errno()), (-1, libc::EPERM), "unshare(CLONE_NEWUSER)");
    // std threads (pthread_create -> clone3 ENOSYS -> clone) and std::process
    // (posix_spawn, same fallback) work in a real Rust program under the filter.
    let t = std::thread::spawn(|| 6 * 7);
    assert_eq!(t.join().expect("thread"), 42);
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "echo spawned"])
        .output()
        .expect("spawn /bin/sh under the filter");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "spawned");
    println!("probe ok");
}
