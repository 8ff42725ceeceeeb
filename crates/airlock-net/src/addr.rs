//! Always-blocked address ranges.
//!
//! Whatever the preset and whatever the allow rules, the gate never connects
//! to these destinations (only an explicit [`crate::policy::HostExposure`]
//! reaches a host loopback service, through the name
//! `host.airlock.internal`). The check runs on the *resolved* address at
//! connect time, so DNS rebinding cannot get around it, and it looks through
//! every IPv6 form that embeds an IPv4 address (v4-mapped, v4-translated,
//! NAT64, 6to4, Teredo) so `::ffff:127.0.0.1` or `64:ff9b::a00:5` are refused
//! like `127.0.0.1` and `10.0.0.5`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is always blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The blocked range, e.g. `169.254.0.0/16`.
    pub range: &'static str,
    /// What the range is, e.g. `link-local / cloud metadata`.
    pub what: &'static str,
    /// When the address was an IPv6 form embedding an IPv4 address: the form
    /// and the embedded address, e.g. `v4-mapped 127.0.0.1`.
    pub via: Option<String>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.range)?;
        if let Some(via) = &self.via {
            write!(f, " (via {via})")?;
        }
        Ok(())
    }
}

/// (network, prefix length, range text, description)
const V4_BLOCKED: &[(u32, u8, &str, &str)] = &[
    (0x0000_0000, 8, "0.0.0.0/8", "unspecified / this network"),
    (0x0a00_0000, 8, "10.0.0.0/8", "private (RFC 1918)"),
    (
        0x6440_0000,
        10,
        "100.64.0.0/10",
        "carrier-grade NAT (RFC 6598)",
    ),
    (0x7f00_0000, 8, "127.0.0.0/8", "loopback"),
    (
        0xa9fe_0000,
        16,
        "169.254.0.0/16",
        "link-local / cloud metadata",
    ),
    (0xac10_0000, 12, "172.16.0.0/12", "private (RFC 1918)"),
    (
        0xc000_0000,
        24,
        "192.0.0.0/24",
        "IETF protocol assignments (incl. 192.0.0.192 metadata)",
    ),
    (0xc058_6300, 24, "192.88.99.0/24", "6to4 relay anycast"),
    (0xc0a8_0000, 16, "192.168.0.0/16", "private (RFC 1918)"),
    (0xc612_0000, 15, "198.18.0.0/15", "benchmarking (RFC 2544)"),
    (
        0xa83f_8110,
        32,
        "168.63.129.16/32",
        "cloud platform endpoint (Azure WireServer)",
    ),
    (0xe000_0000, 4, "224.0.0.0/4", "multicast"),
    (0xffff_ffff, 32, "255.255.255.255/32", "broadcast"),
    (0xf000_0000, 4, "240.0.0.0/4", "reserved"),
];

/// (network, prefix length, range text, description)
const V6_BLOCKED: &[(u128, u8, &str, &str)] = &[
    (0, 128, "::/128", "unspecified"),
    (1, 128, "::1/128", "loopback"),
    (
        0x0064_ff9b_0001 << 80,
        48,
        "64:ff9b:1::/48",
        "local-use NAT64",
    ),
    (0, 96, "::/96", "IPv4-compatible (deprecated)"),
    (0x0100 << 112, 64, "100::/64", "discard-only"),
    (0xfc00 << 112, 7, "fc00::/7", "unique local (ULA)"),
    (0xfe80 << 112, 10, "fe80::/10", "link-local"),
    (0xfec0 << 112, 10, "fec0::/10", "site-local (deprecated)"),
    (0xff00 << 112, 8, "ff00::/8", "multicast"),
];

fn in_v4(ip: u32, net: u32, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == net & mask
}

fn in_v6(ip: u128, net: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    ip & mask == net & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    let v = u32::from(ip);
    V4_BLOCKED
        .iter()
        .find(|(net, len, _, _)| in_v4(v, *net, *len))
        .map(|(_, _, range, what)| Blocked {
            range,
            what,
            via: None,
        })
}

/// The IPv4 addresses embedded in an IPv6 address, with the name of the form.
///
/// Covers v4-mapped (`::ffff:a.b.c.d`), v4-translated (`::ffff:0:a.b.c.d`),
/// NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`) and Teredo (`2001::/32`, both
/// the server and the obfuscated client address).
pub fn embedded_v4(ip: Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let v = u128::from(ip);
    let low32 = Ipv4Addr::from(v as u32);
    let mut out = Vec::new();
    if in_v6(v, 0xffff << 32, 96) {
        out.push(("v4-mapped", low32));
    } else if in_v6(v, 0xffff << 48, 96) {
        out.push(("v4-translated", low32));
    } else if in_v6(v, 0x0064_ff9b << 96, 96) {
        out.push(("NAT64", low32));
    } else if in_v6(v, 0x2002 << 112, 16) {
        out.push(("6to4", Ipv4Addr::from((v >> 80) as u32)));
    } else if in_v6(v, 0x2001_0000 << 96, 32) {
        out.push(("Teredo server", Ipv4Addr::from((v >> 64) as u32)));
        out.push(("Teredo client", Ipv4Addr::from(!(v as u32))));
    }
    out
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    for (form, v4) in embedded_v4(ip) {
        if let Some(mut b) = classify_v4(v4) {
            b.via = Some(format!("{form} {v4}"));
            return Some(b);
        }
    }
    let v = u128::from(ip);
    V6_BLOCKED
        .iter()
        .find(|(net, len, _, _)| in_v6(v, *net, *len))
        .map(|(_, _, range, what)| Blocked {
            range,
            what,
            via: None,
        })
}

/// Classifies an address: `Some` when it is in an always-blocked range.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The address itself plus every IPv4 address it embeds: deny rules and the
/// host-address check match against all of them, so a deny of `203.0.113.5`
/// also refuses `::ffff:203.0.113.5` and `64:ff9b::cb00:7105`.
pub fn equivalents(ip: IpAddr) -> Vec<IpAddr> {
    let mut out = vec![ip];
    if let IpAddr::V6(v6) = ip {
        out.extend(embedded_v4(v6).into_iter().map(|(_, v4)| IpAddr::V4(v4)));
    }
    out
}

/// The canonical form used for allow-rule matching: a v4-mapped address is
/// its IPv4 address, everything else is itself.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(s: &str) -> bool {
        classify(s.parse().unwrap()).is_some()
    }

    #[test]
    fn v4_ranges() {
        for a in [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.5",
            "10.200.0.5",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "100.100.100.200",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "192.0.0.192",
            "168.63.129.16",
        ] {
            assert!(blocked(a), "{a} must be blocked");
        }
        for a in [
            "203.0.113.10",
            "198.51.100.7",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "11.0.0.1",
            "169.255.0.1",
        ] {
            assert!(!blocked(a), "{a} must not be blocked");
        }
    }

    #[test]
    fn v6_ranges_and_embedded_forms() {
        for a in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.5",
            "::ffff:0:10.0.0.5",
            "64:ff9b::a00:5",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo client 10.0.0.1
            "2001:0:7f00:1::1",                     // Teredo server 127.0.0.1
            "::127.0.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "fec0::1",
            "100::1",
        ] {
            assert!(blocked(a), "{a} must be blocked");
        }
        for a in [
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:203.0.113.10",
            "64:ff9b::cb00:710a",
        ] {
            assert!(!blocked(a), "{a} must not be blocked");
        }
    }

    #[test]
    fn display_names_the_form() {
        let b = classify("::ffff:127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            b.to_string(),
            "loopback 127.0.0.0/8 (via v4-mapped 127.0.0.1)"
        );
    }

    #[test]
    fn equivalents_include_embedded() {
        let e = equivalents("64:ff9b::cb00:710a".parse().unwrap());
        assert!(e.contains(&"203.0.113.10".parse().unwrap()));
    }
}
