//! Kernel capture against the real kernel: the nf_tables rules and routes that
//! `airlock_net::capture` installs, in network namespaces made here.
//!
//! Network safety: each test thread moves into a new network namespace whose
//! only interface is its own `lo`; every address in it (the documentation
//! addresses dialed below included) is routed to that loopback, so no packet
//! can leave. Root only (a network namespace owned by the initial user
//! namespace); CI runs the suite as root too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use airlock_net::capture::{
    CAPTURE_ADDR, CAPTURE_ADDR_V6, RedirectScope, TCP_TRACKING_TIMEOUTS, install_redirect,
    original_destination, route_to_loopback, shorten_tcp_tracking,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `f` on a thread of its own in a new network namespace with `lo` up.
fn in_new_netns<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let ok = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip link set lo up");
        f();
    })
    .join()
    .expect("the test thread failed");
}

fn conntrack_count() -> u64 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .expect("nf_conntrack_count")
        .trim()
        .parse()
        .unwrap()
}

/// Connects to `dst` and returns where the capture endpoint `l` says it was going.
fn captured(l: &TcpListener, dst: SocketAddr) -> SocketAddr {
    let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).expect("connect");
    let (mut s, _) = l.accept().expect("accept on the capture endpoint");
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    original_destination(s.as_fd(), dst.is_ipv6()).expect("SO_ORIGINAL_DST")
}

#[test]
fn without_a_tun_device_tcp_to_anywhere_reaches_the_endpoint_with_its_destination() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces owned by the initial user namespace)");
        return;
    }
    let time_wait = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait";
    let host_time_wait = std::fs::read_to_string(time_wait).unwrap();
    in_new_netns(|| {
        let l4 = TcpListener::bind(CAPTURE_ADDR).unwrap();
        let l6 = TcpListener::bind(CAPTURE_ADDR_V6).unwrap();
        for to in [SocketAddr::from(CAPTURE_ADDR), CAPTURE_ADDR_V6.into()] {
            install_redirect(RedirectScope::NotLoopback, to).expect("install the rules");
            route_to_loopback(to.is_ipv6()).expect("route to loopback");
        }
        for dst in ["203.0.113.9:80", "198.51.100.7:5432"] {
            let dst: SocketAddr = dst.parse().unwrap();
            assert_eq!(captured(&l4, dst), dst);
        }
        let dst: SocketAddr = "[2001:db8::9]:443".parse().unwrap();
        assert_eq!(captured(&l6, dst), dst);
        // Straight to the endpoint: the "original" destination is the endpoint itself, which
        // the gate refuses.
        assert_eq!(
            captured(&l4, CAPTURE_ADDR.into()),
            SocketAddr::from(CAPTURE_ADDR)
        );

        // Loopback services are not redirected.
        let own = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(own.local_addr().unwrap()).unwrap();
        own.set_nonblocking(true).unwrap();
        assert!(
            own.accept().is_ok(),
            "a loopback connection reached its own listener"
        );

        // Only the redirected TCP is tracked: UDP to anywhere and loopback TCP add nothing to
        // the namespace's connection-tracking table.
        let before = conntrack_count();
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        for port in 1000..1200u16 {
            let _ = u.send_to(b"x", ("203.0.113.9", port));
        }
        for _ in 0..50 {
            let c = TcpStream::connect(own.local_addr().unwrap()).unwrap();
            drop(c);
        }
        std::thread::sleep(Duration::from_millis(50));
        let after = conntrack_count();
        assert!(
            after <= before + 2,
            "conntrack entries grew from {before} to {after}"
        );

        // Closed connections are forgotten sooner in this namespace (and only here).
        shorten_tcp_tracking().expect("set the namespace's TCP tracking timeouts");
        let (name, secs) = TCP_TRACKING_TIMEOUTS[0];
        let path = format!("/proc/sys/net/netfilter/{name}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            secs.to_string()
        );
    });
    assert_eq!(std::fs::read_to_string(time_wait).unwrap(), host_time_wait);
}

#[test]
fn a_refused_batch_is_an_error_naming_it_not_a_hang() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces owned by the initial user namespace)");
        return;
    }
    in_new_netns(|| {
        // This thread only (the raw syscall, not glibc's process-wide wrapper) becomes an
        // unprivileged user: the namespace belongs to the initial user namespace, so it has no
        // CAP_NET_ADMIN over it and the kernel refuses the whole batch.
        // SAFETY: setresuid(2) with integer arguments, on this thread.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0);
        let err = install_redirect(RedirectScope::NotLoopback, CAPTURE_ADDR.into())
            .expect_err("an unprivileged batch must fail");
        let msg = err.to_string();
        assert!(msg.contains("nf_tables batch"), "{msg}");
        assert!(
            msg.contains("Operation not permitted") || msg.contains("permission"),
            "{msg}"
        );
        // (Waiting for acknowledgements the kernel never sends would end in the netlink
        // timeout's error instead, which names no permission.)
    });
}
