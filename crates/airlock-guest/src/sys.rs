//! The syscall edge: small checked wrappers over what the agent asks of the kernel.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path};
use std::time::Duration;

use crate::{Context, GuestError, Result};

/// `-1` → the errno as an error.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An OS error as the C library words it ("No such file or directory"), without Rust's
/// " (os error N)" suffix; other errors as they display.
pub fn errno_text(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

/// A C string, or a refusal naming `what` when `s` holds a NUL byte.
pub fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| GuestError::Refused(format!("{what} contains a NUL byte: {s:?}")))
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array we pass.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `mount(2)`; empty `source`, `fstype` or `data` are passed as NULL.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    let (source, target, fstype, data) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let or_null = |s: &CStr| {
        if s.is_empty() {
            std::ptr::null()
        } else {
            s.as_ptr()
        }
    };
    // SAFETY: NUL-terminated strings (or NULL) that outlive the call.
    check(unsafe {
        libc::mount(
            or_null(&source),
            target.as_ptr(),
            or_null(&fstype),
            flags,
            or_null(&data).cast(),
        )
    })?;
    Ok(())
}

/// The path through which `mount(2)` and friends reach what `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Make sure descriptors 0, 1 and 2 are open (on /dev/null if they are not), so that nothing the
/// agent opens later lands on them and gets mistaken for a standard stream.
pub fn ensure_std_fds_open() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only inspects the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        // SAFETY: opening /dev/null; the lowest free descriptor is `fd` itself.
        let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if got >= 0 && got != fd {
            // SAFETY: moving the descriptor we just opened onto the missing one.
            unsafe {
                libc::dup2(got, fd);
                libc::close(got);
            }
        }
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::from("unknown");
    }
    // SAFETY: the kernel NUL-terminates each field.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Time since boot, suspended time included.
pub fn uptime() -> Duration {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and a writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// How many processes /proc lists (kernel threads included).
pub fn process_count() -> u32 {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.as_encoded_bytes();
                    !name.is_empty() && name.iter().all(u8::is_ascii_digit)
                })
                .count() as u32
        })
        .unwrap_or(0)
}

/// Open `path` as seen from inside `root`: `..` stops at `root` and symlinks (absolute ones
/// included) resolve inside it, as if the caller were chrooted there. `openat2(RESOLVE_IN_ROOT)`
/// does it; kernels older than 5.6 get the same from a forked child that really chroots.
pub fn open_in_root(root: &Path, path: &str, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    openat2_in_root(
        root,
        path,
        flags,
        mode,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// The directory `path` inside `root` (as [`open_in_root`]), refusing with `ELOOP` any symlink
/// on the way: for mount points that must be exactly the path named. Needs `openat2` (Linux
/// 5.6; the guest kernels are newer).
pub fn open_dir_in_root_no_symlinks(root: &Path, path: &str) -> io::Result<OwnedFd> {
    openat2_in_root(
        root,
        path,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS,
    )
}

fn openat2_in_root(
    root: &Path,
    path: &str,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = if path.is_empty() { "/" } else { path };
    let path_c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let root_dir = std::fs::File::open(root)?;
    // SAFETY: open_how is plain data; zero is valid for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = resolve;
    for _ in 0..64 {
        // SAFETY: a valid dirfd, a NUL-terminated path and an open_how of the size we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root_dir.as_raw_fd(),
                path_c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // A concurrent rename somewhere: the kernel asks us to retry.
            Some(libc::EAGAIN | libc::EINTR) => continue,
            // The fallback follows symlinks: only for the lookups that allow them.
            Some(libc::ENOSYS) if resolve & libc::RESOLVE_NO_SYMLINKS == 0 => {
                return open_in_root_by_chroot(root, &path_c, flags, mode);
            }
            _ => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// `open_in_root` for kernels without `openat2`: a forked child chroots into `root`, opens the
/// path and passes the descriptor back over a socket. Needs the privilege to chroot.
pub fn open_in_root_by_chroot(
    root: &Path,
    path: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut socks = [0 as RawFd; 2];
    // SAFETY: socketpair fills the two-element array we pass.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            socks.as_mut_ptr(),
        )
    })?;
    // SAFETY: both descriptors are fresh and ours.
    let (ours, theirs) = unsafe {
        (
            OwnedFd::from_raw_fd(socks[0]),
            OwnedFd::from_raw_fd(socks[1]),
        )
    };
    // The message buffer for the child, built before fork (no allocation after it).
    let mut space = [0u64; 8];
    // SAFETY: fork; the child only makes async-signal-safe calls on data prepared above, then
    // _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child; chroot/chdir/open/sendmsg/_exit on prepared buffers.
        unsafe {
            let mut errno = 0i32;
            let mut fd = -1;
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                errno = *libc::__errno_location();
            } else {
                fd = libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode);
                if fd < 0 {
                    errno = *libc::__errno_location();
                }
            }
            let mut iov = libc::iovec {
                iov_base: (&mut errno as *mut i32).cast(),
                iov_len: 4,
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if fd >= 0 {
                msg.msg_control = space.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(4) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(4) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
            }
            libc::sendmsg(theirs.as_raw_fd(), &msg, 0);
            libc::_exit(0);
        }
    }
    drop(theirs);
    let mut errno = 0i32;
    let mut iov = libc::iovec {
        iov_base: (&mut errno as *mut i32).cast(),
        iov_len: 4,
    };
    // SAFETY: msghdr is plain data; recvmsg fills the buffers it points to, which outlive it.
    let received = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&space) as _;
        let n = libc::recvmsg(ours.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        let mut fd = None;
        if n >= 0 {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null()
                && (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            {
                fd = Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<i32>(),
                )));
            }
        }
        (n, fd)
    };
    // The reaper may have collected the child already; then this finds nothing, which is fine.
    // SAFETY: waiting for our own child; a NULL status pointer is allowed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL) };
    match received {
        (n, _) if n < 0 => Err(io::Error::last_os_error()),
        (_, Some(fd)) => Ok(fd),
        (_, None) if errno != 0 => Err(io::Error::from_raw_os_error(errno)),
        (_, None) => Err(io::Error::other(
            "the chrooted helper died before answering",
        )),
    }
}

/// The normal components of an absolute path inside a root, refusing `..` and `.`.
pub fn components_in_root(path: &str) -> Result<Vec<&str>> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(GuestError::Refused(format!(
            "{path:?} is not an absolute path"
        )));
    }
    p.components()
        .filter(|c| !matches!(c, Component::RootDir))
        .map(|c| match c {
            Component::Normal(s) => s
                .to_str()
                .ok_or_else(|| GuestError::Refused(format!("{path:?} is not UTF-8"))),
            _ => Err(GuestError::Refused(format!(
                "{path:?} must not contain '.' or '..'"
            ))),
        })
        .collect()
}

/// `mkdir -p` of an absolute `path` inside `root`, every step resolved inside the root (a symlink
/// in the sandbox's filesystem cannot send it elsewhere); returns an `O_PATH` descriptor of the
/// directory, which `fd_path` turns into a mount target.
pub fn ensure_dir_in_root(root: &Path, path: &str) -> Result<OwnedFd> {
    let shown = || format!("{}{}", root.display(), path);
    let mut at = String::from("/");
    let mut dir = open_in_root(root, &at, libc::O_PATH | libc::O_DIRECTORY, 0)
        .context(|| format!("open {}", root.display()))?;
    for name in components_in_root(path)? {
        if !at.ends_with('/') {
            at.push('/');
        }
        at.push_str(name);
        let next = match open_in_root(root, &at, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let name_c = cstring(name, "a path")?;
                // SAFETY: a valid directory descriptor and a NUL-terminated single name.
                let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name_c.as_ptr(), 0o755) };
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e).context(|| format!("create {}", shown()));
                    }
                }
                open_in_root(root, &at, libc::O_PATH | libc::O_DIRECTORY, 0)
            }
            other => other,
        }
        .context(|| format!("open {}", shown()))?;
        dir = next;
    }
    Ok(dir)
}

/// Wait until `path` exists, polling; false when `timeout` passed first.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if path.symlink_metadata().is_ok() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_drops_the_os_error_suffix() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(errno_text(&e), "No such file or directory");
        assert_eq!(errno_text(&io::Error::other("plain")), "plain");
    }

    #[test]
    fn paths_in_root_refuse_dot_dot() {
        assert_eq!(components_in_root("/a/b/c").unwrap(), ["a", "b", "c"]);
        assert_eq!(components_in_root("/").unwrap(), Vec::<&str>::new());
        assert!(components_in_root("/a/../b").is_err());
        assert!(components_in_root("relative").is_err());
    }

    #[test]
    fn open_in_root_stays_inside() {
        let root = std::env::temp_dir().join(format!("airlock-guest-sys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "inside\n").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        let read = |p: &str| {
            let fd = open_in_root(&root, p, libc::O_RDONLY, 0).unwrap();
            std::io::read_to_string(std::fs::File::from(fd)).unwrap()
        };
        assert_eq!(read("/etc/hostname"), "inside\n");
        assert_eq!(read("/../../../etc/hostname"), "inside\n");
        assert_eq!(read("/link"), "inside\n");
        let dir = ensure_dir_in_root(&root, "/link2/x").map(|_| ());
        assert!(dir.is_ok());
        assert!(root.join("link2/x").is_dir());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let fd = open_in_root_by_chroot(&root, c"/link", libc::O_RDONLY, 0).unwrap();
            assert_eq!(
                std::io::read_to_string(std::fs::File::from(fd)).unwrap(),
                "inside\n"
            );
            let e = open_in_root_by_chroot(&root, c"/missing", libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
