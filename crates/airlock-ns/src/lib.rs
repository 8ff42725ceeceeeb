//! Airlock's Linux-namespace isolation tier.
//!
//! One module per kernel feature: [`namespaces`], [`mounts`] (+ [`layers`]), [`cgroups`],
//! [`caps`], [`rlimits`]; the seccomp filter lives in the `airlock-seccomp` crate as reviewed
//! data. [`init`] is the sandbox's PID 1, [`process`] the last steps before a command's exec,
//! [`supervisor`] the host side, [`pty`] terminal plumbing. [`NamespaceBackend`] plugs it all
//! into the CLI through `airlock_core::backend::Backend`.

pub mod caps;
pub mod cgroups;
pub mod error;
pub mod idmapped;
pub mod init;
pub mod layers;
pub mod mounts;
pub mod namespaces;
pub mod net;
pub mod ports;
pub mod process;
pub mod pty;
pub mod rlimits;
pub mod supervisor;

use std::path::Path;
use std::time::Duration;

use airlock_core::backend::{Backend, BackendError, ExecRequest, Outcome};
use airlock_core::spec::{Isolation, RuntimeState, SandboxSpec};
use airlock_core::store::{Store, process_is};

pub use error::NsError;

/// The namespace tier behind the [`Backend`] seam.
#[derive(Debug, Default)]
pub struct NamespaceBackend;

fn tier(e: NsError) -> BackendError {
    match e {
        NsError::Core(c) => BackendError::Core(c),
        other => BackendError::Tier(Box::new(other)),
    }
}

impl Backend for NamespaceBackend {
    fn isolation(&self) -> Isolation {
        Isolation::Namespace
    }

    fn preflight(&self) -> Result<(), BackendError> {
        namespaces::preflight().map_err(tier)
    }

    fn prepare(&self, spec: &SandboxSpec, dir: &Path) -> Result<(), BackendError> {
        if spec.mode == airlock_core::spec::WorkspaceMode::Cow {
            layers::check_layer_path(&spec.workspace).map_err(|reason| {
                tier(NsError::Workspace {
                    path: spec.workspace.clone(),
                    reason,
                })
            })?;
        }
        layers::check_layer_path(dir).map_err(|reason| {
            tier(NsError::Workspace {
                path: dir.to_path_buf(),
                reason: format!(
                    "Airlock's state directory: {reason}; set AIRLOCK_HOME to another path"
                ),
            })
        })?;
        // SAFETY: geteuid cannot fail.
        let system_cow =
            namespaces::IdMap::for_invoker(unsafe { libc::geteuid() }, 0, &spec.name).full_range;
        if spec.mode == airlock_core::spec::WorkspaceMode::Clone {
            layers::make_clone(&spec.workspace, &layers::Layers::new(dir).clone_dir()).map_err(
                |reason| {
                    tier(NsError::Workspace {
                        path: spec.workspace.clone(),
                        reason,
                    })
                },
            )?;
        }
        if spec.ephemeral {
            // A `--rm` sandbox keeps its layers in memory (see `MountPlan::volatile_layers`).
            return Ok(());
        }
        layers::Layers::new(dir).create(system_cow).map_err(tier)
    }

    fn start(&self, store: &Store, spec: &SandboxSpec) -> Result<RuntimeState, BackendError> {
        supervisor::start_detached(store, spec).map_err(tier)
    }

    fn run(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        req: &ExecRequest,
        on_ready: &mut dyn FnMut(),
        on_ended: &mut dyn FnMut(),
    ) -> Result<Outcome, BackendError> {
        supervisor::run_foreground(store, spec, req, on_ready, on_ended).map_err(tier)
    }

    fn exec(
        &self,
        store: &Store,
        spec: &SandboxSpec,
        state: &RuntimeState,
        req: &ExecRequest,
    ) -> Result<i32, BackendError> {
        supervisor::exec(store, spec, state, req).map_err(tier)
    }

    fn stop(
        &self,
        _store: &Store,
        _spec: &SandboxSpec,
        state: &RuntimeState,
        grace: Duration,
    ) -> Result<(), BackendError> {
        supervisor::stop(state, grace).map_err(tier)
    }

    fn reap(
        &self,
        store: &Store,
        name: &str,
        state: Option<&RuntimeState>,
    ) -> Result<Vec<String>, BackendError> {
        let mut done = Vec::new();
        if let Some(st) = state {
            let supervisor_alive = process_is(st.supervisor_pid, st.supervisor_start_ticks);
            if !supervisor_alive && process_is(st.init_pid, st.init_start_ticks) {
                // SAFETY: the init we recorded, verified by its start time; its death ends the sandbox.
                unsafe { libc::kill(st.init_pid, libc::SIGKILL) };
                supervisor::wait_gone(st.init_pid, st.init_start_ticks, Duration::from_secs(5));
                done.push(format!("process {} (init of {name})", st.init_pid));
            }
            done.extend(cgroups::remove_dirs(&st.cgroups));
        }
        done.extend(cgroups::remove_dirs(&cgroups::dirs_for(
            &cgroups::detect(),
            &cgroups::scope_for(&store.paths.data),
            name,
        )));
        if store.read_runtime(name).ok().flatten().is_some() {
            store.clear_runtime(name).map_err(BackendError::Core)?;
            done.push(format!("runtime state of {name}"));
        }
        let rt = store.runtime_dir(name);
        if rt.exists() && airlock_core::store::remove_tree(&rt).is_ok() {
            done.push(format!("runtime directory {}", rt.display()));
        }
        Ok(done)
    }
}
