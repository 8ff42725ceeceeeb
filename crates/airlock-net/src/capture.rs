//! Transparent capture in the kernel: TCP that the sandbox sends towards
//! `tun0` is redirected, by one nf_tables rule per IP version in the
//! sandbox's own network namespace, to a listening socket there (the
//! capture endpoint, `127.0.0.53:3129` and `[::1]:3129`),
//! which the gate serves from the host side with the connection's original
//! destination (`SO_ORIGINAL_DST`).
//!
//! Why: the user-space stack behind `tun0` ([`crate::stack`]) copies every
//! segment through smoltcp and an in-process pipe; a kernel socket lets the
//! gate relay with splice(2) like it does for the proxy endpoint. The gate
//! makes exactly the same decision for both ([`crate::Gate::handle_transparent`]).
//!
//! The rule is a fast path, not a boundary: the sandbox's processes have no
//! capabilities, so they cannot change it, and if it were gone (or the
//! kernel has no nf_tables NAT) the same connections reach the user-space
//! stack through `tun0` and meet the same gate. UDP and everything else
//! always take `tun0`.
//!
//! The IPv4 rule, in `nft` syntax (table `ip airlock`, chain `capture`; the
//! IPv6 one is the same in `ip6 airlock`, to `[::1]:3129`):
//!
//! ```text
//! type nat hook output priority -100; policy accept;
//! meta oif "tun0" meta l4proto tcp dnat to 127.0.0.53:3129
//! ```
//!
//! It matches only what routing already sent to `tun0`, so loopback
//! traffic (the proxy endpoint, the resolver, the sandbox's own servers) is
//! untouched. The netlink messages are built by hand ([`crate::netlink`]).
//!
//! Without a TUN device (no `/dev/net/tun`, or no access to it, as in many
//! containers) the same rules still capture TCP: every destination is
//! routed to loopback ([`route_to_loopback`]) and the rules match
//! `ip daddr != 127.0.0.0/8` / `ip6 daddr != ::1` instead of the interface.
//! UDP and ICMP then have no way out at all (they end on the namespace's own
//! loopback); only the resolver answers names.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::dns::{DnsServer, is_transient_accept_error};
use crate::gate::Gate;
use crate::log::DecisionPath;
use crate::netlink::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, Netlink, push_attr, push_message, push_nested,
};
use crate::policy::{Reason, Verdict};

/// Where captured connections arrive inside the sandbox: the resolver's loopback address (already
/// reserved for Airlock), on a port of its own.
pub const CAPTURE_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 3129);
/// Where captured IPv6 connections arrive (IPv6 has a single loopback address).
pub const CAPTURE_ADDR_V6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 3129, 0, 0);

/// Errors of the kernel redirect.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A system call or netlink request failed.
    #[error("kernel capture: cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> CaptureError {
    let action = action.into();
    move |source| CaptureError::Io { action, source }
}

// Kernel uapi values (linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h,
// linux/netfilter.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;
/// `NF_IP_PRI_NAT_DST`: where destination NAT runs.
const NAT_DST_PRIORITY: i32 = -100;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_OIF: u32 = 5;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
/// Offset of the destination address in an IPv4 header.
const IPV4_DADDR_OFFSET: u32 = 16;
/// Offset of the destination address in an IPv6 header.
const IPV6_DADDR_OFFSET: u32 = 24;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const IPPROTO_TCP: u8 = 6;

const TABLE: &[u8] = b"airlock\0";
const CHAIN: &[u8] = b"capture\0";
const UNTRACKED: &[u8] = b"untracked\0";
/// `NF_IP_PRI_RAW`: before connection tracking.
const RAW_PRIORITY: i32 = -300;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const TCP_SPORT_OFFSET: u32 = 0;
const TCP_DPORT_OFFSET: u32 = 2;

/// Which connections the redirect rule takes.
#[derive(Debug, Clone, Copy)]
pub enum RedirectScope<'a> {
    /// What routing sends to this interface (`tun0`): `meta oif "tun0"`.
    Interface(&'a str),
    /// Every destination but loopback (`ip daddr != 127.0.0.0/8`, `ip6 daddr != ::1`), for a
    /// namespace without a TUN device whose every address routes to loopback
    /// ([`route_to_loopback`]).
    NotLoopback,
}

/// Installs the redirect rule in the current network namespace: TCP of
/// `to`'s IP version in `scope` goes to `to` instead (table `ip airlock` or
/// `ip6 airlock`). Needs `CAP_NET_ADMIN` over the namespace; one atomic
/// nf_tables batch, so on error nothing is installed.
pub fn install_redirect(scope: RedirectScope<'_>, to: SocketAddr) -> Result<(), CaptureError> {
    let matcher = match scope {
        RedirectScope::Interface(oif) => {
            let name = std::ffi::CString::new(oif).map_err(|_| {
                io_err(format!("name interface {oif:?}"))(io::ErrorKind::InvalidInput.into())
            })?;
            // SAFETY: `name` is a valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if index == 0 {
                return Err(io_err(format!("find interface {oif}"))(
                    io::Error::last_os_error(),
                ));
            }
            Match::Oif(index)
        }
        RedirectScope::NotLoopback => Match::NotLoopback,
    };
    let mut nl = Netlink::open(libc::NETLINK_NETFILTER)
        .map_err(io_err("open a netfilter netlink socket"))?;
    let batch = redirect_batch(&mut nl, matcher, to);
    nl.transact(&batch.out, &batch.acks).map_err(|e| {
        let what = e.at.and_then(|i| batch.what.get(i)).copied();
        io_err(format!(
            "install the nf_tables rules redirecting TCP ({scope:?}) to {to}{}",
            what.map(|w| format!(" ({w} was refused)"))
                .unwrap_or_default()
        ))(e.error)
    })
}

/// Routes every destination of one IP version to loopback (`ip route add local 0.0.0.0/0 dev lo`,
/// `ip -6 route add local ::/0 dev lo`): in a namespace without a TUN device this gives
/// connections somewhere to go so that the redirect rule ([`RedirectScope::NotLoopback`]) can
/// take them; anything it does not take (UDP, ICMP) ends on the namespace's own loopback, and
/// nothing leaves it.
pub fn route_to_loopback(v6: bool) -> Result<(), CaptureError> {
    const RT_SCOPE_HOST: u8 = 254;
    const RTN_LOCAL: u8 = 2;
    // SAFETY: a valid NUL-terminated name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(io_err("find the loopback interface")(
            io::Error::last_os_error(),
        ));
    }
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let mut nl = Netlink::open(libc::NETLINK_ROUTE).map_err(io_err("open a netlink socket"))?;
    crate::netlink::add_default_route(&mut nl, family, RT_SCOPE_HOST, RTN_LOCAL, lo).map_err(
        io_err(format!("route IPv{} to loopback", if v6 { 6 } else { 4 })),
    )
}

/// Connection tracking's timeouts for TCP states after the end of a connection (and before its
/// start), in seconds, set in the sandbox's namespace by [`shorten_tcp_tracking`].
pub const TCP_TRACKING_TIMEOUTS: &[(&str, u32)] = &[
    ("nf_conntrack_tcp_timeout_time_wait", 5),
    ("nf_conntrack_tcp_timeout_close", 5),
    ("nf_conntrack_tcp_timeout_syn_sent", 10),
    ("nf_conntrack_tcp_timeout_syn_recv", 10),
    ("nf_conntrack_tcp_timeout_fin_wait", 10),
    ("nf_conntrack_tcp_timeout_close_wait", 10),
    ("nf_conntrack_tcp_timeout_last_ack", 10),
];

/// Shortens, in the current network namespace, how long connection tracking remembers TCP
/// connections that are closing or closed (2 minutes by default for TIME_WAIT): with the
/// redirect rules, every TCP connection the sandbox makes is tracked, and a sandbox churning
/// connections would otherwise keep that many entries in the kernel's table (host memory, not
/// charged to the sandbox). Open connections each hold a socket of the gate, which limits them.
pub fn shorten_tcp_tracking() -> Result<(), CaptureError> {
    for (name, secs) in TCP_TRACKING_TIMEOUTS {
        let path = format!("/proc/sys/net/netfilter/{name}");
        std::fs::write(&path, secs.to_string()).map_err(io_err(format!("set {path}")))?;
    }
    Ok(())
}

/// Congestion control of the sandbox's own network namespace: Reno, which does not pace.
///
/// Every TCP connection in that namespace ends at the gate on the same host (the capture
/// endpoint, the proxy endpoint, the resolver; or `tun0` to the gate's user-space stack), so
/// its only path is a local hop, where congestion control has nothing to measure. The host's
/// default is often BBR, which paces every socket with a timer; on a local hop that pacing is
/// what limits a transfer. Measured on the
/// bench machine (2 cores, BBR host default): a bulk upload through the gate rose from ~76 % to
/// ~90 % of a direct transfer. The connection the gate makes upstream keeps the host's default,
/// so the real path is still paced and congestion-controlled as the host chose. Reno is the one
/// algorithm built into every kernel and in the default list of those a non-initial network
/// namespace may pick (`net.ipv4.tcp_allowed_congestion_control`; CUBIC is refused there).
pub const LOCAL_CONGESTION_CONTROL: &str = "reno";

/// Sets [`LOCAL_CONGESTION_CONTROL`] as the default of the current network namespace (which
/// must be the sandbox's: it applies to every socket created there afterwards).
pub fn use_local_congestion_control() -> Result<(), CaptureError> {
    let path = "/proc/sys/net/ipv4/tcp_congestion_control";
    std::fs::write(path, LOCAL_CONGESTION_CONTROL)
        .map_err(io_err(format!("set {path} to {LOCAL_CONGESTION_CONTROL}")))
}

/// The rule's match, resolved.
#[derive(Debug, Clone, Copy)]
enum Match {
    Oif(u32),
    NotLoopback,
}

/// One nf_tables batch under construction: the messages, the sequence numbers to be
/// acknowledged, and what each message is (for errors).
struct Batch {
    out: Vec<u8>,
    acks: Vec<u32>,
    what: Vec<&'static str>,
}

impl Batch {
    fn new(nl: &mut Netlink) -> Batch {
        let mut b = Batch {
            out: Vec::new(),
            acks: Vec::new(),
            what: Vec::new(),
        };
        let seq = nl.next_seq();
        let body = nfgenmsg(0, NFNL_SUBSYS_NFTABLES);
        push_message(&mut b.out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, &body);
        b.what.push("the nf_tables batch");
        b
    }

    /// A new object (table, chain, rule), acknowledged.
    fn add(&mut self, nl: &mut Netlink, msg: u16, body: &[u8], what: &'static str) {
        let seq = nl.next_seq();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
        push_message(&mut self.out, kind, flags, seq, body);
        self.acks.push(seq);
        self.what.push(what);
    }

    fn finish(mut self, nl: &mut Netlink) -> Batch {
        let seq = nl.next_seq();
        let body = nfgenmsg(0, NFNL_SUBSYS_NFTABLES);
        push_message(&mut self.out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, &body);
        self.what.push("the nf_tables batch");
        self
    }
}

/// A chain hooked on locally generated packets (`type <kind> hook output priority <priority>;
/// policy accept`).
fn output_chain(family: u8, name: &[u8], kind: &[u8], priority: i32) -> Vec<u8> {
    let mut chain = nfgenmsg(family, 0);
    push_attr(&mut chain, NFTA_CHAIN_TABLE, TABLE);
    push_attr(&mut chain, NFTA_CHAIN_NAME, name);
    push_nested(&mut chain, NFTA_CHAIN_HOOK, |h| {
        push_attr(h, NFTA_HOOK_HOOKNUM, &NF_INET_LOCAL_OUT.to_be_bytes());
        push_attr(h, NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
    });
    push_attr(&mut chain, NFTA_CHAIN_POLICY, &NF_ACCEPT.to_be_bytes());
    push_attr(&mut chain, NFTA_CHAIN_TYPE, kind);
    chain
}

/// A rule in `chain` whose expressions `exprs` writes.
fn rule(family: u8, chain: &[u8], exprs: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut rule = nfgenmsg(family, 0);
    push_attr(&mut rule, NFTA_RULE_TABLE, TABLE);
    push_attr(&mut rule, NFTA_RULE_CHAIN, chain);
    push_nested(&mut rule, NFTA_RULE_EXPRESSIONS, exprs);
    rule
}

/// The batch for one IP version (table `ip airlock` or `ip6 airlock`):
///
/// ```text
/// chain capture { type nat hook output priority -100; policy accept;
///     <match> meta l4proto tcp dnat to <to> }
/// chain untracked { type filter hook output priority -300; policy accept;
///     meta l4proto != tcp notrack
///     <daddr is loopback> tcp sport != <port> tcp dport != <port> notrack }
/// ```
///
/// `untracked` keeps connection tracking (which the `nat` chain turns on in the namespace) to
/// the connections the redirect needs: without it the agent could fill the namespace's share of
/// the kernel's conntrack table (host memory, not charged to the sandbox) with UDP or loopback
/// TCP that no rule here cares about.
fn redirect_batch(nl: &mut Netlink, matcher: Match, to: SocketAddr) -> Batch {
    // The family's number, the target address, and the destination field and loopback value
    // the loopback matches compare (IPv4: the /8, after a mask).
    let (family, addr, daddr_offset, loopback) = match to {
        SocketAddr::V4(a) => (
            NFPROTO_IPV4,
            a.ip().octets().to_vec(),
            IPV4_DADDR_OFFSET,
            vec![127, 0, 0, 0],
        ),
        SocketAddr::V6(a) => (
            NFPROTO_IPV6,
            a.ip().octets().to_vec(),
            IPV6_DADDR_OFFSET,
            Ipv6Addr::LOCALHOST.octets().to_vec(),
        ),
    };
    // Loads the destination address (masked to the /8 for IPv4) into register 1.
    let load_daddr = |e: &mut Vec<u8>| {
        let len = loopback.len() as u32;
        payload(e, NFT_PAYLOAD_NETWORK_HEADER, daddr_offset, len);
        if family == NFPROTO_IPV4 {
            expr(e, b"bitwise\0", |d| {
                push_attr(d, NFTA_BITWISE_SREG, &NFT_REG_1.to_be_bytes());
                push_attr(d, NFTA_BITWISE_DREG, &NFT_REG_1.to_be_bytes());
                push_attr(d, NFTA_BITWISE_LEN, &len.to_be_bytes());
                push_nested(d, NFTA_BITWISE_MASK, |v| {
                    push_attr(v, NFTA_DATA_VALUE, &[255, 0, 0, 0])
                });
                push_nested(d, NFTA_BITWISE_XOR, |v| {
                    push_attr(v, NFTA_DATA_VALUE, &[0; 4])
                });
            });
        }
    };
    let port = to.port().to_be_bytes();

    let mut b = Batch::new(nl);
    let mut table = nfgenmsg(family, 0);
    push_attr(&mut table, NFTA_TABLE_NAME, TABLE);
    b.add(nl, NFT_MSG_NEWTABLE, &table, "the table");

    let chain = output_chain(family, CHAIN, b"nat\0", NAT_DST_PRIORITY);
    b.add(nl, NFT_MSG_NEWCHAIN, &chain, "the nat chain");
    let redirect = rule(family, CHAIN, |e| {
        match matcher {
            Match::Oif(index) => {
                // meta oif <index>
                meta(e, NFT_META_OIF, NFT_REG_1);
                cmp(e, NFT_CMP_EQ, NFT_REG_1, &index.to_ne_bytes());
            }
            Match::NotLoopback => {
                // ip daddr & 255.0.0.0 != 127.0.0.0 / ip6 daddr != ::1
                load_daddr(e);
                cmp(e, NFT_CMP_NEQ, NFT_REG_1, &loopback);
            }
        }
        // meta l4proto tcp
        meta(e, NFT_META_L4PROTO, NFT_REG_1);
        cmp(e, NFT_CMP_EQ, NFT_REG_1, &[IPPROTO_TCP]);
        // dnat to <to>
        immediate(e, NFT_REG_1, &addr);
        immediate(e, NFT_REG_2, &port);
        expr(e, b"nat\0", |d| {
            push_attr(d, NFTA_NAT_TYPE, &NFT_NAT_DNAT.to_be_bytes());
            push_attr(d, NFTA_NAT_FAMILY, &u32::from(family).to_be_bytes());
            push_attr(d, NFTA_NAT_REG_ADDR_MIN, &NFT_REG_1.to_be_bytes());
            push_attr(d, NFTA_NAT_REG_PROTO_MIN, &NFT_REG_2.to_be_bytes());
        });
    });
    b.add(nl, NFT_MSG_NEWRULE, &redirect, "the redirect rule");

    let chain = output_chain(family, UNTRACKED, b"filter\0", RAW_PRIORITY);
    b.add(nl, NFT_MSG_NEWCHAIN, &chain, "the untracked chain");
    let not_tcp = rule(family, UNTRACKED, |e| {
        meta(e, NFT_META_L4PROTO, NFT_REG_1);
        cmp(e, NFT_CMP_NEQ, NFT_REG_1, &[IPPROTO_TCP]);
        expr(e, b"notrack\0", |_| {});
    });
    b.add(
        nl,
        NFT_MSG_NEWRULE,
        &not_tcp,
        "the rule untracking all but TCP",
    );
    let loopback_tcp = rule(family, UNTRACKED, |e| {
        meta(e, NFT_META_L4PROTO, NFT_REG_1);
        cmp(e, NFT_CMP_EQ, NFT_REG_1, &[IPPROTO_TCP]);
        load_daddr(e);
        cmp(e, NFT_CMP_EQ, NFT_REG_1, &loopback);
        for offset in [TCP_SPORT_OFFSET, TCP_DPORT_OFFSET] {
            payload(e, NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2);
            cmp(e, NFT_CMP_NEQ, NFT_REG_1, &port);
        }
        expr(e, b"notrack\0", |_| {});
    });
    b.add(
        nl,
        NFT_MSG_NEWRULE,
        &loopback_tcp,
        "the rule untracking loopback TCP",
    );
    b.finish(nl)
}

/// `struct nfgenmsg { u8 family; u8 version; __be16 res_id; }`.
fn nfgenmsg(family: u8, res_id: u16) -> Vec<u8> {
    let mut b = vec![family, 0];
    b.extend_from_slice(&res_id.to_be_bytes());
    b
}

fn expr(buf: &mut Vec<u8>, name: &[u8], data: impl FnOnce(&mut Vec<u8>)) {
    push_nested(buf, NFTA_LIST_ELEM, |el| {
        push_attr(el, NFTA_EXPR_NAME, name);
        push_nested(el, NFTA_EXPR_DATA, data);
    });
}

/// Loads `len` bytes at `offset` of a header (`base`) of the packet into register 1.
fn payload(buf: &mut Vec<u8>, base: u32, offset: u32, len: u32) {
    expr(buf, b"payload\0", |d| {
        push_attr(d, NFTA_PAYLOAD_DREG, &NFT_REG_1.to_be_bytes());
        push_attr(d, NFTA_PAYLOAD_BASE, &base.to_be_bytes());
        push_attr(d, NFTA_PAYLOAD_OFFSET, &offset.to_be_bytes());
        push_attr(d, NFTA_PAYLOAD_LEN, &len.to_be_bytes());
    });
}

fn meta(buf: &mut Vec<u8>, key: u32, dreg: u32) {
    expr(buf, b"meta\0", |d| {
        push_attr(d, NFTA_META_DREG, &dreg.to_be_bytes());
        push_attr(d, NFTA_META_KEY, &key.to_be_bytes());
    });
}

fn cmp(buf: &mut Vec<u8>, op: u32, sreg: u32, value: &[u8]) {
    expr(buf, b"cmp\0", |d| {
        push_attr(d, NFTA_CMP_SREG, &sreg.to_be_bytes());
        push_attr(d, NFTA_CMP_OP, &op.to_be_bytes());
        push_nested(d, NFTA_CMP_DATA, |v| push_attr(v, NFTA_DATA_VALUE, value));
    });
}

fn immediate(buf: &mut Vec<u8>, dreg: u32, value: &[u8]) {
    expr(buf, b"immediate\0", |d| {
        push_attr(d, NFTA_IMMEDIATE_DREG, &dreg.to_be_bytes());
        push_nested(d, NFTA_IMMEDIATE_DATA, |v| {
            push_attr(v, NFTA_DATA_VALUE, value)
        });
    });
}

/// The destination a redirected connection was addressed to (`SO_ORIGINAL_DST` /
/// `IP6T_SO_ORIGINAL_DST`, from the connection tracking of the socket's own network namespace).
pub fn original_destination(fd: BorrowedFd<'_>, v6: bool) -> io::Result<SocketAddr> {
    /// `IP6T_SO_ORIGINAL_DST` (linux/netfilter_ipv6/ip6_tables.h).
    const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: `sockaddr_in6` is plain old data, all-zero is valid, and it is large enough for
    // either answer.
    let mut raw: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let (level, name, size) = if v6 {
        (
            libc::SOL_IPV6,
            IP6T_SO_ORIGINAL_DST,
            std::mem::size_of::<libc::sockaddr_in6>(),
        )
    } else {
        (
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            std::mem::size_of::<libc::sockaddr_in>(),
        )
    };
    let mut len = size as libc::socklen_t;
    // SAFETY: `raw` is a writable buffer of at least `len` bytes, as the option expects.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut raw as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if v6 {
        return Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(raw.sin6_addr.s6_addr),
            u16::from_be(raw.sin6_port),
            0,
            0,
        )));
    }
    // SAFETY: the kernel wrote a `sockaddr_in` at the start of the buffer, which is larger.
    let v4: libc::sockaddr_in =
        unsafe { std::ptr::read((&raw as *const libc::sockaddr_in6).cast()) };
    Ok(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
        u16::from_be(v4.sin_port),
    )))
}

/// Serves the capture endpoint: every connection goes to the gate as a transparent one with its
/// original destination; connections to `resolver` (port 53) are answered by the resolver.
pub(crate) async fn serve(
    listener: TcpListener,
    gate: Gate,
    dns: DnsServer,
    resolver: SocketAddr,
) -> io::Result<()> {
    let endpoint = listener.local_addr()?;
    let v6 = endpoint.is_ipv6();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) if is_transient_accept_error(&e) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = stream.set_nodelay(true);
        let Ok(dst) = original_destination(stream.as_fd(), v6) else {
            continue;
        };
        if dst == endpoint {
            // Not redirected: someone inside connected to the endpoint itself.
            let v = Verdict::deny(
                Reason::Other,
                "direct connection to the gate's capture endpoint",
            );
            gate.log(
                DecisionPath::Transparent,
                None,
                Some(dst.ip()),
                dst.port(),
                &v,
            );
            continue;
        }
        if dst == resolver {
            let Some(permit) = gate.connection_permit(DecisionPath::Dns) else {
                continue;
            };
            let dns = dns.clone();
            tokio::spawn(async move {
                crate::stack::serve_dns_tcp(&dns, stream).await;
                drop(permit);
            });
            continue;
        }
        let Some(permit) = gate.connection_permit(DecisionPath::Transparent) else {
            continue;
        };
        let gate = gate.clone();
        tokio::spawn(async move {
            gate.handle_transparent(stream, dst, None).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a batch and returns each message's (type, flags, seq).
    fn headers(b: &[u8]) -> Vec<(u16, u16, u32)> {
        let mut out = Vec::new();
        let mut rest = b;
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            out.push((
                u16::from_ne_bytes(rest[4..6].try_into().unwrap()),
                u16::from_ne_bytes(rest[6..8].try_into().unwrap()),
                u32::from_ne_bytes(rest[8..12].try_into().unwrap()),
            ));
            rest = &rest[(len + 3) & !3..];
        }
        out
    }

    #[test]
    fn the_batch_creates_table_two_chains_three_rules_and_names_each_message() {
        let mut nl = Netlink::open(libc::NETLINK_NETFILTER).unwrap();
        let b = redirect_batch(&mut nl, Match::Oif(7), CAPTURE_ADDR.into());
        let h = headers(&b.out);
        let kinds: Vec<u16> = h.iter().map(|x| x.0).collect();
        assert_eq!(
            kinds,
            vec![0x10, 0xa00, 0xa03, 0xa06, 0xa03, 0xa06, 0xa06, 0x11]
        );
        assert_eq!(b.what.len(), kinds.len(), "every message is named");
        let acked: Vec<u32> = h
            .iter()
            .filter(|x| x.1 & NLM_F_ACK != 0)
            .map(|x| x.2)
            .collect();
        assert_eq!(acked, b.acks);
        // The rules carry the interface index, the address, the port and notrack.
        let needle = |n: &[u8]| b.out.windows(n.len()).any(|w| w == n);
        assert!(needle(&7u32.to_ne_bytes()));
        assert!(needle(&[127, 0, 0, 53]));
        assert!(needle(&3129u16.to_be_bytes()));
        assert!(needle(b"nat\0") && needle(b"notrack\0") && needle(b"filter\0"));
        // IPv6: the ip6 family and ::1, no IPv4 mask.
        let b = redirect_batch(&mut nl, Match::NotLoopback, CAPTURE_ADDR_V6.into());
        let needle = |n: &[u8]| b.out.windows(n.len()).any(|w| w == n);
        let table = &b.out[20..]; // after the batch-begin message (16 + 4 bytes)
        assert_eq!(table[16], NFPROTO_IPV6, "the table's family");
        assert!(needle(&Ipv6Addr::LOCALHOST.octets()) && !needle(b"bitwise\0"));
    }
}
