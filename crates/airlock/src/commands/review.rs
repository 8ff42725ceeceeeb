//! Review and apply the agent's work: diff, apply, reset, cp (issue 4).

use clap::Subcommand;

use crate::app::{Failure, fail};
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {}

pub fn dispatch(c: ReviewCommand) -> Result<i32, Failure> {
    match c {}
    #[allow(unreachable_code)]
    Err(fail(exit::FAILURE, "unreachable"))
}
