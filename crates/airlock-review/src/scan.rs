//! What the agent changed: the overlay's upper layer compared with the host workspace.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::fsx::{self, Dir, Stat};
use crate::{Result, ReviewError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// A file or directory the host does not have.
    Added,
    /// A file whose content differs (its mode may differ too).
    Modified,
    /// Something the host has and the sandbox deleted (a whiteout, or hidden by an opaque
    /// directory and not re-added).
    Deleted,
    /// Same content (or a directory), different permission bits.
    ModeChanged,
    /// A symlink added, or one whose target changed.
    Symlink,
    /// The path is a different kind of thing than on the host (file ↔ dir ↔ symlink).
    TypeChanged,
}

impl ChangeKind {
    /// One letter, as `git status --short`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'M',
            ChangeKind::Deleted => 'D',
            ChangeKind::ModeChanged => 'm',
            ChangeKind::Symlink => 'L',
            ChangeKind::TypeChanged => 'T',
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets, devices: reported, never applied.
    Other,
}

/// Which rules apply to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Normal,
    /// Runs code or configures tools on the host later (hooks, rc files, CI, editor and agent
    /// configs): applied only with `--allow-sensitive`.
    Sensitive,
    /// Inside a `.git` directory (other than hooks and config): applied only with `--include-git`.
    GitInternal,
}

/// One side of a change.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    /// Symlink target (lossy UTF-8 for display).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip)]
    pub stat: Stat,
}

impl Entry {
    fn new(st: Stat, target: Option<&OsStr>) -> Entry {
        Entry {
            kind: if st.is_dir() {
                EntryKind::Dir
            } else if st.is_file() {
                EntryKind::File
            } else if st.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::Other
            },
            mode: st.perm(),
            size: st.size,
            target: target.map(|t| t.to_string_lossy().into_owned()),
            stat: st,
        }
    }
}

fn ser_path<S: Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// One change, with its path relative to the workspace.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
    pub kind: ChangeKind,
    /// The host's entry (what the sandbox started from), if any.
    pub old: Option<Entry>,
    /// The sandbox's entry, if any.
    pub new: Option<Entry>,
    /// Either side is a file with a NUL byte or invalid UTF-8 in its first 8 KiB.
    pub binary: bool,
    pub sensitive: bool,
    pub category: Category,
    /// When the sandbox took its copy (birth time of the upper entry, see the crate docs), in
    /// nanoseconds since the epoch.
    #[serde(skip)]
    pub taken_at_ns: i128,
}

/// The rules of the issue: sensitive paths and `.git` internals.
pub fn classify(rel: &Path) -> Category {
    let comps: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
    if let Some(i) = comps.iter().position(|c| *c == ".git") {
        let rest = &comps[i + 1..];
        if rest.first().is_some_and(|c| *c == "hooks") || (rest.len() == 1 && rest[0] == "config") {
            return Category::Sensitive;
        }
        return Category::GitInternal;
    }
    const FILES: &[&str] = &[
        ".gitmodules",
        ".bashrc",
        ".zshrc",
        ".profile",
        ".bash_profile",
        ".bash_login",
        ".bash_logout",
        ".zprofile",
        ".zshenv",
        ".zlogin",
        ".envrc",
        ".gitlab-ci.yml",
        ".mcp.json",
    ];
    const DIRS: &[&str] = &[".vscode", ".idea", ".claude", ".cursor", ".circleci"];
    if let Some(base) = comps.last()
        && FILES.iter().any(|f| *base == *f)
    {
        return Category::Sensitive;
    }
    for (i, c) in comps.iter().enumerate() {
        if DIRS.iter().any(|d| *c == *d) {
            return Category::Sensitive;
        }
        if *c == ".github" && comps.get(i + 1).is_some_and(|n| *n == "workflows") {
            return Category::Sensitive;
        }
    }
    Category::Normal
}

/// Binary: a NUL byte, or invalid UTF-8, in the first 8 KiB.
pub fn looks_binary(head: &[u8]) -> bool {
    if head.contains(&0) {
        return true;
    }
    match std::str::from_utf8(head) {
        Ok(_) => false,
        // A multi-byte character cut at the end of the sample is fine.
        Err(e) => e.error_len().is_some(),
    }
}

struct Scanner {
    upper: PathBuf,
    lower: PathBuf,
    udir: Dir,
    ldir: Dir,
    out: Vec<Change>,
}

fn io_err(p: &Path, e: std::io::Error) -> ReviewError {
    ReviewError::io(p, e)
}

/// Compare the upper layer with the lower (host) directory. The result is in an order in which
/// it can be applied: a directory before what it contains, a deleted directory's contents
/// before the directory.
pub fn scan(upper: &Path, lower: &Path) -> Result<Vec<Change>> {
    let mut s = Scanner {
        udir: Dir::open(upper).map_err(|e| io_err(upper, e))?,
        ldir: Dir::open(lower).map_err(|e| io_err(lower, e))?,
        upper: upper.to_path_buf(),
        lower: lower.to_path_buf(),
        out: Vec::new(),
    };
    s.dir(Path::new(""), true, false)?;
    Ok(s.out)
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut names: Vec<OsString> = rd.flatten().map(|e| e.file_name()).collect();
    names.sort();
    Ok(names)
}

impl Scanner {
    fn push(
        &mut self,
        path: PathBuf,
        kind: ChangeKind,
        old: Option<Entry>,
        new: Option<Entry>,
        t: i128,
    ) {
        let category = classify(&path);
        let mut c = Change {
            path,
            kind,
            old,
            new,
            binary: false,
            sensitive: category == Category::Sensitive,
            category,
            taken_at_ns: t,
        };
        c.binary = self.is_binary(&c);
        self.out.push(c);
    }

    fn head(&self, root: &Dir, rel: &Path) -> Option<Vec<u8>> {
        let f = root.open_read(rel).ok()?;
        let mut buf = Vec::with_capacity(8192);
        f.take(8192).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    fn is_binary(&self, c: &Change) -> bool {
        let mut bin = false;
        if c.new.as_ref().is_some_and(|e| e.kind == EntryKind::File) {
            bin |= self
                .head(&self.udir, &c.path)
                .is_some_and(|h| looks_binary(&h));
        }
        if c.old.as_ref().is_some_and(|e| e.kind == EntryKind::File) {
            bin |= self
                .head(&self.ldir, &c.path)
                .is_some_and(|h| looks_binary(&h));
        }
        bin
    }

    fn entry(&self, upper_side: bool, rel: &Path, st: Stat) -> Entry {
        let target = if st.is_symlink() {
            let root = if upper_side { &self.upper } else { &self.lower };
            std::fs::read_link(root.join(rel))
                .ok()
                .map(PathBuf::into_os_string)
        } else {
            None
        };
        Entry::new(st, target.as_deref())
    }

    fn same_content(&self, rel: &Path) -> Result<bool> {
        let open =
            |root: &Dir, base: &Path| root.open_read(rel).map_err(|e| io_err(&base.join(rel), e));
        let mut a = std::io::BufReader::new(open(&self.udir, &self.upper)?);
        let mut b = std::io::BufReader::new(open(&self.ldir, &self.lower)?);
        let mut x = [0u8; 65536];
        let mut y = [0u8; 65536];
        loop {
            let n = read_full(&mut a, &mut x).map_err(|e| io_err(&self.upper.join(rel), e))?;
            let m = read_full(&mut b, &mut y).map_err(|e| io_err(&self.lower.join(rel), e))?;
            if n != m || x[..n] != y[..m] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
        }
    }

    /// Everything under (and including) a host entry, as deletions, contents first.
    fn deleted_tree(&mut self, rel: &Path, st: Stat, t: i128, include_self: bool) -> Result<()> {
        if st.is_dir() {
            let ldir = self.lower.join(rel);
            for name in sorted_names(&ldir)? {
                let r = rel.join(&name);
                if let Some(cst) = fsx::lstat(&ldir.join(&name)).map_err(|e| io_err(&ldir, e))? {
                    self.deleted_tree(&r, cst, t, true)?;
                }
            }
        }
        if include_self {
            let e = self.entry(false, rel, st);
            self.push(rel.to_path_buf(), ChangeKind::Deleted, Some(e), None, t);
        }
        Ok(())
    }

    fn dir(&mut self, rel: &Path, lower_is_dir: bool, opaque: bool) -> Result<()> {
        let udir = self.upper.join(rel);
        let ldir = self.lower.join(rel);
        let names = sorted_names(&udir)?;
        for name in &names {
            let r = rel.join(name);
            let up = udir.join(name);
            // Entries may vanish while a running sandbox works: skip them.
            let Some(u) = fsx::lstat(&up).map_err(|e| io_err(&up, e))? else {
                continue;
            };
            let l = if lower_is_dir {
                fsx::lstat(&ldir.join(name)).map_err(|e| io_err(&ldir, e))?
            } else {
                None
            };
            let t = fsx::taken_at_ns(&up).unwrap_or(i128::MAX);
            if u.is_whiteout() {
                if let Some(l) = l {
                    self.deleted_tree(&r, l, t, true)?;
                }
                continue;
            }
            let new = self.entry(true, &r, u);
            if u.is_dir() {
                let op = fsx::is_opaque(&up);
                match l {
                    Some(l) if l.is_dir() => {
                        if l.perm() != u.perm() {
                            let old = self.entry(false, &r, l);
                            self.push(r.clone(), ChangeKind::ModeChanged, Some(old), Some(new), t);
                        }
                        self.dir(&r, true, op)?;
                    }
                    Some(l) => {
                        let old = self.entry(false, &r, l);
                        self.push(r.clone(), ChangeKind::TypeChanged, Some(old), Some(new), t);
                        self.dir(&r, false, op)?;
                    }
                    None => {
                        self.push(r.clone(), ChangeKind::Added, None, Some(new), t);
                        self.dir(&r, false, op)?;
                    }
                }
                continue;
            }
            let Some(l) = l else {
                let kind = if u.is_symlink() {
                    ChangeKind::Symlink
                } else {
                    ChangeKind::Added
                };
                self.push(r, kind, None, Some(new), t);
                continue;
            };
            let old = self.entry(false, &r, l);
            if l.is_dir() {
                self.deleted_tree(&r, l, t, false)?;
                self.push(r, ChangeKind::TypeChanged, Some(old), Some(new), t);
            } else if u.is_file() && l.is_file() {
                if u.size != l.size || !self.same_content(&r)? {
                    self.push(r, ChangeKind::Modified, Some(old), Some(new), t);
                } else if u.perm() != l.perm() {
                    self.push(r, ChangeKind::ModeChanged, Some(old), Some(new), t);
                }
            } else if u.is_symlink() && l.is_symlink() {
                let a = std::fs::read_link(&up).ok();
                let b = std::fs::read_link(ldir.join(name)).ok();
                if a != b {
                    self.push(r, ChangeKind::Symlink, Some(old), Some(new), t);
                }
            } else if old.kind != new.kind || new.kind == EntryKind::Other {
                self.push(r, ChangeKind::TypeChanged, Some(old), Some(new), t);
            }
        }
        if opaque && lower_is_dir {
            let t = fsx::taken_at_ns(&udir).unwrap_or(i128::MAX);
            let have: BTreeSet<&OsString> = names.iter().collect();
            for name in sorted_names(&ldir)? {
                if have.contains(&name) {
                    continue;
                }
                if let Some(st) = fsx::lstat(&ldir.join(&name)).map_err(|e| io_err(&ldir, e))? {
                    self.deleted_tree(&rel.join(&name), st, t, true)?;
                }
            }
        }
        Ok(())
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Keep the changes at or below any of `paths` (relative to the workspace), plus the directory
/// changes their parents need. An empty `paths` keeps everything.
pub fn select(changes: &[Change], paths: &[PathBuf]) -> Vec<Change> {
    if paths.is_empty() {
        return changes.to_vec();
    }
    let hit = |c: &Change| paths.iter().any(|p| c.path.starts_with(p));
    let mut need: BTreeSet<PathBuf> = BTreeSet::new();
    for c in changes.iter().filter(|c| hit(c)) {
        let mut a = c.path.parent();
        while let Some(p) = a {
            if p.as_os_str().is_empty() {
                break;
            }
            need.insert(p.to_path_buf());
            a = p.parent();
        }
    }
    changes
        .iter()
        .filter(|c| {
            hit(c)
                || (need.contains(&c.path)
                    && c.new.as_ref().is_some_and(|e| e.kind == EntryKind::Dir)
                    && c.kind != ChangeKind::ModeChanged)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        for p in [
            ".git/hooks/pre-commit",
            ".git/hooks",
            ".git/config",
            "sub/.git/config",
            ".gitmodules",
            ".bashrc",
            "x/.profile",
            ".envrc",
            ".github/workflows/ci.yml",
            ".gitlab-ci.yml",
            ".circleci/config.yml",
            ".vscode/settings.json",
            ".idea/x.xml",
            ".claude/settings.json",
            ".mcp.json",
            ".cursor/rules",
        ] {
            assert_eq!(classify(Path::new(p)), Category::Sensitive, "{p}");
        }
        for p in [
            ".git",
            ".git/objects/ab/cd",
            ".git/HEAD",
            ".git/info/exclude",
        ] {
            assert_eq!(classify(Path::new(p)), Category::GitInternal, "{p}");
        }
        for p in [
            "src/main.rs",
            ".github/CODEOWNERS",
            "bashrc",
            "a/.gitignore",
        ] {
            assert_eq!(classify(Path::new(p)), Category::Normal, "{p}");
        }
    }

    #[test]
    fn binary_detection() {
        assert!(!looks_binary(b"hello\n"));
        assert!(looks_binary(b"a\0b"));
        assert!(looks_binary(&[0xff, 0xfe, b'a']));
        assert!(!looks_binary("é".as_bytes()[..1].as_ref()));
    }

    fn mkwhiteout(p: &Path) -> bool {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) == 0 }
    }

    #[test]
    fn scan_finds_every_kind() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let t = tempfile::tempdir().unwrap();
        let (up, lo) = (t.path().join("u"), t.path().join("l"));
        std::fs::create_dir_all(lo.join("dir/sub")).unwrap();
        std::fs::write(lo.join("same.txt"), "same\n").unwrap();
        std::fs::write(lo.join("mod.txt"), "old\n").unwrap();
        std::fs::write(lo.join("mode.sh"), "x\n").unwrap();
        std::fs::write(lo.join("dir/a"), "a").unwrap();
        std::fs::write(lo.join("dir/sub/b"), "b").unwrap();
        std::fs::create_dir_all(up.join("newdir")).unwrap();
        std::fs::write(up.join("same.txt"), "same\n").unwrap();
        std::fs::write(up.join("mod.txt"), "new\n").unwrap();
        std::fs::write(up.join("mode.sh"), "x\n").unwrap();
        std::fs::set_permissions(up.join("mode.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(lo.join("mode.sh"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::write(up.join("newdir/f"), b"\0bin").unwrap();
        symlink("/etc/passwd", up.join("link")).unwrap();
        let can_whiteout = mkwhiteout(&up.join("dir"));
        let changes = scan(&up, &lo).unwrap();
        let got: Vec<(String, ChangeKind)> = changes
            .iter()
            .map(|c| (c.path.display().to_string(), c.kind))
            .collect();
        let mut want = vec![];
        if can_whiteout {
            want.extend([
                ("dir/a".to_string(), ChangeKind::Deleted),
                ("dir/sub/b".to_string(), ChangeKind::Deleted),
                ("dir/sub".to_string(), ChangeKind::Deleted),
                ("dir".to_string(), ChangeKind::Deleted),
            ]);
        }
        want.extend([
            ("link".to_string(), ChangeKind::Symlink),
            ("mod.txt".to_string(), ChangeKind::Modified),
            ("mode.sh".to_string(), ChangeKind::ModeChanged),
            ("newdir".to_string(), ChangeKind::Added),
            ("newdir/f".to_string(), ChangeKind::Added),
        ]);
        assert_eq!(got, want);
        assert!(
            changes
                .iter()
                .find(|c| c.path == Path::new("newdir/f"))
                .unwrap()
                .binary
        );
        let sel = select(&changes, &[PathBuf::from("newdir/f")]);
        assert_eq!(sel.len(), 2, "the parent directory comes along");
    }
}
