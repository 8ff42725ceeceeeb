//! Non-loopback network targets: the built-in list, `none`, or a file.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ProbeError;

/// What a network target tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetTargetKind {
    /// A cloud metadata endpoint (TCP connect; nothing is sent).
    Metadata,
    /// A public host: is outbound TCP possible?
    Outbound,
    /// A private-range gateway (TCP connect to one address and port).
    Gateway,
    /// A DNS lookup of a name through the system resolver.
    Dns,
}

impl NetTargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetTargetKind::Metadata => "metadata",
            NetTargetKind::Outbound => "outbound",
            NetTargetKind::Gateway => "gateway",
            NetTargetKind::Dns => "dns",
        }
    }
}

/// Where a target points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetAddr {
    /// A literal IP address and port (no DNS lookup is made for TCP targets).
    Socket(SocketAddr),
    /// The gateway(s) of the default IPv4 route (`/proc/net/route`), at this port.
    DefaultGateway(u16),
    /// A name to resolve; `{random}` in it is replaced by a fresh random label.
    Name(String),
}

/// One non-loopback network target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetTarget {
    pub kind: NetTargetKind,
    pub addr: TargetAddr,
}

/// Which non-loopback network targets the probe tries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NetTargets {
    /// No connection or lookup beyond loopback.
    #[default]
    None,
    /// [`NetTargets::builtin_list`].
    BuiltIn,
    /// Exactly these targets (replaces the built-in list).
    List(Vec<NetTarget>),
}

/// The built-in target file, in the same format that `--net-targets FILE` reads.
pub const BUILTIN_TARGETS: &str = "\
# cloud metadata endpoints (AWS/GCP/Azure/OCI, AWS IPv6, Alibaba)
metadata 169.254.169.254:80
metadata [fd00:ec2::254]:80
metadata 100.100.100.200:80
# outbound TCP to public resolvers' HTTPS ports (by IP: no DNS involved)
outbound 1.1.1.1:443
outbound 9.9.9.9:443
# DNS lookup of a never-seen name (would let data leave through DNS)
dns airlock-probe-{random}.example.com
# gateways: the default route's, Docker's bridge host side, slirp's host alias
gateway default:80
gateway default:53
gateway 172.17.0.1:80
gateway 10.0.2.2:80
";

impl NetTargets {
    /// Read a targets file. Format: one target per line, `KIND ADDRESS`; `#` starts a
    /// comment; blank lines are ignored. KIND is `metadata`, `outbound`, `gateway` or
    /// `dns`. For `metadata`/`outbound`/`gateway`, ADDRESS is `IP:PORT` (`[IPv6]:PORT`);
    /// `gateway` also takes `default:PORT` (the default route's gateway). For `dns`,
    /// ADDRESS is a name; `{random}` in it becomes a fresh random label. A file whose only
    /// content is `none` means [`NetTargets::None`]; an empty list is also `None`.
    pub fn from_file(path: &Path) -> Result<Self, ProbeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProbeError::NetTargetsRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Map a `--net-targets` argument: `none`, `builtin`, or a file path.
    pub fn from_arg(arg: &str) -> Result<Self, ProbeError> {
        match arg {
            "none" => Ok(NetTargets::None),
            "builtin" | "default" => Ok(NetTargets::BuiltIn),
            path => Self::from_file(Path::new(path)),
        }
    }

    /// Parse the targets file format (see [`NetTargets::from_file`]); `origin` names
    /// the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ProbeError> {
        let mut list = Vec::new();
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        if lines.len() == 1 && lines[0].1.eq_ignore_ascii_case("none") {
            return Ok(NetTargets::None);
        }
        for (line, l) in lines {
            let err = |message: String| ProbeError::NetTargetsParse {
                path: origin.to_path_buf(),
                line,
                message,
            };
            let mut parts = l.split_whitespace();
            let (Some(kind), Some(addr), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err(format!("expected `KIND ADDRESS`, got `{l}`")));
            };
            let kind = match kind.to_ascii_lowercase().as_str() {
                "metadata" => NetTargetKind::Metadata,
                "outbound" => NetTargetKind::Outbound,
                "gateway" => NetTargetKind::Gateway,
                "dns" => NetTargetKind::Dns,
                other => {
                    return Err(err(format!(
                        "unknown kind `{other}` (use metadata, outbound, gateway or dns)"
                    )));
                }
            };
            let addr = if kind == NetTargetKind::Dns {
                if addr.len() > 253
                    || !addr
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.{}_".contains(c))
                {
                    return Err(err(format!("`{addr}` is not a DNS name")));
                }
                TargetAddr::Name(addr.to_string())
            } else if let Some(port) = addr.strip_prefix("default:") {
                if kind != NetTargetKind::Gateway {
                    return Err(err("`default:PORT` is only valid for `gateway`".into()));
                }
                TargetAddr::DefaultGateway(
                    port.parse()
                        .map_err(|_| err(format!("`{port}` is not a port number")))?,
                )
            } else {
                TargetAddr::Socket(addr.parse().map_err(|_| {
                    err(format!(
                        "`{addr}` is not IP:PORT (host names are not accepted: no hidden DNS lookups)"
                    ))
                })?)
            };
            list.push(NetTarget { kind, addr });
        }
        Ok(if list.is_empty() {
            NetTargets::None
        } else {
            NetTargets::List(list)
        })
    }

    /// The built-in list (see [`BUILTIN_TARGETS`]).
    pub fn builtin_list() -> Vec<NetTarget> {
        match Self::parse(BUILTIN_TARGETS, Path::new("<builtin>")) {
            Ok(NetTargets::List(l)) => l,
            // The constant is checked by a unit test.
            _ => Vec::new(),
        }
    }

    /// The targets to try.
    pub fn targets(&self) -> Vec<NetTarget> {
        match self {
            NetTargets::None => Vec::new(),
            NetTargets::BuiltIn => Self::builtin_list(),
            NetTargets::List(l) => l.clone(),
        }
    }

    /// `none`, `builtin` or `list`.
    pub fn label(&self) -> &'static str {
        match self {
            NetTargets::None => "none",
            NetTargets::BuiltIn => "builtin",
            NetTargets::List(_) => "list",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses() {
        let l = NetTargets::builtin_list();
        assert!(l.len() >= 8);
        assert!(l.iter().any(|t| t.kind == NetTargetKind::Dns));
        assert!(l.iter().any(|t| t.addr == TargetAddr::DefaultGateway(80)));
    }

    #[test]
    fn parse_file_format() {
        let t = NetTargets::parse(
            "# c\nmetadata 169.254.169.254:80\n\noutbound [2001:db8::1]:443 # x\ndns {random}.test\n",
            Path::new("f"),
        )
        .unwrap();
        let NetTargets::List(l) = t else { panic!() };
        assert_eq!(l.len(), 3);
        assert_eq!(
            NetTargets::parse("none\n", Path::new("f")).unwrap(),
            NetTargets::None
        );
        assert_eq!(
            NetTargets::parse("# only\n", Path::new("f")).unwrap(),
            NetTargets::None
        );
        let e = NetTargets::parse("outbound example.com:443", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(NetTargets::parse("metadata default:80", Path::new("f")).is_err());
        assert!(NetTargets::parse("bogus 1.2.3.4:5", Path::new("f")).is_err());
    }

    #[test]
    fn from_arg_keywords() {
        assert_eq!(NetTargets::from_arg("none").unwrap(), NetTargets::None);
        assert_eq!(
            NetTargets::from_arg("builtin").unwrap(),
            NetTargets::BuiltIn
        );
        assert!(NetTargets::from_arg("/nonexistent/targets").is_err());
    }
}
