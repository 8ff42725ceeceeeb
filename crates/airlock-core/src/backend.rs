//! The seam between the CLI and an isolation tier.
//!
//! The CLI owns naming, the store, locking and user interaction; a [`Backend`] owns processes,
//! kernels, mounts and disks. The namespace tier (`airlock-ns`) implements it today; the microVM
//! tier implements the same trait, so `--isolation vm` needs no change to the CLI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::CoreError;
use crate::spec::{Isolation, RuntimeState, SandboxSpec};
use crate::store::Store;

/// A command to run inside a sandbox.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// argv; empty means the sandbox user's login shell.
    pub argv: Vec<String>,
    /// Added to the sandbox's environment (after the spec's own `-e`).
    pub env: Vec<(String, String)>,
    /// Working directory inside; default: the workspace.
    pub workdir: Option<PathBuf>,
    /// Allocate a pseudo-terminal (window size and signals forwarded).
    pub tty: bool,
    /// Run this host executable (opened by the backend, executed by fd: it need not be visible
    /// inside). Used to run Airlock's own probe in a sandbox.
    pub host_executable: Option<PathBuf>,
    /// Run as root inside (`exec --root`): in a VM, the guest's root (install packages into the
    /// sandbox's own disk); in the namespace tier only where it is root already.
    pub as_root: bool,
}

/// How a foreground `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command's exit code, or 128+signal when it was killed.
    Exited(i32),
    /// `--timeout` elapsed and the sandbox was killed.
    TimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{0}")]
    Tier(Box<dyn std::error::Error + Send + Sync>),
}

pub trait Backend {
    fn isolation(&self) -> Isolation;

    /// Check that this host can run the tier at all (e.g. user namespaces enabled), with an
    /// actionable message when it cannot. Called before anything is created.
    fn preflight(&self) -> Result<(), BackendError>;

    /// Fill the staging directory of a new sandbox (writable layers, disks).
    fn prepare(&self, spec: &SandboxSpec, dir: &Path) -> Result<(), BackendError>;

    /// Start the sandbox detached (a supervisor keeps it running) and return its runtime state.
    fn start(&self, store: &Store, spec: &SandboxSpec) -> Result<RuntimeState, BackendError>;

    /// Start the sandbox with `req` as its main process, in the foreground; the sandbox stops
    /// when the command exits. The caller's process supervises it. `on_ready` is called once the
    /// sandbox runs (the caller releases its lifecycle lock there). A backend may call `on_ended`
    /// once the command ended and nothing of the sandbox runs or holds its files any more, before
    /// its own last cleanup: a `--rm` caller deletes the sandbox's files there (while the kernel
    /// may still be ending the sandbox's namespaces) instead of after `run` returns.
    fn run(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        req: &ExecRequest,
        on_ready: &mut dyn FnMut(),
        on_ended: &mut dyn FnMut(),
    ) -> Result<Outcome, BackendError>;

    /// Run a command in a running sandbox, with the caller's stdio (or a PTY), returning its exit code.
    fn exec(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        state: &RuntimeState,
        req: &ExecRequest,
    ) -> Result<i32, BackendError>;

    /// Stop a running sandbox: TERM, then KILL after `grace`. Writable layers are kept.
    fn stop(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        state: &RuntimeState,
        grace: Duration,
    ) -> Result<(), BackendError>;

    /// Release what a stopped or crashed sandbox still holds outside its files (cgroups, stray
    /// processes, VMM processes) and return a line per thing removed.
    fn reap(
        &self,
        store: &Store,
        name: &str,
        state: Option<&RuntimeState>,
    ) -> Result<Vec<String>, BackendError>;
}

/// Whether a recorded runtime state still describes a live sandbox.
pub fn is_running(state: &RuntimeState) -> bool {
    crate::store::process_is(state.init_pid, state.init_start_ticks)
}
