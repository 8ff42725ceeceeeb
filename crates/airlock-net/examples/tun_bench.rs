//! Measures transparent capture against direct loopback: connection setup
//! latency (connect, 1-byte round trip, close) and bulk throughput both
//! ways. Root only: like `tests/tun.rs`, it builds two network namespaces of
//! its own (the sandbox with `tun0`, the host side with only `lo`), so no
//! packet can leave this machine.
//!
//! ```text
//! cargo run --release -p airlock-net --example tun_bench [MiB] [connections]
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_net::dns::{DnsConfig, DnsServer, PinSet};
use airlock_net::gate::{ConnectFuture, Connector, Gate, GateConfig};
use airlock_net::log::DecisionLog;
use airlock_net::policy::{Policy, PolicyHandle, Preset, Source};
use airlock_net::stack::spawn_stack;
use airlock_net::tun::{TunConfig, create_tun_in_current_netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct MapConnector(HashMap<SocketAddr, SocketAddr>);

impl Connector for MapConnector {
    fn connect(&self, addr: SocketAddr) -> ConnectFuture<'_> {
        let target = self.0.get(&addr).copied();
        Box::pin(async move {
            match target {
                Some(t) => {
                    let s = tokio::net::TcpStream::connect(t).await?;
                    let _ = s.set_nodelay(true);
                    Ok(s)
                }
                None => Err(std::io::Error::other("not mapped")),
            }
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Sink,
    Source(u64),
}

async fn server(kind: Kind) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                match kind {
                    Kind::Echo => loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    },
                    Kind::Sink => {
                        let mut total = 0u64;
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => total += n as u64,
                            }
                        }
                        let _ = s.write_all(&total.to_be_bytes()).await;
                    }
                    Kind::Source(n) => {
                        let mut b = [0u8; 1];
                        let _ = s.read(&mut b).await;
                        let mut left = n;
                        while left > 0 {
                            let k = left.min(buf.len() as u64) as usize;
                            if s.write_all(&buf[..k]).await.is_err() {
                                break;
                            }
                            left -= k as u64;
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn connect(a: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&a, Duration::from_secs(5)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Median and p90 of `n` connect + 1-byte round trip + close, in µs.
fn latency(a: SocketAddr, n: usize) -> (f64, f64) {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = connect(a);
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e6);
        drop(s);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[n / 2], v[n * 9 / 10])
}

/// Upload MiB/s to the sink.
fn upload(a: SocketAddr, mib: u64) -> f64 {
    let buf = vec![7u8; 256 * 1024];
    let t = Instant::now();
    let mut s = connect(a);
    for _ in 0..mib * 4 {
        s.write_all(&buf).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut total = [0u8; 8];
    s.read_exact(&mut total).unwrap();
    assert_eq!(u64::from_be_bytes(total), mib * 1024 * 1024);
    mib as f64 / t.elapsed().as_secs_f64()
}

/// Download MiB/s from the source.
fn download(a: SocketAddr, mib: u64) -> f64 {
    let mut buf = vec![0u8; 256 * 1024];
    let t = Instant::now();
    let mut s = connect(a);
    s.write_all(b"g").unwrap();
    let mut total = 0u64;
    loop {
        match s.read(&mut buf).unwrap() {
            0 => break,
            n => total += n as u64,
        }
    }
    assert_eq!(total, mib * 1024 * 1024);
    mib as f64 / t.elapsed().as_secs_f64()
}

fn report(label: &str, a: [SocketAddr; 3], mib: u64, n: usize) -> (f64, f64, f64, f64) {
    // Warm up.
    let _ = latency(a[0], 20);
    let (p50, p90) = latency(a[0], n);
    let up = upload(a[1], mib);
    let down = download(a[2], mib);
    println!(
        "{label:>12}: connect+RTT p50 {p50:8.1} µs  p90 {p90:8.1} µs   upload {up:8.0} MiB/s   download {down:8.0} MiB/s"
    );
    (p50, p90, up, down)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("tun_bench needs root (it creates network namespaces)");
        std::process::exit(2);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
    assert!(
        Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The origins run on their own thread (a remote server in real life),
    // so they do not share a core with the stack and the gate.
    let (srv_tx, srv_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let srt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        srt.block_on(async {
            srv_tx
                .send((
                    server(Kind::Echo).await,
                    server(Kind::Sink).await,
                    server(Kind::Source(mib * 1024 * 1024)).await,
                ))
                .unwrap();
            std::future::pending::<()>().await
        })
    });
    let (echo, sink, source) = srv_rx.recv().unwrap();
    // The direct case: loopback servers behind the same ports scheme.
    let doc = "203.0.113.10";
    let mut map = HashMap::new();
    map.insert(format!("{doc}:7").parse().unwrap(), echo);
    map.insert(format!("{doc}:9").parse().unwrap(), sink);
    map.insert(format!("{doc}:19").parse().unwrap(), source);

    let cfg = TunConfig::default();
    let policy = Policy::new(Preset::None).allow("203.0.113.0/24".parse().unwrap(), Source::Flag);
    let handle = PolicyHandle::new(policy);
    let pins = PinSet::new();
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let log = DecisionLog::disabled("bench");
    let gate = Gate::with_connector(
        GateConfig::new("bench", upstream),
        handle.clone(),
        pins.clone(),
        log.clone(),
        Arc::new(MapConnector(map)),
    );
    let dns = DnsServer::new(DnsConfig::new(upstream), handle, pins, log.clone());

    let (tx, rx) = std::sync::mpsc::channel();
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    let c2 = cfg.clone();
    let sandbox = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        tx.send(create_tun_in_current_netns(&c2).expect("tun0"))
            .unwrap();
        let at = |p: u16| SocketAddr::new(doc.parse().unwrap(), p);
        let r = report("transparent", [at(7), at(9), at(19)], mib, conns);
        res_tx.send(r).unwrap();
    });
    let tun = rx.recv().unwrap();
    let _stack = spawn_stack(tun, Arc::new(gate), Arc::new(dns), log, &cfg, rt.handle());
    let through = rt.block_on(async {
        loop {
            if let Ok(r) = res_rx.try_recv() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    sandbox.join().unwrap();

    // Direct: the same servers over loopback, served by the same runtime.
    let (res_tx, res_rx) = std::sync::mpsc::channel();
    let direct_thread = std::thread::spawn(move || {
        res_tx
            .send(report("direct", [echo, sink, source], mib, conns))
            .unwrap();
    });
    let direct = rt.block_on(async {
        loop {
            if let Ok(r) = res_rx.try_recv() {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    direct_thread.join().unwrap();
    println!(
        "transparent adds {:.0} µs per new connection (p50); throughput: upload {:.0}%, download {:.0}% of direct",
        through.0 - direct.0,
        100.0 * through.2 / direct.2,
        100.0 * through.3 / direct.3
    );
}
