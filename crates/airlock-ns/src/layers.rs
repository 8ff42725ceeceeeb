//! The writable layers of a namespace sandbox, inside its state directory:
//! ```text
//! layers/workspace/{upper,work}   copy-on-write layer over the workspace (mode cow)
//! layers/system/<dir>/{upper,work} copy-on-write layers over /usr, /etc, /opt, /var, /srv
//! home/                            the private home directory
//! caches/<n>                       the n-th cache directory (`--cache-dir`), made at start
//! ```
//! They survive stop/start and disappear with `rm`.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::error::{NsError, Result};
use crate::mounts::SYSTEM_DIRS;

#[derive(Debug, Clone)]
pub struct Layers {
    pub dir: PathBuf,
}

impl Layers {
    pub fn new(sandbox_dir: &Path) -> Layers {
        Layers {
            dir: sandbox_dir.to_path_buf(),
        }
    }

    pub fn workspace(&self) -> (PathBuf, PathBuf) {
        let base = self.dir.join("layers/workspace");
        (base.join("upper"), base.join("work"))
    }

    pub fn system(&self, d: &str) -> (PathBuf, PathBuf) {
        let base = self.dir.join("layers/system").join(d);
        (base.join("upper"), base.join("work"))
    }

    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// The sandbox's own directory for its `i`-th cache directory (`--cache-dir`).
    pub fn cache_dir(&self, i: usize) -> PathBuf {
        self.dir.join("caches").join(i.to_string())
    }

    /// The sandbox's own git clone (`--workspace-mode clone`).
    pub fn clone_dir(&self) -> PathBuf {
        self.dir.join("clone")
    }

    /// overlayfs work directory for a home stacked on a template's.
    pub fn home_work(&self) -> PathBuf {
        self.dir.join("layers/home-work")
    }

    /// Create the layer directories (owned by the caller, who is the sandbox's user or root).
    /// System layers exist only where the system directories can be copy-on-write (`system`).
    pub fn create(&self, system: bool) -> Result<()> {
        let mut dirs = vec![self.home()];
        let (u, w) = self.workspace();
        dirs.extend([u, w]);
        if system {
            for d in SYSTEM_DIRS {
                let (u, w) = self.system(d);
                dirs.extend([u, w]);
            }
        }
        for d in dirs {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&d)
                .map_err(|e| NsError::path(&d, e))?;
        }
        std::fs::set_permissions(
            self.home(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| NsError::path(self.home(), e))?;
        Ok(())
    }
}

/// Paths used as overlay layers cannot contain ',' or ':' (the kernel's option syntax).
pub fn check_layer_path(p: &Path) -> std::result::Result<(), String> {
    let s = p.as_os_str().as_encoded_bytes();
    if s.contains(&b',') || s.contains(&b':') || s.contains(&b'\\') {
        return Err(format!(
            "{} contains ',', ':' or '\\', which overlayfs cannot take as a layer path; rename the directory or use --workspace-mode rw/ro",
            p.display()
        ));
    }
    Ok(())
}

/// Make the sandbox's own clone of the host repository `repo` (`--workspace-mode clone`).
/// Objects are copied, never hard-linked: nothing the agent does can reach the host's `.git`.
/// Its `origin` is the read-only view of the host repository inside the sandbox, and it gets
/// the host repository's commit identity so the agent can commit.
pub fn make_clone(repo: &Path, dest: &Path) -> std::result::Result<(), String> {
    let git = |args: &[&std::ffi::OsStr]| -> std::result::Result<String, String> {
        let out = std::process::Command::new("git")
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| format!("running git: {e} (clone mode needs git installed)"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    if !repo.join(".git").exists() {
        return Err(format!(
            "{} is not a git repository (clone mode needs one; use --workspace-mode cow)",
            repo.display()
        ));
    }
    git(&[
        &os("clone"),
        &os("--quiet"),
        &os("--no-hardlinks"),
        repo.as_os_str(),
        dest.as_os_str(),
    ])
    .map_err(|e| format!("git clone of {} failed: {e}", repo.display()))?;
    let in_clone = |args: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = vec![os("-C"), dest.as_os_str().to_os_string()];
        a.extend(args.iter().map(|s| os(s)));
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        git(&refs)
    };
    in_clone(&["remote", "set-url", "origin", "/run/airlock/source"])?;
    for key in ["user.name", "user.email"] {
        let value = git(&[
            &os("-C"),
            repo.as_os_str(),
            &os("config"),
            &os("--get"),
            &os(key),
        ])
        .unwrap_or_default();
        if !value.is_empty() {
            in_clone(&["config", key, &value])?;
        }
    }
    Ok(())
}
