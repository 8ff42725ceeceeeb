//! airlock-net: the network side of an Airlock sandbox.
//!
//! - [`policy`]: rules, presets, sources and trust, the checks
//!   ([`Policy::check`], [`Policy::check_addr`]).
//! - [`addr`]: the always-blocked address ranges.
//! - [`log`]: the per-sandbox decision log (JSON lines) and its reader.
//! - [`dns`]: the sandbox's resolver, answering only allowed names and
//!   pinning what they resolved to.
//! - [`gate`]: the egress proxy (HTTP, CONNECT, SOCKS5, transparent) and
//!   [`NetService`], which runs the gate and the resolver in their own thread.
//! - [`inject`]: credential injection at the boundary: credentials and
//!   placeholders, head rewriting, response scrubbing, the per-sandbox CA.
//! - [`tls`]: the ClientHello SNI reader.
//! - [`tun`]: transparent capture, sandbox side: the TUN device, its
//!   addresses and routes ([`create_tun_in_current_netns`]).
//! - [`stack`]: transparent capture, host side: a user-space TCP/IP stack
//!   on that device feeding the gate and the resolver ([`spawn_stack`]).
//! - [`capture`]: transparent capture in the kernel: TCP over IPv4 bound for
//!   `tun0` redirected by an nf_tables rule to a socket the gate serves.
//!
//! See `DESIGN.md` beside this crate's manifest.

pub mod addr;
pub mod capture;
pub mod dns;
pub mod gate;
pub mod inject;
pub mod log;
mod netlink;
pub mod policy;
pub mod stack;
pub mod tls;
pub mod tun;

pub use capture::{
    CAPTURE_ADDR, CAPTURE_ADDR_V6, CaptureError, RedirectScope, install_redirect,
    route_to_loopback, shorten_tcp_tracking, use_local_congestion_control,
};
pub use dns::{DnsConfig, DnsServer, PinSet};
pub use gate::{Connector, DirectConnector, Gate, GateConfig, NetListeners, NetService, proxy_env};
pub use inject::{Credential, InjectError, Injection, Injector, SandboxCa};
pub use log::{Decision, DecisionLog, DecisionPath, VerdictKind};
pub use policy::{
    HOST_INTERNAL, HostExposure, NetworkConfig, Policy, PolicyError, PolicyHandle, PolicySources,
    Preset, ProjectConfig, Reason, Rule, Source, TrustStore, Verdict,
};
pub use stack::{StackCounters, StackError, StackHandle, spawn_stack};
pub use tun::{TunConfig, TunError, create_tun_in_current_netns};
