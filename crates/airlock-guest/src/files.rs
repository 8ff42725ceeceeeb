//! Files in and out of the sandbox. Paths are the sandbox's: they are resolved inside its root,
//! so neither `..` nor a symlink (absolute or not) reaches the agent's own filesystem.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, check, cstring};
use crate::{Context, GuestError, Result};

/// Open a regular file of the sandbox for reading.
pub fn open_for_reading(root: &Path, path: &str) -> Result<File> {
    let fd = sys::open_in_root(
        root,
        path,
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
        0,
    )
    .context(|| format!("cannot read {path}"))?;
    let file = File::from(fd);
    let meta = file.metadata().context(|| format!("cannot read {path}"))?;
    if !meta.is_file() {
        return Err(GuestError::Refused(format!(
            "cannot read {path}: not a regular file"
        )));
    }
    Ok(file)
}

/// A file being written: data goes to a temporary file beside the target, which replaces the
/// target only when the transfer is complete.
pub struct Upload {
    path: String,
    dir: OwnedFd,
    name: CString,
    temp: CString,
    file: File,
}

impl Upload {
    /// Start writing `path` (created or replaced) with permissions `mode`. The new file gets the
    /// owner of the file it replaces, or else of its directory.
    pub fn create(root: &Path, path: &str, mode: u32) -> Result<Upload> {
        let what = || format!("cannot write {path}");
        let p = Path::new(path);
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| *n != "." && !path.ends_with('/'))
            .ok_or_else(|| GuestError::Refused(format!("cannot write {path}: not a file name")))?;
        let parent = p
            .parent()
            .and_then(|d| d.to_str())
            .filter(|d| !d.is_empty())
            .unwrap_or("/");
        let dir =
            sys::open_in_root(root, parent, libc::O_PATH | libc::O_DIRECTORY, 0).context(what)?;
        let name_c = cstring(name, "the file name")?;

        // SAFETY: stat is plain data; fstatat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid dirfd, a NUL-terminated single name and a writable stat.
        let existing = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name_c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } == 0;
        if existing && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(GuestError::Refused(format!(
                "cannot write {path}: it is a directory"
            )));
        }
        if !existing || st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            // SAFETY: a valid descriptor (O_PATH works with AT_EMPTY_PATH) and a writable stat.
            check(unsafe {
                libc::fstatat(dir.as_raw_fd(), c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH)
            })
            .context(what)?;
        }
        let (owner, group) = (st.st_uid, st.st_gid);

        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let temp = format!(
            ".{name}.airlock-{}-{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        let temp = cstring(&temp, "the file name")?;
        // SAFETY: a valid dirfd and a NUL-terminated single name; returns a fresh descriptor.
        let fd = check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                temp.as_ptr(),
                libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
                0o600,
            )
        })
        .context(what)?;
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let upload = Upload {
            path: path.to_owned(),
            dir,
            name: name_c,
            temp,
            file,
        };
        // Owner first (chown clears set-id bits), then the mode, exactly (no umask). Changing the
        // owner may be refused (not root, or a share that maps ids); the file is then ours.
        // SAFETY: fchown/fchmod on a descriptor we own.
        unsafe { libc::fchown(upload.file.as_raw_fd(), owner, group) };
        // SAFETY: as above.
        if let Err(e) = check(unsafe { libc::fchmod(upload.file.as_raw_fd(), mode & 0o7777) }) {
            upload.abort();
            return Err(e).context(what);
        }
        Ok(upload)
    }

    /// Append a piece of the content.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .context(|| format!("cannot write {}", self.path))
    }

    /// Put the file in place.
    pub fn finish(self) -> Result<()> {
        let what = || format!("cannot write {}", self.path);
        let dir = self.dir.as_raw_fd();
        // SAFETY: a valid dirfd and NUL-terminated single names.
        let renamed =
            check(unsafe { libc::renameat(dir, self.temp.as_ptr(), dir, self.name.as_ptr()) });
        if let Err(e) = renamed {
            let what = what();
            self.abort();
            return Err(e).context(|| what);
        }
        Ok(())
    }

    /// Give up: remove the temporary file.
    pub fn abort(self) {
        // SAFETY: a valid dirfd and a NUL-terminated single name.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.temp.as_ptr(), 0) };
    }
}

/// Read the whole of `file` in pieces of at most `chunk` bytes, handing each to `piece`.
pub fn read_in_pieces(
    mut file: File,
    chunk: usize,
    mut piece: impl FnMut(Vec<u8>),
) -> io::Result<()> {
    use std::io::Read;
    let mut buf = vec![0u8; chunk];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => piece(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
