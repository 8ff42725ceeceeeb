//! The sandbox's DNS resolver.
//!
//! It answers A and AAAA queries only for names the policy allows, by asking
//! a configurable upstream resolver; every other name gets NXDOMAIN (logged),
//! so DNS cannot carry data to arbitrary domains. Addresses in always-blocked
//! ranges are filtered out of answers (DNS rebinding), and what each name
//! resolved to is recorded in a [`PinSet`] so the gate can require a
//! connection to a name to go to an address that name resolved to.
//!
//! The DNS wire format is handled by `simple-dns`: a small, dependency-light
//! parser/serializer. `hickory-proto` was the alternative, but its `std`
//! feature pulls `tracing-subscriber`, `url`, `futures-*` and more for the
//! few structs we need. Only the TCP length framing (2 bytes) is done here.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simple_dns::rdata::{A, AAAA, RData};
use simple_dns::{
    CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::log::{Decision, DecisionLog, DecisionPath};
use crate::policy::{HOST_INTERNAL, PolicyHandle, Reason, Verdict, normalize_host};

/// Errors of the DNS module.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket operation failed.
    #[error("DNS {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream resolver did not answer in time.
    #[error("upstream DNS server {0} did not answer in time (is it running and reachable?)")]
    Timeout(SocketAddr),
    /// The upstream resolver sent something unusable.
    #[error("upstream DNS server {upstream}: {message}")]
    Upstream {
        /// The upstream server.
        upstream: SocketAddr,
        /// What was wrong.
        message: String,
    },
    /// A name could not be encoded in a query.
    #[error("cannot query {name:?}: not a valid DNS name")]
    BadName {
        /// The name.
        name: String,
    },
}

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> DnsError {
    move |source| DnsError::Io { action, source }
}

// ------------------------------------------------------------------ pinning

#[derive(Debug, Clone, Copy)]
struct PinTimes {
    fresh_until: Instant,
    keep_until: Instant,
}

#[derive(Debug, Default)]
struct PinInner {
    names: HashMap<String, HashMap<IpAddr, PinTimes>>,
}

/// Which addresses each name resolved to, shared by the resolver and the gate.
///
/// An address stays *fresh* for its DNS TTL (the gate may reuse it instead of
/// asking upstream again) and stays *pinned* for at least the keep time
/// (default one hour; clients cache answers longer than TTLs say).
#[derive(Debug, Clone)]
pub struct PinSet {
    inner: Arc<Mutex<PinInner>>,
    min_keep: Duration,
}

impl Default for PinSet {
    fn default() -> Self {
        PinSet::new()
    }
}

impl PinSet {
    /// An empty set keeping pins at least one hour.
    pub fn new() -> PinSet {
        PinSet::with_min_keep(Duration::from_secs(3600))
    }

    /// An empty set keeping pins at least `min_keep`.
    pub fn with_min_keep(min_keep: Duration) -> PinSet {
        PinSet {
            inner: Arc::new(Mutex::new(PinInner::default())),
            min_keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PinInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `name` resolved to `addrs` with this TTL.
    pub fn pin(&self, name: &str, addrs: &[IpAddr], ttl: Duration) {
        let name = normalize_host(name);
        let now = Instant::now();
        let times = PinTimes {
            fresh_until: now + ttl,
            keep_until: now + ttl.max(self.min_keep),
        };
        let mut inner = self.lock();
        if inner.names.len() > 512 {
            inner.names.retain(|_, m| {
                m.retain(|_, t| t.keep_until > now);
                !m.is_empty()
            });
        }
        let entry = inner.names.entry(name).or_default();
        for a in addrs {
            entry.insert(*a, times);
        }
    }

    /// Whether `name` resolved to `ip` (and the pin has not expired).
    pub fn is_pinned(&self, name: &str, ip: IpAddr) -> bool {
        let name = normalize_host(name);
        let now = Instant::now();
        self.lock()
            .names
            .get(&name)
            .and_then(|m| m.get(&ip).or_else(|| m.get(&ip.to_canonical())))
            .is_some_and(|t| t.keep_until > now)
    }

    /// Every pinned address of `name`.
    pub fn addrs(&self, name: &str) -> Vec<IpAddr> {
        let now = Instant::now();
        let mut v: Vec<IpAddr> = self
            .lock()
            .names
            .get(&normalize_host(name))
            .map(|m| {
                m.iter()
                    .filter(|(_, t)| t.keep_until > now)
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The addresses of `name` still within their TTL, if any.
    pub fn fresh(&self, name: &str) -> Option<Vec<IpAddr>> {
        let now = Instant::now();
        let inner = self.lock();
        let m = inner.names.get(&normalize_host(name))?;
        let mut v: Vec<IpAddr> = m
            .iter()
            .filter(|(_, t)| t.fresh_until > now)
            .map(|(a, _)| *a)
            .collect();
        if v.is_empty() {
            return None;
        }
        // IPv4 first: the sandbox's and the host's v6 reachability vary.
        v.sort_by_key(|a| (a.is_ipv6(), *a));
        Some(v)
    }

    /// Every name pinned to `ip`, sorted.
    pub fn names_for(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let canon = ip.to_canonical();
        let mut v: Vec<String> = self
            .lock()
            .names
            .iter()
            .filter(|(_, m)| {
                m.iter()
                    .any(|(a, t)| (*a == ip || *a == canon) && t.keep_until > now)
            })
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().names.clear();
    }
}

// ----------------------------------------------------------------- upstream

/// An upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAnswer {
    /// The response code (NoError, NameError, ...).
    pub rcode: RCODE,
    /// The A or AAAA addresses in the answer section (CNAME chains flattened).
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of those records (0 when none).
    pub ttl: u32,
}

/// A client for the upstream resolver (UDP, falling back to TCP when the
/// answer is truncated).
#[derive(Debug, Clone)]
pub struct Upstream {
    addr: SocketAddr,
    timeout: Duration,
}

fn random_u16() -> u16 {
    // Every RandomState has fresh random keys: good enough for query ids to
    // a resolver we chose ourselves (the source port is random too).
    std::hash::RandomState::new().build_hasher().finish() as u16
}

/// The query type for an address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    /// IPv4 (A).
    A,
    /// IPv6 (AAAA).
    Aaaa,
}

impl AddrType {
    fn rtype(self) -> TYPE {
        match self {
            AddrType::A => TYPE::A,
            AddrType::Aaaa => TYPE::AAAA,
        }
    }
}

impl Upstream {
    /// A client for `addr` with a per-attempt timeout.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Upstream {
        Upstream { addr, timeout }
    }

    /// The upstream server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn build_query(&self, id: u16, name: &str, t: AddrType) -> Result<Vec<u8>, DnsError> {
        let bad = || DnsError::BadName {
            name: name.to_string(),
        };
        let qname = Name::new(name).map_err(|_| bad())?;
        let mut q = Packet::new_query(id);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(Question::new(
            qname,
            QTYPE::TYPE(t.rtype()),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        q.build_bytes_vec().map_err(|_| bad())
    }

    fn parse_answer(
        &self,
        id: u16,
        t: AddrType,
        buf: &[u8],
    ) -> Result<Option<UpstreamAnswer>, DnsError> {
        let p = Packet::parse(buf).map_err(|e| DnsError::Upstream {
            upstream: self.addr,
            message: format!("malformed response: {e}"),
        })?;
        if p.id() != id || !p.has_flags(PacketFlag::RESPONSE) {
            return Ok(None);
        }
        if p.has_flags(PacketFlag::TRUNCATION) {
            return Err(DnsError::Upstream {
                upstream: self.addr,
                message: "truncated".into(),
            });
        }
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        for rr in &p.answers {
            let ip = match (&rr.rdata, t) {
                (RData::A(a), AddrType::A) => IpAddr::V4(Ipv4Addr::from(a.address)),
                (RData::AAAA(a), AddrType::Aaaa) => IpAddr::V6(Ipv6Addr::from(a.address)),
                _ => continue,
            };
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
            ttl = ttl.min(rr.ttl);
        }
        if addrs.is_empty() {
            ttl = 0;
        }
        Ok(Some(UpstreamAnswer {
            rcode: p.rcode(),
            addrs,
            ttl,
        }))
    }

    async fn query_udp(
        &self,
        id: u16,
        msg: &[u8],
        t: AddrType,
    ) -> Result<UpstreamAnswer, DnsError> {
        let bind: SocketAddr = if self.addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(io("bind a UDP socket"))?;
        sock.connect(self.addr)
            .await
            .map_err(io("connect to upstream"))?;
        sock.send(msg).await.map_err(io("send to upstream"))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .map_err(|_| DnsError::Timeout(self.addr))?
                .map_err(io("receive from upstream"))?;
            match self.parse_answer(id, t, &buf[..n]) {
                Ok(Some(a)) => return Ok(a),
                Ok(None) => continue, // not our answer
                Err(e) => return Err(e),
            }
        }
    }

    async fn query_tcp(
        &self,
        id: u16,
        msg: &[u8],
        t: AddrType,
    ) -> Result<UpstreamAnswer, DnsError> {
        let fut = async {
            let mut s = TcpStream::connect(self.addr)
                .await
                .map_err(io("connect to upstream over TCP"))?;
            let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(msg);
            s.write_all(&framed).await.map_err(io("send to upstream"))?;
            let len = s.read_u16().await.map_err(io("receive from upstream"))?;
            let mut buf = vec![0u8; len as usize];
            s.read_exact(&mut buf)
                .await
                .map_err(io("receive from upstream"))?;
            self.parse_answer(id, t, &buf)?
                .ok_or_else(|| DnsError::Upstream {
                    upstream: self.addr,
                    message: "answer does not match the query".into(),
                })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| DnsError::Timeout(self.addr))?
    }

    /// Asks the upstream resolver for the A or AAAA records of `name`:
    /// UDP, retried once, then TCP when the UDP answer is truncated.
    pub async fn query(&self, name: &str, t: AddrType) -> Result<UpstreamAnswer, DnsError> {
        let id = random_u16();
        let msg = self.build_query(id, name, t)?;
        let mut last = DnsError::Timeout(self.addr);
        for _ in 0..2 {
            match self.query_udp(id, &msg, t).await {
                Ok(a) => return Ok(a),
                Err(DnsError::Upstream { message, .. }) if message == "truncated" => {
                    return self.query_tcp(id, &msg, t).await;
                }
                Err(e @ DnsError::Timeout(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Looks up both A and AAAA (concurrently). Returns the addresses (IPv4
    /// first) and the smallest TTL; a name with neither is an empty list.
    pub async fn lookup(&self, name: &str) -> Result<(Vec<IpAddr>, u32), DnsError> {
        let (a, aaaa) = tokio::join!(
            self.query(name, AddrType::A),
            self.query(name, AddrType::Aaaa)
        );
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        let mut err = None;
        for r in [a, aaaa] {
            match r {
                Ok(ans) => {
                    if !ans.addrs.is_empty() {
                        ttl = ttl.min(ans.ttl);
                    }
                    addrs.extend(ans.addrs);
                }
                Err(e) => err = Some(e),
            }
        }
        if addrs.is_empty()
            && let Some(e) = err
        {
            return Err(e);
        }
        if addrs.is_empty() {
            ttl = 0;
        }
        Ok((addrs, ttl))
    }
}

// ------------------------------------------------------------------- server

/// Settings of the sandbox resolver.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The upstream resolver the allowed queries go to.
    pub upstream: SocketAddr,
    /// Per-attempt timeout for upstream queries.
    pub timeout: Duration,
    /// The largest TTL handed to the sandbox (seconds).
    pub max_ttl: u32,
    /// What `host.airlock.internal` resolves to inside the sandbox (an
    /// address the sandbox routes to the gate), when host ports are exposed.
    pub host_alias: Option<IpAddr>,
}

impl DnsConfig {
    /// Defaults: 2 s timeout, TTL capped at 300 s, no host alias.
    pub fn new(upstream: SocketAddr) -> DnsConfig {
        DnsConfig {
            upstream,
            timeout: Duration::from_secs(2),
            max_ttl: 300,
            host_alias: None,
        }
    }
}

struct ServerInner {
    config: DnsConfig,
    upstream: Upstream,
    policy: PolicyHandle,
    pins: PinSet,
    log: DecisionLog,
}

/// The sandbox's DNS server; cheap to clone, serves UDP and TCP.
#[derive(Clone)]
pub struct DnsServer {
    inner: Arc<ServerInner>,
}

const MAX_UDP_ANSWER: usize = 512;

impl DnsServer {
    /// A server answering with `policy`, recording pins and decisions.
    pub fn new(
        config: DnsConfig,
        policy: PolicyHandle,
        pins: PinSet,
        log: DecisionLog,
    ) -> DnsServer {
        let upstream = Upstream::new(config.upstream, config.timeout);
        DnsServer {
            inner: Arc::new(ServerInner {
                config,
                upstream,
                policy,
                pins,
                log,
            }),
        }
    }

    /// Serves DNS over UDP on `sock` until an unrecoverable socket error.
    pub async fn serve_udp(&self, sock: UdpSocket) -> Result<(), DnsError> {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(io("receive a query")(e)),
            };
            let query = buf[..n].to_vec();
            let this = self.clone();
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Some(resp) = this.answer(&query, MAX_UDP_ANSWER).await {
                    let _ = sock.send_to(&resp, peer).await;
                }
            });
        }
    }

    /// Serves DNS over TCP on `listener` until an unrecoverable accept error.
    pub async fn serve_tcp(&self, listener: TcpListener) -> Result<(), DnsError> {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) if is_transient_accept_error(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(io("accept a TCP connection")(e)),
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.serve_tcp_conn(stream).await;
            });
        }
    }

    async fn serve_tcp_conn(&self, mut s: TcpStream) -> std::io::Result<()> {
        loop {
            let len = match tokio::time::timeout(Duration::from_secs(10), s.read_u16()).await {
                Ok(Ok(l)) => l,
                _ => return Ok(()),
            };
            let mut buf = vec![0u8; len as usize];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if let Some(resp) = self.answer(&buf, u16::MAX as usize).await {
                let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&resp);
                s.write_all(&framed).await?;
            }
        }
    }

    fn log(&self, name: &str, verdict: &Verdict, answers: Vec<IpAddr>, addr: Option<IpAddr>) {
        let mut d = Decision::new(
            self.inner.log.sandbox(),
            DecisionPath::Dns,
            Some(name),
            addr,
            0,
            verdict,
        );
        d.answers = answers;
        self.inner.log.record(d);
    }

    /// Answers one DNS message (for the UDP/TCP servers and for a caller
    /// that receives DNS packets some other way, e.g. from a TUN device).
    /// `None` when the message deserves no answer. `max_len` is the largest
    /// answer the transport takes (512 for plain UDP): a longer one is sent
    /// truncated (TC) so the client retries over TCP.
    pub async fn answer(&self, msg: &[u8], max_len: usize) -> Option<Vec<u8>> {
        let query = match Packet::parse(msg) {
            Ok(q) => q,
            Err(_) => {
                if msg.len() < 12 || msg[2] & 0x80 != 0 {
                    return None;
                }
                // Header-only FORMERR answer, built by hand: the message
                // did not parse, so the library has nothing to copy from.
                let mut r = msg[..12].to_vec();
                r[2] = 0x80 | (msg[2] & 0x79); // QR, keep opcode and RD
                r[3] = 0x80 | 1; // RA, FORMERR
                r[4..12].fill(0);
                return Some(r);
            }
        };
        if query.has_flags(PacketFlag::RESPONSE) {
            return None;
        }
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if query.has_flags(PacketFlag::RECURSION_DESIRED) {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        if query.opcode() != OPCODE::StandardQuery {
            *reply.rcode_mut() = RCODE::NotImplemented;
            return reply.build_bytes_vec().ok();
        }
        if query.questions.len() != 1 {
            *reply.rcode_mut() = RCODE::FormatError;
            return reply.build_bytes_vec().ok();
        }
        let q = query.questions[0].clone();
        reply.questions.push(q.clone());
        let name = normalize_host(&q.qname.to_string());
        let policy = self.inner.policy.get();
        let verdict = policy.check_name(&name);
        if !verdict.allowed {
            self.log(&name, &verdict, Vec::new(), None);
            *reply.rcode_mut() = RCODE::NameError;
            return reply.build_bytes_vec().ok();
        }
        let t = match q.qtype {
            QTYPE::TYPE(TYPE::A) => Some(AddrType::A),
            QTYPE::TYPE(TYPE::AAAA) => Some(AddrType::Aaaa),
            _ => None,
        };
        let in_class = matches!(q.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY);
        let Some(t) = t.filter(|_| in_class) else {
            // Allowed name, other record type: no data (only addresses are
            // answered, so TXT and friends cannot carry data either).
            return reply.build_bytes_vec().ok();
        };

        let (rcode, addrs, ttl) = if name == HOST_INTERNAL {
            match self.inner.config.host_alias {
                Some(alias) => {
                    let fits = matches!(
                        (alias, t),
                        (IpAddr::V4(_), AddrType::A) | (IpAddr::V6(_), AddrType::Aaaa)
                    );
                    let addrs = if fits { vec![alias] } else { Vec::new() };
                    (RCODE::NoError, addrs, 60)
                }
                None => (RCODE::NameError, Vec::new(), 0),
            }
        } else {
            match self.inner.upstream.query(&name, t).await {
                Ok(a) => (a.rcode, a.addrs, a.ttl),
                Err(e) => {
                    let v = Verdict::deny(Reason::Other, format!("{} ; {e}", verdict.rule));
                    self.log(&name, &v, Vec::new(), None);
                    *reply.rcode_mut() = RCODE::ServerFailure;
                    return reply.build_bytes_vec().ok();
                }
            }
        };
        if rcode != RCODE::NoError {
            let v = Verdict::allow(
                verdict.reason,
                format!("{} (upstream: {rcode:?})", verdict.rule),
            );
            self.log(&name, &v, Vec::new(), None);
            *reply.rcode_mut() = rcode;
            return reply.build_bytes_vec().ok();
        }
        let mut kept = Vec::new();
        for ip in addrs {
            let check = if name == HOST_INTERNAL {
                Verdict::allow(Reason::Exposure, "host alias")
            } else {
                policy.check_resolved(ip)
            };
            if check.allowed {
                kept.push(ip);
            } else {
                let v = Verdict::deny(
                    check.reason,
                    format!(
                        "{} (removed from the DNS answer: rebinding protection)",
                        check.rule
                    ),
                );
                self.log(&name, &v, Vec::new(), Some(ip));
            }
        }
        let ttl = ttl.min(self.inner.config.max_ttl);
        self.inner
            .pins
            .pin(&name, &kept, Duration::from_secs(u64::from(ttl)));
        self.log(&name, &verdict, kept.clone(), None);
        for ip in &kept {
            let rdata = match ip {
                IpAddr::V4(v4) => RData::A(A::from(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA::from(*v6)),
            };
            reply
                .answers
                .push(ResourceRecord::new(q.qname.clone(), CLASS::IN, ttl, rdata));
        }
        let bytes = reply.build_bytes_vec_compressed().ok()?;
        if bytes.len() > max_len {
            reply.answers.clear();
            reply.set_flags(PacketFlag::TRUNCATION);
            return reply.build_bytes_vec().ok();
        }
        Some(bytes)
    }
}

pub(crate) fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    ) || matches!(
        e.raw_os_error(),
        // Out of descriptors or kernel memory for a moment: wait and retry.
        Some(libc::ENFILE | libc::EMFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_track_names_and_addresses() {
        let pins = PinSet::new();
        let a: IpAddr = "203.0.113.10".parse().unwrap();
        let b: IpAddr = "2001:db8::10".parse().unwrap();
        pins.pin("Allowed.Test.", &[a, b], Duration::from_secs(30));
        assert!(pins.is_pinned("allowed.test", a));
        assert!(pins.is_pinned("allowed.test", "::ffff:203.0.113.10".parse().unwrap()));
        assert!(!pins.is_pinned("other.test", a));
        assert_eq!(pins.names_for(a), vec!["allowed.test".to_string()]);
        assert_eq!(pins.fresh("allowed.test").unwrap(), vec![a, b]);
        pins.pin("zero.test", &[a], Duration::ZERO);
        assert!(pins.fresh("zero.test").is_none());
        assert!(pins.is_pinned("zero.test", a), "kept past the TTL");
    }
}
