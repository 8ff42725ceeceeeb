//! Stable exit codes. `run` and `exec` exit with the command's own status.

/// Something failed (the message says what and what to do).
pub const FAILURE: i32 = 1;
/// Bad usage (clap uses 2 as well).
pub const USAGE: i32 = 2;
/// The named sandbox does not exist.
pub const NOT_FOUND: i32 = 3;
/// The sandbox is in the wrong state for the command (exists already, is running).
pub const CONFLICT: i32 = 4;
/// `--timeout` expired and the sandbox was killed (as timeout(1)).
pub const TIMED_OUT: i32 = 124;
/// `run`/`exec`: Airlock failed before the command could run.
pub const RUN_FAILED: i32 = 125;
