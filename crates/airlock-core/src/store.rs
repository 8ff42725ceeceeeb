//! The on-disk sandbox store.
//!
//! Layout (see [`crate::paths`] for the roots):
//! ```text
//! <data>/sandboxes/<name>/sandbox.json     the spec (written once, atomically)
//! <data>/sandboxes/<name>/layers/...       writable layers, owned by the backend
//! <data>/sandboxes/.<name>.lock            flock(2) serialising lifecycle changes
//! <runtime>/sandboxes/<name>/state.json    present while running (pids, cgroups)
//! ```
//! Every file is written to a temporary name and renamed into place, so a crash leaves the old or
//! the new version, never a torn one. A sandbox directory appears under its final name only once
//! it is complete (`renameat2(RENAME_NOREPLACE)`), so a half-created sandbox never exists.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CoreError;
use crate::paths::Paths;
use crate::spec::{RuntimeState, SandboxSpec};
use crate::units::{random_bytes, validate_name};

pub const SPEC_FILE: &str = "sandbox.json";
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone)]
pub struct Store {
    pub paths: Paths,
}

/// An exclusive lock on one sandbox's lifecycle, released on drop.
#[derive(Debug)]
pub struct SandboxLock {
    _file: File,
}

impl Store {
    pub fn new(paths: Paths) -> Store {
        Store { paths }
    }

    pub fn open() -> Result<Store, CoreError> {
        Ok(Store::new(Paths::from_env()?))
    }

    fn ensure_roots(&self) -> Result<(), CoreError> {
        for d in [self.paths.sandboxes(), self.paths.runtime.join("sandboxes")] {
            mkdir_private(&d)?;
        }
        Ok(())
    }

    /// Take the lifecycle lock of `name` (blocking until other airlock commands release it).
    pub fn lock(&self, name: &str) -> Result<SandboxLock, CoreError> {
        validate_name(name)?;
        self.ensure_roots()?;
        let path = self.paths.sandbox_lock(name);
        for _ in 0..1000 {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| CoreError::io(&path, e))?;
            // SAFETY: flock on a file descriptor we own; blocking is intended.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                return Err(CoreError::io(&path, std::io::Error::last_os_error()));
            }
            // The holder before us may have deleted the sandbox, its lock file included (`rm`,
            // `gc`): a lock on a file no longer at `path` would exclude nobody who opens `path`
            // after us. Take the one there now.
            if is_at(&file, &path) {
                return Ok(SandboxLock { _file: file });
            }
        }
        Err(CoreError::io(
            &path,
            std::io::Error::other(
                "this lock file kept being deleted or replaced while Airlock waited for it; \
                 check what else writes to Airlock's state directory",
            ),
        ))
    }

    /// Delete a leftover of [`Store::stale_entries`]. An orphan lock file goes only if nobody
    /// holds it (whoever waits on it then takes a fresh one, see [`Store::lock`]); returns
    /// whether something was deleted.
    pub fn remove_stale(&self, path: &Path) -> bool {
        let is_lock = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.ends_with(".lock"));
        if !is_lock {
            return remove_tree(path).is_ok();
        }
        let Ok(file) = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
        else {
            return false;
        };
        // SAFETY: flock on a file descriptor we own, without waiting.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return false;
        }
        is_at(&file, path) && fs::remove_file(path).is_ok()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.paths.sandbox_dir(name).join(SPEC_FILE).is_file()
    }

    /// Whether `spec`'s files go to [`Paths::ephemeral_sandboxes`]: deleted when its command
    /// exits, and nothing of it needs the disk's room (a VM disk or a clone of the workspace
    /// would take memory there).
    pub fn keeps_in_memory(spec: &SandboxSpec) -> bool {
        spec.ephemeral
            && spec.isolation == crate::spec::Isolation::Namespace
            && spec.mode != crate::spec::WorkspaceMode::Clone
    }

    /// Create a sandbox: `prepare` fills a staging directory (layers), which then appears atomically
    /// under the sandbox's name. On any error nothing is left behind.
    pub fn create<E: From<CoreError>>(
        &self,
        spec: &SandboxSpec,
        prepare: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E> {
        validate_name(&spec.name)?;
        self.ensure_roots()?;
        // Either place taken is a conflict.
        let in_memory = self.paths.ephemeral_sandboxes().join(&spec.name);
        let on_disk = self.paths.sandboxes().join(&spec.name);
        if in_memory.symlink_metadata().is_ok() || on_disk.symlink_metadata().is_ok() {
            return Err(CoreError::AlreadyExists(spec.name.clone()).into());
        }
        let base = if Self::keeps_in_memory(spec) {
            mkdir_private(&self.paths.ephemeral_sandboxes())?;
            self.paths.ephemeral_sandboxes()
        } else {
            self.paths.sandboxes()
        };
        let final_dir = base.join(&spec.name);
        let mut rnd = [0u8; 4];
        random_bytes(&mut rnd);
        let staging = base.join(format!(
            ".tmp-{}-{:02x}{:02x}{:02x}{:02x}",
            spec.name, rnd[0], rnd[1], rnd[2], rnd[3]
        ));
        mkdir_private(&staging)?;
        let result = (|| -> Result<(), E> {
            write_json_atomic(&staging.join(SPEC_FILE), spec)?;
            prepare(&staging)?;
            rename_noreplace(&staging, &final_dir).map_err(|e| {
                E::from(
                    if e.raw_os_error() == Some(libc::EEXIST)
                        || e.raw_os_error() == Some(libc::ENOTEMPTY)
                    {
                        CoreError::AlreadyExists(spec.name.clone())
                    } else {
                        CoreError::io(&final_dir, e)
                    },
                )
            })
        })();
        if let Err(e) = result {
            let _ = remove_tree(&staging);
            return Err(e);
        }
        Ok(final_dir)
    }

    pub fn load(&self, name: &str) -> Result<SandboxSpec, CoreError> {
        validate_name(name)?;
        let path = self.paths.sandbox_dir(name).join(SPEC_FILE);
        match read_json(&path) {
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(CoreError::NotFound(name.to_string()))
            }
            other => other,
        }
    }

    /// All sandboxes, sorted by name. Unreadable entries are skipped (and reported by `gc`).
    pub fn list(&self) -> Result<Vec<SandboxSpec>, CoreError> {
        let mut out = Vec::new();
        for dir in [self.paths.sandboxes(), self.paths.ephemeral_sandboxes()] {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CoreError::io(&dir, e)),
            };
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if let Ok(spec) = self.load(&name) {
                    out.push(spec);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }

    /// Leftovers of interrupted creations (`.tmp-*` staging directories) and orphan lock files.
    pub fn stale_entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let dirs = [self.paths.sandboxes(), self.paths.ephemeral_sandboxes()];
        for dir in dirs {
            let Ok(rd) = fs::read_dir(dir) else {
                continue;
            };
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    out.push(entry.path());
                } else if let Some(sb) =
                    name.strip_prefix('.').and_then(|n| n.strip_suffix(".lock"))
                    && !self.paths.sandbox_dir(sb).exists()
                {
                    out.push(entry.path());
                }
            }
        }
        out
    }

    pub fn runtime_dir(&self, name: &str) -> PathBuf {
        self.paths.sandbox_runtime(name)
    }

    pub fn read_runtime(&self, name: &str) -> Result<Option<RuntimeState>, CoreError> {
        let path = self.runtime_dir(name).join(STATE_FILE);
        match read_json(&path) {
            Ok(s) => Ok(Some(s)),
            Err(CoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn write_runtime(&self, name: &str, state: &RuntimeState) -> Result<(), CoreError> {
        let dir = self.runtime_dir(name);
        mkdir_private(&dir)?;
        write_json_atomic(&dir.join(STATE_FILE), state)
    }

    pub fn clear_runtime(&self, name: &str) -> Result<(), CoreError> {
        let path = self.runtime_dir(name).join(STATE_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io(&path, e)),
        }
    }

    /// Remove every file of a sandbox: its state directory, runtime directory and lock file.
    pub fn remove_files(&self, name: &str) -> Result<(), CoreError> {
        validate_name(name)?;
        remove_tree(&self.paths.sandbox_dir(name))?;
        remove_tree(&self.runtime_dir(name))?;
        let _ = fs::remove_file(self.paths.sandbox_lock(name));
        Ok(())
    }
}

/// Whether `file` is the file at `path` now (not one deleted or replaced since it was opened).
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `mkdir -p` with mode 0700 for the directories we create.
pub fn mkdir_private(dir: &Path) -> Result<(), CoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CoreError::io(dir, e))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, CoreError> {
    let bytes = fs::read(path).map_err(|e| CoreError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| CoreError::Corrupt {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Write `value` as JSON to a temporary file beside `path` and rename it over `path`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), CoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| CoreError::Corrupt {
        path: path.to_path_buf(),
        source: e,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoreError> {
    let mut rnd = [0u8; 4];
    random_bytes(&mut rnd);
    let tmp = path.with_extension(format!(
        "tmp{:02x}{:02x}{:02x}{:02x}",
        rnd[0], rnd[1], rnd[2], rnd[3]
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CoreError::io(path, e)
    })
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let f = CString::new(from.as_os_str().as_bytes())?;
    let t = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `rm -rf` that copes with what overlayfs leaves (e.g. a mode-000 `work/work`) and never follows
/// symlinks. Missing paths are fine.
pub fn remove_tree(path: &Path) -> Result<(), CoreError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CoreError::io(path, e)),
        Ok(m) if !m.is_dir() => return fs::remove_file(path).map_err(|e| CoreError::io(path, e)),
        Ok(_) => {}
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    // Make every directory writable and searchable by us, then retry.
    fn unlock(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    unlock(&e.path());
                }
            }
        }
    }
    unlock(path);
    fs::remove_dir_all(path).map_err(|e| CoreError::io(path, e))
}

/// Bytes used on disk under `path` (allocated blocks; symlinks not followed; hard links counted once per path).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = m.blocks() * 512;
    if m.is_dir()
        && let Ok(rd) = fs::read_dir(path)
    {
        for e in rd.flatten() {
            total += disk_usage(&e.path());
        }
    }
    total
}

/// Start time (clock ticks since boot) of a live process, or `None` if there is no such process.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields from 3 on; start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if `pid` is alive and is the same process that started at `ticks` (not a reused pid).
/// A zombie counts as dead.
pub fn process_is(pid: i32, ticks: u64) -> bool {
    if process_start_ticks(pid) != Some(ticks) {
        return false;
    }
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    !matches!(
        state
            .as_deref()
            .and_then(|s| s.rfind(')').map(|i| &s[i + 2..i + 3])),
        Some("Z" | "X")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::*;

    fn spec(name: &str) -> SandboxSpec {
        SandboxSpec {
            name: name.into(),
            workspace: "/tmp".into(),
            mode: WorkspaceMode::Cow,
            isolation: Isolation::Namespace,
            limits: Limits::default(),
            env: vec![],
            user: SandboxUser {
                uid: 1,
                gid: 1,
                name: "u".into(),
                home: "/home/u".into(),
                shell: "/bin/sh".into(),
            },
            network: NetworkSpec::default(),
            template: None,
            kit: None,
            credentials: vec![],
            ssh_agent: false,
            docker: false,
            cache_dirs: vec![],
            ephemeral: false,
            created_at: 0,
        }
    }

    fn store(dir: &Path) -> Store {
        Store::new(Paths {
            data: dir.join("data"),
            runtime: dir.join("run"),
        })
    }

    /// A waiter whose lock file was deleted by the holder (`rm`) takes the file at the path now,
    /// so it excludes the next one to come; an orphan lock is only deleted while nobody holds it.
    #[test]
    fn a_lock_deleted_by_its_holder_is_not_held_by_the_next_waiter() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let path = s.paths.sandbox_lock("one");
        let held = s.lock("one").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || {
                let lock = s.lock("one").unwrap();
                let m = lock._file.metadata().unwrap();
                tx.send((m.ino(), m.nlink())).unwrap();
                // Held until the main thread has checked the path.
                std::thread::sleep(std::time::Duration::from_millis(200));
                drop(lock);
            })
        };
        // Give the waiter time to open the old file and block on it.
        std::thread::sleep(std::time::Duration::from_millis(100));
        // The holder deletes the sandbox, lock file included, then lets go.
        fs::remove_file(&path).unwrap();
        drop(held);
        let (ino, links) = rx.recv().unwrap();
        assert_eq!(links, 1, "the waiter kept a lock on the deleted file");
        assert_eq!(ino, fs::metadata(&path).unwrap().ino());
        // While the waiter holds it, gc leaves the lock file alone.
        assert!(s.stale_entries().contains(&path));
        assert!(!s.remove_stale(&path));
        assert!(path.exists());
        waiter.join().unwrap();
        assert!(s.remove_stale(&path));
        assert!(!path.exists());
    }

    #[test]
    fn create_is_atomic_and_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        s.create(&spec("one"), |d| mkdir_private(&d.join("layers")))
            .unwrap();
        assert_eq!(s.load("one").unwrap(), spec("one"));
        assert!(matches!(
            s.create(&spec("one"), |_| Ok::<(), CoreError>(())),
            Err(CoreError::AlreadyExists(_))
        ));
        // A failing prepare leaves nothing behind.
        let err = s.create(&spec("two"), |_| {
            Err::<(), CoreError>(CoreError::NotFound("boom".into()))
        });
        assert!(err.is_err());
        assert!(!s.paths.sandbox_dir("two").exists());
        assert!(s.stale_entries().is_empty());
        assert_eq!(s.list().unwrap().len(), 1);
        s.remove_files("one").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(matches!(s.load("one"), Err(CoreError::NotFound(_))));
    }

    #[test]
    fn rm_sandboxes_of_the_namespace_tier_live_in_the_runtime_root() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let mut eph = spec("eph");
        eph.ephemeral = true;
        let dir = s
            .create(&eph, |d| mkdir_private(&d.join("layers")))
            .unwrap();
        assert_eq!(dir, s.paths.ephemeral_sandboxes().join("eph"));
        assert_eq!(s.paths.sandbox_dir("eph"), dir);
        assert!(!s.paths.sandboxes().join("eph").exists(), "nothing on disk");
        assert!(s.exists("eph") && s.load("eph").unwrap() == eph);
        // One name, one sandbox, wherever it lives.
        let mut same = spec("eph");
        same.ephemeral = false;
        assert!(matches!(
            s.create(&same, |_| Ok::<(), CoreError>(())),
            Err(CoreError::AlreadyExists(_))
        ));
        s.create(&spec("kept"), |_| Ok::<(), CoreError>(()))
            .unwrap();
        let names: Vec<String> = s.list().unwrap().into_iter().map(|x| x.name).collect();
        assert_eq!(names, ["eph", "kept"]);
        // A VM or a clone of the workspace would take memory there: on disk.
        for (iso, mode) in [
            (Isolation::Vm, WorkspaceMode::Cow),
            (Isolation::Namespace, WorkspaceMode::Clone),
        ] {
            let mut x = spec(&format!("x-{}", iso.as_str()));
            (x.ephemeral, x.isolation, x.mode) = (true, iso, mode);
            let d = s.create(&x, |_| Ok::<(), CoreError>(())).unwrap();
            assert!(d.starts_with(s.paths.sandboxes()), "{}", d.display());
            s.remove_files(&x.name).unwrap();
        }
        let _lock = s.lock("eph").unwrap();
        s.remove_files("eph").unwrap();
        assert!(!dir.exists() && !s.paths.sandbox_lock("eph").exists());
        assert!(s.stale_entries().is_empty());
    }

    #[test]
    fn remove_tree_handles_mode_000_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("x/work/work");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("f"), b"x").unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o0)).unwrap();
        remove_tree(&tmp.path().join("x")).unwrap();
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id() as i32;
        let t = process_start_ticks(pid).unwrap();
        assert!(process_is(pid, t));
        assert!(!process_is(pid, t + 1));
    }
}
