//! Dispatch and error reporting.

use crate::cli::{Cli, Command};
use crate::{commands, exit, ui};

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        Failure {
            code: code_for(&error),
            error,
        }
    }
}

pub fn fail(code: i32, msg: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        error: anyhow::anyhow!("{msg}"),
    }
}

fn code_for(e: &anyhow::Error) -> i32 {
    use airlock_core::CoreError;
    for cause in e.chain() {
        let core =
            cause.downcast_ref::<CoreError>().or_else(|| match cause
                .downcast_ref::<airlock_core::backend::BackendError>(
            ) {
                Some(airlock_core::backend::BackendError::Core(c)) => Some(c),
                _ => None,
            });
        if let Some(c) = core {
            return match c {
                CoreError::NotFound(_) => exit::NOT_FOUND,
                CoreError::AlreadyExists(_) => exit::CONFLICT,
                CoreError::InvalidName { .. } | CoreError::InvalidValue { .. } => exit::USAGE,
                _ => exit::FAILURE,
            };
        }
    }
    exit::FAILURE
}

pub fn main() -> i32 {
    airlock_core::startup::begin();
    let cli = Cli::parse_args();
    // Commands that only print behave like other Unix tools when their reader goes away
    // (`airlock ls | head`): the default SIGPIPE ends them quietly. Commands that supervise a
    // sandbox keep Rust's ignored SIGPIPE: the gate's sockets must not kill the supervisor.
    if matches!(
        cli.command,
        Command::Ls { .. }
            | Command::Doctor { .. }
            | Command::Inspect { .. }
            | Command::Gc { .. }
            | Command::Completions { .. }
            | Command::Ports { .. }
            | Command::Audit(_)
            | Command::Review(_)
            | Command::Net(_)
            | Command::Template(_)
            | Command::Kit(_)
            | Command::Secret(_)
    ) {
        // SAFETY: restoring the default disposition of one signal before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Run(a) => commands::lifecycle::run(a),
        Command::Create(a) => commands::lifecycle::create(a),
        Command::Start { name } => commands::lifecycle::start(&name),
        Command::Stop { name, time } => commands::lifecycle::stop(&name, time),
        Command::Rm { names, force } => commands::lifecycle::rm(&names, force),
        Command::Exec(a) => commands::lifecycle::exec(a),
        Command::Shell { name } => commands::lifecycle::shell(&name),
        Command::Ls { json } => commands::info::ls(json),
        Command::Inspect { name, json } => commands::info::inspect(&name, json),
        Command::Gc { json } => commands::info::gc(json),
        Command::Completions { shell } => commands::info::completions(shell),
        Command::Ports { name, json } => commands::info::ports(&name, json),
        Command::Audit(a) => commands::audit::audit(a),
        Command::Review(c) => commands::review::dispatch(c),
        Command::Net(c) => commands::policy::dispatch(c),
        Command::Template(c) => commands::template::dispatch(c),
        Command::Kit(c) => commands::kit::dispatch(c),
        Command::Secret(c) => commands::secret::dispatch(c),
        Command::Probe(a) => commands::audit::probe(a),
        Command::Doctor { json } => commands::doctor::doctor(json),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            let mut msg = f.error.to_string();
            for cause in f.error.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            ui::error(&msg);
            f.code
        }
    }
}
