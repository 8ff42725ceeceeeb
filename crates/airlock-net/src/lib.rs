//! airlock-net: the network side of an Airlock sandbox.
//!
//! - [`policy`]: rules, presets, sources and trust, the checks
//!   ([`Policy::check`], [`Policy::check_addr`]).
//! - [`addr`]: the always-blocked address ranges.
//! - [`log`]: the per-sandbox decision log (JSON lines) and its reader.
//! - [`dns`]: the sandbox's resolver, answering only allowed names and
//!   pinning what they resolved to.
//! - [`gate`]: the egress proxy (HTTP, CONNECT, SOCKS5, transparent).
//!
//! See `DESIGN.md` beside this crate's manifest.

pub mod addr;
pub mod dns;
pub mod gate;
pub mod log;
pub mod policy;
pub mod tls;

pub use policy::{
    HostExposure, NetworkConfig, Policy, PolicyError, PolicyHandle, PolicySources, Preset,
    ProjectConfig, Reason, Rule, Source, TrustStore, Verdict,
};
