use std::path::PathBuf;

use airlock_core::CoreError;

/// Errors of the namespace tier. Each says what failed and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error(transparent)]
    Core(#[from] CoreError),

    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("user namespaces are not available: {0}")]
    UserNamespaces(String),

    #[error("sandbox setup failed: {0}")]
    Setup(String),

    #[error("the workspace {path} cannot be used: {reason}")]
    Workspace { path: PathBuf, reason: String },

    #[error(transparent)]
    Seccomp(#[from] airlock_seccomp::SeccompError),

    #[error("sandbox {0:?} is not running (start it with `airlock start {0}`)")]
    NotRunning(String),
}

impl NsError {
    /// The error as text for another process that wraps it in [`NsError::Setup`] again (the
    /// init's and a detached supervisor's reports): a setup error without its prefix, so the
    /// user reads "sandbox setup failed" once.
    pub fn message(&self) -> String {
        match self {
            NsError::Setup(m) => m.clone(),
            e => e.to_string(),
        }
    }

    pub fn sys(what: impl Into<String>, source: std::io::Error) -> NsError {
        NsError::Sys {
            what: what.into(),
            source,
        }
    }
    pub fn last(what: impl Into<String>) -> NsError {
        NsError::sys(what, std::io::Error::last_os_error())
    }
    pub fn path(path: impl Into<PathBuf>, source: std::io::Error) -> NsError {
        NsError::Path {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = NsError> = std::result::Result<T, E>;
