//! The crate's one error type (every module of airlock-vm adds its variants here).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Proto(#[from] airlock_vm_proto::ProtoError),
    #[error("the VM did not boot: {0}")]
    Boot(String),
    #[error("the guest reported: {0}")]
    Guest(String),
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Setup(String),
    /// No usable guest kernel; the message names the image and the fix.
    #[error("guest kernel: {0}")]
    Kernel(String),
    /// A kernel module the guest needs is missing or cannot be read; the message says which.
    #[error("guest kernel modules: {0}")]
    Modules(String),
    /// A host program Airlock runs is not installed.
    #[error("{program} was not found ({searched}); install it: {install}")]
    MissingProgram {
        program: &'static str,
        searched: String,
        install: &'static str,
    },
    /// A host program ran and failed.
    #[error("{what} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Program {
        what: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

pub type Result<T> = std::result::Result<T, VmError>;

impl VmError {
    /// `map_err` helper: an I/O error while doing `what`.
    pub fn io(what: &str) -> impl FnOnce(std::io::Error) -> VmError + '_ {
        move |source| VmError::Io {
            what: what.to_string(),
            source,
        }
    }

    /// `map_err` helper: an I/O error on `path`.
    pub fn io_path(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
        move |source| VmError::Path {
            path: path.to_path_buf(),
            source,
        }
    }
}
