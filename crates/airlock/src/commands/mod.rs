//! One module per group of subcommands.

pub mod audit;
pub mod info;
pub mod kit;
pub mod lifecycle;
pub mod policy;
pub mod review;
pub mod secret;
pub mod template;

use airlock_core::backend::Backend;
use airlock_core::spec::Isolation;
use airlock_ns::NamespaceBackend;

use crate::app::{Failure, fail};
use crate::exit;

/// The backend of an isolation tier. The microVM tier plugs in here.
pub fn backend(isolation: Isolation) -> Result<Box<dyn Backend>, Failure> {
    match isolation {
        Isolation::Namespace => Ok(Box::new(NamespaceBackend)),
        Isolation::Vm => Err(fail(
            exit::FAILURE,
            "the microVM isolation tier is not part of this build yet; use --isolation namespace (the default)",
        )),
    }
}
