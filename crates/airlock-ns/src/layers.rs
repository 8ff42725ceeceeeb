//! The writable layers of a namespace sandbox, inside its state directory:
//! ```text
//! layers/workspace/{upper,work}   copy-on-write layer over the workspace (mode cow)
//! layers/system/<dir>/{upper,work} copy-on-write layers over /usr, /etc, /opt, /var, /srv
//! home/                            the private home directory
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
