//! Idmapped mounts: how a root invoker's sandbox sees host files with their own owners although
//! its ids are shifted onto an unprivileged host range (see [`crate::namespaces::IdMap`]).
//!
//! The supervisor, which holds the host's `CAP_SYS_ADMIN`, clones each host path the sandbox
//! needs (system directories, template, layers, workspace, extra binds) as a detached mount
//! (`open_tree(OPEN_TREE_CLONE)`, not recursive, like the plain binds it replaces) and gives it
//! the sandbox's user namespace as its idmap (`mount_setattr(MOUNT_ATTR_IDMAP)`): a file owned by
//! host uid N appears as uid N inside, and what root inside writes lands on disk as uid 0. The
//! descriptors go to the sandbox's init with the "go" message; it attaches them under a staging
//! directory beside its new root (`move_mount`), builds its filesystem from there, and the
//! staging mounts go with the host's root at `pivot_root` (overlays and binds keep their own
//! references).
//!
//! Where a filesystem cannot be idmapped (no `FS_ALLOW_IDMAP`: network and FUSE filesystems,
//! device nodes), the clone is used as is: its files appear owned by `nobody` inside, which never
//! grants more than before. The sandbox's `inspect` lists such paths.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{NsError, Result};

/// Host paths cloned for the sandbox, in the order of their descriptors.
#[derive(Debug)]
pub struct Sources {
    pub fds: Vec<OwnedFd>,
    /// Paths whose filesystem refused an idmap (used as plain clones).
    pub not_idmapped: Vec<PathBuf>,
}

/// Clone every path in `paths` as a detached mount carrying the idmap of the user namespace of
/// process `pid` (the sandbox's init, whose maps are written).
pub fn clone_sources(pid: i32, paths: &[PathBuf]) -> Result<Sources> {
    let userns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| NsError::sys("opening the sandbox's user namespace", e))?;
    let mut fds = Vec::with_capacity(paths.len());
    let mut not_idmapped = Vec::new();
    for p in paths {
        let fd = open_tree(p)?;
        if set_attr(&fd, Some(userns.as_raw_fd())).is_err() {
            // EINVAL: this filesystem (or this kernel, before 5.12) cannot be idmapped.
            set_attr(&fd, None).map_err(|e| {
                NsError::sys(format!("making the clone of {} private", p.display()), e)
            })?;
            not_idmapped.push(p.clone());
        }
        fds.push(fd);
    }
    Ok(Sources { fds, not_idmapped })
}

fn open_tree(p: &Path) -> Result<OwnedFd> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| NsError::Setup(format!("path contains a NUL byte: {}", p.display())))?;
    // SAFETY: open_tree with a valid NUL-terminated path and flags; the fd is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(NsError::path(p, std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Make the detached mount `fd` private (nothing propagates to or from the host's mounts),
/// `nodev` and `nosuid`, and, with `userns`, idmapped.
fn set_attr(fd: &OwnedFd, userns: Option<RawFd>) -> std::io::Result<()> {
    let attr = libc::mount_attr {
        // Never a device node or a set-id program through a host path: root inside owns what
        // host root owns there (a device node in the workspace would be raw hardware).
        attr_set: libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOSUID
            | if userns.is_some() {
                libc::MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: userns.unwrap_or(0) as u64,
    };
    // SAFETY: mount_setattr on our fd with a pointer to a local struct and its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attach each descriptor of `fds` at `dir/<index>` (a directory or an empty file, matching
/// what it is). Runs in the sandbox's mount namespace.
pub fn stage(fds: Vec<OwnedFd>, dir: &Path) -> Result<()> {
    mkdir(dir, 0o700)?;
    for (i, fd) in fds.into_iter().enumerate() {
        let target = dir.join(i.to_string());
        // SAFETY: fstat fills the zeroed struct for our fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(NsError::last("inspecting a staged mount"));
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            mkdir(&target, 0o700)?;
        } else {
            std::fs::File::create(&target).map_err(|e| NsError::path(&target, e))?;
        }
        let t = CString::new(target.as_os_str().as_bytes()).expect("index paths have no NUL");
        // SAFETY: move_mount of our detached mount onto a path we just created.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc != 0 {
            return Err(NsError::last(format!(
                "attaching a host path at {}",
                target.display()
            )));
        }
    }
    Ok(())
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(p)
        .map_err(|e| NsError::path(p, e))
}

/// Where a host path is once its source is staged: the longest source that contains `p`
/// (`sources[i]` is at `dir/i`), or `p` itself when none does.
pub fn staged_path(sources: &[PathBuf], dir: &Path, p: &Path) -> PathBuf {
    sources
        .iter()
        .enumerate()
        .filter(|(_, s)| p.starts_with(s))
        .max_by_key(|(_, s)| s.as_os_str().len())
        .map(|(i, s)| {
            let rest = p.strip_prefix(s).unwrap_or(Path::new(""));
            let base = dir.join(i.to_string());
            if rest.as_os_str().is_empty() {
                base
            } else {
                base.join(rest)
            }
        })
        .unwrap_or_else(|| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_path_picks_the_longest_source() {
        let sources = vec![
            PathBuf::from("/usr"),
            PathBuf::from("/srv"),
            PathBuf::from("/srv/project"),
        ];
        let dir = Path::new(".stage");
        for (path, staged) in [
            ("/usr", ".stage/0"),
            ("/usr/lib/x", ".stage/0/lib/x"),
            // The longest source that holds the path.
            ("/srv/project/src", ".stage/2/src"),
            ("/srv/other", ".stage/1/other"),
            // Not under any source, and a sibling whose name merely starts the same way.
            ("/usrlocal", "/usrlocal"),
            ("/dev/null", "/dev/null"),
        ] {
            assert_eq!(
                staged_path(&sources, dir, Path::new(path)),
                PathBuf::from(staged),
                "{path}"
            );
        }
    }
}
