//! Airlock's guest agent: PID 1 of a microVM sandbox.
//!
//! The agent boots the VM's initramfs (`boot`), then serves the host's protocol
//! (`airlock_vm_proto`) on a virtio-serial port (`agent::serve`): it assembles the sandbox's
//! filesystem on `Setup`, runs commands (`exec`), moves files in and out (`files`), reaps every
//! process of the VM (`reaper`) and powers the VM off on `Shutdown`.
//!
//! The protocol engine does not depend on being PID 1: `airlock-guest --serve-stdio` serves the
//! protocol on its standard input as an ordinary process, which is how the tests drive it.

pub mod agent;
pub mod boot;
pub mod exec;
pub mod files;
pub mod netcfg;
pub mod reaper;
pub mod sys;

use std::fmt;
use std::io::{self, Write};

/// The agent's name and version, as told to the host in `Hello`.
pub const AGENT: &str = concat!("airlock-guest ", env!("CARGO_PKG_VERSION"));

/// Where a command failed before it could run (reported by the forked child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStage {
    Session,
    Root,
    Stdio,
    Ids,
    Cwd,
    Exec,
}

/// What went wrong, worded for the host's user.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A system call failed while doing `what`.
    #[error("{what}: {}", sys::errno_text(source))]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A command could not be started; `message` names the command and the cause.
    #[error("{message}")]
    Spawn { stage: ChildStage, message: String },
    /// A request the agent refuses (malformed, out of order, or not possible here).
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, GuestError>;

/// Attach what was being done to an OS error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| GuestError::Sys {
            what: what(),
            source,
        })
    }
}

/// Write one line to the console (stderr), prefixed with the agent's name. Never fails.
pub fn log_line(args: fmt::Arguments) {
    let _ = writeln!(io::stderr().lock(), "airlock-guest: {args}");
}

/// `log!("...")`: one line on the console.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => {
        $crate::log_line(format_args!($($t)*))
    };
}
