//! One module per group of subcommands.

pub mod audit;
pub mod doctor;
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
use airlock_vm::backend::VmBackend;

use crate::app::Failure;

/// The backend of an isolation tier.
pub fn backend(isolation: Isolation) -> Result<Box<dyn Backend>, Failure> {
    Ok(match isolation {
        Isolation::Namespace => Box::new(NamespaceBackend),
        Isolation::Vm => Box::new(VmBackend),
    })
}
