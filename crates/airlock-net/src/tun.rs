//! The sandbox side of transparent capture: a TUN device in the sandbox's
//! network namespace that carries every packet the sandbox sends.
//!
//! [`create_tun_in_current_netns`] runs in the sandbox's network namespace
//! with `CAP_NET_ADMIN` there (the sandbox's user namespace owns that network
//! namespace, so no host privilege is involved). It creates `tun0`, gives it
//! the sandbox's addresses, brings it and `lo` up and routes every IPv4 and
//! IPv6 destination through it. The returned file descriptor goes to the
//! host side, where [`crate::stack::spawn_stack`] serves it with a user-space
//! TCP/IP stack. There is no other interface, so nothing leaves the namespace
//! except through that stack.
//!
//! # Addresses
//!
//! [`TunConfig::default`] uses addresses that can never shadow a real
//! destination:
//!
//! | what | IPv4 | IPv6 |
//! | --- | --- | --- |
//! | the sandbox (`tun0`) | `100.96.0.2` | `fd61:6972:6c6b::2` |
//! | the gateway (the user-space stack) | `100.96.0.1` | `fd61:6972:6c6b::1` |
//! | the resolver (`/etc/resolv.conf`) | `100.96.0.1` | – |
//!
//! `100.64.0.0/10` (CGNAT) and `fc00::/7` (ULA) are always-blocked
//! destinations ([`crate::addr`]), so the sandbox can never legitimately need
//! to reach anything there, and these addresses exist only inside the
//! sandbox's own namespace: they cannot collide with the host's networks.
//! (`fd61:6972:6c6b::/48` spells "airlk".) The gate also refuses transparent
//! connections to them, except the resolver, which the stack serves itself.
//!
//! # Configuration calls
//!
//! The device is created and configured with ioctls (`TUNSETIFF`,
//! `SIOCGIFINDEX`, `SIOCSIFMTU`, `SIOCSIFFLAGS`). Addresses and routes use
//! rtnetlink: glibc exposes no IPv4 `rtentry` for `SIOCADDRT`, and IPv6
//! duplicate address detection can only be disabled per address through
//! netlink (`IFA_F_NODAD`). The netlink client is [`crate::netlink`] (four
//! fixed messages; why it is hand-rolled is said there).

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netlink::{self, NLM_F_CREATE, NLM_F_EXCL, Netlink, push_attr};

/// Errors of the TUN setup.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// A system call failed.
    #[error("tun: cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The configuration is unusable.
    #[error("tun: invalid configuration: {0}")]
    Config(String),
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> TunError {
    let action = action.into();
    move |source| TunError::Io { action, source }
}

/// Addresses and settings of the sandbox's TUN device (see the module
/// documentation for the defaults and why they are safe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// The interface name inside the sandbox.
    pub name: String,
    /// The sandbox's own IPv4 address (on `tun0`, `/32`).
    pub sandbox_v4: Ipv4Addr,
    /// The user-space stack's IPv4 address.
    pub gateway_v4: Ipv4Addr,
    /// The sandbox's own IPv6 address (on `tun0`, `/128`, no DAD).
    pub sandbox_v6: Ipv6Addr,
    /// The user-space stack's IPv6 address.
    pub gateway_v6: Ipv6Addr,
    /// The resolver address (`nameserver` in the sandbox's
    /// `/etc/resolv.conf`): UDP and TCP port 53 there reach
    /// [`crate::dns::DnsServer`].
    pub dns_v4: Ipv4Addr,
    /// The MTU of `tun0`. Large (65520, like slirp4netns) by default: the
    /// sandbox's kernel then sends large TCP segments and the stack handles
    /// fewer packets.
    pub mtu: u32,
}

impl Default for TunConfig {
    /// `tun0`, sandbox `100.96.0.2` / `fd61:6972:6c6b::2`, gateway and
    /// resolver `100.96.0.1` / `fd61:6972:6c6b::1`, MTU 65520.
    fn default() -> TunConfig {
        TunConfig {
            name: "tun0".to_string(),
            sandbox_v4: Ipv4Addr::new(100, 96, 0, 2),
            gateway_v4: Ipv4Addr::new(100, 96, 0, 1),
            sandbox_v6: Ipv6Addr::new(0xfd61, 0x6972, 0x6c6b, 0, 0, 0, 0, 2),
            gateway_v6: Ipv6Addr::new(0xfd61, 0x6972, 0x6c6b, 0, 0, 0, 0, 1),
            dns_v4: Ipv4Addr::new(100, 96, 0, 1),
            mtu: 65520,
        }
    }
}

impl TunConfig {
    /// Checks the addresses and the MTU.
    pub fn validate(&self) -> Result<(), TunError> {
        let bad = |m: String| Err(TunError::Config(m));
        if self.name.is_empty() || self.name.len() >= libc::IFNAMSIZ || self.name.contains('\0') {
            return bad(format!("bad interface name {:?}", self.name));
        }
        if !(1280..=65535).contains(&self.mtu) {
            return bad(format!("MTU {} is outside 1280..=65535", self.mtu));
        }
        if self.sandbox_v4 == self.gateway_v4 || self.sandbox_v6 == self.gateway_v6 {
            return bad("the sandbox and the gateway need different addresses".into());
        }
        if self.dns_v4 == self.sandbox_v4 {
            return bad("the resolver cannot be the sandbox's own address".into());
        }
        let v4 = [self.sandbox_v4, self.gateway_v4, self.dns_v4];
        if v4
            .iter()
            .any(|a| a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        {
            return bad("IPv4 addresses must be unicast and not loopback".into());
        }
        let v6 = [self.sandbox_v6, self.gateway_v6];
        if v6
            .iter()
            .any(|a| a.is_unspecified() || a.is_multicast() || a.is_loopback())
        {
            return bad("IPv6 addresses must be unicast and not loopback".into());
        }
        Ok(())
    }

    /// The `/etc/resolv.conf` the sandbox should see.
    pub fn resolv_conf(&self) -> String {
        format!(
            "# Airlock: every lookup goes through the sandbox's policy resolver\nnameserver {}\noptions edns0 trust-ad\n",
            self.dns_v4
        )
    }
}

/// Creates and configures the TUN device in the calling thread's network
/// namespace: `tun0` (non-persistent: it disappears with the returned fd),
/// its MTU, its addresses, `lo` and `tun0` up, and default routes for IPv4
/// and IPv6 through it. Needs `CAP_NET_ADMIN` in the user namespace that owns
/// that network namespace, and access to `/dev/net/tun`.
///
/// IPv6 is skipped when the kernel has no IPv6 (`EAFNOSUPPORT`): the sandbox
/// then has no IPv6 at all, which is no bypass.
pub fn create_tun_in_current_netns(cfg: &TunConfig) -> Result<OwnedFd, TunError> {
    cfg.validate()?;
    let tun = open_tun(&cfg.name)?;
    let ctl = control_socket()?;
    let index = if_index(&ctl, &cfg.name)?;
    set_mtu(&ctl, &cfg.name, cfg.mtu)?;
    set_up(&ctl, "lo")?;
    set_up(&ctl, &cfg.name)?;

    let mut nl = Netlink::open(libc::NETLINK_ROUTE).map_err(io_err("open a netlink socket"))?;
    add_addr(&mut nl, index, IpAddr::V4(cfg.sandbox_v4), 32)
        .map_err(io_err(format!("add {}/32 to {}", cfg.sandbox_v4, cfg.name)))?;
    add_default_route(&mut nl, index, false).map_err(io_err(format!(
        "add the IPv4 default route via {}",
        cfg.name
    )))?;
    match add_addr(&mut nl, index, IpAddr::V6(cfg.sandbox_v6), 128) {
        Ok(()) => add_default_route(&mut nl, index, true).map_err(io_err(format!(
            "add the IPv6 default route via {}",
            cfg.name
        )))?,
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
        Err(e) => {
            return Err(io_err(format!(
                "add {}/128 to {}",
                cfg.sandbox_v6, cfg.name
            ))(e));
        }
    }
    Ok(tun)
}

fn open_tun(name: &str) -> Result<OwnedFd, TunError> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a valid NUL-terminated string; `open` has no other
    // preconditions. The result is checked before use.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("open /dev/net/tun")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by `open` and is owned by nobody else.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is,
    // and `tun` is an open /dev/net/tun descriptor.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(io_err(format!("create TUN device {name}"))(
            io::Error::last_os_error(),
        ));
    }
    // The kernel may have adjusted the name (it does not for a plain name),
    // but it must be the one we asked for, or the routes would miss it.
    // SAFETY: `ifr_name` is NUL-terminated: the kernel writes at most
    // IFNAMSIZ-1 bytes plus NUL, and `ifreq` zeroed the rest.
    let got = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) };
    if got.to_bytes() != name.as_bytes() {
        return Err(TunError::Config(format!(
            "the kernel named the device {got:?}, not {name}"
        )));
    }
    // Persistent: closing the descriptor then leaves the device to the namespace, whose teardown
    // deletes it with everything else in a kernel worker, instead of unregistering it in the
    // closing process (a synchronous wait for RCU grace periods: 13-29 ms measured, on the path
    // of every network sandbox's exit). The device exists only in the sandbox's namespace, so
    // it cannot outlive it.
    // SAFETY: TUNSETPERSIST takes an integer argument; `tun` is the open device.
    let r = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETPERSIST as _,
            1 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io_err(format!("make TUN device {name} persistent"))(
            io::Error::last_os_error(),
        ));
    }
    Ok(tun)
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (arrays, integers, a union of such);
    // all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

fn control_socket() -> Result<OwnedFd, TunError> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("open a control socket")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by `socket` and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_ifreq(
    ctl: &OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
    what: String,
) -> Result<(), TunError> {
    // SAFETY: every request passed here (SIOCGIFINDEX, SIOCGIFFLAGS,
    // SIOCSIFFLAGS, SIOCSIFMTU) takes a `struct ifreq`, which `req` points to.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if r < 0 {
        return Err(io_err(what)(io::Error::last_os_error()));
    }
    Ok(())
}

fn if_index(ctl: &OwnedFd, name: &str) -> Result<u32, TunError> {
    let mut req = ifreq(name);
    ioctl_ifreq(
        ctl,
        libc::SIOCGIFINDEX,
        &mut req,
        format!("find the index of {name}"),
    )?;
    // SAFETY: SIOCGIFINDEX filled the `ifru_ifindex` member of the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    u32::try_from(index).map_err(|_| TunError::Config(format!("bad index {index} of {name}")))
}

fn set_mtu(ctl: &OwnedFd, name: &str, mtu: u32) -> Result<(), TunError> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl_ifreq(
        ctl,
        libc::SIOCSIFMTU,
        &mut req,
        format!("set the MTU of {name} to {mtu}"),
    )
}

fn set_up(ctl: &OwnedFd, name: &str) -> Result<(), TunError> {
    let mut req = ifreq(name);
    ioctl_ifreq(
        ctl,
        libc::SIOCGIFFLAGS,
        &mut req,
        format!("read the flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl_ifreq(
        ctl,
        libc::SIOCSIFFLAGS,
        &mut req,
        format!("bring {name} up"),
    )
}

// ------------------------------------------------------------- netlink

// Kernel uapi values (linux/rtnetlink.h, linux/if_addr.h).
const RTM_NEWADDR: u16 = 20;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_PERMANENT: u8 = 0x80;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// Adds `addr/prefix` to interface `index` (no duplicate address detection).
fn add_addr(nl: &mut Netlink, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
    let (family, bytes, flags) = match addr {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec(), 0),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec(), IFA_F_NODAD),
    };
    // struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index }
    let mut body = vec![family as u8, prefix, IFA_F_PERMANENT, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&index.to_ne_bytes());
    push_attr(&mut body, IFA_LOCAL, &bytes);
    push_attr(&mut body, IFA_ADDRESS, &bytes);
    if flags != 0 {
        push_attr(&mut body, IFA_FLAGS, &flags.to_ne_bytes());
    }
    nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
}

/// Routes every destination of one family through interface `index`.
fn add_default_route(nl: &mut Netlink, index: u32, v6: bool) -> io::Result<()> {
    if v6 {
        netlink::add_default_route(nl, libc::AF_INET6, RT_SCOPE_UNIVERSE, RTN_UNICAST, index)
    } else {
        // A device route without a gateway: on-link.
        netlink::add_default_route(nl, libc::AF_INET, RT_SCOPE_LINK, RTN_UNICAST, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_blocked_as_destination() {
        let c = TunConfig::default();
        c.validate().unwrap();
        for a in [
            IpAddr::V4(c.sandbox_v4),
            IpAddr::V4(c.gateway_v4),
            IpAddr::V4(c.dns_v4),
            IpAddr::V6(c.sandbox_v6),
            IpAddr::V6(c.gateway_v6),
        ] {
            assert!(
                crate::addr::classify(a).is_some(),
                "{a} must be always-blocked"
            );
        }
        assert!(c.resolv_conf().contains("nameserver 100.96.0.1"));
        let mut bad = c.clone();
        bad.mtu = 100;
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.name = "x".repeat(20);
        assert!(bad.validate().is_err());
    }
}
