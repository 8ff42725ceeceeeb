//! End-to-end tests of the gate and the resolver, on loopback only.
//!
//! Network safety: every socket here is on 127.0.0.1. The "internet" is a
//! fake DNS server (started by each test) that answers documentation
//! addresses (203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32) and, for the
//! rebinding cases, private ones; the gate's outgoing connections go through
//! a [`MapConnector`] that maps those documentation addresses to loopback
//! listeners and refuses every other address without touching the network.
//! So even a gate bug cannot send a packet anywhere but loopback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_net::dns::{DnsConfig, DnsServer, PinSet};
use airlock_net::gate::{ConnectFuture, Connector, Gate, GateConfig, NetListeners, NetService};
use airlock_net::log::{Decision, DecisionLog, DecisionPath, VerdictKind, read_log};
use airlock_net::policy::{HostExposure, Policy, PolicyHandle, Preset, Rule, Source};
use airlock_net::tls::build_client_hello;
use simple_dns::rdata::{A, AAAA, RData};
use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const SANDBOX: &str = "testbox";

// ------------------------------------------------------------ fake world

/// A fake upstream DNS server on loopback: name -> addresses; NXDOMAIN otherwise.
struct FakeDns {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
}

async fn fake_dns(records: &[(&str, &[&str])]) -> FakeDns {
    let map: HashMap<String, Vec<IpAddr>> = records
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                a.iter().map(|a| a.parse().unwrap()).collect(),
            )
        })
        .collect();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let q2 = queries.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let question = q.questions[0].clone();
            let name = question.qname.to_string().to_ascii_lowercase();
            q2.lock().unwrap().push(name.clone());
            let mut r = Packet::new_reply(q.id());
            r.questions.push(question.clone());
            match map.get(&name) {
                None => *r.rcode_mut() = RCODE::NameError,
                Some(addrs) => {
                    for a in addrs {
                        let rdata = match (a, question.qtype) {
                            (IpAddr::V4(v4), QTYPE::TYPE(TYPE::A)) => RData::A(A::from(*v4)),
                            (IpAddr::V6(v6), QTYPE::TYPE(TYPE::AAAA)) => {
                                RData::AAAA(AAAA::from(*v6))
                            }
                            _ => continue,
                        };
                        r.answers.push(ResourceRecord::new(
                            question.qname.clone(),
                            CLASS::IN,
                            120,
                            rdata,
                        ));
                    }
                }
            }
            let _ = sock.send_to(&r.build_bytes_vec().unwrap(), peer).await;
        }
    });
    FakeDns { addr, queries }
}

/// What a fake server saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Vec<u8>>>>);

impl Seen {
    fn all(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

/// A fake HTTP origin: records each request head, answers `hello from LABEL`.
async fn http_server(label: &'static str) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Seen::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.0.lock().unwrap().push(buf);
                let body = format!("hello from {label}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// A fake TLS-ish origin: records the first bytes it gets, answers `pong`.
/// With `banner`, it speaks first (like SMTP).
async fn raw_server(banner: Option<&'static [u8]>) -> (SocketAddr, Seen, Arc<Mutex<usize>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Seen::default();
    let accepted = Arc::new(Mutex::new(0usize));
    let (s2, a2) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            *a2.lock().unwrap() += 1;
            let seen = s2.clone();
            tokio::spawn(async move {
                if let Some(b) = banner {
                    let _ = s.write_all(b).await;
                }
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => {
                        seen.0.lock().unwrap().push(chunk[..n].to_vec());
                        let _ = s.write_all(b"pong").await;
                        let _ = s.shutdown().await;
                    }
                    _ => {}
                }
            });
        }
    });
    (addr, seen, accepted)
}

/// Maps documentation addresses to loopback listeners; refuses the rest
/// without any network access, and remembers every attempt.
#[derive(Default)]
struct MapConnector {
    map: HashMap<SocketAddr, SocketAddr>,
    attempts: Mutex<Vec<SocketAddr>>,
}

impl Connector for MapConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture<'_> {
        self.attempts.lock().unwrap().push(addr);
        let target = self.map.get(&addr).copied();
        Box::pin(async move {
            match target {
                Some(t) => {
                    assert!(t.ip().is_loopback(), "test connector maps only to loopback");
                    TcpStream::connect(t).await
                }
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("test connector: {addr} is not mapped (no real network in tests)"),
                )),
            }
        })
    }
}

struct World {
    gate: Gate,
    dns: DnsServer,
    proxy: SocketAddr,
    connector: Arc<MapConnector>,
    log_path: PathBuf,
    fake_dns: FakeDns,
    handle: PolicyHandle,
}

fn rule(s: &str) -> Rule {
    s.parse().unwrap()
}

fn log_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("airlock-net-it-{}-{tag}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

async fn world(
    tag: &str,
    policy: Policy,
    records: &[(&str, &[&str])],
    map: &[(&str, SocketAddr)],
) -> World {
    world_with(tag, policy, records, map, |_| {}).await
}

/// [`world`] with the gate's settings changed by `tweak`.
async fn world_with(
    tag: &str,
    policy: Policy,
    records: &[(&str, &[&str])],
    map: &[(&str, SocketAddr)],
    tweak: impl FnOnce(&mut GateConfig),
) -> World {
    let fake_dns = fake_dns(records).await;
    let mut connector = MapConnector::default();
    for (from, to) in map {
        connector.map.insert(from.parse().unwrap(), *to);
    }
    let connector = Arc::new(connector);
    let log_path = log_path(tag);
    let log = DecisionLog::open(&log_path, SANDBOX).unwrap();
    let handle = PolicyHandle::new(policy);
    let pins = PinSet::new();
    let mut cfg = GateConfig::new(SANDBOX, fake_dns.addr);
    cfg.sniff_timeout = Duration::from_millis(100);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.handshake_timeout = Duration::from_millis(500);
    tweak(&mut cfg);
    let gate = Gate::with_connector(
        cfg,
        handle.clone(),
        pins.clone(),
        log.clone(),
        connector.clone(),
    );
    let dns = DnsServer::new(DnsConfig::new(fake_dns.addr), handle.clone(), pins, log);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    gate.spawn(l);
    World {
        gate,
        dns,
        proxy,
        connector,
        log_path,
        fake_dns,
        handle,
    }
}

impl World {
    fn log(&self) -> Vec<Decision> {
        read_log(&self.log_path).unwrap()
    }

    fn find(&self, path: DecisionPath, verdict: VerdictKind, rule_part: &str) -> Decision {
        let all = self.log();
        all.iter()
            .find(|d| d.path == path && d.verdict == verdict && d.rule.contains(rule_part))
            .cloned()
            .unwrap_or_else(|| {
                panic!("no {path:?} {verdict:?} record with {rule_part:?} in {all:#?}")
            })
    }

    fn attempts(&self) -> Vec<SocketAddr> {
        self.connector.attempts.lock().unwrap().clone()
    }

    /// Sends a raw proxy request, returns everything the gate answered.
    async fn proxy_request(&self, req: &str) -> String {
        let mut s = TcpStream::connect(self.proxy).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// CONNECT, then (if 200) send `payload` and read to the end.
    async fn connect_then(&self, target: &str, payload: &[u8]) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(self.proxy).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut rest = Vec::new();
        if head.starts_with("HTTP/1.1 200") {
            let _ = s.write_all(payload).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        if !head.starts_with("HTTP/1.1 200") {
            let mut full = head.into_bytes();
            full.extend_from_slice(&rest);
            return (String::from_utf8_lossy(&full).into_owned(), Vec::new());
        }
        (head, rest)
    }

    /// SOCKS5 CONNECT; returns the reply code and, on success, what came back after `payload`.
    async fn socks(&self, atyp: u8, addr: &[u8], port: u16, payload: &[u8]) -> (u8, Vec<u8>) {
        self.socks_slow(atyp, addr, port, payload, Duration::ZERO)
            .await
    }

    /// Like `socks`, waiting `pause` between the reply and the payload.
    async fn socks_slow(
        &self,
        atyp: u8,
        addr: &[u8],
        port: u16,
        payload: &[u8],
        pause: Duration,
    ) -> (u8, Vec<u8>) {
        let mut s = TcpStream::connect(self.proxy).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut g = [0u8; 2];
        s.read_exact(&mut g).await.unwrap();
        assert_eq!(g, [5, 0]);
        let mut req = vec![5, 1, 0, atyp];
        if atyp == 3 {
            req.push(addr.len() as u8);
        }
        req.extend_from_slice(addr);
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut rep = [0u8; 10];
        s.read_exact(&mut rep).await.unwrap();
        let mut rest = Vec::new();
        if rep[1] == 0 {
            tokio::time::sleep(pause).await;
            s.write_all(payload).await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        }
        (rep[1], rest)
    }

    /// One DNS query to the sandbox resolver over UDP.
    async fn query(&self, name: &str, t: TYPE) -> (RCODE, Vec<IpAddr>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let dns = self.dns.clone();
        let task = tokio::spawn(async move { dns.serve_udp(server).await });
        let mut q = Packet::new_query(4242);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(Question::new(
            Name::new(name).unwrap(),
            QTYPE::TYPE(t),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        sock.send_to(&q.build_bytes_vec().unwrap(), server_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("resolver answers")
            .unwrap();
        task.abort();
        let p = Packet::parse(&buf[..n]).unwrap();
        assert_eq!(p.id(), 4242);
        let addrs = p
            .answers
            .iter()
            .filter_map(|rr| match &rr.rdata {
                RData::A(a) => Some(IpAddr::V4(a.address.into())),
                RData::AAAA(a) => Some(IpAddr::V6(a.address.into())),
                _ => None,
            })
            .collect();
        (p.rcode(), addrs)
    }
}

fn allow(rules: &[&str]) -> Policy {
    rules.iter().fold(Policy::new(Preset::None), |p, r| {
        p.allow(rule(r), Source::Flag)
    })
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn http_proxy_allowed_name_is_forwarded() {
    let (origin, seen) = http_server("allowed").await;
    let w = world(
        "http-ok",
        allow(&["allowed.test"]),
        &[("allowed.test", &["203.0.113.10"])],
        &[("203.0.113.10:80", origin)],
    )
    .await;
    let resp = w
        .proxy_request("GET http://allowed.test/some/path?q=1 HTTP/1.1\r\nHost: allowed.test\r\nProxy-Connection: keep-alive\r\nUser-Agent: t\r\n\r\n")
        .await;
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.ends_with("hello from allowed"), "{resp}");
    let head = String::from_utf8(seen.all()[0].clone()).unwrap();
    assert!(
        head.starts_with("GET /some/path?q=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("proxy-connection"),
        "{head}"
    );
    let d = w.find(
        DecisionPath::ProxyHttp,
        VerdictKind::Allow,
        "allow allowed.test (flag)",
    );
    assert_eq!(d.addr, Some("203.0.113.10".parse().unwrap()));
    assert_eq!(d.port, 80);
    assert_eq!(d.sandbox, SANDBOX);
    assert_eq!(w.fake_dns.queries.lock().unwrap().len(), 2, "A and AAAA");
}

#[tokio::test]
async fn connect_with_matching_sni_is_spliced() {
    let (origin, seen, _) = raw_server(None).await;
    let w = world(
        "connect-ok",
        allow(&["allowed.test:443"]),
        &[("allowed.test", &["203.0.113.10"])],
        &[("203.0.113.10:443", origin)],
    )
    .await;
    let hello = build_client_hello(Some("allowed.test"));
    let (head, rest) = w.connect_then("allowed.test:443", &hello).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(rest, b"pong");
    assert_eq!(seen.all(), vec![hello]);
    w.find(
        DecisionPath::ProxyConnect,
        VerdictKind::Allow,
        "allow allowed.test:443 (flag)",
    );
}

#[tokio::test]
async fn connect_with_other_sni_is_refused() {
    let (origin, seen, _) = raw_server(None).await;
    let w = world(
        "connect-sni",
        allow(&["allowed.test"]),
        &[("allowed.test", &["203.0.113.10"])],
        &[("203.0.113.10:443", origin)],
    )
    .await;
    let (head, rest) = w
        .connect_then("allowed.test:443", &build_client_hello(Some("evil.test")))
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(rest.is_empty(), "nothing comes back");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        seen.all().is_empty(),
        "the ClientHello never reached the origin"
    );
    let d = w.find(
        DecisionPath::ProxyConnect,
        VerdictKind::Deny,
        "TLS SNI evil.test does not match",
    );
    assert_eq!(d.name.as_deref(), Some("allowed.test"));
}

#[tokio::test]
async fn socks5_domain_ipv4_ipv6() {
    let (origin, seen, _) = raw_server(None).await;
    let w = world(
        "socks-ok",
        allow(&["allowed.test", "198.51.100.0/24", "2001:db8::/32"]),
        &[("allowed.test", &["203.0.113.10"])],
        &[
            ("203.0.113.10:443", origin),
            ("198.51.100.7:443", origin),
            ("[2001:db8::7]:443", origin),
        ],
    )
    .await;
    let hello = build_client_hello(Some("allowed.test"));
    assert_eq!(
        w.socks(3, b"allowed.test", 443, &hello).await,
        (0, b"pong".to_vec())
    );
    assert_eq!(
        w.socks(1, &[198, 51, 100, 7], 443, b"raw").await,
        (0, b"pong".to_vec())
    );
    let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    assert_eq!(
        w.socks(4, &v6.octets(), 443, b"raw6").await,
        (0, b"pong".to_vec())
    );
    // A tunnel outlives the handshake timeout (500 ms here).
    assert_eq!(
        w.socks_slow(
            1,
            &[198, 51, 100, 7],
            443,
            b"late",
            Duration::from_millis(800)
        )
        .await,
        (0, b"pong".to_vec())
    );
    assert_eq!(seen.all().len(), 4);
    w.find(
        DecisionPath::Socks5,
        VerdictKind::Allow,
        "allow allowed.test (flag)",
    );
    w.find(
        DecisionPath::Socks5,
        VerdictKind::Allow,
        "allow 198.51.100.0/24 (flag)",
    );
    w.find(
        DecisionPath::Socks5,
        VerdictKind::Allow,
        "allow 2001:db8::/32 (flag)",
    );
}

#[tokio::test]
async fn denied_name_fails_on_every_path() {
    let (origin, _, accepted) = raw_server(None).await;
    let policy = Policy::new(Preset::Open)
        .allow(rule("a.evil.test"), Source::UserConfig)
        .deny(rule("*.evil.test"), Source::Flag);
    let w = world(
        "deny-all",
        policy,
        &[("a.evil.test", &["203.0.113.66"])],
        &[("203.0.113.66:80", origin), ("203.0.113.66:443", origin)],
    )
    .await;
    let want = "deny *.evil.test (flag)";

    let resp = w
        .proxy_request("GET http://a.evil.test/ HTTP/1.1\r\nHost: a.evil.test\r\n\r\n")
        .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains(want), "{resp}");
    assert!(resp.contains("deny rules win"), "{resp}");

    let (resp, _) = w.connect_then("a.evil.test:443", b"").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains(want), "{resp}");

    assert_eq!(w.socks(3, b"a.evil.test", 443, b"").await.0, 0x02);

    let (rcode, addrs) = w.query("a.evil.test", TYPE::A).await;
    assert_eq!(rcode, RCODE::NameError);
    assert!(addrs.is_empty());

    // Transparent: TLS to the address with that SNI.
    let (mut c, s) = tokio::io::duplex(64 * 1024);
    let gate = w.gate.clone();
    let t = tokio::spawn(async move {
        gate.handle_transparent(s, "203.0.113.66:443".parse().unwrap(), None)
            .await
    });
    c.write_all(&build_client_hello(Some("a.evil.test")))
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    t.await.unwrap();
    assert!(out.is_empty());

    for path in [
        DecisionPath::ProxyHttp,
        DecisionPath::ProxyConnect,
        DecisionPath::Socks5,
        DecisionPath::Dns,
        DecisionPath::Transparent,
    ] {
        w.find(path, VerdictKind::Deny, want);
    }
    assert!(
        w.attempts().is_empty(),
        "no connection was attempted: {:?}",
        w.attempts()
    );
    assert_eq!(*accepted.lock().unwrap(), 0);
    assert!(
        w.fake_dns.queries.lock().unwrap().is_empty(),
        "denied names are not even resolved"
    );
}

#[tokio::test]
async fn refused_http_gets_403_naming_rule_and_command() {
    let w = world("default-403", Policy::default(), &[], &[]).await;
    let resp = w
        .proxy_request(
            "GET http://unlisted.test:8080/x HTTP/1.1\r\nHost: unlisted.test:8080\r\n\r\n",
        )
        .await;
    assert!(resp.starts_with("HTTP/1.1 403 Forbidden"), "{resp}");
    assert!(
        resp.contains("X-Airlock-Rule: default: not in allowlist (preset none)"),
        "{resp}"
    );
    assert!(
        resp.contains("Rule: default: not in allowlist (preset none)"),
        "{resp}"
    );
    assert!(
        resp.contains("airlock policy allow unlisted.test --sandbox testbox"),
        "{resp}"
    );
    assert!(
        resp.contains("airlock policy allow unlisted.test:8080 --sandbox testbox"),
        "{resp}"
    );
    let d = w.find(DecisionPath::ProxyHttp, VerdictKind::Deny, "preset none");
    assert_eq!(d.name.as_deref(), Some("unlisted.test"));
    assert_eq!(d.port, 8080);
}

#[tokio::test]
async fn host_header_must_match_uri() {
    let (origin, seen) = http_server("x").await;
    let w = world(
        "host-mismatch",
        allow(&["allowed.test"]),
        &[("allowed.test", &["203.0.113.10"])],
        &[("203.0.113.10:80", origin)],
    )
    .await;
    let resp = w
        .proxy_request("GET http://allowed.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")
        .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("does not match"), "{resp}");
    assert!(seen.all().is_empty());
}

#[tokio::test]
async fn dns_answers_only_allowed_names_and_pins() {
    let w = world(
        "dns",
        allow(&["allowed.test", "*.cdn.test"]),
        &[
            ("allowed.test", &["203.0.113.10", "2001:db8::10"]),
            ("unlisted.test", &["203.0.113.20"]),
            ("cdn.test", &["203.0.113.30"]),
        ],
        &[],
    )
    .await;
    assert_eq!(
        w.query("allowed.test", TYPE::A).await,
        (RCODE::NoError, vec!["203.0.113.10".parse().unwrap()])
    );
    assert_eq!(
        w.query("Allowed.Test", TYPE::AAAA).await,
        (RCODE::NoError, vec!["2001:db8::10".parse().unwrap()])
    );
    assert_eq!(
        w.query("unlisted.test", TYPE::A).await,
        (RCODE::NameError, vec![])
    );
    // `*.cdn.test` does not cover `cdn.test`.
    assert_eq!(
        w.query("cdn.test", TYPE::A).await,
        (RCODE::NameError, vec![])
    );
    // Allowed name, other record types: no data, no upstream query.
    let before = w.fake_dns.queries.lock().unwrap().len();
    assert_eq!(
        w.query("allowed.test", TYPE::TXT).await,
        (RCODE::NoError, vec![])
    );
    assert_eq!(w.fake_dns.queries.lock().unwrap().len(), before);
    // Upstream NXDOMAIN passes through.
    assert_eq!(w.query("x.cdn.test", TYPE::A).await.0, RCODE::NameError);

    let pins = w.gate.pins();
    assert!(pins.is_pinned("allowed.test", "203.0.113.10".parse().unwrap()));
    assert!(pins.is_pinned("allowed.test", "2001:db8::10".parse().unwrap()));
    assert!(!pins.is_pinned("unlisted.test", "203.0.113.20".parse().unwrap()));
    assert!(
        !w.fake_dns
            .queries
            .lock()
            .unwrap()
            .contains(&"unlisted.test".to_string())
    );

    let d = w.find(
        DecisionPath::Dns,
        VerdictKind::Deny,
        "default: not in allowlist",
    );
    assert_eq!(d.name.as_deref(), Some("unlisted.test"));
    let d = w.find(
        DecisionPath::Dns,
        VerdictKind::Allow,
        "allow allowed.test (flag)",
    );
    assert!(!d.answers.is_empty());
}

#[tokio::test]
async fn rebinding_answers_are_filtered_and_refused() {
    let (origin, _, accepted) = raw_server(None).await;
    let w = world(
        "rebind",
        Policy::new(Preset::Open),
        &[
            ("lo.test", &["127.0.0.1"]),
            ("ten.test", &["10.0.0.5"]),
            ("meta.test", &["169.254.169.254"]),
            ("mapped.test", &["::ffff:127.0.0.1"]),
            ("mixed.test", &["10.0.0.5", "203.0.113.10"]),
        ],
        &[("203.0.113.10:443", origin)],
    )
    .await;
    for (name, what) in [
        ("lo.test", "loopback"),
        ("ten.test", "private"),
        ("meta.test", "link-local / cloud metadata"),
    ] {
        assert_eq!(
            w.query(name, TYPE::A).await,
            (RCODE::NoError, vec![]),
            "{name}"
        );
        let d = w.find(DecisionPath::Dns, VerdictKind::Deny, what);
        assert!(d.rule.contains("rebinding"), "{}", d.rule);
        let (resp, _) = w.connect_then(&format!("{name}:443"), b"").await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{name}: {resp}");
        assert!(resp.contains("always-blocked"), "{resp}");
        assert!(resp.contains("--host-port"), "{resp}");
    }
    assert_eq!(
        w.query("mapped.test", TYPE::AAAA).await,
        (RCODE::NoError, vec![])
    );
    assert_eq!(
        w.query("mixed.test", TYPE::A).await,
        (RCODE::NoError, vec!["203.0.113.10".parse().unwrap()])
    );
    let (head, rest) = w
        .connect_then("mixed.test:443", &build_client_hello(Some("mixed.test")))
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(rest, b"pong");
    // Only the public address was ever attempted.
    let attempts = w.attempts();
    assert_eq!(
        attempts,
        vec!["203.0.113.10:443".parse().unwrap()],
        "{attempts:?}"
    );
    assert_eq!(*accepted.lock().unwrap(), 1);
}

#[tokio::test]
async fn direct_addresses_are_checked() {
    let w = world("direct-ip", allow(&["allowed.test"]), &[], &[]).await;
    let (resp, _) = w.connect_then("203.0.113.99:443", b"").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(
        resp.contains("default: address not in allowlist (preset none)"),
        "{resp}"
    );
    assert!(
        resp.contains("airlock policy allow 203.0.113.99 --sandbox testbox"),
        "{resp}"
    );

    w.handle.reload(Policy::new(Preset::Open));
    for target in [
        "127.0.0.1:22",
        "[::1]:22",
        "[::ffff:127.0.0.1]:22",
        "[64:ff9b::a00:5]:80",
        "[fe80::1]:80",
        "169.254.169.254:80",
        "10.200.0.5:80",
        "[fd00:ec2::254]:80",
        "[2002:a9fe:a9fe::1]:80",
        "0.0.0.0:80",
    ] {
        let (resp, _) = w.connect_then(target, b"").await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{target}: {resp}");
        assert!(resp.contains("always-blocked"), "{target}: {resp}");
    }
    let resp = w.proxy_request("GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("link-local / cloud metadata"), "{resp}");
    let resp = w
        .proxy_request("GET http://[::1]:8080/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
        .await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let lo6: std::net::Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
    assert_eq!(w.socks(4, &lo6.octets(), 22, b"").await.0, 0x02);
    assert_eq!(w.socks(1, &[169, 254, 169, 254], 80, b"").await.0, 0x02);
    assert!(w.attempts().is_empty(), "{:?}", w.attempts());
    let d = w.find(DecisionPath::Socks5, VerdictKind::Deny, "always-blocked");
    assert!(d.addr.is_some());
}

#[tokio::test]
async fn port_rules_apply_at_the_gate() {
    let (origin, _, _) = raw_server(None).await;
    let w = world(
        "ports",
        allow(&["allowed.test:8443"]),
        &[("allowed.test", &["203.0.113.10"])],
        &[("203.0.113.10:8443", origin), ("203.0.113.10:443", origin)],
    )
    .await;
    let (resp, _) = w.connect_then("allowed.test:443", b"").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let (head, rest) = w.connect_then("allowed.test:8443", b"x").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(rest, b"pong");
}

/// Connections beyond the gate's limit are closed at once and logged; the limit frees up when
/// connections end.
#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_logged() {
    let w = world_with("limit", allow(&["allowed.test"]), &[], &[], |c| {
        c.max_connections = 2;
        c.handshake_timeout = Duration::from_secs(30);
    })
    .await;
    // Two clients that say nothing hold both places (the handshake timeout is long).
    let a = TcpStream::connect(w.proxy).await.unwrap();
    let b = TcpStream::connect(w.proxy).await.unwrap();
    let mut c = TcpStream::connect(w.proxy).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the third connection is closed, not left waiting");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    w.find(
        DecisionPath::ProxyConnect,
        VerdictKind::Deny,
        "too many connections",
    );
    // Once the first two end, a new request is served again (a 403 for a name not allowed).
    drop((a, b));
    let mut served = false;
    for _ in 0..100 {
        if w.proxy_request("GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
            .await
            .contains(" 403 ")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "the gate serves again once connections end");
}

#[tokio::test]
async fn policy_reload_affects_the_next_connection() {
    let (origin, _) = http_server("reloaded").await;
    let w = world(
        "reload",
        Policy::default(),
        &[("allowed.test", &["203.0.113.10"])],
        &[("203.0.113.10:80", origin)],
    )
    .await;
    let req = "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n";
    assert!(w.proxy_request(req).await.starts_with("HTTP/1.1 403"));
    w.gate
        .reload(Policy::new(Preset::None).allow(rule("allowed.test"), Source::Sandbox));
    let resp = w.proxy_request(req).await;
    assert!(resp.ends_with("hello from reloaded"), "{resp}");
    w.find(
        DecisionPath::ProxyHttp,
        VerdictKind::Allow,
        "allow allowed.test (sandbox policy)",
    );
    // And DNS follows too.
    w.gate.reload(Policy::default());
    assert_eq!(w.query("allowed.test", TYPE::A).await.0, RCODE::NameError);
}

async fn transparent(w: &World, dst: &str, resolved: Option<&str>, send: &[u8]) -> Vec<u8> {
    let (mut c, s) = tokio::io::duplex(64 * 1024);
    let gate = w.gate.clone();
    let dst: SocketAddr = dst.parse().unwrap();
    let resolved = resolved.map(str::to_string);
    let t = tokio::spawn(async move { gate.handle_transparent(s, dst, resolved).await });
    if !send.is_empty() {
        c.write_all(send).await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    drop(c);
    let _ = t.await;
    out
}

#[tokio::test]
async fn transparent_decides_from_sni_host_and_pins() {
    let (tls_origin, tls_seen, _) = raw_server(None).await;
    let (smtp, _, _) = raw_server(Some(b"220 hi\r\n")).await;
    let (http_origin, http_seen) = http_server("transparent").await;
    let w = world(
        "transparent",
        allow(&["allowed.test", "mail.test:25", "198.51.100.0/24"]),
        &[
            ("allowed.test", &["203.0.113.10"]),
            ("mail.test", &["203.0.113.25"]),
            ("other.test", &["203.0.113.11"]),
        ],
        &[
            ("203.0.113.10:443", tls_origin),
            ("203.0.113.10:80", http_origin),
            ("203.0.113.11:443", tls_origin),
            ("203.0.113.25:25", smtp),
            ("198.51.100.5:443", tls_origin),
            ("203.0.113.12:443", tls_origin),
        ],
    )
    .await;
    // The sandbox resolved allowed.test through Airlock's DNS.
    assert_eq!(w.query("allowed.test", TYPE::A).await.0, RCODE::NoError);
    let hello = build_client_hello(Some("allowed.test"));
    assert_eq!(
        transparent(&w, "203.0.113.10:443", None, &hello).await,
        b"pong"
    );
    assert_eq!(tls_seen.all(), vec![hello]);

    // HTTP Host header.
    let out = transparent(
        &w,
        "203.0.113.10:80",
        None,
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&out).ends_with("hello from transparent"));
    assert_eq!(http_seen.all().len(), 1);

    // SNI of an allowed name, but an address it did not resolve to: refused.
    let out = transparent(
        &w,
        "203.0.113.12:443",
        None,
        &build_client_hello(Some("allowed.test")),
    )
    .await;
    assert!(out.is_empty());
    w.find(
        DecisionPath::Transparent,
        VerdictKind::Deny,
        "pinning: allowed.test did not resolve to 203.0.113.12",
    );

    // SNI of a name that is not allowed.
    let out = transparent(
        &w,
        "203.0.113.11:443",
        None,
        &build_client_hello(Some("other.test")),
    )
    .await;
    assert!(out.is_empty());
    w.find(
        DecisionPath::Transparent,
        VerdictKind::Deny,
        "default: not in allowlist",
    );

    // Plain HTTP refused in transparent mode gets a 403 too.
    let out = transparent(
        &w,
        "203.0.113.11:80",
        None,
        b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 403"));

    // Server speaks first: decided from the pins of the sandbox's lookup.
    assert_eq!(w.query("mail.test", TYPE::A).await.0, RCODE::NoError);
    let (mut c, s) = tokio::io::duplex(64 * 1024);
    let gate = w.gate.clone();
    let t = tokio::spawn(async move {
        gate.handle_transparent(s, "203.0.113.25:25".parse().unwrap(), None)
            .await
    });
    let mut banner = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 hi\r\n");
    c.write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert_eq!(rest, b"pong");
    drop(c);
    t.await.unwrap();
    w.find(
        DecisionPath::Transparent,
        VerdictKind::Allow,
        "allow mail.test:25 (flag)",
    );

    // No name at all: the address must be allowed by itself.
    assert_eq!(
        transparent(&w, "198.51.100.5:443", None, b"raw").await,
        b"pong"
    );
    assert!(
        transparent(&w, "203.0.113.12:443", None, b"raw")
            .await
            .is_empty()
    );
    w.find(
        DecisionPath::Transparent,
        VerdictKind::Deny,
        "default: address not in allowlist",
    );

    // Blocked destinations never connect, whatever the name says.
    w.handle.reload(Policy::new(Preset::Open));
    let before = w.attempts().len();
    for dst in [
        "127.0.0.1:443",
        "[::1]:443",
        "169.254.169.254:80",
        "[64:ff9b::a00:5]:443",
    ] {
        assert!(
            transparent(
                &w,
                dst,
                Some("allowed.test"),
                &build_client_hello(Some("allowed.test"))
            )
            .await
            .is_empty()
        );
    }
    assert_eq!(w.attempts().len(), before);
}

#[tokio::test]
async fn host_exposure_reaches_host_loopback_only_when_exposed() {
    let (svc, seen, _) = raw_server(None).await;
    let port = svc.port();
    let w = world(
        "exposure",
        Policy::new(Preset::Open),
        &[],
        &[(&format!("127.0.0.1:{port}"), svc)],
    )
    .await;
    let target = format!("host.airlock.internal:{port}");
    let (resp, _) = w.connect_then(&target, b"").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("--host-port"), "{resp}");
    w.gate
        .reload(Policy::new(Preset::None).expose(HostExposure { port }));
    let (head, rest) = w.connect_then(&target, b"sql").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(rest, b"pong");
    assert_eq!(seen.all(), vec![b"sql".to_vec()]);
    // The loopback address itself stays blocked.
    let (resp, _) = w.connect_then(&format!("127.0.0.1:{port}"), b"").await;
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    w.find(
        DecisionPath::ProxyConnect,
        VerdictKind::Allow,
        "exposure host.airlock.internal",
    );
}

#[test]
fn net_service_runs_in_its_own_thread() {
    // A runtime only to set up the fake world; the service has its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (fake, origin) = rt.block_on(async {
        let fake = fake_dns(&[("allowed.test", &["203.0.113.10"])]).await;
        let (origin, _) = http_server("service").await;
        (fake, origin)
    });
    let bg = std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    let _ = bg; // the fake world runs until the test process ends

    let mut connector = MapConnector::default();
    connector
        .map
        .insert("203.0.113.10:80".parse().unwrap(), origin);
    let handle = PolicyHandle::new(Policy::default());
    let pins = PinSet::new();
    let log_path = log_path("service");
    let log = DecisionLog::open(&log_path, SANDBOX).unwrap();
    let gate = Gate::with_connector(
        GateConfig::new(SANDBOX, fake.addr),
        handle.clone(),
        pins.clone(),
        log.clone(),
        Arc::new(connector),
    );
    let dns = DnsServer::new(DnsConfig::new(fake.addr), handle, pins, log);
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let svc = NetService::start_with(
        gate,
        dns,
        NetListeners {
            proxy: Some(proxy),
            proxy_unix: None,
            dns_udp: Some(udp),
            dns_tcp: None,
            capture: Vec::new(),
        },
    )
    .unwrap();

    let get = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(proxy_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(get().starts_with("HTTP/1.1 403"));
    svc.reload(Policy::new(Preset::None).allow(rule("allowed.test"), Source::Sandbox));
    assert!(get().ends_with("hello from service"));
    svc.shutdown().unwrap();
    assert!(
        std::net::TcpStream::connect(proxy_addr).is_err(),
        "listener closed after shutdown"
    );
    let log = read_log(&log_path).unwrap();
    assert_eq!(log.len(), 2, "{log:#?}");
}

/// An upstream that truncates over UDP and answers over TCP; the sandbox
/// resolver is queried over TCP too.
#[tokio::test]
async fn dns_over_tcp_and_truncated_upstream() {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(upstream).await.unwrap();
    let answer = |q: &Packet<'_>, truncate: bool| {
        let question = q.questions[0].clone();
        let mut r = Packet::new_reply(q.id());
        r.questions.push(question.clone());
        if truncate {
            r.set_flags(PacketFlag::TRUNCATION);
        } else if question.qtype == QTYPE::TYPE(TYPE::A) {
            r.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                60,
                RData::A(A::from(std::net::Ipv4Addr::new(203, 0, 113, 77))),
            ));
        }
        r.build_bytes_vec().unwrap()
    };
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let q = Packet::parse(&buf[..n]).unwrap();
            let _ = udp.send_to(&answer(&q, true), peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let len = s.read_u16().await.unwrap();
            let mut msg = vec![0u8; len as usize];
            s.read_exact(&mut msg).await.unwrap();
            let q = Packet::parse(&msg).unwrap();
            let r = answer(&q, false);
            s.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&r).await.unwrap();
        }
    });

    let log_path = log_path("dns-tcp");
    let log = DecisionLog::open(&log_path, SANDBOX).unwrap();
    let pins = PinSet::new();
    let server = DnsServer::new(
        DnsConfig::new(upstream),
        PolicyHandle::new(allow(&["big.test"])),
        pins.clone(),
        log,
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { server.serve_tcp(l).await });

    let mut s = TcpStream::connect(addr).await.unwrap();
    for (name, want) in [
        ("big.test", RCODE::NoError),
        ("other.test", RCODE::NameError),
    ] {
        let mut q = Packet::new_query(7);
        q.questions.push(Question::new(
            Name::new(name).unwrap(),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let msg = q.build_bytes_vec().unwrap();
        s.write_all(&(msg.len() as u16).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&msg).await.unwrap();
        let len = s.read_u16().await.unwrap();
        let mut resp = vec![0u8; len as usize];
        s.read_exact(&mut resp).await.unwrap();
        let p = Packet::parse(&resp).unwrap();
        assert_eq!(p.rcode(), want, "{name}");
        if want == RCODE::NoError {
            assert_eq!(p.answers.len(), 1);
        }
    }
    assert!(pins.is_pinned("big.test", "203.0.113.77".parse().unwrap()));
}
