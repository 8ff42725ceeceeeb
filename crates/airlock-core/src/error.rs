use std::path::PathBuf;

/// Errors of the sandbox model and its on-disk store.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid sandbox name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: String,
    },

    #[error("no sandbox named {0:?} (see `airlock ls`)")]
    NotFound(String),

    #[error(
        "a sandbox named {0:?} already exists (use it with `airlock start {0}` / `airlock exec {0} -- CMD`, or pick another --name)"
    )]
    AlreadyExists(String),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path}: corrupt state file ({source}); remove the sandbox with `airlock rm --force` or run `airlock gc`"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot find a home for Airlock's state: {0}")]
    NoStateDir(String),

    #[error("the OS keyring (Secret Service): {0}")]
    Keyring(String),
}

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}
