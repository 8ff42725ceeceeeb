//! `airlock cp`: copy between the host and a sandbox's files, never following a symlink on the
//! sandbox's side (symlinks are copied as symlinks) and never overwriting without `force`.
//!
//! The sandbox's view of a path is resolved as overlayfs would (upper entry, else lower, with
//! whiteouts and opaque directories honoured) but without following any symlink in the path.
//! Copying *into* a `cow` workspace writes the upper layer (the sandbox must be stopped): parent
//! directories that exist only on the host are created in the upper layer with the host's mode,
//! as a copy-up would.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use crate::fsx::{self, Dir, Stat};
use crate::{Result, ReviewError};

/// Where a sandbox's files are.
#[derive(Debug, Clone)]
pub enum View {
    /// A copy-on-write workspace.
    Overlay { upper: PathBuf, lower: PathBuf },
    /// A plain directory (the home, an `rw`/`ro` workspace).
    Plain(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Upper,
    Lower,
}

fn refused(msg: String) -> ReviewError {
    ReviewError::Refused(msg)
}

impl View {
    fn roots(&self) -> (&Path, Option<&Path>) {
        match self {
            View::Overlay { upper, lower } => (upper, Some(lower)),
            View::Plain(p) => (p, None),
        }
    }

    /// The entry at `rel` in the sandbox's view and which layer holds it.
    fn lookup(&self, rel: &Path) -> Result<Option<(Stat, Side)>> {
        let (upper, lower) = self.roots();
        let comps: Vec<&OsStr> = rel.iter().collect();
        let mut in_upper = true;
        let mut in_lower = lower.is_some();
        let mut cur = PathBuf::new();
        if comps.is_empty() {
            let st = fsx::lstat(upper).map_err(|e| ReviewError::io(upper, e))?;
            return Ok(st.map(|s| (s, Side::Upper)));
        }
        let mut found = None;
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            cur.push(c);
            let u = if in_upper {
                fsx::lstat(&upper.join(&cur)).map_err(|e| ReviewError::io(upper.join(&cur), e))?
            } else {
                None
            };
            let l = match (in_lower, lower) {
                (true, Some(lo)) => {
                    fsx::lstat(&lo.join(&cur)).map_err(|e| ReviewError::io(lo.join(&cur), e))?
                }
                _ => None,
            };
            let here = match (u, l) {
                (Some(u), _) if u.is_whiteout() && lower.is_some() => return Ok(None),
                (Some(u), _) => {
                    if u.is_dir() {
                        if fsx::is_opaque(&upper.join(&cur)) || !l.is_some_and(|l| l.is_dir()) {
                            in_lower = false;
                        }
                    } else {
                        in_lower = false;
                    }
                    (u, Side::Upper)
                }
                (None, Some(l)) => {
                    in_upper = false;
                    (l, Side::Lower)
                }
                (None, None) => return Ok(None),
            };
            if !last && !here.0.is_dir() {
                if here.0.is_symlink() {
                    return Err(refused(format!(
                        "{} is a symlink in the sandbox; symlinks are not followed",
                        cur.display()
                    )));
                }
                return Ok(None);
            }
            found = Some(here);
        }
        Ok(found)
    }

    /// Names in a directory of the view (merged for an overlay).
    fn list(&self, rel: &Path) -> Result<Vec<OsString>> {
        let (upper, lower) = self.roots();
        let mut names = std::collections::BTreeSet::new();
        for root in [Some(upper), lower].into_iter().flatten() {
            if let Ok(rd) = std::fs::read_dir(root.join(rel)) {
                names.extend(rd.flatten().map(|e| e.file_name()));
            }
        }
        let mut out = vec![];
        for n in names {
            if self.lookup(&rel.join(&n))?.is_some() {
                out.push(n);
            }
        }
        Ok(out)
    }

    fn root_dir(&self, side: Side) -> Result<Dir> {
        let (upper, lower) = self.roots();
        let p = match side {
            Side::Upper => upper,
            Side::Lower => lower.unwrap_or(upper),
        };
        Dir::open(p).map_err(|e| ReviewError::io(p, e))
    }
}

/// Copy `rel` from the sandbox's view to the host path `dest` (into it, if it is a directory).
/// Returns the number of entries written.
pub fn copy_out(view: &View, rel: &Path, dest: &Path, force: bool) -> Result<usize> {
    let Some((st, _)) = view.lookup(rel)? else {
        return Err(refused(format!(
            "{}: no such file in the sandbox",
            rel.display()
        )));
    };
    let base = rel
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| "workspace".into());
    let dest = match fsx::lstat(dest).map_err(|e| ReviewError::io(dest, e))? {
        Some(d) if d.is_dir() && !st.is_dir() => dest.join(&base),
        Some(d) if d.is_dir() && st.is_dir() => dest.join(&base),
        _ => dest.to_path_buf(),
    };
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| refused(format!("{}: not a file name", dest.display())))?;
    let pdir = Dir::open(parent).map_err(|e| ReviewError::io(parent, e))?;
    let mut n = 0;
    out_entry(view, rel, &pdir, name, &dest, force, &mut n)?;
    Ok(n)
}

fn out_entry(
    view: &View,
    rel: &Path,
    pdir: &Dir,
    name: &OsStr,
    dest: &Path,
    force: bool,
    n: &mut usize,
) -> Result<()> {
    let Some((st, side)) = view.lookup(rel)? else {
        return Ok(());
    };
    let existing = pdir.lstat(name).map_err(|e| ReviewError::io(dest, e))?;
    if st.is_dir() {
        match existing {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                return Err(refused(format!(
                    "{} exists and is not a directory",
                    dest.display()
                )));
            }
            None => pdir
                .mkdir(name, 0o700)
                .map_err(|e| ReviewError::io(dest, e))?,
        }
        let sub = pdir
            .subdir(Path::new(name))
            .map_err(|e| ReviewError::io(dest, e))?;
        for child in view.list(rel)? {
            out_entry(
                view,
                &rel.join(&child),
                &sub,
                &child,
                &dest.join(&child),
                force,
                n,
            )?;
        }
        pdir.chmod(name, st.perm() & 0o1777)
            .map_err(|e| ReviewError::io(dest, e))?;
        *n += 1;
        return Ok(());
    }
    if existing.is_some() && !force {
        return Err(refused(format!(
            "{} exists; use --force to overwrite it",
            dest.display()
        )));
    }
    if existing.is_some_and(|e| e.is_dir()) {
        return Err(refused(format!("{} is a directory", dest.display())));
    }
    let root = view.root_dir(side)?;
    write_entry(&root, rel, st, pdir, name).map_err(|e| ReviewError::io(dest, e))?;
    *n += 1;
    Ok(())
}

/// Write the file or symlink `rel` of `root` as `name` in `pdir`, via a temporary + rename.
fn write_entry(root: &Dir, rel: &Path, st: Stat, pdir: &Dir, name: &OsStr) -> io::Result<()> {
    let tmp = if st.is_symlink() {
        let parent = root.subdir(rel.parent().unwrap_or(Path::new("")))?;
        let target = parent.readlink(rel.file_name().unwrap_or_default())?;
        let tmp = Dir::temp_name();
        pdir.symlink(&target, &tmp)?;
        tmp
    } else if st.is_file() {
        let mut src = root.open_read(rel)?;
        let (tmp, mut f) = pdir.create_temp()?;
        let res = io::copy(&mut src, &mut f).and_then(|_| fsx::fchmod(&f, st.perm() & 0o1777));
        if let Err(e) = res {
            let _ = pdir.unlink(&tmp, false);
            return Err(e);
        }
        tmp
    } else {
        return Err(io::Error::other("special files are not copied"));
    };
    pdir.rename(&tmp, name, false).inspect_err(|_| {
        let _ = pdir.unlink(&tmp, false);
    })
}

/// Copy the host path `src` into the sandbox at `rel` (into it, if it is a directory there).
/// For an overlay view, writes the upper layer. Returns the number of entries written.
pub fn copy_in(view: &View, src: &Path, rel: &Path, force: bool) -> Result<usize> {
    let sst = fsx::lstat(src)
        .map_err(|e| ReviewError::io(src, e))?
        .ok_or_else(|| refused(format!("{}: no such file", src.display())))?;
    let base = src
        .file_name()
        .ok_or_else(|| refused(format!("{}: not a file name", src.display())))?;
    let rel = match view.lookup(rel)? {
        Some((d, _)) if d.is_dir() => rel.join(base),
        _ => rel.to_path_buf(),
    };
    let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    match view.lookup(&parent_rel)? {
        Some((d, _)) if d.is_dir() => {}
        _ if parent_rel.as_os_str().is_empty() => {}
        _ => {
            return Err(refused(format!(
                "{}: no such directory in the sandbox",
                parent_rel.display()
            )));
        }
    }
    let (upper, lower) = view.roots();
    // Create the parents in the upper layer, as a copy-up would.
    let mut cur = PathBuf::new();
    let udir = Dir::open(upper).map_err(|e| ReviewError::io(upper, e))?;
    for c in parent_rel.iter() {
        let d = udir
            .subdir(&cur)
            .map_err(|e| ReviewError::io(upper.join(&cur), e))?;
        cur.push(c);
        if d.lstat(c)
            .map_err(|e| ReviewError::io(upper.join(&cur), e))?
            .is_none()
        {
            let mode = lower
                .and_then(|l| fsx::lstat(&l.join(&cur)).ok().flatten())
                .map(|s| s.perm())
                .unwrap_or(0o755);
            d.mkdir(c, 0o700)
                .map_err(|e| ReviewError::io(upper.join(&cur), e))?;
            d.chmod(c, mode)
                .map_err(|e| ReviewError::io(upper.join(&cur), e))?;
        }
    }
    let pdir = udir
        .subdir(&parent_rel)
        .map_err(|e| ReviewError::io(upper.join(&parent_rel), e))?;
    let mut n = 0;
    in_entry(view, src, sst, &rel, &pdir, force, &mut n)?;
    Ok(n)
}

fn in_entry(
    view: &View,
    src: &Path,
    sst: Stat,
    rel: &Path,
    pdir: &Dir,
    force: bool,
    n: &mut usize,
) -> Result<()> {
    let name = rel.file_name().unwrap_or_default();
    let seen = view.lookup(rel)?;
    let here = pdir.lstat(name).map_err(|e| ReviewError::io(rel, e))?;
    if sst.is_dir() {
        if seen.is_some_and(|(s, _)| !s.is_dir()) && !force {
            return Err(refused(format!(
                "{} exists in the sandbox; use --force",
                rel.display()
            )));
        }
        match here {
            Some(h) if h.is_dir() => {}
            Some(_) => {
                pdir.unlink(name, false)
                    .map_err(|e| ReviewError::io(rel, e))?;
                pdir.mkdir(name, 0o700)
                    .map_err(|e| ReviewError::io(rel, e))?;
            }
            None => pdir
                .mkdir(name, 0o700)
                .map_err(|e| ReviewError::io(rel, e))?,
        }
        let sub = pdir
            .subdir(Path::new(name))
            .map_err(|e| ReviewError::io(rel, e))?;
        let rd = std::fs::read_dir(src).map_err(|e| ReviewError::io(src, e))?;
        let mut names: Vec<OsString> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for c in names {
            let s = src.join(&c);
            if let Some(cst) = fsx::lstat(&s).map_err(|e| ReviewError::io(&s, e))? {
                in_entry(view, &s, cst, &rel.join(&c), &sub, force, n)?;
            }
        }
        pdir.chmod(name, sst.perm() & 0o1777)
            .map_err(|e| ReviewError::io(rel, e))?;
        *n += 1;
        return Ok(());
    }
    if seen.is_some() && !force {
        return Err(refused(format!(
            "{} exists in the sandbox; use --force to overwrite it",
            rel.display()
        )));
    }
    if seen.is_some_and(|(s, _)| s.is_dir()) {
        return Err(refused(format!(
            "{} is a directory in the sandbox",
            rel.display()
        )));
    }
    if here.is_some_and(|h| h.is_dir()) {
        return Err(refused(format!(
            "{} is a directory in the sandbox",
            rel.display()
        )));
    }
    let sparent = src.parent().unwrap_or(Path::new("/"));
    let sroot = Dir::open(sparent).map_err(|e| ReviewError::io(sparent, e))?;
    write_entry(
        &sroot,
        Path::new(src.file_name().unwrap_or_default()),
        sst,
        pdir,
        name,
    )
    .map_err(|e| ReviewError::io(src, e))?;
    *n += 1;
    Ok(())
}
