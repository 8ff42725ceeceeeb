//! Writing selected changes into the host workspace, and pruning applied changes from the upper
//! layer. See the crate documentation for the rules.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::fsx::{self, Dir, Stat, check_rel};
use crate::scan::{Category, Change, ChangeKind, EntryKind, scan};
use crate::{Result, ReviewError};

#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Decide everything (policy, conflicts) but write nothing.
    pub dry_run: bool,
    /// Apply changes inside `.git` (other than hooks and config).
    pub include_git: bool,
    /// Apply changes to sensitive paths (hooks, rc files, CI, editor and agent configs).
    pub allow_sensitive: bool,
    /// Overwrite host files that changed since the sandbox took its copy.
    pub force: bool,
    /// Afterwards, remove from the upper layer what now agrees with the host (sandbox stopped!).
    pub prune_upper: bool,
}

fn ser_path<S: Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
    pub kind: ChangeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    /// Written to the host (or, with `dry_run`, would be).
    pub applied: Vec<Outcome>,
    /// Left out by policy (`.git` internals, sensitive paths).
    pub skipped: Vec<Outcome>,
    /// The host changed since the sandbox took its copy: left alone (use `force`).
    pub conflicts: Vec<Outcome>,
    /// Refused (symlink or escape on the host side) or failed.
    pub failed: Vec<Outcome>,
    /// Upper-layer entries removed afterwards because they now agree with the host.
    pub pruned: usize,
}

impl ApplyReport {
    pub fn complete(&self) -> bool {
        self.conflicts.is_empty() && self.failed.is_empty()
    }
}

/// Permission bits written to the host: setuid/setgid are dropped from files (a root invoker
/// would otherwise install a root-owned setuid program chosen by the agent).
pub fn safe_mode(e_mode: u32, dir: bool) -> u32 {
    if dir {
        e_mode & 0o7777
    } else {
        e_mode & 0o1777
    }
}

fn describe(e: &io::Error, side: &str) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => format!(
            "refused: a component of the {side} path is a symlink (symlinks are never followed)"
        ),
        Some(libc::EXDEV) => format!("refused: the {side} path leaves its root"),
        Some(libc::ENOTDIR) => format!("a component of the {side} path is not a directory"),
        Some(libc::ENOENT) => format!("its parent directory does not exist on the {side} side"),
        Some(libc::ENOTEMPTY) => {
            "the host directory is not empty (some of its contents were not applied)".into()
        }
        _ => format!("{side}: {e}"),
    }
}

enum One {
    Applied,
    Conflict(String),
}

fn when(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let ms = ns.rem_euclid(1_000_000_000) / 1_000_000;
    format!("{secs}.{ms:03}")
}

/// The conflict rule (see the crate docs).
fn conflict(c: &Change, host: Option<Stat>) -> Option<String> {
    match (&c.old, host) {
        (None, None) => None,
        (None, Some(_)) => {
            Some("the host now has an entry at this path (created after the diff)".into())
        }
        (Some(_), None) if c.kind == ChangeKind::Deleted => None,
        (Some(_), None) => Some("the host deleted it after the diff".into()),
        (Some(o), Some(h)) => {
            let fmt = |m: u32| m & libc::S_IFMT;
            if o.stat.ino != h.ino || fmt(o.stat.mode) != fmt(h.mode) {
                return Some("it was replaced on the host since the diff".into());
            }
            if h.is_dir() {
                // A directory has no content of its own: only its mode matters (its times change
                // as its entries are applied).
                return (o.stat.perm() != h.perm())
                    .then(|| "its mode changed on the host since the diff".into());
            }
            if o.stat.size != h.size
                || o.stat.mtime_ns != h.mtime_ns
                || o.stat.ctime_ns != h.ctime_ns
            {
                return Some("it changed on the host since the diff".into());
            }
            // Equal is a conflict too: the kernel's timestamps are coarse (a tick, a few ms), so
            // a host change in the copy-up's tick cannot be told apart from one before it, and
            // the safe reading is that the host changed.
            if h.ctime_ns >= c.taken_at_ns {
                return Some(format!(
                    "the host copy changed (at {}) after the sandbox took its copy (at {})",
                    when(h.ctime_ns),
                    when(c.taken_at_ns)
                ));
            }
            None
        }
    }
}

struct DirMode {
    parent: Dir,
    name: PathBuf,
    mode: u32,
    path: PathBuf,
}

/// Write `changes` (from [`scan`], in its order, possibly [`crate::select`]ed) into `workspace`.
pub fn apply(
    changes: &[Change],
    upper: &Path,
    workspace: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport> {
    let up = Dir::open(upper).map_err(|e| ReviewError::io(upper, e))?;
    let ws = Dir::open(workspace).map_err(|e| ReviewError::io(workspace, e))?;
    let mut report = ApplyReport::default();
    let mut dir_modes: Vec<DirMode> = Vec::new();
    // Directories a dry run would create: what goes in them needs no host check.
    let mut would_create: BTreeSet<PathBuf> = BTreeSet::new();
    for c in changes {
        let out = |reason: Option<String>| Outcome {
            path: c.path.clone(),
            kind: c.kind,
            reason,
        };
        if let Err(why) = check_rel(&c.path) {
            report
                .failed
                .push(out(Some(format!("refused: the path {why}"))));
            continue;
        }
        match c.category {
            Category::GitInternal if !opts.include_git => {
                report
                    .skipped
                    .push(out(Some(".git internals: use --include-git".into())));
                continue;
            }
            Category::Sensitive if !opts.allow_sensitive => {
                report.skipped.push(out(Some(
                    "sensitive: review it, then use --allow-sensitive".into(),
                )));
                continue;
            }
            _ => {}
        }
        if opts.dry_run && c.path.parent().is_some_and(|p| would_create.contains(p)) {
            if c.new.as_ref().is_some_and(|e| e.kind == EntryKind::Dir) {
                would_create.insert(c.path.clone());
            }
            report.applied.push(out(None));
            continue;
        }
        let res = apply_one(c, &up, &ws, opts, &mut dir_modes);
        if opts.dry_run
            && matches!(res, Ok(One::Applied))
            && c.new.as_ref().is_some_and(|e| e.kind == EntryKind::Dir)
            && c.kind != ChangeKind::ModeChanged
        {
            would_create.insert(c.path.clone());
        }
        match res {
            Ok(One::Applied) => report.applied.push(out(None)),
            Ok(One::Conflict(why)) => report
                .conflicts
                .push(out(Some(format!("{why}; use --force to overwrite")))),
            Err(why) => report.failed.push(out(Some(why))),
        }
    }
    // Directory modes last (a read-only directory must first receive its contents), deepest first.
    for d in dir_modes.iter().rev() {
        if let Err(e) = d.parent.chmod(d.name.as_os_str(), d.mode) {
            report.failed.push(Outcome {
                path: d.path.clone(),
                kind: ChangeKind::ModeChanged,
                reason: Some(describe(&e, "host")),
            });
        }
    }
    if opts.prune_upper && !opts.dry_run {
        report.pruned = prune(upper, workspace)?;
    }
    Ok(report)
}

fn apply_one(
    c: &Change,
    up: &Dir,
    ws: &Dir,
    opts: &ApplyOptions,
    dir_modes: &mut Vec<DirMode>,
) -> std::result::Result<One, String> {
    let parent_rel = c.path.parent().unwrap_or(Path::new(""));
    let name = c.path.file_name().ok_or("refused: no file name")?;
    let parent = ws.subdir(parent_rel).map_err(|e| describe(&e, "host"))?;
    let host = parent.lstat(name).map_err(|e| describe(&e, "host"))?;
    if !opts.force
        && let Some(why) = conflict(c, host)
    {
        return Ok(One::Conflict(why));
    }
    let Some(new) = &c.new else {
        if !opts.dry_run
            && let Some(h) = host
        {
            parent
                .unlink(name, h.is_dir())
                .map_err(|e| describe(&e, "host"))?;
        }
        return Ok(One::Applied);
    };
    if new.kind == EntryKind::Other {
        return Err("special files (FIFOs, sockets, devices) are not applied".into());
    }
    if opts.dry_run {
        return Ok(One::Applied);
    }
    let uparent = up.subdir(parent_rel).map_err(|e| describe(&e, "sandbox"))?;
    match new.kind {
        EntryKind::File => {
            let mut src = up.open_read(&c.path).map_err(|e| describe(&e, "sandbox"))?;
            let st = fsx::fstat(&src).map_err(|e| e.to_string())?;
            if !st.is_file() {
                return Err("it changed in the sandbox since the diff".into());
            }
            let (tmp, mut f) = parent.create_temp().map_err(|e| describe(&e, "host"))?;
            let res = (|| -> io::Result<()> {
                io::copy(&mut src, &mut f)?;
                fsx::fchmod(&f, safe_mode(st.perm(), false))?;
                f.sync_data()
            })();
            drop(f);
            if let Err(e) = res {
                let _ = parent.unlink(&tmp, false);
                return Err(format!("writing the host copy: {e}"));
            }
            install(&parent, &tmp, name, host)?;
        }
        EntryKind::Symlink => {
            let target = uparent
                .readlink(name)
                .map_err(|e| describe(&e, "sandbox"))?;
            let tmp = Dir::temp_name();
            parent
                .symlink(&target, &tmp)
                .map_err(|e| describe(&e, "host"))?;
            install(&parent, &tmp, name, host)?;
        }
        EntryKind::Dir => {
            match host {
                Some(h) if h.is_dir() => {}
                None => parent
                    .mkdir(name, 0o700)
                    .map_err(|e| describe(&e, "host"))?,
                Some(_) => {
                    let tmp = Dir::temp_name();
                    parent
                        .mkdir(&tmp, 0o700)
                        .map_err(|e| describe(&e, "host"))?;
                    install(&parent, &tmp, name, host)?;
                }
            }
            dir_modes.push(DirMode {
                parent,
                name: PathBuf::from(name),
                mode: safe_mode(new.mode, true),
                path: c.path.clone(),
            });
        }
        EntryKind::Other => unreachable!(),
    }
    Ok(One::Applied)
}

/// Rename the prepared temporary entry over `name`: atomically replaced; a directory in the way
/// (already emptied: its contents' deletions come first) is swapped out and removed.
fn install(
    parent: &Dir,
    tmp: &OsStr,
    name: &OsStr,
    host: Option<Stat>,
) -> std::result::Result<(), String> {
    // rename(2) cannot put a directory over a non-directory or the reverse: swap them instead.
    let tmp_is_dir = parent.lstat(tmp).ok().flatten().is_some_and(|s| s.is_dir());
    let host_is_dir = host.is_some_and(|h| h.is_dir());
    let exchange = host.is_some() && (host_is_dir || tmp_is_dir);
    if let Err(e) = parent.rename(tmp, name, exchange) {
        let _ = parent.unlink(tmp, false);
        let _ = parent.unlink(tmp, true);
        return Err(describe(&e, "host"));
    }
    if exchange {
        // The old entry is now at `tmp`.
        parent.unlink(tmp, host_is_dir).map_err(|e| {
            format!(
                "replaced, but the old entry (now {}) could not be removed: {}",
                tmp.to_string_lossy(),
                describe(&e, "host")
            )
        })?;
    }
    Ok(())
}

/// Remove from the upper layer every entry that now agrees with the host, so that the sandbox
/// shows the host's (identical) version. Only for a stopped sandbox. Returns how many entries
/// were removed.
///
/// An entry is removed when no remaining change (a fresh [`scan`]) is at or below its path and
/// no ancestor directory stays opaque; an opaque directory with no remaining change below it is
/// made transparent first (the host directory now has exactly its contents).
pub fn prune(upper: &Path, workspace: &Path) -> Result<usize> {
    let remaining = scan(upper, workspace)?;
    let mut dirty: BTreeSet<PathBuf> = BTreeSet::new();
    for c in &remaining {
        let mut p = Some(c.path.as_path());
        while let Some(x) = p {
            if x.as_os_str().is_empty() {
                break;
            }
            dirty.insert(x.to_path_buf());
            p = x.parent();
        }
    }
    let mut n = 0;
    prune_dir(upper, Path::new(""), &dirty, &mut n)?;
    Ok(n)
}

fn prune_dir(upper: &Path, rel: &Path, dirty: &BTreeSet<PathBuf>, n: &mut usize) -> Result<()> {
    let dir = upper.join(rel);
    let rd = std::fs::read_dir(&dir).map_err(|e| ReviewError::io(&dir, e))?;
    for entry in rd.flatten() {
        let r = rel.join(entry.file_name());
        let p = entry.path();
        let Some(st) = fsx::lstat(&p).map_err(|e| ReviewError::io(&p, e))? else {
            continue;
        };
        let is_dirty = dirty.contains(&r);
        if st.is_dir() {
            let mut opaque = fsx::is_opaque(&p);
            if opaque && !is_dirty && fsx::remove_opaque(&p).is_ok() {
                opaque = false;
            }
            if opaque {
                // Its contents hide the host's: removing any would change the sandbox's view.
                continue;
            }
            prune_dir(upper, &r, dirty, n)?;
            if !is_dirty && std::fs::remove_dir(&p).is_ok() {
                *n += 1;
            }
        } else if !is_dirty && std::fs::remove_file(&p).is_ok() {
            *n += 1;
        }
    }
    Ok(())
}
