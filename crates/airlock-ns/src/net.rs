//! Where a sandbox's network policy comes from, and where its decisions go.
//!
//! Sources, merged by `airlock_net::Policy::from_sources`: the flags given at creation (kept in
//! the spec), rules added later with `airlock policy allow|deny --sandbox` (a per-sandbox file,
//! re-read while the sandbox runs), the user's `~/.config/airlock/config.toml`, and the project's
//! `airlock.toml` (which can only narrow unless the user trusted its exact content).

use std::path::{Path, PathBuf};

use airlock_core::spec::SandboxSpec;
use airlock_core::store::Store;
use airlock_net::{
    HostExposure, NetworkConfig, Policy, PolicySources, Preset, ProjectConfig, Rule, TrustStore,
};

use crate::error::{NsError, Result};

#[derive(Debug, Clone)]
pub struct NetPaths {
    /// Rules added to this sandbox at run time.
    pub sandbox_rules: PathBuf,
    /// The decision log (JSON lines).
    pub log: PathBuf,
    /// The user's config file.
    pub user_config: Option<PathBuf>,
    /// The project's policy file.
    pub project: PathBuf,
    /// Contents of project files the user trusted.
    pub trust: PathBuf,
}

/// `$XDG_CONFIG_HOME/airlock/config.toml`, else `~/.config/airlock/config.toml`.
pub fn user_config_path() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (env("XDG_CONFIG_HOME"), env("HOME")) {
        (Some(x), _) if x.is_absolute() => Some(x.join("airlock/config.toml")),
        (_, Some(h)) if h.is_absolute() => Some(h.join(".config/airlock/config.toml")),
        _ => None,
    }
}

pub fn trust_store_path(store: &Store) -> PathBuf {
    store.paths.data.join("trusted-projects.toml")
}

pub fn paths(store: &Store, spec: &SandboxSpec) -> NetPaths {
    let dir = store.paths.sandbox_dir(&spec.name);
    NetPaths {
        sandbox_rules: dir.join("network.toml"),
        log: dir.join("network.log"),
        user_config: user_config_path(),
        project: spec.workspace.join("airlock.toml"),
        trust: trust_store_path(store),
    }
}

fn policy_err(e: impl std::fmt::Display) -> NsError {
    NsError::Setup(format!("network policy: {e}"))
}

/// The creation flags of a sandbox as a policy source.
pub fn flags_of(spec: &SandboxSpec) -> Result<NetworkConfig> {
    let parse = |rules: &[String]| -> Result<Vec<Rule>> {
        rules
            .iter()
            .map(|r| {
                r.parse::<Rule>()
                    .map_err(|e| policy_err(format!("{r:?}: {e}")))
            })
            .collect()
    };
    Ok(NetworkConfig {
        preset: spec
            .network
            .preset
            .as_deref()
            .map(|p| p.parse::<Preset>().map_err(policy_err))
            .transpose()?,
        allow: parse(&spec.network.allow)?,
        deny: parse(&spec.network.deny)?,
    })
}

/// Assemble the sandbox's current policy from every source.
pub fn build_policy(spec: &SandboxSpec, paths: &NetPaths) -> Result<Policy> {
    let sources = PolicySources {
        flags: flags_of(spec)?,
        sandbox: NetworkConfig::load(&paths.sandbox_rules)
            .map_err(policy_err)?
            .unwrap_or_default(),
        user: match &paths.user_config {
            Some(p) => NetworkConfig::load(p).map_err(policy_err)?,
            None => None,
        },
        project: ProjectConfig::load(
            &paths.project,
            &TrustStore::load(&paths.trust).map_err(policy_err)?,
        )
        .map_err(policy_err)?,
        exposures: spec
            .network
            .host_ports
            .iter()
            .map(|&port| HostExposure { port })
            .collect(),
        host_addrs: airlock_net::policy::host_addresses(),
    };
    Ok(Policy::from_sources(&sources))
}

/// Modification time of the files a policy is built from, to notice changes.
pub fn sources_stamp(paths: &NetPaths) -> Vec<Option<std::time::SystemTime>> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut v = vec![m(&paths.sandbox_rules), m(&paths.project), m(&paths.trust)];
    v.push(paths.user_config.as_deref().and_then(m));
    v
}

// ------------------------------------------------------------------ wiring into a sandbox

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use airlock_net::{
    DecisionLog, DnsConfig, GateConfig, NetListeners, NetService, StackHandle, TunConfig,
};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The gate's proxy endpoint inside every sandbox (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`).
pub const PROXY_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3128);
/// The sandbox's resolver (`nameserver` in its /etc/resolv.conf).
pub const DNS_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 53);

pub fn proxy_url() -> String {
    format!("http://{PROXY_ADDR}")
}

pub fn resolv_conf() -> String {
    format!(
        "# Airlock: names resolve only through the sandbox's policy resolver\nnameserver {}\noptions edns0 trust-ad\n",
        DNS_ADDR.ip()
    )
}

/// Sockets created inside the sandbox's network namespace during setup and served from the host
/// side: the proxy endpoint, the resolver, and (where /dev/net/tun is usable) a TUN device
/// capturing every other connection.
pub struct InsideSockets {
    pub proxy: OwnedFd,
    pub dns_udp: OwnedFd,
    pub dns_tcp: OwnedFd,
    pub tun: Option<OwnedFd>,
    /// Why there is no TUN device, if there is none.
    pub tun_error: Option<String>,
    /// The kernel capture endpoints, IPv4 then IPv6 where the kernel has it (TCP is redirected
    /// there by nf_tables rules, [`airlock_net::capture`]).
    pub capture: Vec<OwnedFd>,
    /// Why TCP is not captured in the kernel, if it is not (it then goes through `tun0`, if any).
    pub capture_error: Option<String>,
    /// Why the namespace's TCP keeps the host's congestion control instead of
    /// [`airlock_net::capture::LOCAL_CONGESTION_CONTROL`], if it does (only speed depends on it).
    pub pacing_error: Option<String>,
}

const MSG_NET: u8 = b'N';
const HAS_TUN: u8 = 1;
const HAS_CAPTURE: u8 = 2;
const HAS_CAPTURE_V6: u8 = 4;

/// The kernel capture endpoints and their redirect rules (in the sandbox's network namespace,
/// with `CAP_NET_ADMIN` there): IPv4, then IPv6 unless the kernel has none. With a TUN device the
/// rules take what is routed to it; without one, every destination is routed to loopback and the
/// rules take what is not for loopback. An error says why TCP is not captured in the kernel.
///
/// No failure may leave a rule redirecting to an endpoint nobody serves: each step that can fail
/// comes before the rules of its IP version are installed (one atomic batch), and once the IPv4
/// endpoint is in place a failure for IPv6 only leaves IPv6 to `tun0` (or without one, with no
/// route).
fn kernel_capture(tun: Option<&str>) -> std::result::Result<Vec<OwnedFd>, String> {
    let scope = match tun {
        Some(t) => airlock_net::RedirectScope::Interface(t),
        None => airlock_net::RedirectScope::NotLoopback,
    };
    let install = |to: SocketAddr| -> std::result::Result<OwnedFd, String> {
        let listener =
            TcpListener::bind(to).map_err(|e| format!("binding the capture endpoint {to}: {e}"))?;
        if tun.is_none() {
            airlock_net::route_to_loopback(to.is_ipv6()).map_err(|e| e.to_string())?;
        }
        airlock_net::install_redirect(scope, to).map_err(|e| e.to_string())?;
        Ok(OwnedFd::from(listener))
    };
    // Every TCP connection is tracked from here on: forget closed ones quickly.
    airlock_net::shorten_tcp_tracking().map_err(|e| e.to_string())?;
    let v4 = install(airlock_net::CAPTURE_ADDR.into())?;
    match install(airlock_net::CAPTURE_ADDR_V6.into()) {
        Ok(v6) => Ok(vec![v4, v6]),
        Err(_) => Ok(vec![v4]),
    }
}

impl InsideSockets {
    /// Called by the sandbox's init in its new network namespace, before it drops privileges.
    /// With `capture`, TCP is captured in the kernel ([`kernel_capture`]) and the rest through
    /// `tun0` where /dev/net/tun is usable. Without it only the proxy endpoint and the resolver
    /// lead out, and any other connection fails at once with "network unreachable".
    pub fn create(capture: bool) -> Result<InsideSockets> {
        // Only speed depends on it (every connection here is a local hop to the gate): where
        // the host does not allow Reno in a namespace, its default stays, and the sandbox's
        // network description says why.
        let pacing_error = airlock_net::use_local_congestion_control()
            .err()
            .map(|e| e.to_string());
        let bind = |what: &str, r: std::io::Result<OwnedFd>| {
            r.map_err(|e| NsError::sys(format!("binding the sandbox's {what}"), e))
        };
        let proxy = bind(
            "proxy endpoint",
            TcpListener::bind(PROXY_ADDR).map(OwnedFd::from),
        )?;
        let dns_udp = bind(
            "resolver (udp)",
            UdpSocket::bind(DNS_ADDR).map(OwnedFd::from),
        )?;
        let dns_tcp = bind(
            "resolver (tcp)",
            TcpListener::bind(DNS_ADDR).map(OwnedFd::from),
        )?;
        let cfg = TunConfig::default();
        let (tun, tun_error) = if !capture {
            (None, Some("nothing is allowed and the sandbox is deleted on exit, so no capture device was needed".to_string()))
        } else {
            match airlock_net::create_tun_in_current_netns(&cfg) {
                Ok(fd) => (Some(fd), None),
                Err(e) => (None, Some(e.to_string())),
            }
        };
        let (capture, capture_error) = if capture {
            let tun_name = tun.as_ref().map(|_| cfg.name.as_str());
            match kernel_capture(tun_name) {
                Ok(fds) => (fds, None),
                Err(e) => (Vec::new(), Some(e)),
            }
        } else {
            (Vec::new(), None)
        };
        Ok(InsideSockets {
            proxy,
            dns_udp,
            dns_tcp,
            tun,
            tun_error,
            capture,
            capture_error,
            pacing_error,
        })
    }

    /// Hand the sockets to the supervisor over the setup channel. The message is `N`, a byte
    /// saying which optional sockets follow the three fixed ones (bit 0 the TUN device, bit 1 the
    /// IPv4 capture endpoint, bit 2 the IPv6 one), then the TUN error, a NUL, the capture
    /// error, a NUL, and the pacing error.
    pub fn send(&self, sock: RawFd) -> Result<()> {
        let mut fds = vec![
            self.proxy.as_raw_fd(),
            self.dns_udp.as_raw_fd(),
            self.dns_tcp.as_raw_fd(),
        ];
        let mut present = 0u8;
        if let Some(t) = &self.tun {
            fds.push(t.as_raw_fd());
            present |= HAS_TUN;
        }
        for (c, bit) in self.capture.iter().zip([HAS_CAPTURE, HAS_CAPTURE_V6]) {
            fds.push(c.as_raw_fd());
            present |= bit;
        }
        let mut msg = vec![MSG_NET, present];
        msg.extend_from_slice(self.tun_error.as_deref().unwrap_or("").as_bytes());
        msg.push(0);
        msg.extend_from_slice(self.capture_error.as_deref().unwrap_or("").as_bytes());
        msg.push(0);
        msg.extend_from_slice(self.pacing_error.as_deref().unwrap_or("").as_bytes());
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(sock, &[IoSlice::new(&msg)], &cmsg, MsgFlags::empty(), None)
            .map_err(|e| NsError::sys("handing the network sockets to the supervisor", e.into()))?;
        Ok(())
    }

    /// Receive what [`InsideSockets::send`] sent; `Ok(None)` if the message was something else
    /// (returned as bytes for the caller to interpret).
    pub fn recv(sock: RawFd) -> Result<std::result::Result<InsideSockets, Vec<u8>>> {
        let mut buf = vec![0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 6]);
        // ECONNRESET: the init closed its end with messages of ours unread; the kernel reports
        // that once, before the message still queued for us (what went wrong): read on.
        let msg = loop {
            match recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::ECONNRESET | nix::errno::Errno::EINTR) => continue,
                r => break r,
            }
        }
        .map_err(|e| NsError::sys("receiving from the sandbox's init", e.into()))?;
        let n = msg.bytes;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| NsError::sys("receiving from the sandbox's init", e.into()))?
        {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these fds in our table; we own them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let bytes = buf[..n].to_vec();
        let present = bytes.get(1).copied().unwrap_or(0);
        let want = 3 + [HAS_TUN, HAS_CAPTURE, HAS_CAPTURE_V6]
            .iter()
            .filter(|b| present & **b != 0)
            .count();
        if bytes.first() != Some(&MSG_NET) || bytes.len() < 2 || fds.len() != want {
            return Ok(Err(bytes));
        }
        let mut it = fds.into_iter();
        let mut next = || it.next();
        let (Some(proxy), Some(dns_udp), Some(dns_tcp)) = (next(), next(), next()) else {
            return Ok(Err(bytes));
        };
        let tun = if present & HAS_TUN != 0 { next() } else { None };
        let capture: Vec<OwnedFd> = [HAS_CAPTURE, HAS_CAPTURE_V6]
            .iter()
            .filter(|b| present & **b != 0)
            .filter_map(|_| next())
            .collect();
        let text = String::from_utf8_lossy(&bytes[2..]).into_owned();
        let (tun_error, rest) = text.split_once('\0').unwrap_or((&text, ""));
        let (capture_error, pacing_error) = rest.split_once('\0').unwrap_or((rest, ""));
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Ok(InsideSockets {
            proxy,
            dns_udp,
            dns_tcp,
            tun,
            tun_error: some(tun_error),
            capture,
            capture_error: some(capture_error),
            pacing_error: some(pacing_error),
        }))
    }
}

/// The resolver the gate asks: `AIRLOCK_UPSTREAM_DNS` (ip:port), else the host's first
/// nameserver, else 127.0.0.53:53.
pub fn upstream_dns() -> SocketAddr {
    if let Some(a) = std::env::var("AIRLOCK_UPSTREAM_DNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return a;
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .find_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .unwrap_or_else(|| SocketAddr::from(DNS_ADDR))
}

/// A running sandbox's network service: gate, resolver, transparent capture, policy watcher.
/// Credential injection for a sandbox: its per-sandbox CA, made before the sandbox starts so the
/// CA is in the sandbox's trust bundle from its first instruction.
pub struct Credentials {
    pub injection: airlock_net::Injection,
    /// Services whose secret was found, and those without one (the agent only has a placeholder).
    pub missing: Vec<String>,
}

/// The system trust bundle inside sandboxes that use credential injection.
pub const TRUST_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Credentials {
    /// Gather the secrets of `spec`'s credentials (the keyring, else the file, else our
    /// environment) and make the sandbox's CA. `None` when the sandbox has no credentials.
    pub fn prepare(store: &Store, spec: &SandboxSpec) -> Result<Option<Credentials>> {
        if spec.credentials.is_empty() {
            return Ok(None);
        }
        let secrets = airlock_core::secrets::SecretStore::load(&store.paths.data)?;
        let mut creds = Vec::new();
        let mut missing = Vec::new();
        for c in &spec.credentials {
            let Some((secret, _)) = secrets.lookup(&c.service)? else {
                missing.push(c.service.clone());
                continue;
            };
            let hosts: Vec<&str> = c.hosts.iter().map(String::as_str).collect();
            let mut cred =
                airlock_net::Credential::new(&c.service, &hosts, &c.header, &c.format, secret);
            cred.placeholder = c.placeholder.clone();
            creds.push(cred);
        }
        let hosts: Vec<String> = creds.iter().flat_map(|c| c.hosts.clone()).collect();
        let injector = Arc::new(airlock_net::Injector::new(creds).map_err(policy_err)?);
        let ca = Arc::new(
            airlock_net::SandboxCa::generate_for_hosts(&spec.name, &hosts).map_err(policy_err)?,
        );
        let mut injection = airlock_net::Injection::new(injector, ca);
        // Extra trust anchors for upstreams (a corporate CA, a test upstream), from the user's
        // own environment: never from the sandbox.
        if let Some(path) = std::env::var_os("AIRLOCK_UPSTREAM_CA_FILE") {
            let pem = std::fs::read(&path).map_err(|e| NsError::path(PathBuf::from(&path), e))?;
            injection.extra_roots = rustls_pemfile_certs(&pem);
        }
        Ok(Some(Credentials { injection, missing }))
    }

    /// The host's trust bundle plus the sandbox's CA, for the sandbox's /etc/ssl/certs.
    pub fn trust_bundle(&self) -> String {
        let mut b = std::fs::read_to_string(TRUST_BUNDLE).unwrap_or_default();
        if !b.ends_with('\n') && !b.is_empty() {
            b.push('\n');
        }
        b.push_str(self.injection.ca.cert_pem());
        b
    }
}

/// PEM certificates (`-----BEGIN CERTIFICATE-----` blocks) as DER.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok())
        .collect()
}

pub struct SandboxNet {
    service: Option<NetService>,
    _stack: Option<StackHandle>,
    /// How the network is wired, for `inspect`.
    pub description: String,
    /// Published ports (`-p`), served while the sandbox runs.
    pub publisher: Option<crate::ports::Publisher>,
}

impl SandboxNet {
    /// `policy`: the sandbox's policy if it was just built (see [`needs_capture`]).
    pub fn start(
        store: &Store,
        spec: &SandboxSpec,
        sockets: InsideSockets,
        credentials: Option<Credentials>,
        policy: Option<Policy>,
    ) -> Result<SandboxNet> {
        let paths = paths(store, spec);
        let policy = match policy {
            Some(p) => p,
            None => build_policy(spec, &paths)?,
        };
        let log = DecisionLog::open(&paths.log, &spec.name).map_err(policy_err)?;
        let upstream = upstream_dns();
        let mut gate_cfg = GateConfig::new(&spec.name, upstream);
        let injecting = credentials
            .as_ref()
            .map(|c| (c.injection.injector.credentials().len(), c.missing.clone()));
        gate_cfg.injection = credentials.map(|c| c.injection);
        let dns_cfg = DnsConfig::new(upstream);
        let kernel_capture = match sockets.capture.len() {
            0 => None,
            1 => Some("TCP over IPv4"),
            _ => Some("TCP"),
        };
        let listeners = NetListeners {
            proxy: Some(TcpListener::from(sockets.proxy)),
            proxy_unix: None,
            dns_udp: Some(UdpSocket::from(sockets.dns_udp)),
            dns_tcp: Some(TcpListener::from(sockets.dns_tcp)),
            capture: {
                let resolver = SocketAddr::new(TunConfig::default().dns_v4.into(), 53);
                (sockets.capture.into_iter())
                    .map(|c| (TcpListener::from(c), resolver))
                    .collect()
            },
        };
        let handle = airlock_net::PolicyHandle::new(policy);
        let service = NetService::start(gate_cfg, dns_cfg, handle, log.clone(), listeners)
            .map_err(policy_err)?;
        let (stack, description) = match sockets.tun {
            Some(tun) => {
                let s = airlock_net::spawn_stack(
                    tun,
                    Arc::new(service.gate().clone()),
                    Arc::new(service.dns().clone()),
                    log,
                    &TunConfig::default(),
                    service.runtime(),
                );
                let how = match (&sockets.capture_error, kernel_capture) {
                    (None, Some(what)) => {
                        format!(
                            "{what} redirected in the kernel, the rest through a user-space stack"
                        )
                    }
                    (Some(e), _) => {
                        format!("all through a user-space stack; no kernel redirect: {e}")
                    }
                    (None, None) => "all through a user-space stack".to_string(),
                };
                (
                    Some(s),
                    format!(
                        "policy gate: proxy endpoint, resolver and transparent capture (tun0; {how})"
                    ),
                )
            }
            None if kernel_capture.is_some() => (
                None,
                format!(
                    "policy gate: proxy endpoint, resolver and transparent capture of {} in the kernel; no tun0 ({}), so UDP and ICMP have no way out",
                    kernel_capture.unwrap_or_default(),
                    sockets.tun_error.unwrap_or_default()
                ),
            ),
            None => (
                None,
                format!(
                    "policy gate: proxy endpoint and resolver only; other connections have no route ({}{})",
                    sockets.tun_error.unwrap_or_default(),
                    sockets
                        .capture_error
                        .map(|e| format!("; no kernel capture: {e}"))
                        .unwrap_or_default()
                ),
            ),
        };
        let description = match &sockets.pacing_error {
            Some(e) => format!(
                "{description}; TCP inside keeps the host's congestion control (slower through the gate): {e}"
            ),
            None => description,
        };
        let description = match injecting {
            Some((n, missing)) if missing.is_empty() => {
                format!("{description}; {n} credential(s) injected at the gate")
            }
            Some((n, missing)) => format!(
                "{description}; {n} credential(s) injected at the gate, no secret for {}",
                missing.join(", ")
            ),
            None => description,
        };
        let net = SandboxNet {
            service: Some(service),
            _stack: stack,
            description,
            publisher: None,
        };
        Ok(net)
    }

    /// Re-read the policy sources every `every` and apply changes to the running sandbox.
    /// Runs as a task beside the gate (no thread of its own to start on the start path): it ends
    /// with the gate's runtime. A check is four `stat`s, and a rebuild reads a few small files.
    pub fn watch(&self, spec: SandboxSpec, paths: NetPaths, every: Duration) {
        let Some(service) = &self.service else { return };
        let handle = service.policy().clone();
        service.runtime().spawn(async move {
            let mut stamp = sources_stamp(&paths);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                let now = sources_stamp(&paths);
                if now != stamp {
                    stamp = now;
                    if let Ok(p) = build_policy(&spec, &paths) {
                        handle.reload(p);
                    }
                }
            }
        });
    }

    /// Ask the gate, and the policy watcher beside it, to stop; dropping the network waits for
    /// them.
    pub fn request_stop(&mut self) {
        if let Some(s) = self.service.as_mut() {
            s.request_stop();
        }
    }
}

impl Drop for SandboxNet {
    fn drop(&mut self) {
        if let Some(s) = self.service.take() {
            let _ = s.shutdown();
        }
    }
}

/// Whether a sandbox needs transparent capture (a TUN device): always for sandboxes that persist
/// (their policy can be widened while they run); for `--rm` ones only if their policy allows
/// something. Tearing a TUN device down costs ~15 ms, which a one-shot `run --rm` with nothing
/// allowed need not pay. The policy built to decide is returned for [`SandboxNet::start`] (so the
/// start path reads and parses the policy's sources once).
pub fn needs_capture(store: &Store, spec: &SandboxSpec) -> (bool, Option<Policy>) {
    if !spec.ephemeral {
        return (true, None);
    }
    match build_policy(spec, &paths(store, spec)) {
        Ok(p) => (
            p.preset() != Preset::None || !p.allow_rules().is_empty() || !p.exposures().is_empty(),
            Some(p),
        ),
        Err(_) => (true, None),
    }
}
