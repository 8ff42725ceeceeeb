//! The host side of transparent capture: a user-space TCP/IP stack
//! ([smoltcp]) serving the sandbox's TUN device (see [`crate::tun`]).
//!
//! Every packet the sandbox sends arrives here. Before a packet reaches
//! smoltcp it is classified ([`classify`]):
//!
//! - **TCP**, any destination: a SYN (without ACK) for a connection the
//!   stack does not know yet makes the stack create a smoltcp socket
//!   *listening on exactly that destination address and port*, then the SYN
//!   is fed to smoltcp, which answers it from that socket. smoltcp has no
//!   "accept anything" socket, but with AnyIP on it delivers a segment to any
//!   socket whose listen endpoint matches the segment's destination, so a
//!   listener created on demand just before its SYN is processed accepts
//!   connections to every address:port. (Tuples already known are not
//!   duplicated, so a retransmitted SYN reaches the socket it created.)
//!   Once the handshake completes, the connection is bridged to
//!   [`Gate::handle_transparent`] through a [`tokio::io::duplex`] pair,
//!   with the destination taken from the packet. The gate reads the TLS SNI
//!   or HTTP Host, falls back to the names the sandbox resolved to that
//!   address through Airlock's DNS (its pins), and decides. TCP to the
//!   resolver address port 53 is DNS over TCP, answered by the resolver.
//! - **UDP** to the resolver address, port 53: answered by
//!   [`DnsServer::answer`] (512-byte answers, so big ones are truncated and
//!   the client retries over TCP).
//! - **Everything else** (other UDP, ICMP and ICMPv6, other protocols, IPv6
//!   extension headers, IPv4 fragments, packets whose source is not the
//!   sandbox's address): dropped, never answered. UDP and ICMP echo
//!   requests are logged as refused `transparent` decisions, at most once
//!   per destination every 10 seconds.
//!
//! A connection the gate refuses has already completed its handshake (the
//! gate needs the client's first bytes to decide), so it is ended with a
//! reset: when the gate finishes without having sent the client a single
//! byte, the stack aborts the connection (RST) instead of closing it (FIN).
//!
//! The whole stack is one task: it polls the TUN descriptor, every
//! connection's duplex end, the DNS answers and smoltcp's timer from a
//! single [`std::future::poll_fn`], so there is no lock around smoltcp.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use crate::dns::DnsServer;
use crate::gate::Gate;
use crate::log::{DecisionLog, DecisionPath};
use crate::policy::{Reason, Verdict};
use crate::tun::TunConfig;

/// Errors of the user-space stack.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A system call on the TUN descriptor failed.
    #[error("stack: cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The stack's task panicked or was cancelled.
    #[error("stack: the stack task failed: {0}")]
    Task(String),
}

/// Per-socket TCP buffer (each direction). Large enough for window scaling
/// to matter on a 64 KiB MTU; allocated when a connection is accepted.
const TCP_BUFFER: usize = 256 * 1024;
/// The duplex pipe between a connection and the gate.
const DUPLEX_BUFFER: usize = 128 * 1024;
/// At most this many TCP connections (and half-open ones) per sandbox; SYNs
/// beyond get a reset.
const MAX_CONNECTIONS: usize = 4096;
/// At most this many DNS queries in flight; more are dropped (the client
/// retries).
const MAX_DNS_IN_FLIGHT: usize = 256;
/// A socket still in LISTEN this long after its SYN was fed never
/// completed a handshake (invalid SYN, or reset during SYN-RECEIVED).
const LISTEN_STALE: Duration = Duration::from_secs(2);
/// A handshake or a close that takes longer is given up (RST).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);
const CLOSE_LIMIT: Duration = Duration::from_secs(60);
/// A refused UDP or ICMP destination is logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// Packets read from the TUN device before the stack runs smoltcp.
const READ_BURST: usize = 256;
/// Rounds of work in one wake-up before yielding to other tasks.
const ROUNDS: usize = 64;

/// Counters of a running stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackCounters {
    /// Packets read from the TUN device.
    pub packets_in: u64,
    /// Packets written to the TUN device.
    pub packets_out: u64,
    /// TCP connections handed to the gate (or to the DNS-over-TCP server).
    pub tcp_connections: u64,
    /// DNS queries over UDP answered or being answered.
    pub dns_queries: u64,
    /// UDP datagrams dropped (not DNS to the resolver).
    pub dropped_udp: u64,
    /// ICMP / ICMPv6 packets dropped.
    pub dropped_icmp: u64,
    /// Other packets dropped (other protocols, fragments, spoofed sources,
    /// malformed packets).
    pub dropped_other: u64,
}

#[derive(Debug, Default)]
struct Stats {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    tcp_connections: AtomicU64,
    dns_queries: AtomicU64,
    dropped_udp: AtomicU64,
    dropped_icmp: AtomicU64,
    dropped_other: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A running stack. Dropping it (or [`StackHandle::stop`]) stops the stack;
/// it also ends by itself when the TUN device goes away (the sandbox's
/// network namespace was destroyed).
#[derive(Debug)]
pub struct StackHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), StackError>>>,
    stats: Arc<Stats>,
}

impl StackHandle {
    /// The stack's counters so far.
    pub fn counters(&self) -> StackCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        StackCounters {
            packets_in: g(&s.packets_in),
            packets_out: g(&s.packets_out),
            tcp_connections: g(&s.tcp_connections),
            dns_queries: g(&s.dns_queries),
            dropped_udp: g(&s.dropped_udp),
            dropped_icmp: g(&s.dropped_icmp),
            dropped_other: g(&s.dropped_other),
        }
    }

    /// Whether the stack has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the stack to stop: every connection it carries is dropped and
    /// the TUN descriptor is closed (which removes `tun0` in the sandbox).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits for the stack to end (after [`StackHandle::stop`], or when the
    /// TUN device goes away) and returns the error that ended it, if any.
    pub async fn join(mut self) -> Result<(), StackError> {
        match self.task.take() {
            Some(t) => match t.await {
                Ok(r) => r,
                Err(e) => Err(StackError::Task(e.to_string())),
            },
            None => Ok(()),
        }
    }
}

impl Drop for StackHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the user-space stack on `tun` (the descriptor
/// [`crate::tun::create_tun_in_current_netns`] returned) on the runtime
/// `rt`, until the handle is stopped or dropped or the device goes away.
/// TCP connections go to `gate`, DNS to `dns`; `log` records the dropped
/// UDP and ICMP (pass the gate's log). `gate` and `dns` should share one
/// [`crate::dns::PinSet`] so the gate sees what the sandbox resolved.
pub fn spawn_stack(
    tun: OwnedFd,
    gate: Arc<Gate>,
    dns: Arc<DnsServer>,
    log: DecisionLog,
    cfg: &TunConfig,
    rt: &tokio::runtime::Handle,
) -> StackHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let stats = Arc::new(Stats::default());
    let cfg = cfg.clone();
    let st = stats.clone();
    let task = rt.spawn(tokio::task::unconstrained(async move {
        let mut stack = Stack::new(tun, gate, dns, log, cfg, st)?;
        let mut stop_rx = stop_rx;
        std::future::poll_fn(|cx| {
            if Pin::new(&mut stop_rx).poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            stack.poll(cx)
        })
        .await
    }));
    StackHandle {
        stop: Some(stop_tx),
        task: Some(task),
        stats,
    }
}

// ---------------------------------------------------------------- device

/// smoltcp's view of the TUN device: packets are read from the descriptor
/// (and classified) outside smoltcp and queued here; what smoltcp sends is
/// queued and written to the descriptor afterwards.
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Packets from the TUN device were made by the sandbox's kernel and
        // never crossed a wire: verifying their checksums again only costs
        // a pass over every byte (a bad one could only corrupt the
        // sandbox's own stream). Checksums of what the stack sends are
        // computed, since the sandbox's kernel verifies them.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps
    }
}

// -------------------------------------------------------- classification

/// What to do with one packet from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Class {
    /// TCP: to smoltcp. `syn`: opens a connection (SYN without ACK or RST).
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        syn: bool,
    },
    /// UDP to the resolver, port 53: to smoltcp's DNS socket.
    Dns,
    /// Other UDP: dropped and logged.
    Udp { dst: SocketAddr },
    /// ICMP / ICMPv6: dropped; echo requests are logged.
    Icmp { dst: IpAddr, echo: bool },
    /// Anything else: dropped.
    Drop(&'static str),
}

/// Classifies a raw IP packet from the sandbox (see the module docs).
pub(crate) fn classify(pkt: &[u8], cfg: &TunConfig) -> Class {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            if pkt.len() < 20 {
                return Class::Drop("short IPv4 header");
            }
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if ihl < 20 || total < ihl || total > pkt.len() {
                return Class::Drop("malformed IPv4 header");
            }
            // More-fragments flag or a fragment offset: never reassembled.
            if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                return Class::Drop("IPv4 fragment");
            }
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            if src != cfg.sandbox_v4 {
                return Class::Drop("source is not the sandbox's address");
            }
            transport(pkt[9], src.into(), dst.into(), &pkt[ihl..total], cfg)
        }
        Some(6) => {
            if pkt.len() < 40 {
                return Class::Drop("short IPv6 header");
            }
            let plen = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if 40 + plen > pkt.len() {
                return Class::Drop("malformed IPv6 header");
            }
            let addr = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                Ipv6Addr::from(o)
            };
            let (src, dst) = (addr(&pkt[8..24]), addr(&pkt[24..40]));
            if src != cfg.sandbox_v6 {
                return Class::Drop("source is not the sandbox's address");
            }
            transport(pkt[6], src.into(), dst.into(), &pkt[40..40 + plen], cfg)
        }
        _ => Class::Drop("not IPv4 or IPv6"),
    }
}

fn transport(proto: u8, src: IpAddr, dst: IpAddr, payload: &[u8], cfg: &TunConfig) -> Class {
    let ports = |p: &[u8]| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        )
    };
    match proto {
        6 => {
            if payload.len() < 20 {
                return Class::Drop("short TCP header");
            }
            let (sport, dport) = ports(payload);
            let flags = payload[13];
            // SYN set, ACK and RST clear.
            let syn = flags & 0x02 != 0 && flags & 0x14 == 0;
            Class::Tcp {
                src: SocketAddr::new(src, sport),
                dst: SocketAddr::new(dst, dport),
                syn,
            }
        }
        17 => {
            if payload.len() < 8 {
                return Class::Drop("short UDP header");
            }
            let (_, dport) = ports(payload);
            if dst == IpAddr::V4(cfg.dns_v4) && dport == 53 {
                Class::Dns
            } else {
                Class::Udp {
                    dst: SocketAddr::new(dst, dport),
                }
            }
        }
        1 => Class::Icmp {
            dst,
            echo: payload.first() == Some(&8),
        },
        58 => Class::Icmp {
            dst,
            echo: payload.first() == Some(&128),
        },
        _ => Class::Drop("protocol not forwarded"),
    }
}

// ------------------------------------------------------------------ stack

type Tuple = (SocketAddr, SocketAddr);

/// One TCP connection from the sandbox.
struct Conn {
    tuple: Tuple,
    created: tokio::time::Instant,
    /// Our end of the pipe to the gate; `None` until the handshake completes.
    io: Option<DuplexStream>,
    /// Fires when the gate's task is over.
    done: Option<oneshot::Receiver<()>>,
    gate_done: bool,
    /// The gate closed its sending side (read EOF).
    gate_eof: bool,
    /// The sandbox's FIN was passed on, or the gate can take no more.
    client_eof: bool,
    /// Bytes the gate sent to the sandbox.
    to_client: u64,
    /// When close() or abort() was issued.
    closing: Option<tokio::time::Instant>,
}

type DnsReply = (udp::UdpMetadata, Option<Vec<u8>>);

struct Stack {
    tun: AsyncFd<OwnedFd>,
    scratch: Vec<u8>,
    dev: QueueDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, Conn>,
    tuples: HashMap<Tuple, SocketHandle>,
    dns_udp: SocketHandle,
    dns_tx: mpsc::UnboundedSender<DnsReply>,
    dns_rx: mpsc::UnboundedReceiver<DnsReply>,
    dns_in_flight: usize,
    gate: Arc<Gate>,
    dns: Arc<DnsServer>,
    log: DecisionLog,
    cfg: TunConfig,
    stats: Arc<Stats>,
    logged_drops: HashMap<(u8, SocketAddr), tokio::time::Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
    last_maintenance: tokio::time::Instant,
}

/// Why reading or writing the device stopped the stack.
enum DevEnd {
    /// The device is gone (its namespace was destroyed): a normal end.
    Gone,
    Err(StackError),
}

fn device_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EIO | libc::ENODEV | libc::ENXIO)
    )
}

fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

impl Stack {
    fn new(
        tun: OwnedFd,
        gate: Arc<Gate>,
        dns: Arc<DnsServer>,
        log: DecisionLog,
        cfg: TunConfig,
        stats: Arc<Stats>,
    ) -> Result<Stack, StackError> {
        let io_err = |action| move |source| StackError::Io { action, source };
        let flags = nix::fcntl::fcntl(&tun, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| io_err("read the TUN descriptor's flags")(e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&tun, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| io_err("make the TUN descriptor non-blocking")(e.into()))?;
        // SAFETY: an `OwnedFd` is an open descriptor that stays open (and
        // always returns the same number from `as_raw_fd`) until it is
        // dropped, which only happens when the `AsyncFd` owning it is.
        let tun = unsafe { AsyncFd::register(tun) }
            .map_err(|e| io_err("register the TUN descriptor")(e.into()))?;

        let mtu = cfg.mtu as usize;
        let mut dev = QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random_seed();
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.gateway_v4), 32));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(cfg.gateway_v6), 128));
            if cfg.dns_v4 != cfg.gateway_v4 {
                let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.dns_v4), 32));
            }
        });
        // Replies to the sandbox: every address is "routed" to it (the
        // medium is IP, so the gateway only has to exist).
        let _ = iface.routes_mut().add_default_ipv4_route(cfg.sandbox_v4);
        let _ = iface.routes_mut().add_default_ipv6_route(cfg.sandbox_v6);
        // Accept packets for every destination (see the module docs).
        iface.set_any_ip(true);

        let mut sockets = SocketSet::new(Vec::new());
        let mut udp_sock = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 128], vec![0u8; 64 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 128], vec![0u8; 64 * 1024]),
        );
        udp_sock
            .bind(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(cfg.dns_v4)),
                port: 53,
            })
            .map_err(|e| io_err("bind the resolver socket")(io::Error::other(e.to_string())))?;
        let dns_udp = sockets.add(udp_sock);
        let (dns_tx, dns_rx) = mpsc::unbounded_channel();
        Ok(Stack {
            tun,
            scratch: vec![0u8; mtu.max(1500)],
            dev,
            iface,
            sockets,
            conns: HashMap::new(),
            tuples: HashMap::new(),
            dns_udp,
            dns_tx,
            dns_rx,
            dns_in_flight: 0,
            gate,
            dns,
            log,
            cfg,
            stats,
            logged_drops: HashMap::new(),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            last_maintenance: tokio::time::Instant::now(),
        })
    }

    /// One wake-up: does all the work there is (bounded), then registers
    /// for every event that can bring more.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StackError>> {
        for _ in 0..ROUNDS {
            let mut progress = match self.read_tun(cx) {
                Ok(p) => p,
                Err(DevEnd::Gone) => return Poll::Ready(Ok(())),
                Err(DevEnd::Err(e)) => return Poll::Ready(Err(e)),
            };
            let now = smoltcp::time::Instant::now();
            if self.iface.poll(now, &mut self.dev, &mut self.sockets)
                == PollResult::SocketStateChanged
            {
                progress = true;
            }
            progress |= self.pump(cx);
            if self.iface.poll(now, &mut self.dev, &mut self.sockets)
                == PollResult::SocketStateChanged
            {
                progress = true;
            }
            match self.flush_tun(cx) {
                Ok(p) => progress |= p,
                Err(DevEnd::Gone) => return Poll::Ready(Ok(())),
                Err(DevEnd::Err(e)) => return Poll::Ready(Err(e)),
            }
            if self.last_maintenance.elapsed() >= Duration::from_secs(1) {
                self.last_maintenance = tokio::time::Instant::now();
                self.maintain();
            }
            if progress {
                continue;
            }
            let delay = self
                .iface
                .poll_delay(smoltcp::time::Instant::now(), &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + delay);
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // Still busy: let the other tasks (the gate's) run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn read_tun(&mut self, cx: &mut Context<'_>) -> Result<bool, DevEnd> {
        let mut n_read = 0;
        while n_read < READ_BURST {
            let mut guard = match self.tun.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(source)) => {
                    return Err(DevEnd::Err(StackError::Io {
                        action: "wait for the TUN device",
                        source,
                    }));
                }
                Poll::Pending => break,
            };
            let scratch = &mut self.scratch;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), scratch).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Err(DevEnd::Gone),
                Ok(Ok(n)) => {
                    n_read += 1;
                    bump(&self.stats.packets_in);
                    let pkt = self.scratch[..n].to_vec();
                    self.ingest(pkt);
                }
                Ok(Err(e)) if device_gone(&e) => return Err(DevEnd::Gone),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(source)) => {
                    return Err(DevEnd::Err(StackError::Io {
                        action: "read from the TUN device",
                        source,
                    }));
                }
                // Not readable after all: readiness was cleared, poll again
                // (which registers the waker).
                Err(_) => {}
            }
        }
        Ok(n_read > 0)
    }

    fn flush_tun(&mut self, cx: &mut Context<'_>) -> Result<bool, DevEnd> {
        let mut wrote = false;
        while let Some(pkt) = self.dev.tx.front() {
            let mut guard = match self.tun.poll_write_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(source)) => {
                    return Err(DevEnd::Err(StackError::Io {
                        action: "wait for the TUN device",
                        source,
                    }));
                }
                Poll::Pending => break,
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), pkt).map_err(io::Error::from))
            {
                Ok(Ok(_)) => {
                    self.dev.tx.pop_front();
                    bump(&self.stats.packets_out);
                    wrote = true;
                }
                Ok(Err(e)) if device_gone(&e) => return Err(DevEnd::Gone),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // A packet the kernel refuses (should not happen): drop it.
                Ok(Err(_)) => {
                    self.dev.tx.pop_front();
                }
                Err(_) => {}
            }
        }
        Ok(wrote)
    }

    fn ingest(&mut self, pkt: Vec<u8>) {
        match classify(&pkt, &self.cfg) {
            Class::Tcp { src, dst, syn } => {
                if syn {
                    self.on_syn(src, dst);
                }
                self.dev.rx.push_back(pkt);
            }
            Class::Dns => self.dev.rx.push_back(pkt),
            Class::Udp { dst } => {
                bump(&self.stats.dropped_udp);
                let rule = format!(
                    "UDP is not forwarded (only DNS to the sandbox resolver {}:53)",
                    self.cfg.dns_v4
                );
                self.log_drop(17, dst, &rule);
            }
            Class::Icmp { dst, echo } => {
                bump(&self.stats.dropped_icmp);
                if echo {
                    self.log_drop(1, SocketAddr::new(dst, 0), "ICMP is not forwarded");
                }
            }
            Class::Drop(_) => bump(&self.stats.dropped_other),
        }
    }

    fn log_drop(&mut self, proto: u8, dst: SocketAddr, rule: &str) {
        let now = tokio::time::Instant::now();
        if let Some(t) = self.logged_drops.get(&(proto, dst))
            && now.duration_since(*t) < DROP_LOG_EVERY
        {
            return;
        }
        if self.logged_drops.len() >= 4096 {
            self.logged_drops
                .retain(|_, t| now.duration_since(*t) < DROP_LOG_EVERY);
        }
        self.logged_drops.insert((proto, dst), now);
        self.log.decide(
            DecisionPath::Transparent,
            None,
            Some(dst.ip()),
            dst.port(),
            &Verdict::deny(Reason::Other, rule),
        );
    }

    /// A new connection: a socket listening on exactly its destination,
    /// created before smoltcp sees the SYN (the accept-any trick).
    fn on_syn(&mut self, src: SocketAddr, dst: SocketAddr) {
        let tuple = (src, dst);
        if self.tuples.contains_key(&tuple) || self.conns.len() >= MAX_CONNECTIONS {
            // Known: a retransmitted SYN for its socket. Too many: smoltcp
            // finds no socket and resets.
            return;
        }
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
        );
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(None);
        let ep = IpListenEndpoint {
            addr: Some(dst.ip().into()),
            port: dst.port(),
        };
        if sock.listen(ep).is_err() {
            return; // port 0
        }
        let h = self.sockets.add(sock);
        self.tuples.insert(tuple, h);
        self.conns.insert(
            h,
            Conn {
                tuple,
                created: tokio::time::Instant::now(),
                io: None,
                done: None,
                gate_done: false,
                gate_eof: false,
                client_eof: false,
                to_client: 0,
                closing: None,
            },
        );
    }

    fn start(&self, dst: SocketAddr) -> (DuplexStream, oneshot::Receiver<()>) {
        let (ours, theirs) = tokio::io::duplex(DUPLEX_BUFFER);
        let (done_tx, done_rx) = oneshot::channel();
        bump(&self.stats.tcp_connections);
        if dst == SocketAddr::new(IpAddr::V4(self.cfg.dns_v4), 53) {
            let dns = self.dns.clone();
            tokio::spawn(async move {
                serve_dns_tcp(&dns, theirs).await;
                let _ = done_tx.send(());
            });
        } else {
            let gate = self.gate.clone();
            tokio::spawn(async move {
                // No resolved name: the gate looks the destination up in
                // the pins itself and tries every name the sandbox resolved
                // to it (one name chosen here could be the wrong one).
                gate.handle_transparent(theirs, dst, None).await;
                let _ = done_tx.send(());
            });
        }
        (ours, done_rx)
    }

    /// Moves bytes between every connection and its gate task; DNS over UDP.
    fn pump(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut finished = Vec::new();
        let handles: Vec<SocketHandle> = self.conns.keys().copied().collect();
        for h in handles {
            let state = self.sockets.get::<tcp::Socket>(h).state();
            let age = self.conns[&h].created.elapsed();
            match state {
                tcp::State::Closed | tcp::State::TimeWait => {
                    finished.push(h);
                    continue;
                }
                tcp::State::Listen if age > LISTEN_STALE => {
                    finished.push(h);
                    continue;
                }
                tcp::State::Listen | tcp::State::SynReceived => {
                    if age > HANDSHAKE_LIMIT {
                        self.sockets.get_mut::<tcp::Socket>(h).abort();
                        progress = true;
                    }
                    continue;
                }
                _ => {}
            }
            if self.conns[&h].io.is_none() {
                let s = self.sockets.get::<tcp::Socket>(h);
                let Some(local) = s.local_endpoint() else {
                    finished.push(h);
                    continue;
                };
                let dst = SocketAddr::new(local.addr.into(), local.port);
                let (io, done) = self.start(dst);
                let c = self.conns.get_mut(&h).expect("connection");
                c.io = Some(io);
                c.done = Some(done);
                progress = true;
            }
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let c = self.conns.get_mut(&h).expect("connection");
            progress |= pump_conn(cx, s, c);
        }
        for h in finished {
            self.remove(h);
            progress = true;
        }
        progress |= self.pump_dns(cx);
        progress
    }

    fn pump_dns(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let s = self.sockets.get_mut::<udp::Socket>(self.dns_udp);
        while let Ok((data, meta)) = s.recv() {
            progress = true;
            if self.dns_in_flight >= MAX_DNS_IN_FLIGHT {
                continue;
            }
            self.dns_in_flight += 1;
            bump(&self.stats.dns_queries);
            let query = data.to_vec();
            let dns = self.dns.clone();
            let tx = self.dns_tx.clone();
            tokio::spawn(async move {
                let answer = dns.answer(&query, 512).await;
                let _ = tx.send((meta, answer));
            });
        }
        while let Poll::Ready(Some((meta, answer))) = self.dns_rx.poll_recv(cx) {
            progress = true;
            self.dns_in_flight = self.dns_in_flight.saturating_sub(1);
            if let Some(a) = answer {
                // From the resolver's address (the query's destination).
                let _ = s.send_slice(&a, meta);
            }
        }
        progress
    }

    fn remove(&mut self, h: SocketHandle) {
        if let Some(c) = self.conns.remove(&h) {
            self.tuples.remove(&c.tuple);
        }
        self.sockets.remove(h);
    }

    fn maintain(&mut self) {
        let now = tokio::time::Instant::now();
        self.logged_drops
            .retain(|_, t| now.duration_since(*t) < DROP_LOG_EVERY);
        for (h, c) in &mut self.conns {
            if let Some(t) = c.closing
                && now.duration_since(t) > CLOSE_LIMIT
            {
                self.sockets.get_mut::<tcp::Socket>(*h).abort();
            }
        }
    }
}

/// Moves bytes between one established connection and the gate.
fn pump_conn(cx: &mut Context<'_>, s: &mut tcp::Socket<'static>, c: &mut Conn) -> bool {
    let mut progress = false;
    let Some(io) = c.io.as_mut() else {
        return false;
    };
    if !c.gate_done
        && let Some(done) = c.done.as_mut()
        && Pin::new(done).poll(cx).is_ready()
    {
        c.gate_done = true;
        progress = true;
    }

    // Sandbox -> gate.
    while !c.client_eof {
        if s.can_recv() {
            let r = s.recv(|data| match Pin::new(&mut *io).poll_write(cx, data) {
                Poll::Ready(Ok(n)) => (n, Some(n)),
                Poll::Ready(Err(_)) => (0, None),
                Poll::Pending => (0, Some(0)),
            });
            match r {
                Ok(Some(0)) => break,
                Ok(Some(_)) => progress = true,
                // The gate is gone and takes no more.
                Ok(None) | Err(_) => {
                    c.client_eof = true;
                    progress = true;
                }
            }
        } else if !s.may_recv() {
            // The sandbox sent FIN (or the connection is over): pass it on.
            if Pin::new(&mut *io).poll_shutdown(cx).is_ready() {
                c.client_eof = true;
                progress = true;
            }
            break;
        } else {
            break;
        }
    }

    // Gate -> sandbox.
    while !c.gate_eof && s.may_send() && s.can_send() {
        let r = s.send(|buf| {
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    (n, Some(n))
                }
                Poll::Ready(Err(_)) => (0, Some(0)),
                Poll::Pending => (0, None),
            }
        });
        match r {
            Ok(Some(0)) => {
                c.gate_eof = true;
                progress = true;
            }
            Ok(Some(n)) => {
                c.to_client += n as u64;
                progress = true;
            }
            Ok(None) | Err(_) => break,
        }
    }

    // Ending: FIN once the gate stopped sending; RST when the gate ended
    // without ever answering (a refusal).
    if c.closing.is_none() && c.gate_eof {
        if c.to_client > 0 {
            s.close();
            c.closing = Some(tokio::time::Instant::now());
            progress = true;
        } else if c.gate_done {
            s.abort();
            c.closing = Some(tokio::time::Instant::now());
            progress = true;
        }
    }
    progress
}

/// DNS over TCP (RFC 1035 framing) on a connection to the resolver address.
pub(crate) async fn serve_dns_tcp<S: AsyncRead + AsyncWrite + Unpin>(dns: &DnsServer, mut s: S) {
    let limit = Duration::from_secs(10);
    loop {
        let len = match tokio::time::timeout(limit, s.read_u16()).await {
            Ok(Ok(l)) => l,
            _ => return,
        };
        let mut buf = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(limit, s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(resp) = dns.answer(&buf, usize::from(u16::MAX)).await else {
            continue;
        };
        let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&resp);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t
    }

    #[test]
    fn classification() {
        let cfg = TunConfig::default();
        let me = cfg.sandbox_v4.octets();
        let doc = [203, 0, 113, 10];
        let syn = v4(6, me, doc, &tcp(40000, 443, 0x02));
        assert_eq!(
            classify(&syn, &cfg),
            Class::Tcp {
                src: "100.96.0.2:40000".parse().unwrap(),
                dst: "203.0.113.10:443".parse().unwrap(),
                syn: true
            }
        );
        let ack = v4(6, me, doc, &tcp(40000, 443, 0x12));
        assert!(matches!(
            classify(&ack, &cfg),
            Class::Tcp { syn: false, .. }
        ));
        let udp = |dst: [u8; 4], port: u16| {
            let mut u = vec![0u8; 8];
            u[2..4].copy_from_slice(&port.to_be_bytes());
            v4(17, me, dst, &u)
        };
        assert_eq!(classify(&udp(cfg.dns_v4.octets(), 53), &cfg), Class::Dns);
        assert!(matches!(classify(&udp(doc, 53), &cfg), Class::Udp { .. }));
        assert!(matches!(
            classify(&udp(cfg.dns_v4.octets(), 54), &cfg),
            Class::Udp { .. }
        ));
        assert!(matches!(
            classify(&v4(1, me, doc, &[8, 0, 0, 0]), &cfg),
            Class::Icmp { echo: true, .. }
        ));
        // Spoofed source, fragments, other protocols, garbage.
        assert!(matches!(
            classify(&v4(6, [10, 0, 0, 1], doc, &tcp(1, 2, 2)), &cfg),
            Class::Drop(_)
        ));
        let mut frag = syn.clone();
        frag[6] = 0x20;
        assert!(matches!(classify(&frag, &cfg), Class::Drop(_)));
        assert!(matches!(
            classify(&v4(47, me, doc, &[0; 8]), &cfg),
            Class::Drop(_)
        ));
        assert!(matches!(classify(&[0x45, 0, 0], &cfg), Class::Drop(_)));
        assert!(matches!(classify(&[], &cfg), Class::Drop(_)));

        // IPv6, with an extension header (dropped) and without.
        let mut p6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        p6.extend_from_slice(&cfg.sandbox_v6.octets());
        p6.extend_from_slice(&"2001:db8::10".parse::<Ipv6Addr>().unwrap().octets());
        p6.extend_from_slice(&tcp(40000, 80, 0x02));
        assert!(matches!(classify(&p6, &cfg), Class::Tcp { syn: true, .. }));
        let mut hbh = p6.clone();
        hbh[6] = 0;
        assert!(matches!(classify(&hbh, &cfg), Class::Drop(_)));
    }
}
