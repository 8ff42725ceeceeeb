//! Where Airlock keeps things.
//!
//! | who            | state (layers, specs)          | runtime (pids, sockets, mount points) |
//! |----------------|--------------------------------|---------------------------------------|
//! | `AIRLOCK_HOME` | `$AIRLOCK_HOME/data`           | `$AIRLOCK_HOME/run`                   |
//! | root           | `/var/lib/airlock`             | `/run/airlock`                        |
//! | a user         | `$XDG_DATA_HOME/airlock` (`~/.local/share/airlock`) | `$XDG_RUNTIME_DIR/airlock`, else `<state>/run` |

use std::path::{Path, PathBuf};

use crate::CoreError;

#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent state: sandbox specs and writable layers.
    pub data: PathBuf,
    /// Volatile state: running sandboxes' pids, mount points, sockets. Cleared by reboot.
    pub runtime: PathBuf,
}

impl Paths {
    /// Resolve the directories from the environment (see the module docs).
    pub fn from_env() -> Result<Paths, CoreError> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(home) = env("AIRLOCK_HOME") {
            let home = absolute(&home)?;
            return Ok(Paths {
                data: home.join("data"),
                runtime: home.join("run"),
            });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            return Ok(Paths {
                data: PathBuf::from("/var/lib/airlock"),
                runtime: PathBuf::from("/run/airlock"),
            });
        }
        let data = match (env("XDG_DATA_HOME"), env("HOME")) {
            (Some(x), _) if x.is_absolute() => x.join("airlock"),
            (_, Some(h)) if h.is_absolute() => h.join(".local/share/airlock"),
            _ => {
                return Err(CoreError::NoStateDir(
                    "neither XDG_DATA_HOME nor HOME is set to an absolute path; set one, or set AIRLOCK_HOME".into(),
                ));
            }
        };
        let runtime = match env("XDG_RUNTIME_DIR") {
            Some(r) if r.is_absolute() && is_private_dir(&r, euid) => r.join("airlock"),
            _ => data.join("run"),
        };
        Ok(Paths { data, runtime })
    }

    pub fn sandboxes(&self) -> PathBuf {
        self.data.join("sandboxes")
    }
    /// Where sandboxes deleted when their command exits (`run --rm`, namespace tier, not in
    /// clone mode) keep their files: the runtime root, a tmpfs (`/run`, `$XDG_RUNTIME_DIR`) on
    /// every common distribution, so their files need not touch the disk and a reboot forgets
    /// them (without `XDG_RUNTIME_DIR` the runtime root falls back to the data directory).
    pub fn ephemeral_sandboxes(&self) -> PathBuf {
        self.runtime.join("ephemeral")
    }
    /// The directory of sandbox `name`: in [`Paths::ephemeral_sandboxes`] if it is there, else in
    /// [`Paths::sandboxes`].
    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        let ephemeral = self.ephemeral_sandboxes().join(name);
        if ephemeral.symlink_metadata().is_ok() {
            ephemeral
        } else {
            self.sandboxes().join(name)
        }
    }
    /// The lock of sandbox `name`'s lifecycle, in the data directory whatever the sandbox: the
    /// runtime root can differ between sessions of one user (no `XDG_RUNTIME_DIR` under cron),
    /// the data directory does not.
    pub fn sandbox_lock(&self, name: &str) -> PathBuf {
        self.sandboxes().join(format!(".{name}.lock"))
    }
    /// The directory every namespace sandbox's init covers with a tmpfs of its own (in its own
    /// mount namespace) to build its root in; on the host it stays empty.
    pub fn sandbox_scratch(&self) -> PathBuf {
        self.runtime.join("scratch")
    }
    pub fn sandbox_runtime(&self, name: &str) -> PathBuf {
        self.runtime.join("sandboxes").join(name)
    }
    pub fn templates(&self) -> PathBuf {
        self.data.join("templates")
    }
}

fn absolute(p: &Path) -> Result<PathBuf, CoreError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::path::absolute(p).map_err(|e| CoreError::io(p, e))
}

/// `XDG_RUNTIME_DIR` is only used when it is really ours (after `su` it often points at another user's).
fn is_private_dir(p: &Path, euid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .map(|m| m.is_dir() && m.uid() == euid)
        .unwrap_or(false)
}
