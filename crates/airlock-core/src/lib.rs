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
