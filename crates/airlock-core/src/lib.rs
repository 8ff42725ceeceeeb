//! Airlock's sandbox model, shared by every isolation tier.
//!
//! - [`spec`]: what a sandbox is (workspace, mode, limits, environment, user).
//! - [`store`]: where sandboxes live on disk, crash-safe writes and locking.
//! - [`paths`]: XDG / root / `AIRLOCK_HOME` directory layout.
//! - [`units`]: parsing of sizes, durations, CPU counts and names.
//! - [`backend`]: the seam every isolation tier (namespaces, microVM) implements.

pub mod backend;
pub mod error;
pub mod paths;
pub mod secrets;
pub mod spec;
pub mod store;
pub mod units;

pub use error::CoreError;

/// Start-path tracing for profiling: with `AIRLOCK_TRACE_START=1`, [`trace`] prints the time since
/// the process started (µs) and a label to stderr. Costs one `getenv` when off.
pub mod startup {
    use std::sync::OnceLock;
    use std::time::Instant;

    static T0: OnceLock<Option<Instant>> = OnceLock::new();

    /// Call first thing in `main`.
    pub fn begin() {
        T0.get_or_init(|| std::env::var_os("AIRLOCK_TRACE_START").map(|_| Instant::now()));
    }

    pub fn trace(label: &str) {
        if let Some(Some(t0)) = T0.get() {
            eprintln!(
                "airlock-trace {:>8} µs  [{}] {label}",
                t0.elapsed().as_micros(),
                std::process::id()
            );
        }
    }
}
