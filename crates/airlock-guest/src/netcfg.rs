//! Network configuration with the classic ioctls on an `AF_INET` socket (no `ip` binary in the
//! initramfs): `lo` up, the Ethernet interface up with its address, and a default route.

use std::ffi::CStr;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys::check;
use crate::{Context, GuestError, Result};

/// An IPv4 address with its prefix length, from "10.0.2.15/24".
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || GuestError::Refused(format!("not an IPv4 address/prefix: {s:?}"));
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// The interfaces of the caller's network namespace, by index.
pub fn interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ending with a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut entry = list;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            names.push(
                CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// The sandbox's Ethernet interface: the first `eth*` or `en*` one (tunnels such as `sit0` that
/// a kernel may create on its own are not it).
pub fn ethernet_interface() -> Option<String> {
    interfaces()
        .into_iter()
        .find(|n| n.starts_with("eth") || n.starts_with("en"))
}

/// Bring `lo` up; then, when `address` is not empty, the Ethernet interface (waiting up to
/// `wait` for it to appear) with that address, and a default route via `gateway` (when not
/// empty). Returns the interface's name.
pub fn configure(address: &str, gateway: &str, wait: Duration) -> Result<Option<String>> {
    // SAFETY: socket returns a fresh descriptor or -1.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
            .context(|| "open a socket to configure the network".into())?;
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    bring_up(&sock, "lo").context(|| "bring lo up".into())?;
    if address.is_empty() {
        return Ok(None);
    }
    let (addr, prefix) = parse_cidr(address)?;
    let deadline = Instant::now() + wait;
    let iface = loop {
        if let Some(name) = ethernet_interface() {
            break name;
        }
        if Instant::now() >= deadline {
            return Err(GuestError::Refused(format!(
                "no Ethernet interface appeared (interfaces: {})",
                interfaces().join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    set_address(&sock, &iface, libc::SIOCSIFADDR, addr)
        .context(|| format!("set the address {addr} on {iface}"))?;
    set_address(&sock, &iface, libc::SIOCSIFNETMASK, netmask(prefix))
        .context(|| format!("set the netmask /{prefix} on {iface}"))?;
    bring_up(&sock, &iface).context(|| format!("bring {iface} up"))?;
    if !gateway.is_empty() {
        let gw: Ipv4Addr = gateway
            .parse()
            .map_err(|_| GuestError::Refused(format!("not an IPv4 gateway: {gateway:?}")))?;
        add_default_route(&sock, gw).context(|| format!("add a default route via {gw}"))?;
    }
    Ok(Some(iface))
}

fn ifreq_for(name: &str) -> std::io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_of(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); sockaddr is the generic
    // view the ioctls read the sockaddr_in through.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn bring_up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass; ifru_flags is the
    // member these requests use.
    unsafe {
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req))?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req))?;
    }
    Ok(())
}

fn set_address(
    sock: &OwnedFd,
    name: &str,
    request: libc::c_ulong,
    addr: Ipv4Addr,
) -> std::io::Result<()> {
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_of(addr);
    // SAFETY: the request reads the ifreq we pass.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), request, &req) })?;
    Ok(())
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: rtentry is plain data; zero is valid (and means "no device, metric 0").
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_of(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_of(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_of(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads the rtentry we pass.
    match check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &route) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_masks() {
        assert_eq!(
            parse_cidr("10.0.2.15/24").unwrap(),
            (Ipv4Addr::new(10, 0, 2, 15), 24)
        );
        assert_eq!(parse_cidr("10.0.2.15").unwrap().1, 32);
        assert!(parse_cidr("10.0.2.15/33").is_err());
        assert!(parse_cidr("nope/8").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    /// The ioctls for real, in a network namespace of this test's own thread, on a TAP device
    /// that nothing reads (no packet goes anywhere). Needs root and `ip`; skipped otherwise.
    #[test]
    fn configure_sets_address_and_route_in_a_private_namespace() {
        let outcome = std::thread::spawn(|| {
            // SAFETY: unshare moves only this thread into a new network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let made = std::process::Command::new("ip")
                .args(["tuntap", "add", "dev", "eth0", "mode", "tap"])
                .status();
            if !made.is_ok_and(|s| s.success()) {
                return None;
            }
            let iface = configure("10.0.2.15/24", "10.0.2.2", Duration::from_secs(1)).unwrap();
            let show = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            Some((
                iface,
                show(&["-4", "addr", "show"]),
                show(&["-4", "route", "show"]),
            ))
        })
        .join()
        .unwrap();
        let Some((iface, addrs, routes)) = outcome else {
            eprintln!("skipped: needs root and `ip tuntap`");
            return;
        };
        assert_eq!(iface.as_deref(), Some("eth0"));
        assert!(addrs.contains("inet 127.0.0.1/8"), "{addrs}");
        assert!(addrs.contains("inet 10.0.2.15/24"), "{addrs}");
        assert!(routes.contains("default via 10.0.2.2 dev eth0"), "{routes}");
    }
}
