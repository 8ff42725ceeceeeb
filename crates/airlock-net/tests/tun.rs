//! Transparent capture end to end: a sandbox thread in its own network
//! namespace with only `tun0` (and `lo`), the user-space stack and the gate
//! in a second, sealed network namespace.
//!
//! Network safety: both namespaces are created here (root only; skipped
//! otherwise). The sandbox namespace's only way out is the TUN device, whose
//! other end is the stack in this process. The host-side namespace has only
//! its own `lo`, where the fake internet lives: a fake upstream DNS server
//! and fake origins on 127.0.0.1. The gate's [`MapConnector`] maps
//! documentation addresses (203.0.113.0/24, 2001:db8::/32) to those origins
//! and refuses everything else without opening a socket. No packet can
//! reach a real network, a metadata endpoint or a private range.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_net::dns::{DnsConfig, DnsServer, PinSet};
use airlock_net::gate::{ConnectFuture, Connector, Gate, GateConfig};
use airlock_net::log::{Decision, DecisionLog, DecisionPath, VerdictKind, read_log};
use airlock_net::policy::{Policy, PolicyHandle, Preset, Source};
use airlock_net::stack::{StackHandle, spawn_stack};
use airlock_net::tls::build_client_hello;
use airlock_net::tun::{TunConfig, create_tun_in_current_netns};
use simple_dns::rdata::{A, AAAA, RData};
use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SANDBOX: &str = "tunbox";

// ------------------------------------------------------------ namespaces

fn have_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun");
    }
    if !have_ip() {
        return Some("the `ip` command (iproute2) is not installed");
    }
    None
}

/// Moves the calling thread into a new, empty network namespace with `lo` up.
fn enter_host_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let ok = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ip link set lo up");
}

/// Starts the sandbox thread: new network namespace, `tun0` created there,
/// its fd sent back; then it runs `body` (the sandbox's programs).
fn spawn_sandbox<F>(cfg: TunConfig, body: F) -> (OwnedFd, std::thread::JoinHandle<()>)
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let fd = create_tun_in_current_netns(&cfg).expect("create tun0");
        tx.send(fd).unwrap();
        body();
    });
    let fd = rx.recv().expect("sandbox thread sends the TUN fd");
    (fd, t)
}

// ------------------------------------------------------------ fake world

async fn fake_dns(records: &[(&str, &[&str])]) -> SocketAddr {
    let map: HashMap<String, Vec<IpAddr>> = records
        .iter()
        .map(|(n, a)| {
            (
                n.to_string(),
                a.iter().map(|a| a.parse().unwrap()).collect(),
            )
        })
        .collect();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let question = q.questions[0].clone();
            let name = question.qname.to_string().to_ascii_lowercase();
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
    addr
}

/// An echo server on loopback; counts connections and records first bytes.
async fn echo_server() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut first = true;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if first {
                                seen.lock().unwrap().push(buf[..n.min(1024)].to_vec());
                                first = false;
                            }
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// Maps documentation addresses to loopback servers, refuses the rest
/// without touching the network, and records every attempt.
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
                    tokio::net::TcpStream::connect(t).await
                }
                None => Err(std::io::Error::new(
                    ErrorKind::PermissionDenied,
                    format!("test connector: {addr} is not mapped"),
                )),
            }
        })
    }
}

// ------------------------------------------------------- sandbox clients

const T: Duration = Duration::from_secs(5);

fn dns_query(server: SocketAddr, name: &str, t: TYPE) -> Option<(RCODE, Vec<IpAddr>)> {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let mut q = Packet::new_query(7);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        Name::new(name).unwrap(),
        QTYPE::TYPE(t),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    sock.send_to(&q.build_bytes_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).ok()?;
    let p = Packet::parse(&buf[..n]).unwrap();
    Some((p.rcode(), addrs_of(&p)))
}

fn dns_query_tcp(server: SocketAddr, name: &str) -> (RCODE, Vec<IpAddr>) {
    let mut s = TcpStream::connect_timeout(&server, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut q = Packet::new_query(8);
    q.questions.push(Question::new(
        Name::new(name).unwrap(),
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let q = q.build_bytes_vec().unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    let p = Packet::parse(&buf).unwrap();
    (p.rcode(), addrs_of(&p))
}

fn addrs_of(p: &Packet) -> Vec<IpAddr> {
    p.answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(IpAddr::V4(a.address.into())),
            RData::AAAA(a) => Some(IpAddr::V6(a.address.into())),
            _ => None,
        })
        .collect()
}

/// Connects, sends `payload`, reads until EOF/reset. `Err` is the error
/// kind of the connect or the read.
fn exchange(dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, ErrorKind> {
    let mut s = TcpStream::connect_timeout(&dst, T).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.write_all(payload);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if out.is_empty() => Err(e.kind()),
        Err(_) => Ok(out),
    }
}

/// A refused connection: the handshake completes (the stack accepts every
/// SYN), then the stack resets it without a byte.
fn assert_refused(dst: SocketAddr, payload: &[u8]) {
    match exchange(dst, payload) {
        Err(ErrorKind::ConnectionReset) | Err(ErrorKind::ConnectionRefused) => {}
        other => panic!("{dst}: expected a reset, got {other:?}"),
    }
}

fn assert_no_udp_answer(dst: SocketAddr) {
    let sock = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.send_to(b"anyone there?", dst).unwrap();
    let mut buf = [0u8; 100];
    let r = sock.recv(&mut buf);
    assert!(r.is_err(), "UDP to {dst} got an answer: {r:?}");
}

fn assert_no_ping(dst: Ipv4Addr) {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .expect("raw ICMP socket (root in the test namespace)");
    let tv = nix::sys::time::TimeVal::new(0, 500_000);
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
    // Echo request, id 1, seq 1, checksum precomputed for this header.
    let mut pkt = [8u8, 0, 0, 0, 0, 1, 0, 1];
    let sum = !(0x0800u16 + 0x0001 + 0x0001);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let addr = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
    nix::sys::socket::sendto(fd.as_raw_fd(), &pkt, &addr, MsgFlags::empty()).unwrap();
    let mut buf = [0u8; 200];
    let r = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty());
    assert!(r.is_err(), "ping {dst} got something back: {r:?}");
}

// ------------------------------------------------------------------ test

struct Host {
    handle: PolicyHandle,
    connector: Arc<MapConnector>,
    log_path: PathBuf,
    stack: StackHandle,
    rt: tokio::runtime::Runtime,
}

/// Builds the host side in the calling thread's (sealed) namespace.
fn host(
    tun: OwnedFd,
    cfg: &TunConfig,
    policy: Policy,
    origins: &[(&str, u16)],
) -> (Host, Arc<Mutex<Vec<Vec<u8>>>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (connector, seen, dns_addr) = rt.block_on(async {
        let dns_addr = fake_dns(&[
            ("allowed.test", &["203.0.113.10", "2001:db8::10"]),
            ("denied.test", &["203.0.113.66"]),
            ("private.test", &["10.200.0.5"]),
            ("meta.test", &["169.254.169.254"]),
        ])
        .await;
        let (echo, seen) = echo_server().await;
        let mut c = MapConnector::default();
        for (ip, port) in origins {
            c.map
                .insert(SocketAddr::new(ip.parse().unwrap(), *port), echo);
        }
        (Arc::new(c), seen, dns_addr)
    });
    let log_path = std::env::temp_dir().join(format!(
        "airlock-net-tun-{}-{:?}.jsonl",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&log_path);
    let log = DecisionLog::open(&log_path, SANDBOX).unwrap();
    let handle = PolicyHandle::new(policy);
    let pins = PinSet::new();
    let mut gcfg = GateConfig::new(SANDBOX, dns_addr);
    gcfg.sniff_timeout = Duration::from_millis(200);
    gcfg.connect_timeout = Duration::from_secs(2);
    let gate = Gate::with_connector(
        gcfg,
        handle.clone(),
        pins.clone(),
        log.clone(),
        connector.clone(),
    );
    let dns = DnsServer::new(DnsConfig::new(dns_addr), handle.clone(), pins, log.clone());
    let stack = spawn_stack(tun, Arc::new(gate), Arc::new(dns), log, cfg, rt.handle());
    (
        Host {
            handle,
            connector,
            log_path,
            stack,
            rt,
        },
        seen,
    )
}

fn find<'a>(log: &'a [Decision], f: impl Fn(&Decision) -> bool, what: &str) -> &'a Decision {
    log.iter()
        .find(|d| f(d))
        .unwrap_or_else(|| panic!("no log record for {what} in {log:#?}"))
}

#[test]
fn transparent_capture_end_to_end() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let t = std::thread::spawn(|| {
        enter_host_netns();
        let cfg = TunConfig::default();
        let dns_ep = SocketAddr::new(cfg.dns_v4.into(), 53);
        let (phase_tx, phase_rx) = std::sync::mpsc::channel::<()>();
        let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (tun, sandbox) = spawn_sandbox(cfg.clone(), move || {
            go_rx.recv().unwrap();
            // ---- preset none, allow allowed.test
            let (rc, a) = dns_query(dns_ep, "allowed.test", TYPE::A).expect("DNS answer");
            assert_eq!(rc, RCODE::NoError);
            assert_eq!(a, vec!["203.0.113.10".parse::<IpAddr>().unwrap()]);
            let (rc, a) = dns_query(dns_ep, "allowed.test", TYPE::AAAA).expect("DNS answer");
            assert_eq!(rc, RCODE::NoError);
            assert_eq!(a, vec!["2001:db8::10".parse::<IpAddr>().unwrap()]);
            let (rc, _) = dns_query(dns_ep, "denied.test", TYPE::A).expect("DNS answer");
            assert_eq!(rc, RCODE::NameError, "denied name: NXDOMAIN");
            let (rc, a) = dns_query_tcp(dns_ep, "allowed.test");
            assert_eq!((rc, a.len()), (RCODE::NoError, 1), "DNS over TCP");

            // Raw TCP to the resolved address: echoed.
            let out = exchange("203.0.113.10:7".parse().unwrap(), b"hello transparent").unwrap();
            assert_eq!(out, b"hello transparent");
            // IPv6, same rules.
            let out = exchange("[2001:db8::10]:7".parse().unwrap(), b"hello v6").unwrap();
            assert_eq!(out, b"hello v6");
            // TLS with the allowed SNI passes; with another SNI it is refused.
            let hello = build_client_hello(Some("allowed.test"));
            let out = exchange("203.0.113.10:443".parse().unwrap(), &hello).unwrap();
            assert_eq!(out, hello);
            assert_refused(
                "203.0.113.10:443".parse().unwrap(),
                &build_client_hello(Some("evil.test")),
            );
            // A direct connection to an address nothing allowed.
            assert_refused("203.0.113.99:7".parse().unwrap(), b"hi");
            assert_refused("[2001:db8::99]:7".parse().unwrap(), b"hi");
            // Server-speaks-first style (client silent): decided from pins.
            let mut s = TcpStream::connect_timeout(&"203.0.113.99:25".parse().unwrap(), T).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let mut b = [0u8; 10];
            assert!(matches!(s.read(&mut b), Err(_) | Ok(0)));

            // Bulk: 4 MiB each way through the stack, in order.
            let mut s = TcpStream::connect_timeout(&"203.0.113.10:7".parse().unwrap(), T).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
            let mut w = s.try_clone().unwrap();
            let d2 = data.clone();
            let writer = std::thread::spawn(move || {
                w.write_all(&d2).unwrap();
                w.shutdown(Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            writer.join().unwrap();
            assert!(
                back == data,
                "bulk data came back intact ({} bytes)",
                back.len()
            );

            // UDP other than DNS, to any address: no answer. ICMP: nothing.
            assert_no_udp_answer("203.0.113.10:9999".parse().unwrap());
            assert_no_udp_answer("[2001:db8::10]:9999".parse().unwrap());
            assert_no_udp_answer(SocketAddr::new(cfg.dns_v4.into(), 5353));
            assert_no_ping("203.0.113.10".parse().unwrap());

            phase_tx.send(()).unwrap();
            open_rx.recv().unwrap();

            // ---- preset open: metadata and private ranges still fail.
            // Plain HTTP gets the gate's 403 page; anything else a reset.
            let page = exchange(
                "169.254.169.254:80".parse().unwrap(),
                b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
            )
            .unwrap();
            let page = String::from_utf8_lossy(&page);
            assert!(page.starts_with("HTTP/1.1 403"), "{page}");
            assert!(page.contains("always-blocked"), "{page}");
            assert_refused("169.254.169.254:80".parse().unwrap(), b"x");
            assert_refused("10.200.0.5:80".parse().unwrap(), b"x");
            assert_refused("[fd00::5]:80".parse().unwrap(), b"x");
            assert_refused(SocketAddr::new(cfg.gateway_v4.into(), 80), b"x");
            let (rc, a) = dns_query(dns_ep, "meta.test", TYPE::A).expect("DNS answer");
            assert_eq!(
                (rc, a),
                (RCODE::NoError, vec![]),
                "rebinding: address removed"
            );
            // A public (documentation) address is fine under open.
            let out = exchange("198.51.100.7:7".parse().unwrap(), b"open").unwrap();
            assert_eq!(out, b"open");
        });

        let policy = Policy::new(Preset::None).allow("allowed.test".parse().unwrap(), Source::Flag);
        let (h, seen) = host(
            tun,
            &cfg,
            policy,
            &[
                ("203.0.113.10", 7),
                ("203.0.113.10", 443),
                ("2001:db8::10", 7),
                ("203.0.113.99", 7),
                ("2001:db8::99", 7),
                ("198.51.100.7", 7),
                ("169.254.169.254", 80),
                ("10.200.0.5", 80),
            ],
        );
        go_tx.send(()).unwrap();
        // Serve until the sandbox finished phase one.
        h.rt.block_on(async {
            loop {
                match phase_rx.try_recv() {
                    Ok(()) => break,
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("sandbox thread ended early: {e}"),
                }
            }
        });
        let attempts = h.connector.attempts.lock().unwrap().clone();
        let never: [SocketAddr; 2] = [
            "203.0.113.99:7".parse().unwrap(),
            "[2001:db8::99]:7".parse().unwrap(),
        ];
        for a in never {
            assert!(
                !attempts.contains(&a),
                "refused {a} was never dialed: {attempts:?}"
            );
        }
        assert!(
            !seen
                .lock()
                .unwrap()
                .iter()
                .any(|b| b.windows(9).any(|w| w == b"evil.test")),
            "the refused ClientHello never reached the origin"
        );
        let c = h.stack.counters();
        assert!(c.dropped_udp >= 3, "{c:?}");
        assert!(c.dropped_icmp >= 1, "{c:?}");
        assert!(c.dns_queries >= 3, "{c:?}");

        h.handle.reload(Policy::new(Preset::Open));
        open_tx.send(()).unwrap();
        let started = Instant::now();
        h.rt.block_on(async {
            while !sandbox.is_finished() {
                assert!(started.elapsed() < Duration::from_secs(60), "sandbox hangs");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        sandbox.join().expect("sandbox checks");
        let attempts = h.connector.attempts.lock().unwrap().clone();
        for a in ["169.254.169.254:80", "10.200.0.5:80"] {
            let a: SocketAddr = a.parse().unwrap();
            assert!(!attempts.contains(&a), "{a} was never dialed: {attempts:?}");
        }

        // The decision log has the transparent cases.
        let log = read_log(&h.log_path).unwrap();
        let tr = DecisionPath::Transparent;
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        find(
            &log,
            |d| {
                d.path == tr
                    && d.verdict == VerdictKind::Allow
                    && d.addr == ip("203.0.113.10")
                    && d.port == 7
                    && d.name.as_deref() == Some("allowed.test")
            },
            "allowed raw TCP",
        );
        find(
            &log,
            |d| d.path == tr && d.verdict == VerdictKind::Allow && d.addr == ip("2001:db8::10"),
            "allowed IPv6",
        );
        find(
            &log,
            |d| d.path == tr && d.verdict == VerdictKind::Deny && d.addr == ip("203.0.113.99"),
            "denied direct IP",
        );
        find(
            &log,
            |d| {
                d.path == tr
                    && d.verdict == VerdictKind::Deny
                    && d.port == 443
                    && d.name.as_deref() == Some("evil.test")
            },
            "denied SNI",
        );
        find(
            &log,
            |d| {
                d.path == tr
                    && d.verdict == VerdictKind::Deny
                    && d.addr == ip("203.0.113.10")
                    && d.port == 9999
                    && d.rule.contains("UDP")
            },
            "dropped UDP",
        );
        find(
            &log,
            |d| {
                d.path == tr
                    && d.verdict == VerdictKind::Deny
                    && d.addr == ip("203.0.113.10")
                    && d.rule.contains("ICMP")
            },
            "dropped ping",
        );
        find(
            &log,
            |d| d.path == tr && d.verdict == VerdictKind::Deny && d.addr == ip("169.254.169.254"),
            "metadata under open",
        );
        find(
            &log,
            |d| d.path == tr && d.verdict == VerdictKind::Deny && d.addr == ip("10.200.0.5"),
            "private under open",
        );
        find(
            &log,
            |d| {
                d.path == DecisionPath::Dns
                    && d.verdict == VerdictKind::Deny
                    && d.name.as_deref() == Some("denied.test")
            },
            "DNS NXDOMAIN",
        );

        // Stopping the stack removes tun0 in the sandbox's namespace.
        let Host { stack, rt, .. } = h;
        let mut stack = stack;
        stack.stop();
        rt.block_on(async { stack.join().await.unwrap() });
        let _ = std::fs::remove_file(&h.log_path);
    });
    t.join().unwrap();
}
