//! The checks, one module per group. Each appends findings; none writes, signals or
//! sends anything beyond a TCP/unix connect (and DNS lookups when targets ask for them).

pub(crate) mod env;
pub(crate) mod files;
pub(crate) mod network;
pub(crate) mod process;
pub(crate) mod sockets;
