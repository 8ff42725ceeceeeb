//! Unified text diffs of changes; binary and large files summarised.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use similar::{ChangeTag, TextDiff};

use crate::fsx::Dir;
use crate::scan::{Change, ChangeKind, EntryKind};
use crate::{Result, ReviewError};

/// Files larger than this are summarised, not diffed.
pub const MAX_TEXT: u64 = 4 << 20;

/// Reads both sides of changes: the sandbox's (upper layer) and the host's (workspace).
pub struct Sides {
    upper: Dir,
    lower: Dir,
}

impl Sides {
    pub fn open(upper: &Path, lower: &Path) -> Result<Sides> {
        Ok(Sides {
            upper: Dir::open(upper).map_err(|e| ReviewError::io(upper, e))?,
            lower: Dir::open(lower).map_err(|e| ReviewError::io(lower, e))?,
        })
    }

    fn read(&self, upper: bool, rel: &Path) -> Option<Vec<u8>> {
        let root = if upper { &self.upper } else { &self.lower };
        let f = root.open_read(rel).ok()?;
        let mut buf = Vec::new();
        f.take(MAX_TEXT + 1).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    fn sha(&self, upper: bool, rel: &Path) -> Option<String> {
        let root = if upper { &self.upper } else { &self.lower };
        let mut f = root.open_read(rel).ok()?;
        let mut h = Sha256::new();
        let mut buf = [0u8; 65536];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        Some(
            h.finalize()
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Old and new text of a file change, or `None` when either side is not diffable text.
    fn texts(&self, c: &Change) -> Option<(String, String)> {
        let side = |upper: bool| -> Option<String> {
            let e = if upper { &c.new } else { &c.old };
            match e {
                None => Some(String::new()),
                Some(e) if e.kind == EntryKind::File && e.size <= MAX_TEXT => {
                    String::from_utf8(self.read(upper, &c.path)?).ok()
                }
                Some(_) => None,
            }
        };
        if c.binary {
            return None;
        }
        let old = side(false)?;
        let new = side(true)?;
        Some((old, new))
    }

    /// Lines added and removed (None for binary, large or non-file changes).
    pub fn line_counts(&self, c: &Change) -> Option<(usize, usize)> {
        if !is_file_change(c) {
            return None;
        }
        let (old, new) = self.texts(c)?;
        let d = TextDiff::from_lines(&old, &new);
        let mut add = 0;
        let mut del = 0;
        for ch in d.iter_all_changes() {
            match ch.tag() {
                ChangeTag::Insert => add += 1,
                ChangeTag::Delete => del += 1,
                ChangeTag::Equal => {}
            }
        }
        Some((add, del))
    }

    /// The change as a git-style block: a header, mode/symlink lines, and a unified diff.
    pub fn render(&self, c: &Change) -> String {
        let p = c.path.to_string_lossy();
        let mut out = format!("diff a/{p} b/{p}\n");
        if c.sensitive {
            out.push_str("! sensitive: applied only with --allow-sensitive\n");
        }
        let mode = |e: &crate::scan::Entry| format!("{:o}", e.mode);
        match (c.kind, &c.old, &c.new) {
            (ChangeKind::Added, _, Some(n)) => {
                out.push_str(&format!("new {} mode {}\n", kind_name(n.kind), mode(n)))
            }
            (ChangeKind::Deleted, Some(o), _) => {
                out.push_str(&format!("deleted {} mode {}\n", kind_name(o.kind), mode(o)))
            }
            (ChangeKind::TypeChanged, Some(o), Some(n)) => out.push_str(&format!(
                "type change: {} {} -> {} {}\n",
                kind_name(o.kind),
                mode(o),
                kind_name(n.kind),
                mode(n)
            )),
            (_, Some(o), Some(n)) if o.mode != n.mode => {
                out.push_str(&format!("old mode {}\nnew mode {}\n", mode(o), mode(n)))
            }
            _ => {}
        }
        for (label, e) in [("old", &c.old), ("new", &c.new)] {
            if let Some(e) = e
                && let Some(t) = &e.target
            {
                out.push_str(&format!("{label} symlink -> {t}\n"));
            }
        }
        if !is_file_change(c) {
            return out;
        }
        match self.texts(c) {
            Some((old, new)) => {
                if old == new {
                    return out;
                }
                let a = if c.old.is_some() {
                    format!("a/{p}")
                } else {
                    "/dev/null".into()
                };
                let b = if c.new.as_ref().is_some_and(|e| e.kind == EntryKind::File) {
                    format!("b/{p}")
                } else {
                    "/dev/null".into()
                };
                let d = TextDiff::from_lines(&old, &new);
                out.push_str(
                    &d.unified_diff()
                        .context_radius(3)
                        .header(&a, &b)
                        .to_string(),
                );
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => {
                let size = |e: &Option<crate::scan::Entry>| {
                    e.as_ref()
                        .filter(|e| e.kind == EntryKind::File)
                        .map(|e| e.size)
                };
                let what = if c.binary { "Binary" } else { "Large" };
                let sha_old = size(&c.old).and(self.sha(false, &c.path));
                let sha_new = size(&c.new).and(self.sha(true, &c.path));
                let side = |s: Option<u64>, h: Option<String>| match (s, h) {
                    (Some(s), Some(h)) => format!("{s} bytes (sha256 {h}…)"),
                    (Some(s), None) => format!("{s} bytes"),
                    _ => "none".into(),
                };
                out.push_str(&format!(
                    "{what} file {p}: {} -> {}\n",
                    side(size(&c.old), sha_old),
                    side(size(&c.new), sha_new)
                ));
            }
        }
        out
    }
}

fn is_file_change(c: &Change) -> bool {
    let f = |e: &Option<crate::scan::Entry>| e.as_ref().is_some_and(|e| e.kind == EntryKind::File);
    (f(&c.old) || f(&c.new)) && c.kind != ChangeKind::ModeChanged
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "special file",
    }
}
