//! Airlock's microVM isolation tier: the host-side building blocks for running a sandbox in a
//! QEMU virtual machine.
//!
//! - [`kernel`]: find the guest kernel (a host `/boot/vmlinuz-*` with its modules) and check it
//!   is readable.
//! - [`modules`]: the ordered list of kernel modules the guest loads, from `modules.dep`.
//! - [`initramfs`]: the guest's initramfs (agent as `/init`, modules, device node), a
//!   hand-written cpio "newc" archive, cached by content hash.
//! - [`kvm`]: whether KVM can really run a guest here (a bounded test run, cached per boot), or
//!   why the VM falls back to TCG.
//! - [`disk`]: the sandbox's sparse ext4 disk image.
//! - [`qemu`]: find `qemu-system-x86_64` and `virtiofsd`, and build their argument lists.
//!
//! - [`broker`]: the host end of the guest channel: holds QEMU's agent socket and serves
//!   Airlock's commands on a private control socket, a protocol channel per client.
//! - [`backend`]: the tier behind the CLI's `Backend` seam: QEMU and virtiofsd run in a jail
//!   (a namespace-tier sandbox), the guest agent assembles the guest's root.
//!
//! Every module reports failures through the crate's one error type, [`error::VmError`].

pub mod backend;
pub mod broker;
pub mod disk;
pub mod error;
pub mod initramfs;
pub mod kernel;
pub mod kvm;
pub mod modules;
pub mod qemu;

pub use error::{Result, VmError};
