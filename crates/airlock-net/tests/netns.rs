//! The production connector in a sealed network namespace.
//!
//! The test thread moves into a new, empty network namespace (root only;
//! skipped otherwise). Its only interface is its own `lo`, which also holds
//! the fake internet's documentation address (203.0.113.10), a fake private
//! host (10.200.0.5) and a fake metadata server (169.254.169.254). Nothing in this namespace can reach the real
//! network, so the gate runs with its real [`DirectConnector`] and a gate bug
//! could at worst reach these fake servers.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_net::dns::{DnsConfig, DnsServer, PinSet};
use airlock_net::gate::{Gate, GateConfig};
use airlock_net::log::{DecisionLog, read_log};
use airlock_net::policy::{Policy, PolicyHandle, Preset, Source, host_addresses};
use simple_dns::rdata::{A, RData};
use simple_dns::{CLASS, Packet, QTYPE, RCODE, ResourceRecord, TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Moves the calling thread into a fresh network namespace with the fake
/// hosts on its loopback device. False when not possible (not root).
fn enter_sealed_netns() -> bool {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    // The fake hosts live on the new namespace's own loopback device: no
    // interface here has a peer outside.
    ip(&["link", "set", "lo", "up"])
        && ip(&["addr", "add", "203.0.113.10/32", "dev", "lo"])
        && ip(&["addr", "add", "10.200.0.5/32", "dev", "lo"])
        && ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"])
}

async fn counting_server(addr: &str) -> Arc<Mutex<usize>> {
    let l = TcpListener::bind(addr).await.unwrap();
    let n = Arc::new(Mutex::new(0usize));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            *n2.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "fake internet";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    n
}

async fn fake_dns() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let question = q.questions[0].clone();
            let name = question.qname.to_string();
            let answer = match name.as_str() {
                "allowed.test" => Some([203, 0, 113, 10]),
                "private.test" => Some([10, 200, 0, 5]),
                "meta.test" => Some([169, 254, 169, 254]),
                _ => None,
            };
            let mut r = Packet::new_reply(q.id());
            r.questions.push(question.clone());
            match answer {
                None => *r.rcode_mut() = RCODE::NameError,
                Some(a) if question.qtype == QTYPE::TYPE(TYPE::A) => {
                    r.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        60,
                        RData::A(A::from(std::net::Ipv4Addr::from(a))),
                    ));
                }
                Some(_) => {}
            }
            let _ = sock.send_to(&r.build_bytes_vec().unwrap(), peer).await;
        }
    });
    addr
}

async fn get(proxy: SocketAddr, host: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn direct_connector_in_sealed_namespace() {
    let t = std::thread::spawn(|| {
        let have_ip = Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !have_ip {
            eprintln!("skipped: the `ip` command (iproute2) is not installed");
            return;
        }
        if !enter_sealed_netns() {
            assert!(
                !nix::unistd::geteuid().is_root(),
                "running as root but could not set up a sealed network namespace"
            );
            eprintln!("skipped: cannot create a network namespace (needs root)");
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let public = counting_server("203.0.113.10:80").await;
            let private = counting_server("10.200.0.5:80").await;
            let metadata = counting_server("169.254.169.254:80").await;
            let dns = fake_dns().await;
            let log_path = std::env::temp_dir()
                .join(format!("airlock-net-netns-{}.jsonl", std::process::id()));
            let _ = std::fs::remove_file(&log_path);
            let log = DecisionLog::open(&log_path, "nsbox").unwrap();
            let policy =
                Policy::new(Preset::Open).allow("allowed.test".parse().unwrap(), Source::Flag);
            let handle = PolicyHandle::new(policy.clone());
            let pins = PinSet::new();
            let gate = Gate::new(
                GateConfig::new("nsbox", dns),
                handle.clone(),
                pins.clone(),
                log.clone(),
            );
            let _resolver = DnsServer::new(DnsConfig::new(dns), handle.clone(), pins, log);
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = l.local_addr().unwrap();
            gate.spawn(l);

            let ok = get(proxy, "allowed.test").await;
            assert!(ok.ends_with("fake internet"), "{ok}");
            assert_eq!(*public.lock().unwrap(), 1);

            for host in ["private.test", "meta.test", "10.200.0.5", "169.254.169.254"] {
                let r = get(proxy, host).await;
                assert!(r.starts_with("HTTP/1.1 403"), "{host}: {r}");
                assert!(r.contains("always-blocked"), "{host}: {r}");
            }
            assert_eq!(*private.lock().unwrap(), 0, "private host never reached");
            assert_eq!(*metadata.lock().unwrap(), 0, "metadata never reached");

            // The host's own addresses are blocked too: here the "host" is
            // this namespace, which owns 203.0.113.10.
            handle.reload(policy.with_host_addrs(host_addresses()));
            let r = get(proxy, "allowed.test").await;
            assert!(r.contains("the host's own address 203.0.113.10"), "{r}");
            assert_eq!(*public.lock().unwrap(), 1);

            let log = read_log(&log_path).unwrap();
            assert!(log.len() >= 6, "{log:#?}");
        });
    });
    t.join().unwrap();
}
