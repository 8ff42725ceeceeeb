//! The egress gate: the only way out of a sandbox.
//!
//! One listener serves proxy-aware clients in three dialects, told apart by
//! the first byte: SOCKS5 (`0x05`), HTTP `CONNECT host:port`, and plain HTTP
//! with an absolute URI. [`Gate::handle_transparent`] takes connections
//! captured without proxy settings (from a TUN device) with their original
//! destination.
//!
//! For every connection: the name is checked against the policy, resolved
//! through the upstream resolver (or the fresh pins of the sandbox's own
//! lookups), every resolved address is checked ([`Policy::check_addr`]:
//! always-blocked ranges, host addresses, deny rules) and only then is a
//! connection made; the two sides are then spliced. Tunnels (CONNECT, SOCKS5,
//! transparent) look at the client's first bytes: a TLS ClientHello whose
//! SNI names another host than the checked one is refused. Every decision is
//! logged.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};

mod intercept;
mod relay;

use crate::dns::{DnsConfig, DnsServer, PinSet, Upstream, is_transient_accept_error};
use crate::inject::{Injection, Injector};
use crate::log::{DecisionLog, DecisionPath};
use crate::policy::{HOST_INTERNAL, Policy, PolicyHandle, Reason, Verdict, normalize_host};
use crate::tls::{ClientHello, parse_client_hello};

/// Errors of the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// A listener failed.
    #[error("gate {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The DNS server failed.
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
}

/// Settings of the gate.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The sandbox name (in logs and in the commands the 403 page suggests).
    pub sandbox: String,
    /// The resolver the gate resolves names with (same as the sandbox DNS upstream).
    pub upstream_dns: SocketAddr,
    /// Per-attempt DNS timeout.
    pub dns_timeout: Duration,
    /// Timeout of one outgoing connection attempt.
    pub connect_timeout: Duration,
    /// Timeout for a proxy client to send its request (headers, SOCKS greeting).
    pub handshake_timeout: Duration,
    /// Transparent connections: how long to wait for the client's first
    /// bytes (TLS SNI, HTTP Host) before deciding from the DNS pins alone
    /// (server-speaks-first protocols).
    pub sniff_timeout: Duration,
    /// The address `host.airlock.internal` resolves to inside the sandbox
    /// (transparent connections to it go to an exposed host port).
    pub host_alias: Option<IpAddr>,
    /// Credential injection (see [`crate::inject`]); `None`: off, nothing
    /// is ever intercepted.
    pub injection: Option<Injection>,
    /// How many connections the gate serves at once from its listeners
    /// (proxy, kernel capture); more are closed at once and logged.
    pub max_connections: usize,
}

impl GateConfig {
    /// Defaults: DNS 2 s, connect 10 s, handshake 30 s, sniff 300 ms.
    pub fn new(sandbox: &str, upstream_dns: SocketAddr) -> GateConfig {
        GateConfig {
            sandbox: sandbox.to_string(),
            upstream_dns,
            dns_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(30),
            sniff_timeout: Duration::from_millis(300),
            host_alias: None,
            injection: None,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// A boxed future returning a connected stream.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// Makes the gate's outgoing connections, *after* the policy allowed the
/// address. Production uses [`DirectConnector`]. Tests substitute one that
/// maps documentation addresses to loopback listeners and refuses anything
/// else, so a gate bug in a test can never become a real packet. There is
/// deliberately no configuration-file or CLI way to pick a connector.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect(&self, addr: SocketAddr) -> ConnectFuture<'_>;
}

/// Connects directly with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectConnector;

impl Connector for DirectConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture<'_> {
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(s)
        })
    }
}

struct Inner {
    config: GateConfig,
    policy: PolicyHandle,
    pins: PinSet,
    log: DecisionLog,
    upstream: Upstream,
    connector: Arc<dyn Connector>,
    upstream_tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// Connections the gate is serving from its listeners (proxy, kernel capture), at most
    /// [`GateConfig::max_connections`]: each holds a descriptor of the host process, which a
    /// sandbox must not be able to run out of.
    connections: Arc<tokio::sync::Semaphore>,
}

/// How many connections the gate serves at once from its listeners by default; more are closed
/// at once (the user-space stack on `tun0` has the same limit of its own).
pub const MAX_CONNECTIONS: usize = 4096;

/// The gate; cheap to clone, all clones share policy, pins and log.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

/// Why a connection was not made.
#[derive(Debug)]
enum Refusal {
    /// The policy refused (403 / SOCKS 0x02).
    Policy(Verdict),
    /// The name did not resolve (502 / SOCKS 0x04).
    Resolve(String),
    /// Every allowed address refused the connection (502 / SOCKS 0x05).
    Connect(String),
}

/// What a client's first bytes turned out to be.
#[derive(Debug)]
enum Sniffed {
    Tls {
        sni: Option<String>,
    },
    Http {
        host: Option<String>,
    },
    Other,
    /// The client sent nothing before the timeout or the server spoke.
    Nothing,
    /// An incomplete or invalid TLS ClientHello.
    BadTls,
}

const MAX_HEAD: usize = 64 * 1024;

impl Gate {
    /// A gate using direct connections.
    pub fn new(config: GateConfig, policy: PolicyHandle, pins: PinSet, log: DecisionLog) -> Gate {
        Gate::with_connector(config, policy, pins, log, Arc::new(DirectConnector))
    }

    /// A gate using `connector` for outgoing connections (see [`Connector`]).
    pub fn with_connector(
        config: GateConfig,
        policy: PolicyHandle,
        pins: PinSet,
        log: DecisionLog,
        connector: Arc<dyn Connector>,
    ) -> Gate {
        let upstream = Upstream::new(config.upstream_dns, config.dns_timeout);
        let max_connections = config.max_connections;
        Gate {
            inner: Arc::new(Inner {
                config,
                policy,
                pins,
                log,
                upstream,
                connector,
                upstream_tls: std::sync::OnceLock::new(),
                connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            }),
        }
    }

    /// The shared policy.
    pub fn policy(&self) -> &PolicyHandle {
        &self.inner.policy
    }

    /// The credential injector, when injection is on.
    pub fn injector(&self) -> Option<&Arc<Injector>> {
        self.inner.config.injection.as_ref().map(|i| &i.injector)
    }

    /// The shared pins.
    pub fn pins(&self) -> &PinSet {
        &self.inner.pins
    }

    /// Replaces the policy; the next connection uses it.
    pub fn reload(&self, policy: Policy) {
        self.inner.policy.reload(policy);
    }

    /// Serves proxy clients (HTTP, CONNECT, SOCKS5) on `listener` until an
    /// unrecoverable accept error. Each connection runs in its own task.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), GateError> {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    self.spawn_proxy(s);
                }
                Err(e) if is_transient_accept_error(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(source) => {
                    return Err(GateError::Io {
                        action: "accept",
                        source,
                    });
                }
            }
        }
    }

    /// Like [`Gate::serve`] for a unix socket bridged into the sandbox.
    pub async fn serve_unix(&self, listener: UnixListener) -> Result<(), GateError> {
        loop {
            match listener.accept().await {
                Ok((s, _)) => self.spawn_proxy(s),
                Err(e) if is_transient_accept_error(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(source) => {
                    return Err(GateError::Io {
                        action: "accept",
                        source,
                    });
                }
            }
        }
    }

    /// Spawns [`Gate::serve`] on the current tokio runtime.
    pub fn spawn(&self, listener: TcpListener) -> tokio::task::JoinHandle<Result<(), GateError>> {
        let this = self.clone();
        tokio::spawn(async move { this.serve(listener).await })
    }

    fn spawn_proxy<S>(&self, s: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(permit) = self.connection_permit(DecisionPath::ProxyConnect) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            this.handle_proxy(s).await;
            drop(permit);
        });
    }

    /// A place for one more connection, or `None` (logged) when [`GateConfig::max_connections`]
    /// are being served: the caller closes the connection.
    pub(crate) fn connection_permit(
        &self,
        path: DecisionPath,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.inner.connections.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let v = Verdict::deny(
                    Reason::Other,
                    format!(
                        "too many connections at once (the gate serves {})",
                        self.inner.config.max_connections
                    ),
                );
                self.log(path, None, None, 0, &v);
                None
            }
        }
    }

    pub(crate) fn log(
        &self,
        path: DecisionPath,
        name: Option<&str>,
        addr: Option<IpAddr>,
        port: u16,
        v: &Verdict,
    ) {
        self.inner.log.decide(path, name, addr, port, v);
    }

    /// Handles one proxy client connection (SOCKS5, CONNECT or plain HTTP).
    pub async fn handle_proxy<S>(&self, mut client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut first = [0u8; 1];
        let t = self.inner.config.handshake_timeout;
        match tokio::time::timeout(t, client.read(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return,
        }
        if first[0] == 0x05 {
            self.socks5(client).await;
        } else {
            self.http(client, first[0]).await;
        }
    }

    // ------------------------------------------------------------ decide

    /// Resolves and checks `host:port`, and connects to the first allowed
    /// address that answers. Logs the decision.
    async fn decide_and_connect(
        &self,
        path: DecisionPath,
        host: &str,
        port: u16,
    ) -> Result<(TcpStream, Verdict), Refusal> {
        let policy = self.inner.policy.get();
        let host = normalize_host(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            let v = policy.check_addr(ip, port, None);
            self.log(path, None, Some(ip), port, &v);
            if !v.allowed {
                return Err(Refusal::Policy(v));
            }
            return self
                .connect(SocketAddr::new(ip, port))
                .await
                .map(|s| (s, v));
        }
        let v = policy.check(&host, port);
        if !v.allowed {
            self.log(path, Some(&host), None, port, &v);
            return Err(Refusal::Policy(v));
        }
        if host == HOST_INTERNAL {
            // An explicit exposure: the host's loopback, nothing else.
            let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
            self.log(path, Some(&host), Some(lo), port, &v);
            return self
                .connect(SocketAddr::new(lo, port))
                .await
                .map(|s| (s, v));
        }
        let addrs = match self.resolve(&host).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                let msg = format!("{host} has no address");
                let d = Verdict::deny(Reason::Other, format!("{}; {msg}", v.rule));
                self.log(path, Some(&host), None, port, &d);
                return Err(Refusal::Resolve(msg));
            }
            Err(e) => {
                let d = Verdict::deny(Reason::Other, format!("{}; DNS lookup failed: {e}", v.rule));
                self.log(path, Some(&host), None, port, &d);
                return Err(Refusal::Resolve(e));
            }
        };
        let mut first_refusal = None;
        let mut last_err = String::new();
        for ip in addrs {
            let v = policy.check_addr(ip, port, Some(&host));
            if !v.allowed {
                self.log(path, Some(&host), Some(ip), port, &v);
                first_refusal.get_or_insert(v);
                continue;
            }
            self.log(path, Some(&host), Some(ip), port, &v);
            match self.connect(SocketAddr::new(ip, port)).await {
                Ok(s) => return Ok((s, v)),
                Err(Refusal::Connect(e)) => last_err = e,
                Err(other) => return Err(other),
            }
        }
        match first_refusal {
            Some(v) if last_err.is_empty() => Err(Refusal::Policy(v)),
            _ => Err(Refusal::Connect(last_err)),
        }
    }

    /// The addresses of an allowed name: fresh pins first, else upstream.
    async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Some(a) = self.inner.pins.fresh(host) {
            return Ok(a);
        }
        let (mut addrs, ttl) = self
            .inner
            .upstream
            .lookup(host)
            .await
            .map_err(|e| e.to_string())?;
        addrs.sort_by_key(|a| a.is_ipv6());
        let policy = self.inner.policy.get();
        let ok: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| policy.check_resolved(*a).allowed)
            .collect();
        self.inner
            .pins
            .pin(host, &ok, Duration::from_secs(u64::from(ttl.min(300))));
        Ok(addrs)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, Refusal> {
        match tokio::time::timeout(
            self.inner.config.connect_timeout,
            self.inner.connector.connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Refusal::Connect(format!("cannot connect to {addr}: {e}"))),
            Err(_) => Err(Refusal::Connect(format!("connecting to {addr} timed out"))),
        }
    }

    // ------------------------------------------------------------- HTTP

    async fn http<S>(&self, mut client: S, first: u8)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = vec![first];
        let head_len = match tokio::time::timeout(
            self.inner.config.handshake_timeout,
            read_head(&mut client, &mut buf),
        )
        .await
        {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => {
                let _ = respond(
                    &mut client,
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n",
                    None,
                )
                .await;
                return;
            }
            _ => return,
        };
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(&buf[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            let _ = respond(
                &mut client,
                400,
                "Bad Request",
                "malformed HTTP request\n",
                None,
            )
            .await;
            return;
        }
        let method = req.method.unwrap_or("").to_string();
        let target = req.path.unwrap_or("").to_string();
        let version = req.version.unwrap_or(1);
        if method.eq_ignore_ascii_case("CONNECT") {
            let Some((host, port)) = parse_authority(&target, None) else {
                let _ = respond(
                    &mut client,
                    400,
                    "Bad Request",
                    "CONNECT needs host:port\n",
                    None,
                )
                .await;
                return;
            };
            let rest = buf[head_len..].to_vec();
            self.connect_tunnel(client, host, port, rest).await;
            return;
        }
        let Some((host, port, path)) = parse_http_uri(&target) else {
            let msg = if target.to_ascii_lowercase().starts_with("https://") {
                "Airlock's proxy takes https:// through CONNECT, not as an absolute URI\n"
            } else {
                "Airlock's gate is a proxy: send an absolute http:// URI or CONNECT host:port\n"
            };
            let _ = respond(&mut client, 400, "Bad Request", msg, None).await;
            return;
        };
        // Host header must name the same host as the URI (no fronting).
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("host") {
                let value = String::from_utf8_lossy(h.value);
                let hh = parse_authority(value.trim(), Some(port)).map(|(h, _)| h);
                if hh.as_deref().map(normalize_host) != Some(normalize_host(&host)) {
                    let v = Verdict::deny(
                        Reason::Other,
                        format!("Host header {value:?} does not match the request URI host {host}"),
                    );
                    self.log(
                        DecisionPath::ProxyHttp,
                        Some(&normalize_host(&host)),
                        None,
                        port,
                        &v,
                    );
                    let body = self.refusal_body(&host, port, &v);
                    let _ = respond(&mut client, 403, "Forbidden", &body, Some(&v.rule)).await;
                    return;
                }
            }
            if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let mut head = crate::inject::RequestHead {
            method: method.clone(),
            target: path.clone(),
            version,
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        };
        // Credential injection: placeholders to other hosts are refused,
        // the credential's own host gets the secret (if allowed in clear).
        let mut scrub = None;
        let mut scan = None;
        if let Some(inj) = self.injector().cloned() {
            let host_n = normalize_host(&host);
            let early = &buf[head_len..];
            let exfil = inj.head_placeholder(&host_n, &head).or_else(|| {
                (!inj.intercepts(&host_n))
                    .then(|| inj.carries_placeholder(early))
                    .flatten()
                    .map(|service| crate::inject::Exfiltration {
                        service: service.to_string(),
                        host: host_n.clone(),
                    })
            });
            if let Some(e) = exfil {
                let v = Verdict::deny(Reason::Other, e.rule());
                self.log(DecisionPath::ProxyHttp, Some(&host_n), None, port, &v);
                let body = self.refusal_body(&host, port, &v);
                let _ = respond(&mut client, 403, "Forbidden", &body, Some(&v.rule)).await;
                return;
            }
            if inj.intercepts(&host_n) {
                if inj.wants_injection(&host_n, &head) && !inj.allow_plain_http {
                    let v = Verdict::deny(
                        Reason::Other,
                        format!(
                            "credential injection: the secret for {host_n} is never sent over plain HTTP; use https://"
                        ),
                    );
                    self.log(DecisionPath::ProxyHttp, Some(&host_n), None, port, &v);
                    let body = self.refusal_body(&host, port, &v);
                    let _ = respond(&mut client, 403, "Forbidden", &body, Some(&v.rule)).await;
                    return;
                }
                match inj.rewrite_request_head(&host_n, &mut head) {
                    Ok(rw) => {
                        let mut sc = inj.response_scrubber();
                        sc.expect(&method);
                        for (f, t) in rw.scrub {
                            sc.add(f, t);
                        }
                        for service in &rw.injected {
                            let v = Verdict::allow(
                                Reason::Other,
                                format!("credential {service} injected (plain HTTP)"),
                            );
                            self.log(DecisionPath::ProxyHttp, Some(&host_n), None, port, &v);
                        }
                        scrub = Some(sc);
                    }
                    Err(_) => return, // head_placeholder above already refused these
                }
            } else {
                scan = Some(inj.scanner());
            }
        }
        // Rewrite to origin form, drop hop-by-hop and proxy headers.
        let mut out = format!("{method} {} HTTP/1.{version}\r\n", head.target).into_bytes();
        let mut has_host = false;
        for (name, value) in head.headers.iter() {
            let n = name.to_ascii_lowercase();
            if matches!(
                n.as_str(),
                "connection"
                    | "proxy-connection"
                    | "keep-alive"
                    | "proxy-authorization"
                    | "proxy-authenticate"
                    | "te"
                    | "trailer"
            ) {
                continue;
            }
            if n == "host" {
                has_host = true;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !has_host {
            let host_hdr = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            if port == 80 {
                out.extend_from_slice(format!("Host: {host_hdr}\r\n").as_bytes());
            } else {
                out.extend_from_slice(format!("Host: {host_hdr}:{port}\r\n").as_bytes());
            }
        }
        // One request per upstream connection: the next request may name
        // another host and must be checked on its own.
        out.extend_from_slice(if upgrade {
            b"Connection: upgrade\r\n\r\n"
        } else {
            b"Connection: close\r\n\r\n"
        });
        out.extend_from_slice(&buf[head_len..]);
        match self
            .decide_and_connect(DecisionPath::ProxyHttp, &host, port)
            .await
        {
            Ok((mut up, _)) => {
                if up.write_all(&out).await.is_err() {
                    return;
                }
                if scan.is_some() || scrub.is_some() {
                    let addr = up.peer_addr().ok().map(|a| a.ip());
                    let ctx = intercept::Ctx {
                        path: DecisionPath::ProxyHttp,
                        host: normalize_host(&host),
                        addr,
                        port,
                    };
                    self.splice_checked(client, up, scan, scrub, &ctx).await;
                    return;
                }
                let _ = splice(&mut client, &mut up).await;
            }
            Err(r) => self.refuse_http(&mut client, &host, port, r).await,
        }
    }

    async fn refuse_http<S>(&self, client: &mut S, host: &str, port: u16, r: Refusal)
    where
        S: AsyncWrite + Unpin,
    {
        let _ = match r {
            Refusal::Policy(v) => {
                let body = self.refusal_body(host, port, &v);
                respond(client, 403, "Forbidden", &body, Some(&v.rule)).await
            }
            Refusal::Resolve(e) => {
                respond(
                    client,
                    502,
                    "Bad Gateway",
                    &format!("Airlock could not resolve {host}: {e}\n"),
                    None,
                )
                .await
            }
            Refusal::Connect(e) => {
                respond(client, 502, "Bad Gateway", &format!("Airlock: {e}\n"), None).await
            }
        };
    }

    /// The body of a 403: the rule and what would change the outcome.
    pub fn refusal_body(&self, host: &str, port: u16, v: &Verdict) -> String {
        let sandbox = &self.inner.config.sandbox;
        let host = normalize_host(host);
        let dest = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut s = format!(
            "Airlock refused the connection to {dest} from sandbox {sandbox}.\nRule: {}\n\n",
            v.rule
        );
        match v.reason {
            Reason::Default => s.push_str(&format!(
                "Nothing in the network policy allows it. To allow it, ask the user to run:\n  airlock policy allow {host} --sandbox {sandbox}\nor, for this port only:\n  airlock policy allow {host}:{port} --sandbox {sandbox}\n"
            )),
            Reason::DenyRule => s.push_str(&format!(
                "A deny rule matched, and deny rules win over allow rules. Only the user can change it; `airlock policy ls --sandbox {sandbox}` shows the rules and where they come from.\n"
            )),
            Reason::AlwaysBlocked => s.push_str(
                "This destination is always blocked (loopback, private networks, link-local and cloud metadata, the host's own addresses), whatever the policy. To reach a service on the host's loopback, the user can start the sandbox with --host-port PORT; it is then reachable as host.airlock.internal:PORT.\n",
            ),
            _ => {}
        }
        s
    }

    // ---------------------------------------------------------- tunnels

    async fn connect_tunnel<S>(&self, mut client: S, host: String, port: u16, early: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (up, _) = match self
            .decide_and_connect(DecisionPath::ProxyConnect, &host, port)
            .await
        {
            Ok(x) => x,
            Err(r) => {
                self.refuse_http(&mut client, &host, port, r).await;
                return;
            }
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        self.tunnel(client, up, DecisionPath::ProxyConnect, &host, port, early)
            .await;
    }

    /// Checks the client's first bytes (SNI must name the checked host),
    /// then splices.
    async fn tunnel<S>(
        &self,
        mut client: S,
        mut up: TcpStream,
        path: DecisionPath,
        host: &str,
        port: u16,
        early: Vec<u8>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sniffed, buf) = sniff(&mut client, early, Some(&up), None, false).await;
        let host_n = normalize_host(host);
        let refusal = match &sniffed {
            Sniffed::Tls { sni: Some(sni) } if *sni != host_n => Some(Verdict::deny(
                Reason::Other,
                format!("TLS SNI {sni} does not match the checked destination {host_n}"),
            )),
            Sniffed::BadTls => Some(Verdict::deny(
                Reason::Other,
                format!("incomplete or malformed TLS ClientHello to {host_n}"),
            )),
            _ => None,
        };
        if let Some(v) = refusal {
            let addr = up.peer_addr().ok().map(|a| a.ip());
            self.log(path, Some(&host_n), addr, port, &v);
            let _ = client.shutdown().await;
            return;
        }
        if matches!(sniffed, Sniffed::Tls { .. })
            && self.injector().is_some_and(|i| i.intercepts(&host_n))
        {
            let client = intercept::Prefixed::new(buf, client);
            self.intercept_tls(client, up, path, &host_n, port).await;
            return;
        }
        if !buf.is_empty() && up.write_all(&buf).await.is_err() {
            return;
        }
        let _ = splice(&mut client, &mut up).await;
    }

    // ----------------------------------------------------------- SOCKS5

    async fn socks5<S>(&self, mut client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Only the handshake is under the handshake timeout, not the tunnel.
        let t = self.inner.config.handshake_timeout;
        let Ok(Some((cmd, host, port))) =
            tokio::time::timeout(t, socks5_request(&mut client)).await
        else {
            return;
        };
        if cmd != 0x01 {
            // Only CONNECT: no BIND, no UDP ASSOCIATE (UDP is not allowed out).
            let v = Verdict::deny(
                Reason::Other,
                format!("SOCKS5 command {cmd} is not supported (only CONNECT)"),
            );
            self.log(
                DecisionPath::Socks5,
                Some(&normalize_host(&host)),
                None,
                port,
                &v,
            );
            let _ = socks_reply(&mut client, 0x07).await;
            return;
        }
        match self
            .decide_and_connect(DecisionPath::Socks5, &host, port)
            .await
        {
            Ok((up, _)) => {
                if socks_reply(&mut client, 0x00).await.is_err() {
                    return;
                }
                self.tunnel(client, up, DecisionPath::Socks5, &host, port, Vec::new())
                    .await;
            }
            Err(Refusal::Policy(_)) => {
                let _ = socks_reply(&mut client, 0x02).await;
            }
            Err(Refusal::Resolve(_)) => {
                let _ = socks_reply(&mut client, 0x04).await;
            }
            Err(Refusal::Connect(_)) => {
                let _ = socks_reply(&mut client, 0x05).await;
            }
        }
    }

    // ------------------------------------------------------ transparent

    /// Handles a connection captured without proxy settings, to
    /// `original_dst`. The destination name comes from, in order: the TLS
    /// SNI, the HTTP Host header, `resolved_name` (what the capture layer
    /// knows), the names the sandbox resolved to this address through
    /// Airlock's DNS (pins). With a name, the name must be allowed and the
    /// address must be one that name resolved to; without one, the address
    /// itself must be allowed (CIDR rule or the open preset).
    pub async fn handle_transparent<S>(
        &self,
        mut client: S,
        original_dst: SocketAddr,
        resolved_name: Option<String>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let path = DecisionPath::Transparent;
        let ip = original_dst.ip();
        let port = original_dst.port();
        let policy = self.inner.policy.get();

        if self
            .inner
            .config
            .host_alias
            .is_some_and(|a| a.to_canonical() == ip.to_canonical())
        {
            let v = policy.check(HOST_INTERNAL, port);
            let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
            self.log(path, Some(HOST_INTERNAL), Some(lo), port, &v);
            if !v.allowed {
                return;
            }
            if let Ok(mut up) = self.connect(SocketAddr::new(lo, port)).await {
                let _ = splice(&mut client, &mut up).await;
            }
            return;
        }

        let (sniffed, buf) = sniff(
            &mut client,
            Vec::new(),
            None,
            Some(self.inner.config.sniff_timeout),
            true,
        )
        .await;
        if matches!(sniffed, Sniffed::BadTls) {
            let v = Verdict::deny(Reason::Other, "incomplete or malformed TLS ClientHello");
            self.log(path, None, Some(ip), port, &v);
            return;
        }
        let is_http = matches!(sniffed, Sniffed::Http { .. });
        let is_tls = matches!(sniffed, Sniffed::Tls { .. });
        let named = match sniffed {
            Sniffed::Tls { sni } => sni,
            Sniffed::Http { host } => {
                host.and_then(|h| parse_authority(&h, Some(port)).map(|(h, _)| h))
            }
            _ => None,
        }
        .map(|n| normalize_host(&n))
        .filter(|n| n.parse::<IpAddr>().is_err());

        let (name, v) = match named.or(resolved_name.map(|n| normalize_host(&n))) {
            Some(name) => {
                let mut v = policy.check_addr(ip, port, Some(&name));
                if v.allowed && !self.inner.pins.is_pinned(&name, ip) {
                    // Not resolved through our DNS (or by another name):
                    // accept only if the name really resolves to this address.
                    let ok = match self.resolve(&name).await {
                        Ok(addrs) => addrs.iter().any(|a| a.to_canonical() == ip.to_canonical()),
                        Err(_) => false,
                    };
                    if !ok {
                        v = Verdict::deny(
                            Reason::Other,
                            format!(
                                "pinning: {name} did not resolve to {ip} (connections to a name must go to an address it resolved to)"
                            ),
                        );
                    }
                }
                (Some(name), v)
            }
            None => {
                // Server-speaks-first or nameless: what did the sandbox resolve to this address?
                let candidates = self.inner.pins.names_for(ip);
                let mut best: Option<(String, Verdict)> = None;
                for n in candidates {
                    let v = policy.check_addr(ip, port, Some(&n));
                    let allowed = v.allowed;
                    if best.is_none() || allowed {
                        best = Some((n, v));
                    }
                    if allowed {
                        break;
                    }
                }
                match best {
                    Some((n, v)) => (Some(n), v),
                    None => (None, policy.check_addr(ip, port, None)),
                }
            }
        };
        self.log(path, name.as_deref(), Some(ip), port, &v);
        if !v.allowed {
            if is_http {
                let host = name.clone().unwrap_or_else(|| ip.to_string());
                let body = self.refusal_body(&host, port, &v);
                let _ = respond(&mut client, 403, "Forbidden", &body, Some(&v.rule)).await;
            }
            return;
        }
        if let (Some(inj), Some(name)) = (self.injector(), name.as_deref())
            && is_tls
            && inj.intercepts(name)
        {
            let Ok(up) = self.connect(original_dst).await else {
                return;
            };
            let client = intercept::Prefixed::new(buf, client);
            self.intercept_tls(client, up, path, name, port).await;
            return;
        }
        if is_http && let Some(inj) = self.injector() {
            let host = name.clone().unwrap_or_else(|| ip.to_string());
            self.transparent_http(inj, client, buf, original_dst, &host)
                .await;
            return;
        }
        let mut up = match self.connect(original_dst).await {
            Ok(s) => s,
            Err(_) => return,
        };
        if !buf.is_empty() && up.write_all(&buf).await.is_err() {
            return;
        }
        let _ = splice(&mut client, &mut up).await;
    }
}

/// Reads until the end of an HTTP head (`\r\n\r\n`). `Some(head length)`
/// (the buffer may hold more), `None` when the head is over [`MAX_HEAD`].
async fn read_head<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = find_head_end(buf) {
            return Ok(Some(i));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads the client's first bytes to classify them. Stops when the bytes
/// are classified, at EOF, when `server` becomes readable (it spoke first),
/// or after `wait` when the client has sent nothing yet.
async fn sniff<S: AsyncRead + Unpin>(
    client: &mut S,
    mut buf: Vec<u8>,
    server: Option<&TcpStream>,
    wait: Option<Duration>,
    want_http: bool,
) -> (Sniffed, Vec<u8>) {
    let start = tokio::time::Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            match classify(&buf, want_http) {
                Some(s) => return (s, buf),
                None if buf.len() > MAX_HEAD => {
                    let s = if buf[0] == 0x16 {
                        Sniffed::BadTls
                    } else {
                        Sniffed::Other
                    };
                    return (s, buf);
                }
                None => {}
            }
        }
        // Waiting for the first bytes is bounded by `wait`; once a TLS or
        // HTTP head has started, the rest must come within 10 s.
        let deadline = if buf.is_empty() {
            wait.map(|w| start + w)
        } else {
            Some(tokio::time::Instant::now() + Duration::from_secs(10))
        };
        let read = async {
            match server {
                Some(up) if buf.is_empty() => tokio::select! {
                    r = client.read(&mut chunk) => Some(r),
                    _ = up.readable() => None,
                },
                _ => Some(client.read(&mut chunk).await),
            }
        };
        let res = match deadline {
            Some(d) => tokio::time::timeout_at(d, read).await.unwrap_or_default(),
            None => read.await,
        };
        match res {
            Some(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Some(Ok(_)) | Some(Err(_)) | None => {
                let s = if buf.is_empty() {
                    Sniffed::Nothing
                } else if buf[0] == 0x16 {
                    Sniffed::BadTls
                } else {
                    classify(&buf, want_http).unwrap_or(Sniffed::Other)
                };
                return (s, buf);
            }
        }
    }
}

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
    b"LOCK ",
    b"UNLOCK ",
    b"REPORT ",
];

/// Could these bytes be (the start of) an HTTP/1 request?
fn maybe_http(buf: &[u8]) -> bool {
    HTTP_METHODS.iter().any(|m| {
        let n = m.len().min(buf.len());
        buf[..n] == m[..n]
    })
}

/// `Some` when the bytes are classified, `None` when more are needed.
/// Without `want_http` only TLS is told apart from everything else.
fn classify(buf: &[u8], want_http: bool) -> Option<Sniffed> {
    match parse_client_hello(buf) {
        ClientHello::Hello { sni } => return Some(Sniffed::Tls { sni }),
        ClientHello::Malformed => return Some(Sniffed::BadTls),
        ClientHello::Incomplete => return None,
        ClientHello::NotTls => {}
    }
    if !want_http || !maybe_http(buf) {
        return Some(Sniffed::Other);
    }
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Some(Sniffed::Http {
            host: req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string()),
        }),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Sniffed::Other),
    }
}

/// Parses `host:port`, `[v6]:port`, or (with a default port) `host`, `[v6]`.
fn parse_authority(s: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port?,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    let (h, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()?),
        Some(_) => return None, // bare IPv6 needs brackets
        None => (s, default_port?),
    };
    if h.is_empty() || port == 0 {
        return None;
    }
    Some((h.to_string(), port))
}

/// Parses an absolute `http://` URI into host, port and origin-form path.
fn parse_http_uri(uri: &str) -> Option<(String, u16, String)> {
    let scheme_end = uri.find("://")?;
    if !uri[..scheme_end].eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = &uri[scheme_end + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains('@') {
        return None; // userinfo: refuse rather than guess which part is the host
    }
    let (host, port) = parse_authority(authority, Some(80))?;
    let mut path = rest[end..].split('#').next().unwrap_or("").to_string();
    if path.is_empty() || path.starts_with('?') {
        path.insert(0, '/');
    }
    Some((host, port, path))
}

async fn respond<S: AsyncWrite + Unpin>(
    client: &mut S,
    code: u16,
    reason: &str,
    body: &str,
    rule: Option<&str>,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nProxy-Agent: airlock\r\n",
        body.len()
    );
    if let Some(rule) = rule {
        let clean: String = rule
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        head.push_str(&format!("X-Airlock-Rule: {clean}\r\n"));
    }
    head.push_str("\r\n");
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.flush().await?;
    client.shutdown().await
}

/// Reads a SOCKS5 greeting and request (the version byte was already read).
/// Returns the command, host and port; `None` after answering a bad request.
async fn socks5_request<S>(client: &mut S) -> Option<(u8, String, u16)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let n = client.read_u8().await.ok()?;
    let mut methods = vec![0u8; n.into()];
    client.read_exact(&mut methods).await.ok()?;
    if !methods.contains(&0x00) {
        let _ = client.write_all(&[0x05, 0xff]).await;
        return None;
    }
    client.write_all(&[0x05, 0x00]).await.ok()?;
    let mut hdr = [0u8; 4];
    client.read_exact(&mut hdr).await.ok()?;
    if hdr[0] != 0x05 {
        return None;
    }
    let host = match hdr[3] {
        0x01 => {
            let mut a = [0u8; 4];
            client.read_exact(&mut a).await.ok()?;
            Ipv4Addr::from(a).to_string()
        }
        0x04 => {
            let mut a = [0u8; 16];
            client.read_exact(&mut a).await.ok()?;
            Ipv6Addr::from(a).to_string()
        }
        0x03 => {
            let len = client.read_u8().await.ok()?;
            let mut d = vec![0u8; len.into()];
            client.read_exact(&mut d).await.ok()?;
            match String::from_utf8(d) {
                Ok(s) => s,
                Err(_) => {
                    let _ = socks_reply(client, 0x01).await;
                    return None;
                }
            }
        }
        _ => {
            let _ = socks_reply(client, 0x08).await;
            return None;
        }
    };
    let port = client.read_u16().await.ok()?;
    Some((hdr[1], host, port))
}

async fn socks_reply<S: AsyncWrite + Unpin>(client: &mut S, code: u8) -> io::Result<()> {
    // BND.ADDR 0.0.0.0:0: the sandbox learns nothing about the host side.
    client
        .write_all(&[0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])
        .await
}

/// The proxy variables to set inside a sandbox whose gate is at
/// `proxy_url` (e.g. `http://10.0.2.1:3128`), upper and lower case.
/// `NO_PROXY` keeps the sandbox's own loopback direct; everything else goes
/// through the gate, and a client that ignores these variables is captured
/// transparently anyway.
pub fn proxy_env(proxy_url: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (k, val) in [
        ("HTTP_PROXY", proxy_url),
        ("HTTPS_PROXY", proxy_url),
        ("ALL_PROXY", proxy_url),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
    ] {
        v.push((k.to_string(), val.to_string()));
        v.push((k.to_ascii_lowercase(), val.to_string()));
    }
    v
}

// ------------------------------------------------------------- service

/// The sockets a sandbox's network service serves.
#[derive(Debug)]
pub struct NetListeners {
    /// The proxy endpoint (HTTP_PROXY / HTTPS_PROXY / ALL_PROXY point here).
    pub proxy: Option<std::net::TcpListener>,
    /// The same proxy endpoint on a unix socket (bridged into the sandbox).
    pub proxy_unix: Option<std::os::unix::net::UnixListener>,
    /// DNS over UDP.
    pub dns_udp: Option<std::net::UdpSocket>,
    /// DNS over TCP.
    pub dns_tcp: Option<std::net::TcpListener>,
    /// The kernel capture endpoints ([`crate::capture`], one per IP version), each with the
    /// resolver address whose connections it answers itself (port 53 of the TUN resolver).
    pub capture: Vec<(std::net::TcpListener, SocketAddr)>,
}

/// A sandbox's gate and DNS server running on a `current_thread` tokio
/// runtime in a dedicated thread. Dropping it (or [`NetService::shutdown`])
/// stops both.
pub struct NetService {
    gate: Gate,
    dns: DnsServer,
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), GateError>>>,
}

impl NetService {
    /// Starts the gate and the DNS server on `listeners` in a new thread.
    /// The policy handle is shared: [`NetService::reload`] reaches both.
    pub fn start(
        gate_config: GateConfig,
        dns_config: DnsConfig,
        policy: PolicyHandle,
        log: DecisionLog,
        listeners: NetListeners,
    ) -> Result<NetService, GateError> {
        let pins = PinSet::new();
        let gate = Gate::new(gate_config, policy.clone(), pins.clone(), log.clone());
        let dns = DnsServer::new(dns_config, policy, pins, log);
        Self::start_with(gate, dns, listeners)
    }

    /// Starts an already built gate and DNS server (e.g. with a custom
    /// [`Connector`]); they should share one [`PolicyHandle`] and [`PinSet`].
    pub fn start_with(
        gate: Gate,
        dns: DnsServer,
        listeners: NetListeners,
    ) -> Result<NetService, GateError> {
        let io_err = |action| move |source| GateError::Io { action, source };
        let capture = listeners.capture.iter().map(|c| &c.0);
        for l in [listeners.proxy.as_ref(), listeners.dns_tcp.as_ref()]
            .into_iter()
            .flatten()
            .chain(capture)
        {
            l.set_nonblocking(true)
                .map_err(io_err("set a listener non-blocking"))?;
        }
        if let Some(u) = &listeners.dns_udp {
            u.set_nonblocking(true)
                .map_err(io_err("set a socket non-blocking"))?;
        }
        if let Some(u) = &listeners.proxy_unix {
            u.set_nonblocking(true)
                .map_err(io_err("set a listener non-blocking"))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("start a tokio runtime"))?;
        let runtime = rt.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (g, d) = (gate.clone(), dns.clone());
        let thread = std::thread::Builder::new()
            .name("airlock-net".into())
            .spawn(move || {
                rt.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    if let Some(l) = listeners.proxy {
                        let l = TcpListener::from_std(l).map_err(io_err("register the proxy listener"))?;
                        let g = g.clone();
                        tasks.spawn(async move { g.serve(l).await });
                    }
                    if let Some(l) = listeners.proxy_unix {
                        let l = UnixListener::from_std(l).map_err(io_err("register the proxy unix listener"))?;
                        let g = g.clone();
                        tasks.spawn(async move { g.serve_unix(l).await });
                    }
                    if let Some(s) = listeners.dns_udp {
                        let s = tokio::net::UdpSocket::from_std(s).map_err(io_err("register the DNS socket"))?;
                        let d = d.clone();
                        tasks.spawn(async move { d.serve_udp(s).await.map_err(GateError::from) });
                    }
                    if let Some(l) = listeners.dns_tcp {
                        let l = TcpListener::from_std(l).map_err(io_err("register the DNS listener"))?;
                        let d = d.clone();
                        tasks.spawn(async move { d.serve_tcp(l).await.map_err(GateError::from) });
                    }
                    for (l, resolver) in listeners.capture {
                        let l = TcpListener::from_std(l).map_err(io_err("register the capture endpoint"))?;
                        let (g, d) = (g.clone(), d.clone());
                        tasks.spawn(async move {
                            crate::capture::serve(l, g, d, resolver)
                                .await
                                .map_err(|source| GateError::Io { action: "accept a captured connection", source })
                        });
                    }
                    tokio::select! {
                        _ = stop_rx => Ok(()),
                        Some(r) = tasks.join_next() => match r {
                            Ok(r) => r,
                            Err(e) => Err(GateError::Io { action: "run a server task", source: io::Error::other(e.to_string()) }),
                        },
                    }
                })
            })
            .map_err(io_err("start the network thread"))?;
        Ok(NetService {
            gate,
            dns,
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The shared policy.
    pub fn policy(&self) -> &PolicyHandle {
        self.gate.policy()
    }

    /// Replaces the policy for the next connections and queries.
    pub fn reload(&self, policy: Policy) {
        self.gate.reload(policy);
    }

    /// The gate (e.g. to hand it transparent connections).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The DNS server (e.g. to answer DNS packets from a TUN device).
    pub fn dns(&self) -> &DnsServer {
        &self.dns
    }

    /// The service's runtime, to spawn work next to the gate.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Asks the service to stop without waiting for it (dropping it or [`NetService::shutdown`]
    /// waits): the caller can do other work while the thread ends.
    pub fn request_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops the service and waits for its thread. Returns the error that
    /// stopped it early, if any.
    pub fn shutdown(mut self) -> Result<(), GateError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), GateError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(GateError::Io {
                action: "run",
                source: io::Error::other("the network thread panicked"),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for NetService {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Relays both ways until both sides close; returns the bytes moved `a` to `b` and `b` to `a`.
///
/// Two kernel sockets (a proxy client and its upstream connection) are relayed in the kernel with
/// splice(2) ([`relay`]). Anything else (the transparent path's in-process stream) is copied with
/// 256 KiB buffers instead of tokio's default 8 KiB: a 64 KiB segment from the sandbox then costs
/// one write upstream, not eight.
async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + std::any::Any,
    B: AsyncRead + AsyncWrite + Unpin + std::any::Any,
{
    if let (Some(ka), Some(kb)) = (relay::kernel_socket(a), relay::kernel_socket(b))
        // Out of descriptors for the pipes: copying still works.
        && let Ok(pipes) = relay::Pipes::new()
    {
        return relay::splice_bidirectional(ka, kb, pipes).await;
    }
    tokio::io::copy_bidirectional_with_sizes(a, b, 256 * 1024, 256 * 1024).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_and_uri_parsing() {
        assert_eq!(
            parse_authority("a.test:443", None),
            Some(("a.test".into(), 443))
        );
        assert_eq!(
            parse_authority("[2001:db8::1]:443", None),
            Some(("2001:db8::1".into(), 443))
        );
        assert_eq!(
            parse_authority("a.test", Some(80)),
            Some(("a.test".into(), 80))
        );
        assert_eq!(parse_authority("a.test", None), None);
        assert_eq!(parse_authority("2001:db8::1", Some(80)), None);
        assert_eq!(parse_authority("a.test:0", None), None);
        assert_eq!(
            parse_http_uri("http://a.test/x?y#z"),
            Some(("a.test".into(), 80, "/x?y".into()))
        );
        assert_eq!(
            parse_http_uri("HTTP://a.test:8080?q"),
            Some(("a.test".into(), 8080, "/?q".into()))
        );
        assert_eq!(
            parse_http_uri("http://[::1]:81/"),
            Some(("::1".into(), 81, "/".into()))
        );
        assert_eq!(parse_http_uri("http://user@a.test/"), None);
        assert_eq!(parse_http_uri("https://a.test/"), None);
        assert_eq!(parse_http_uri("/relative"), None);
    }
}
