//! The syscall edge: fd-relative file operations that never follow a symlink.
//!
//! Every path below a root is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` from an `O_PATH` descriptor of the root, so `..`, absolute paths and
//! symlinks (anywhere in the path, planted by the agent in its layer or on the host) make the
//! resolution fail instead of leaving the root. Final components are then handled with `*at`
//! calls that do not follow symlinks either.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A relative path made only of normal components (no `..`, `.`, root, or empty path).
pub fn check_rel(p: &Path) -> Result<(), &'static str> {
    if p.as_os_str().is_empty() {
        return Err("empty path");
    }
    if p.as_os_str().as_bytes().contains(&0) {
        return Err("contains a NUL byte");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err("contains '..'"),
            Component::CurDir => return Err("contains '.'"),
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
        }
    }
    Ok(())
}

/// What `lstat` says, reduced to what review needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub mode: u32,
    pub size: u64,
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stat {
    fn from(st: &libc::stat) -> Stat {
        Stat {
            mode: st.st_mode,
            size: st.st_size as u64,
            ino: st.st_ino,
            dev: st.st_dev,
            rdev: st.st_rdev,
            mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
            ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
        }
    }
    fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.fmt() == libc::S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.fmt() == libc::S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.fmt() == libc::S_IFLNK
    }
    /// An overlayfs whiteout: a character device 0:0.
    pub fn is_whiteout(&self) -> bool {
        self.fmt() == libc::S_IFCHR && self.rdev == 0
    }
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// `lstat` by path; `None` if nothing is there.
pub fn lstat(p: &Path) -> io::Result<Option<Stat>> {
    let c = cstr(p.as_os_str())?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid NUL-terminated path and a buffer of the right type.
    let rc = unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) };
    match check(rc) {
        // SAFETY: lstat succeeded, so it filled the buffer.
        Ok(()) => Ok(Some(Stat::from(&unsafe { st.assume_init() }))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// When the sandbox took its copy of the entry at `p` in its upper layer: the entry's birth time
/// (set when overlayfs copied it up, or when the agent created it), or its ctime where the
/// filesystem records no birth time (always later than the copy-up).
pub fn taken_at_ns(p: &Path) -> io::Result<i128> {
    let c = cstr(p.as_os_str())?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: valid path, flags and a statx buffer owned by us.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME | libc::STATX_CTIME,
            stx.as_mut_ptr(),
        )
    };
    check(rc)?;
    // SAFETY: statx succeeded, so it filled the buffer.
    let stx = unsafe { stx.assume_init() };
    let t = if stx.stx_mask & libc::STATX_BTIME != 0 {
        stx.stx_btime
    } else {
        stx.stx_ctime
    };
    Ok(t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128)
}

const OPAQUE: [&str; 2] = ["user.overlay.opaque", "trusted.overlay.opaque"];

/// Whether an upper-layer directory is opaque (it replaced the lower directory: the host's
/// contents are hidden).
pub fn is_opaque(p: &Path) -> bool {
    let Ok(c) = cstr(p.as_os_str()) else {
        return false;
    };
    OPAQUE.iter().any(|name| {
        let n = CString::new(*name).expect("static name");
        let mut buf = [0u8; 4];
        // SAFETY: valid strings; the buffer and its length match.
        let rc =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        rc == 1 && buf[0] == b'y'
    })
}

/// Make an upper-layer directory transparent again.
pub fn remove_opaque(p: &Path) -> io::Result<()> {
    let c = cstr(p.as_os_str())?;
    for name in OPAQUE {
        let n = CString::new(name).expect("static name");
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
        if let Err(e) = check(rc)
            && e.raw_os_error() != Some(libc::ENODATA)
            && !(name.starts_with("trusted.") && e.raw_os_error() == Some(libc::EPERM))
        {
            return Err(e);
        }
    }
    if is_opaque(p) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// Random hex for temporary names.
pub fn random_hex() -> String {
    let mut b = [0u8; 6];
    // SAFETY: getrandom fills our local buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b.copy_from_slice(&(t as u64 ^ std::process::id() as u64).to_le_bytes()[..6]);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prefix of the temporary entries `apply` and `cp` create beside their targets.
pub const TEMP_PREFIX: &str = ".airlock-tmp-";

/// An `O_PATH` descriptor of a directory; everything below it is reached without following
/// symlinks and without leaving it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Open a trusted root directory (the workspace, a layer) by path.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: valid path; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `openat2` beneath this directory, no symlinks (ELOOP), no escape (EXDEV).
    fn openat2(&self, rel: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        let rel: &OsStr = if rel.as_os_str().is_empty() {
            OsStr::new(".")
        } else {
            rel.as_os_str()
        };
        let c = cstr(rel)?;
        // SAFETY: open_how is plain data; zero is a valid value for every field.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.mode = mode as u64;
        how.resolve =
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        for _ in 0..64 {
            // SAFETY: valid dirfd, NUL-terminated path and an open_how of the size we pass.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.raw(),
                    c.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: fresh descriptor we own.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
            }
            let e = io::Error::last_os_error();
            // EAGAIN: a concurrent rename somewhere on the system; retry.
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                return Err(e);
            }
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// The directory at `rel` below this one (empty: this one).
    pub fn subdir(&self, rel: &Path) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.openat2(rel, libc::O_PATH | libc::O_DIRECTORY, 0)?,
        })
    }

    /// Open a file below this directory (never through a symlink) for reading.
    pub fn open_read(&self, rel: &Path) -> io::Result<File> {
        let fd = self.openat2(rel, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK, 0)?;
        let f = File::from(fd);
        // Clear O_NONBLOCK (it only guards against blocking on a FIFO at open).
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
        Ok(f)
    }

    /// `lstat` of an entry of this directory; `None` if absent.
    pub fn lstat(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: valid dirfd, name and buffer.
        let rc = unsafe {
            libc::fstatat(
                self.raw(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(rc) {
            // SAFETY: fstatat succeeded, so it filled the buffer.
            Ok(()) => Ok(Some(Stat::from(&unsafe { st.assume_init() }))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn readlink(&self, name: &OsStr) -> io::Result<OsString> {
        let c = cstr(name)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: valid dirfd and name; the buffer and its length match.
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(OsString::from_vec(buf))
    }

    pub fn unlink(&self, name: &OsStr, dir: bool) -> io::Result<()> {
        let c = cstr(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: valid dirfd and name.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), flags) })
    }

    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and name.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })
    }

    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        let t = cstr(target)?;
        let c = cstr(name)?;
        // SAFETY: valid strings and dirfd.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })
    }

    /// `renameat2` within this directory; `exchange` swaps the two entries atomically.
    pub fn rename(&self, from: &OsStr, to: &OsStr, exchange: bool) -> io::Result<()> {
        let f = cstr(from)?;
        let t = cstr(to)?;
        let flags = if exchange { libc::RENAME_EXCHANGE } else { 0 };
        // SAFETY: valid dirfds and names.
        check(unsafe { libc::renameat2(self.raw(), f.as_ptr(), self.raw(), t.as_ptr(), flags) })
    }

    /// chmod an entry without following a symlink (fchmodat2 with AT_SYMLINK_NOFOLLOW).
    pub fn chmod(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid dirfd and name; fchmodat2 takes (dirfd, path, mode, flags).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                self.raw(),
                c.as_ptr(),
                mode as libc::mode_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        // Older kernels: open without following, then fchmod through the descriptor.
        let fd = self.openat2(Path::new(name), libc::O_PATH, 0)?;
        let st = self.lstat(name)?;
        if st.map(|s| s.is_symlink()).unwrap_or(true) {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let p = cstr(OsStr::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))?;
        // SAFETY: valid path to our own O_PATH descriptor (a regular file or directory).
        check(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) })
    }

    /// Create a new, empty temporary file in this directory (mode 0600).
    pub fn create_temp(&self) -> io::Result<(OsString, File)> {
        loop {
            let name = OsString::from(format!("{TEMP_PREFIX}{}", random_hex()));
            let c = cstr(&name)?;
            // SAFETY: valid dirfd and name; the descriptor is owned below.
            let fd = unsafe {
                libc::openat(
                    self.raw(),
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd >= 0 {
                // SAFETY: fresh descriptor we own.
                return Ok((name, unsafe { File::from_raw_fd(fd) }));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
    }

    /// A fresh temporary name in this directory (for symlinks and directories).
    pub fn temp_name() -> OsString {
        OsString::from(format!("{TEMP_PREFIX}{}", random_hex()))
    }
}

/// fchmod an open file.
pub fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a descriptor we own.
    check(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) })
}

/// lstat of an open file.
pub fn fstat(f: &File) -> io::Result<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid descriptor and buffer.
    check(unsafe { libc::fstat(f.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the buffer.
    Ok(Stat::from(&unsafe { st.assume_init() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths() {
        assert!(check_rel(Path::new("a/b")).is_ok());
        assert!(check_rel(Path::new("../a")).is_err());
        assert!(check_rel(Path::new("a/../b")).is_err());
        assert!(check_rel(Path::new("/etc")).is_err());
        assert!(check_rel(Path::new("")).is_err());
    }

    #[test]
    fn beneath_refuses_symlinks_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("l")).unwrap();
        std::os::unix::fs::symlink("d", t.path().join("inner")).unwrap();
        let root = Dir::open(t.path()).unwrap();
        assert!(root.subdir(Path::new("d")).is_ok());
        assert!(root.open_read(Path::new("d/f")).is_ok());
        for bad in ["l", "inner", "../", "/etc", "l/passwd", "inner/f"] {
            assert!(root.subdir(Path::new(bad)).is_err(), "{bad}");
            assert!(root.open_read(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
