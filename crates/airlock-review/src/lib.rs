//! Review and apply what an agent changed in a copy-on-write workspace (issue 4).
//!
//! A `cow` sandbox's workspace is an overlayfs: lower = the host directory, upper = the
//! sandbox's layer (`layers/workspace/upper`). Mounted with `userxattr`, so whiteouts are
//! character devices 0:0 and opaque directories carry `user.overlay.opaque=y`; `redirect_dir`
//! and `metacopy` are off (user namespace), so every upper entry is complete.
//!
//! - [`scan()`] compares the upper layer with the host: added, modified, deleted (whiteouts;
//!   opaque directories delete the host contents they do not re-add), mode changes, symlinks,
//!   type changes; each with its [`Category`] (normal, sensitive, `.git` internals). Entries
//!   that agree with the host (a `touch`, an already applied change) are not changes.
//! - [`diff::Sides::render`]: unified text diffs; binary and large files summarised.
//! - [`apply()`]: writes selected changes into the host workspace.
//! - [`prune`]: afterwards, drops from the upper layer what now agrees with the host.
//! - [`empty_dir`]: `reset`. [`copy`]: `airlock cp`.
//!
//! # Safety of `apply`
//! Every host path is resolved from an `O_PATH` descriptor of the workspace with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: a symlink anywhere
//! in a parent path (planted on the host, or swapped in after the diff) and any `..` or absolute
//! trick fail the change instead of leaving the workspace. The last component is handled with
//! `*at` calls that do not follow symlinks: a sandbox symlink is recreated as a symlink with the
//! same target (never followed, never resolved), a file is written to a temporary file in the
//! destination directory (`.airlock-tmp-*`), given its mode (setuid/setgid dropped), synced and
//! renamed over the target, so a killed apply leaves each file old or new (at worst a stray
//! temporary file). A directory in the way of a file is swapped out with
//! `RENAME_EXCHANGE` and removed. Deletions use `unlinkat`. The sandbox side is read the same
//! way (beneath the upper layer, no symlinks).
//!
//! # The conflict rule
//! "The host changed since the sandbox took its copy": overlayfs copies a host file up into the
//! upper layer the first time the agent modifies it (or creates the entry there when the agent
//! creates or deletes something). That copy-up creates the upper entry, so the upper entry's
//! **birth time** (`statx` `STATX_BTIME`) is the moment the sandbox took its copy. A change is a
//! conflict, skipped unless `force`, when the host entry's **ctime** is not earlier than that
//! birth time: any write, chmod, rename-over or replacement on the host after the copy-up moves ctime
//! (and, unlike mtime, ctime cannot be set back by tools). A host edit *before* the copy-up is
//! not a conflict: the agent started from the edited version. Additionally, the host entry must
//! still be what [`scan()`] saw (same inode, type, size, mtime, ctime), which catches changes
//! between a diff and its apply when the library is used in two steps. Directories have no
//! content: only their type, inode and mode are compared. Limits: timestamps are the kernel's
//! (coarse, a few ms), so a host change in the same tick as the copy-up cannot be told from one
//! just before it: both count as conflicts (the safe side; `--force` overrides); if the agent
//! replaced the file (write to a new file + rename, as editors do) the birth time is that of its
//! last replacement, so a host edit between the first copy-up and the replacement is missed
//! (the agent's replacement may however have been based on the host's edit, which the overlay
//! shows through until copy-up); where the filesystem has no birth time the upper entry's ctime
//! is used, which is later than the copy-up (so host changes between the copy-up and the
//! agent's last change are missed). A host change that makes the host identical to the
//! sandbox's version is not a change at all.
//!
//! # Running sandboxes
//! Changing an overlay's upper or lower layer while it is mounted is undefined (kernel
//! documentation: "offline changes, when the overlay is not mounted, are allowed"). `apply`
//! (which writes the lower and prunes the upper), `reset` and copying *into* a `cow` workspace
//! therefore require a stopped sandbox; the CLI refuses with "stop it first" rather than
//! stopping it (which would kill the agent's work in progress). Reading (`diff`, copying out)
//! works on a running sandbox, as a best-effort snapshot.

pub mod apply;
pub mod copy;
pub mod diff;
pub mod fsx;
pub mod scan;

use std::path::{Path, PathBuf};

pub use apply::{ApplyOptions, ApplyReport, Outcome, apply, prune};
pub use scan::{Category, Change, ChangeKind, Entry, EntryKind, classify, scan, select};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("{0}")]
    Refused(String),
}

impl ReviewError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ReviewError {
        ReviewError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ReviewError>;

/// Remove everything inside `dir` (never following symlinks; copes with the mode-000
/// directories overlayfs leaves in its work directory), keeping `dir` itself.
pub fn empty_dir(dir: &Path) -> Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ReviewError::io(dir, e)),
    };
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        let st = fsx::lstat(&p).map_err(|x| ReviewError::io(&p, x))?;
        if st.is_some_and(|s| s.is_dir()) {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
            n += empty_dir(&p)?;
            std::fs::remove_dir(&p).map_err(|x| ReviewError::io(&p, x))?;
        } else {
            std::fs::remove_file(&p).map_err(|x| ReviewError::io(&p, x))?;
        }
        n += 1;
    }
    Ok(n)
}

/// Check a user-supplied path (relative to the workspace) and normalise it.
pub fn user_rel(path: &Path, workspace: &Path) -> Result<PathBuf> {
    let bad = |reason: &str| ReviewError::BadPath {
        path: path.display().to_string(),
        reason: reason.into(),
    };
    let rel = if path.is_absolute() {
        path.strip_prefix(workspace)
            .map_err(|_| bad("is outside the workspace"))?
            .to_path_buf()
    } else {
        path.to_path_buf()
    };
    // "./x" and "x/" are fine; ".." never is.
    let rel: PathBuf = rel
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() {
        return Ok(rel);
    }
    fsx::check_rel(&rel).map_err(bad)?;
    Ok(rel)
}
