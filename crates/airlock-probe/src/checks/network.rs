//! Network reachability: loopback service ports (always), and non-loopback targets
//! (cloud metadata, outbound, gateways, DNS) only as `opts.net_targets` lists them.
//! Every attempt is a TCP connect (nothing sent; off loopback, held up to half a second to tell a
//! real peer from a NAT that accepts and then resets) or a DNS lookup; all
//! run in parallel with `opts.timeout` each, so the whole check takes about one timeout.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use crate::net_targets::TargetAddr;
use crate::util::random_label;
use crate::{Category, Ctx, Finding, LOOPBACK_PORTS, NetTargetKind, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tcp {
    Connected,
    /// The host answered with a reset: reachable, port closed.
    Refused,
    /// Timeout, unreachable, filtered.
    Blocked,
}

fn tcp(ctx: &Ctx, addr: SocketAddr) -> Tcp {
    ctx.log_net(format!("tcp {addr}"));
    match TcpStream::connect_timeout(&addr, ctx.timeout) {
        Ok(s) if addr.ip().is_loopback() => {
            drop(s);
            Tcp::Connected
        }
        // A NAT in between (QEMU's user-mode network in a VM, some VPNs) accepts the connection
        // before it knows whether its own connection out succeeds, and resets it when that fails.
        // A real peer either waits for the client to speak or sends a banner: wait a moment for
        // a reset or an end before calling the destination reachable. Nothing is sent.
        Ok(s) => {
            let _ = s.set_read_timeout(Some(ctx.timeout.min(Duration::from_millis(500))));
            match s.peek(&mut [0u8; 1]) {
                Ok(0) => Tcp::Blocked,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    Tcp::Blocked
                }
                _ => Tcp::Connected,
            }
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Tcp::Refused,
        Err(_) => Tcp::Blocked,
    }
}

fn service_name(port: u16) -> &'static str {
    match port {
        22 => "SSH",
        80 => "HTTP",
        443 => "HTTPS",
        2375 => "Docker API (plain)",
        2376 => "Docker API (TLS)",
        3000 => "dev server",
        3306 => "MySQL",
        5000 => "dev server / registry",
        5432 => "PostgreSQL",
        5900 => "VNC",
        6379 => "Redis",
        8000 | 8080 => "HTTP dev server",
        8443 => "HTTPS alt",
        9000 => "dev server / PHP-FPM",
        9200 => "Elasticsearch",
        11211 => "memcached",
        27017 => "MongoDB",
        _ => "service",
    }
}

/// Gateways of the default IPv4 routes of the calling thread's network namespace
/// (`/proc/thread-self/net/route`; `/proc/net` would show the main thread's).
fn default_gateways() -> Vec<Ipv4Addr> {
    let text = std::fs::read_to_string("/proc/thread-self/net/route")
        .or_else(|_| std::fs::read_to_string("/proc/net/route"))
        .unwrap_or_default();
    parse_default_gateways(&text)
}

fn parse_default_gateways(text: &str) -> Vec<Ipv4Addr> {
    let mut out = vec![];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7
            && f[1] == "00000000"
            && f[7] == "00000000"
            && let Ok(gw) = u32::from_str_radix(f[2], 16)
        {
            // The kernel prints the address's in-memory bytes as a native-endian number.
            let ip = Ipv4Addr::from(gw.to_ne_bytes());
            if !ip.is_unspecified() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.truncate(2);
    out
}

/// Resolve `name` with the system resolver, bounded by `wait`. `Some(true)`: resolved or
/// answered "no such name" (the lookup reached a resolver); `Some(false)`: failed;
/// `None`: no answer in time.
fn dns(ctx: &Ctx, name: &str, wait: Duration) -> Option<bool> {
    ctx.log_net(format!("dns {name}"));
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Some(false);
    };
    let (tx, rx) = mpsc::channel();
    // Detached: getaddrinfo cannot be cancelled; a late answer is dropped.
    let spawned = std::thread::Builder::new()
        .name("airlock-probe-dns".into())
        .spawn(move || {
            let mut res: *mut libc::addrinfo = std::ptr::null_mut();
            // SAFETY: `cname` is a valid NUL-terminated string; service and hints may be
            // NULL; `res` is a valid out-pointer, freed below only when the call succeeded.
            let rc = unsafe {
                libc::getaddrinfo(cname.as_ptr(), std::ptr::null(), std::ptr::null(), &mut res)
            };
            if rc == 0 && !res.is_null() {
                // SAFETY: `res` was returned by a successful getaddrinfo and is freed once.
                unsafe { libc::freeaddrinfo(res) };
            }
            let answered = rc == 0 || rc == libc::EAI_NONAME || rc == libc::EAI_NODATA;
            let _ = tx.send(answered);
        });
    if spawned.is_err() {
        return Some(false);
    }
    rx.recv_timeout(wait).ok()
}

fn join<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, T>>) -> Vec<T> {
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    // Loopback ports.
    let mut ports: Vec<u16> = LOOPBACK_PORTS.to_vec();
    ports.extend(&ctx.opts.extra_loopback_ports);
    ports.sort_unstable();
    ports.dedup();
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .flat_map(|&p| {
            [
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), p),
            ]
        })
        .collect();

    // Non-loopback targets, expanded.
    let mut tcp_targets: Vec<(NetTargetKind, SocketAddr)> = vec![];
    let mut dns_targets: Vec<String> = vec![];
    for t in ctx.opts.net_targets.targets() {
        match t.addr {
            TargetAddr::Socket(a) => tcp_targets.push((t.kind, a)),
            TargetAddr::DefaultGateway(port) => {
                for gw in default_gateways() {
                    tcp_targets.push((t.kind, SocketAddr::new(IpAddr::V4(gw), port)));
                }
            }
            TargetAddr::Name(n) => dns_targets.push(n.replace("{random}", &random_label(16))),
        }
    }
    tcp_targets.dedup();
    let dns_wait = (ctx.timeout * 4).min(Duration::from_secs(2));

    let (loop_res, tgt_res, dns_res) = std::thread::scope(|s| {
        let l: Vec<_> = addrs
            .iter()
            .map(|&a| s.spawn(move || (a, tcp(ctx, a))))
            .collect();
        let t: Vec<_> = tcp_targets
            .iter()
            .map(|&(k, a)| s.spawn(move || (k, a, tcp(ctx, a))))
            .collect();
        let d: Vec<_> = dns_targets
            .iter()
            .map(|n| s.spawn(move || (n.clone(), dns(ctx, n, dns_wait))))
            .collect();
        (join(l), join(t), join(d))
    });

    for (addr, r) in loop_res {
        if r == Tcp::Connected {
            let port = addr.port();
            out.push(Finding::new(
                "network.loopback_port",
                Category::Network,
                if matches!(port, 2375 | 2376) {
                    Severity::High
                } else {
                    Severity::Medium
                },
                addr.to_string(),
                format!("Loopback port {port} accepts connections ({})", service_name(port)),
                format!("TCP connect to {addr} succeeded: a local service is reachable (databases and dev servers often trust loopback clients)"),
                "give the agent its own network namespace, or bind the service to a socket the agent cannot reach",
            ));
        }
    }

    let tried = tgt_res.len() + dns_res.len();
    let mut answered = 0;
    for (kind, addr, r) in tgt_res {
        if r == Tcp::Blocked {
            continue;
        }
        answered += 1;
        let open = r == Tcp::Connected;
        let how = if open {
            "TCP connect succeeded"
        } else {
            "the host answered (connection refused)"
        };
        let (id, sev, title, fix) = match kind {
            NetTargetKind::Metadata => (
                "network.metadata",
                if open { Severity::High } else { Severity::Low },
                "Cloud metadata endpoint is reachable",
                "block 169.254.169.254 and fd00:ec2::254 for the agent (metadata hands out cloud credentials)",
            ),
            NetTargetKind::Outbound => (
                "network.outbound",
                Severity::Medium,
                "Outbound internet connections are possible",
                "route the agent's traffic through an allow-listing proxy, or give it no network",
            ),
            NetTargetKind::Gateway => (
                "network.gateway",
                if open {
                    Severity::Medium
                } else {
                    Severity::Low
                },
                "A private-network gateway answers",
                "isolate the agent from the local network (own network namespace, no route to private ranges)",
            ),
            NetTargetKind::Dns => continue,
        };
        out.push(Finding::new(
            id,
            Category::Network,
            sev,
            addr.to_string(),
            title,
            format!("{addr}: {how}"),
            fix,
        ));
    }
    for (name, r) in dns_res {
        if r == Some(true) {
            answered += 1;
            out.push(Finding::new(
                "network.dns",
                Category::Network,
                Severity::Medium,
                name.clone(),
                "DNS lookups of arbitrary names succeed",
                format!("a resolver answered for {name}: data can leave through DNS queries"),
                "give the agent a resolver that answers only allow-listed names",
            ));
        }
    }
    if ctx.opts.net_targets.targets().is_empty() {
        out.push(Finding::new(
            "network.not_checked",
            Category::Network,
            Severity::Info,
            "net-targets",
            "Non-loopback network checks were skipped",
            "net targets were `none`: no connection or lookup beyond loopback was made",
            "run with the built-in targets (the default) to check metadata, outbound and DNS reachability",
        ));
    } else if answered == 0 {
        out.push(Finding::new(
            "network.egress_blocked",
            Category::Network,
            Severity::Info,
            "net-targets",
            "No non-loopback target answered",
            format!("{tried} target(s) tried, none reachable"),
            "nothing to do",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_parsing() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_default_gateways(t),
                vec![Ipv4Addr::new(192, 168, 0, 1)]
            );
        }
        assert!(parse_default_gateways("Iface\n").is_empty());
    }
}
