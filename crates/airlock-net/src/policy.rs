//! Network policy: rules, presets, sources, trust store and the checks.
//!
//! A connection is allowed when its *name* is allowed (by a rule, a preset or
//! a host exposure) **and** the *address* it resolved to is allowed (not in an
//! always-blocked range, not one of the host's own addresses, not denied by a
//! CIDR rule). Deny rules always win over allow rules and presets.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::addr;

/// The name inside the sandbox under which exposed host ports are reached.
pub const HOST_INTERNAL: &str = "host.airlock.internal";

/// The balanced preset, a reviewed data file (`policy/net/balanced.toml`).
pub const BALANCED_TOML: &str = include_str!("../../../policy/net/balanced.toml");

/// Errors of the policy module.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A rule did not parse.
    #[error(
        "invalid network rule {rule:?}: {why} (expected e.g. example.com, *.example.com, example.com:8443, 203.0.113.0/24, [2001:db8::1]:443)"
    )]
    InvalidRule {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        why: String,
    },
    /// A preset name did not parse.
    #[error("unknown network preset {0:?}: use none, balanced or open")]
    InvalidPreset(String),
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A TOML file did not parse.
    #[error("cannot parse {path}: {message} (fix the file or remove it)")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A rule in a file did not parse.
    #[error("in {path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The rule error.
        #[source]
        source: Box<PolicyError>,
    },
}

type Result<T> = std::result::Result<T, PolicyError>;

// ------------------------------------------------------------------ presets

/// A base policy that allow and deny rules refine.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Nothing is allowed unless a rule allows it (the default).
    #[default]
    None,
    /// Model APIs, package registries and code hosts (`policy/net/balanced.toml`).
    Balanced,
    /// Any public address.
    Open,
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::None => "none",
            Preset::Balanced => "balanced",
            Preset::Open => "open",
        })
    }
}

impl FromStr for Preset {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Preset::None),
            "balanced" => Ok(Preset::Balanced),
            "open" => Ok(Preset::Open),
            _ => Err(PolicyError::InvalidPreset(s.to_string())),
        }
    }
}

// -------------------------------------------------------------------- rules

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Exactly this name (lowercase, no trailing dot).
    Exact(String),
    /// Any subdomain of this name, not the name itself.
    Subdomains(String),
    /// An address or network (a single address is a /32 or /128).
    Net(IpNet),
}

/// One allow or deny rule: a target and an optional port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What the rule matches.
    pub target: Target,
    /// When set, the rule only matches this port.
    pub port: Option<u16>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.target, self.port) {
            (Target::Exact(n), p) => {
                f.write_str(n)?;
                if let Some(p) = p {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
            (Target::Subdomains(n), p) => {
                write!(f, "*.{n}")?;
                if let Some(p) = p {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
            (Target::Net(net), p) => {
                let single = net.prefix_len() == net.max_prefix_len();
                let text = if single {
                    net.addr().to_string()
                } else {
                    net.to_string()
                };
                match (p, net) {
                    (Some(p), IpNet::V6(_)) => write!(f, "[{text}]:{p}"),
                    (Some(p), IpNet::V4(_)) => write!(f, "{text}:{p}"),
                    (None, _) => f.write_str(&text),
                }
            }
        }
    }
}

fn rule_err(rule: &str, why: impl Into<String>) -> PolicyError {
    PolicyError::InvalidRule {
        rule: rule.to_string(),
        why: why.into(),
    }
}

fn parse_port(rule: &str, p: &str) -> Result<u16> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(rule_err(rule, format!("port {p:?} is not 1-65535"))),
        Ok(p) => Ok(p),
    }
}

fn parse_net(rule: &str, s: &str) -> Option<Result<IpNet>> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Ok(IpNet::from(ip)));
    }
    if s.contains('/') {
        return Some(
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|e| rule_err(rule, format!("bad CIDR: {e}"))),
        );
    }
    None
}

/// Normalizes a host name: trims, lowercases, strips one trailing dot and
/// IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h);
    h.to_ascii_lowercase()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(raw: &str) -> Result<Self> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(rule_err(raw, "empty rule"));
        }
        // [v6 or v6/len]:port or [v6]
        if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| rule_err(raw, "missing ']'"))?;
            let net = parse_net(raw, inside)
                .ok_or_else(|| rule_err(raw, "brackets must hold an IPv6 address"))??;
            let port = match after {
                "" => None,
                a => Some(parse_port(
                    raw,
                    a.strip_prefix(':')
                        .ok_or_else(|| rule_err(raw, "expected ':PORT' after ']'"))?,
                )?),
            };
            return Ok(Rule {
                target: Target::Net(net),
                port,
            });
        }
        // Bare IPv6 (address or CIDR), never with a port.
        if s.matches(':').count() >= 2 {
            let net = parse_net(raw, s).ok_or_else(|| {
                rule_err(raw, "not an IPv6 address (write [ADDR]:PORT for a port)")
            })??;
            return Ok(Rule {
                target: Target::Net(net),
                port: None,
            });
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(raw, p)?)),
            None => (s, None),
        };
        if let Some(net) = parse_net(raw, host) {
            return Ok(Rule {
                target: Target::Net(net?),
                port,
            });
        }
        let host = normalize_host(host);
        if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_name(suffix) {
                return Err(rule_err(raw, "bad domain after '*.'"));
            }
            return Ok(Rule {
                target: Target::Subdomains(suffix.to_string()),
                port,
            });
        }
        if host.contains('*') {
            return Err(rule_err(
                raw,
                "'*' is only allowed as a leading '*.' label (e.g. *.example.com)",
            ));
        }
        if !valid_name(&host) {
            return Err(rule_err(raw, "not a valid host name"));
        }
        Ok(Rule {
            target: Target::Exact(host),
            port,
        })
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Rule {
    fn port_matches(&self, port: Option<u16>) -> bool {
        match (self.port, port) {
            (None, _) => true,
            (Some(r), Some(p)) => r == p,
            // Port-agnostic question (DNS): a port-specific rule still says
            // something about the name.
            (Some(_), None) => true,
        }
    }

    /// Does this rule match a (normalized) name? `port: None` asks about any port.
    pub fn matches_name(&self, name: &str, port: Option<u16>) -> bool {
        let hit = match &self.target {
            Target::Exact(n) => n == name,
            Target::Subdomains(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            Target::Net(_) => false,
        };
        hit && self.port_matches(port)
    }

    /// Does this rule match an address? `port: None` asks about any port.
    pub fn matches_ip(&self, ip: IpAddr, port: Option<u16>) -> bool {
        match &self.target {
            Target::Net(net) => net.contains(&ip) && self.port_matches(port),
            _ => false,
        }
    }

    /// A rule that applies whatever the port (a port-agnostic deny blocks DNS too).
    pub fn is_port_agnostic(&self) -> bool {
        self.port.is_none()
    }
}

// ------------------------------------------------------------------ sources

/// Where a rule came from; shown in verdicts and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A command-line flag (`--allow`, `--deny`, `--net`).
    Flag,
    /// Rules added to a sandbox at run time (`airlock policy allow --sandbox`).
    Sandbox,
    /// `~/.config/airlock/config.toml`.
    UserConfig,
    /// A project's `airlock.toml` (untrusted: only its denies apply).
    Project,
    /// A project's `airlock.toml` that the user trusted.
    TrustedProject,
    /// A preset's data.
    Preset(Preset),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Sandbox => f.write_str("sandbox policy"),
            Source::UserConfig => f.write_str("user config"),
            Source::Project => f.write_str("project airlock.toml"),
            Source::TrustedProject => f.write_str("trusted project airlock.toml"),
            Source::Preset(p) => write!(f, "preset {p}"),
        }
    }
}

/// A rule with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedRule {
    /// The rule.
    pub rule: Rule,
    /// Where it came from.
    pub source: Source,
}

/// An explicit exposure of a host loopback service: inside the sandbox
/// `host.airlock.internal:PORT` reaches `127.0.0.1:PORT` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostExposure {
    /// The host loopback port.
    pub port: u16,
}

/// The `[network]` table of the user config or a project `airlock.toml`, and
/// the shape of the network flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `none`, `balanced` or `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Allow rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Rule>,
    /// Deny rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Rule>,
}

impl NetworkConfig {
    /// Parses the `[network]` table of a TOML document (other tables are
    /// ignored). `None` when the document has no `[network]` table.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Option<NetworkConfig>> {
        let table: toml::Table = toml::from_str(text).map_err(|e| PolicyError::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        match table.get("network") {
            None => Ok(None),
            Some(v) => {
                let cfg: NetworkConfig =
                    v.clone()
                        .try_into()
                        .map_err(|e: toml::de::Error| PolicyError::Toml {
                            path: path.to_path_buf(),
                            message: format!("[network]: {e}"),
                        })?;
                Ok(Some(cfg))
            }
        }
    }

    /// Reads the `[network]` table of a file; `Ok(None)` when the file does
    /// not exist or has no such table.
    pub fn load(path: &Path) -> Result<Option<NetworkConfig>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PolicyError::Io {
                action: "cannot read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl NetworkConfig {
    /// Adds an allow rule (no duplicate); true when added.
    pub fn add_allow(&mut self, rule: Rule) -> bool {
        if self.allow.contains(&rule) {
            return false;
        }
        self.allow.push(rule);
        true
    }

    /// Adds a deny rule (no duplicate); true when added.
    pub fn add_deny(&mut self, rule: Rule) -> bool {
        if self.deny.contains(&rule) {
            return false;
        }
        self.deny.push(rule);
        true
    }

    /// Removes a rule from both lists; true when it was there.
    pub fn remove(&mut self, rule: &Rule) -> bool {
        let before = self.allow.len() + self.deny.len();
        self.allow.retain(|r| r != rule);
        self.deny.retain(|r| r != rule);
        before != self.allow.len() + self.deny.len()
    }

    /// Writes this table as the `[network]` table of a file Airlock owns
    /// (e.g. a sandbox's runtime rules), atomically (temporary file and
    /// rename). Not for the user's config file: other tables are not kept.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |action, source| PolicyError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        #[derive(Serialize)]
        struct Doc<'a> {
            network: &'a NetworkConfig,
        }
        let text = toml::to_string(&Doc { network: self })
            .map_err(|e| io("cannot serialize", std::io::Error::other(e)))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| io("cannot write", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", e))
    }
}

/// Parses a destination for `airlock policy check`: `HOST`, `HOST:PORT`,
/// `[V6]:PORT`, a bare IPv6 address; `default_port` when none is given.
pub fn parse_destination(s: &str, default_port: u16) -> Result<(String, u16)> {
    let bad = |why: &str| rule_err(s, why.to_string());
    let t = s.trim();
    if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("brackets must hold an IPv6 address"))?;
        let port = match after {
            "" => default_port,
            a => parse_port(
                s,
                a.strip_prefix(':').ok_or_else(|| bad("expected ':PORT'"))?,
            )?,
        };
        return Ok((h.to_string(), port));
    }
    if t.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((t.to_string(), default_port));
    }
    let (h, port) = match t.rsplit_once(':') {
        Some((h, p)) => (h, parse_port(s, p)?),
        None => (t, default_port),
    };
    let host = normalize_host(h);
    if host.parse::<IpAddr>().is_err() && !valid_name(&host) {
        return Err(bad("not a valid host name"));
    }
    Ok((host, port))
}

/// A project's `airlock.toml` network section and whether it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectConfig {
    /// The file.
    pub path: PathBuf,
    /// Its `[network]` table.
    pub network: NetworkConfig,
    /// Whether the user trusted this exact content (`airlock trust`).
    pub trusted: bool,
}

impl ProjectConfig {
    /// Reads a project file and decides trust from the same bytes that are
    /// parsed (no window between hashing and parsing). `Ok(None)` when the
    /// file does not exist or has no `[network]` table.
    pub fn load(path: &Path, trust: &TrustStore) -> Result<Option<ProjectConfig>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PolicyError::Io {
                    action: "cannot read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let Some(network) = NetworkConfig::from_toml_str(&text, path)? else {
            return Ok(None);
        };
        Ok(Some(ProjectConfig {
            path: path.to_path_buf(),
            network,
            trusted: trust.is_trusted_bytes(&bytes),
        }))
    }
}

/// Everything a sandbox's policy is built from, highest precedence first.
#[derive(Debug, Clone, Default)]
pub struct PolicySources {
    /// `--net`, `--allow`, `--deny`.
    pub flags: NetworkConfig,
    /// Rules added at run time with `airlock policy allow|deny --sandbox`.
    pub sandbox: NetworkConfig,
    /// The user's `~/.config/airlock/config.toml` `[network]` table.
    pub user: Option<NetworkConfig>,
    /// The project's `airlock.toml`.
    pub project: Option<ProjectConfig>,
    /// `--host-port` exposures.
    pub exposures: Vec<HostExposure>,
    /// The host's own addresses (always blocked); see [`host_addresses`].
    pub host_addrs: Vec<IpAddr>,
}

// ------------------------------------------------------------------ verdict

/// Why a verdict went the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// An allow rule matched.
    AllowRule,
    /// The preset allowed it.
    Preset,
    /// A host exposure allowed it.
    Exposure,
    /// A deny rule matched.
    DenyRule,
    /// Nothing allowed it.
    Default,
    /// An always-blocked range or a host address.
    AlwaysBlocked,
    /// Something else (malformed input, pinning, SNI mismatch, ...).
    Other,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// The rule that decided, e.g. `deny *.evil.test (flag)` or
    /// `default: not in allowlist (preset none)`.
    pub rule: String,
    /// The kind of rule that decided.
    pub reason: Reason,
}

impl Verdict {
    /// An allowing verdict.
    pub fn allow(reason: Reason, rule: impl Into<String>) -> Verdict {
        Verdict {
            allowed: true,
            rule: rule.into(),
            reason,
        }
    }

    /// A refusing verdict.
    pub fn deny(reason: Reason, rule: impl Into<String>) -> Verdict {
        Verdict {
            allowed: false,
            rule: rule.into(),
            reason,
        }
    }

    /// Whether adding an allow rule could change a refusal (not for deny
    /// rules or always-blocked ranges).
    pub fn allow_rule_would_help(&self) -> bool {
        !self.allowed && self.reason == Reason::Default
    }
}

// ------------------------------------------------------------------- policy

/// The entries of the balanced preset.
#[derive(Debug, Clone, Deserialize)]
pub struct PresetEntry {
    /// The rule.
    pub rule: Rule,
    /// Why it is in the preset.
    pub why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    allow: Vec<PresetEntry>,
}

/// The balanced preset's entries, parsed from the embedded data file.
pub fn balanced_entries() -> &'static [PresetEntry] {
    static ENTRIES: OnceLock<Vec<PresetEntry>> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        toml::from_str::<PresetFile>(BALANCED_TOML)
            .map(|f| f.allow)
            // The file is embedded and checked by a unit test; a broken file
            // cannot ship.
            .expect("policy/net/balanced.toml is valid")
    })
}

/// A complete, immutable network policy. Share it with [`PolicyHandle`] to
/// change it while a sandbox runs.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    preset: Preset,
    allow: Vec<SourcedRule>,
    deny: Vec<SourcedRule>,
    exposures: Vec<HostExposure>,
    host_addrs: Vec<IpAddr>,
    warnings: Vec<String>,
}

impl Policy {
    /// A policy with a preset and no rules.
    pub fn new(preset: Preset) -> Policy {
        Policy {
            preset,
            ..Policy::default()
        }
    }

    /// Adds an allow rule.
    pub fn allow(mut self, rule: Rule, source: Source) -> Policy {
        self.allow.push(SourcedRule { rule, source });
        self
    }

    /// Adds a deny rule.
    pub fn deny(mut self, rule: Rule, source: Source) -> Policy {
        self.deny.push(SourcedRule { rule, source });
        self
    }

    /// Adds a host exposure.
    pub fn expose(mut self, exposure: HostExposure) -> Policy {
        if !self.exposures.contains(&exposure) {
            self.exposures.push(exposure);
        }
        self
    }

    /// Sets the host's own addresses (always blocked).
    pub fn with_host_addrs(mut self, addrs: Vec<IpAddr>) -> Policy {
        self.host_addrs = addrs;
        self
    }

    /// The preset.
    pub fn preset(&self) -> Preset {
        self.preset
    }

    /// Allow rules in order (not including the preset's).
    pub fn allow_rules(&self) -> &[SourcedRule] {
        &self.allow
    }

    /// Deny rules in order.
    pub fn deny_rules(&self) -> &[SourcedRule] {
        &self.deny
    }

    /// Host exposures.
    pub fn exposures(&self) -> &[HostExposure] {
        &self.exposures
    }

    /// The host addresses treated as always blocked.
    pub fn host_addrs(&self) -> &[IpAddr] {
        &self.host_addrs
    }

    /// What was ignored while merging sources (e.g. allows of an untrusted
    /// project file), for the CLI to show.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Merges sources: flags > sandbox rules > user config > project file.
    ///
    /// The preset is the first one set among flags, sandbox rules, user
    /// config, a trusted project file. An untrusted project file may only
    /// narrow: its denies apply, its allows are ignored, and its preset only
    /// counts when it is narrower and no flag set one. Denies from every
    /// source apply.
    pub fn from_sources(src: &PolicySources) -> Policy {
        let mut p = Policy::default();
        let user = src.user.clone().unwrap_or_default();
        let chosen = src.flags.preset.or(src.sandbox.preset).or(user.preset);
        let mut preset = chosen.unwrap_or_default();
        if let Some(proj) = &src.project {
            match proj.network.preset {
                Some(pp) if proj.trusted && chosen.is_none() => preset = pp,
                Some(pp) if !proj.trusted && src.flags.preset.is_none() && pp < preset => {
                    preset = pp
                }
                Some(pp) if !proj.trusted && pp > preset => p.warnings.push(format!(
                    "{}: preset {pp} ignored: an untrusted project file can only narrow the policy (run `airlock trust` to trust it)",
                    proj.path.display()
                )),
                _ => {}
            }
        }
        p.preset = preset;
        let mut add = |cfg: &NetworkConfig, source: Source, allows: bool| {
            if allows {
                for r in &cfg.allow {
                    p.allow.push(SourcedRule {
                        rule: r.clone(),
                        source,
                    });
                }
            }
            for r in &cfg.deny {
                p.deny.push(SourcedRule {
                    rule: r.clone(),
                    source,
                });
            }
        };
        add(&src.flags, Source::Flag, true);
        add(&src.sandbox, Source::Sandbox, true);
        add(&user, Source::UserConfig, true);
        if let Some(proj) = &src.project {
            let source = if proj.trusted {
                Source::TrustedProject
            } else {
                Source::Project
            };
            add(&proj.network, source, proj.trusted);
            if !proj.trusted && !proj.network.allow.is_empty() {
                let list: Vec<String> = proj.network.allow.iter().map(|r| r.to_string()).collect();
                p.warnings.push(format!(
                    "{}: allow rules ignored ({}): the file is not trusted; review it and run `airlock trust` to let it widen the policy",
                    proj.path.display(),
                    list.join(", ")
                ));
            }
        }
        for e in &src.exposures {
            if !p.exposures.contains(e) {
                p.exposures.push(*e);
            }
        }
        p.host_addrs = src.host_addrs.clone();
        p
    }

    /// Checks a destination given as a host (name or address literal) and a port.
    ///
    /// For a name this is the name check only; the gate must also call
    /// [`Policy::check_addr`] with each resolved address. For an address
    /// literal it is the full address check.
    pub fn check(&self, host: &str, port: u16) -> Verdict {
        let host = normalize_host(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check_addr(ip, port, None);
        }
        self.name_verdict(&host, Some(port))
    }

    /// Checks a name whatever the port (what the DNS resolver asks: may this
    /// name be resolved at all?).
    pub fn check_name(&self, name: &str) -> Verdict {
        let name = normalize_host(name);
        if let Ok(ip) = name.parse::<IpAddr>() {
            return self.addr_verdict(ip, None, false);
        }
        self.name_verdict(&name, None)
    }

    /// The final gate check for a connection to `ip:port`, reached through
    /// `name` when the client named its destination: the name must be
    /// allowed **and** the address must be allowed (not always-blocked, not
    /// a host address, not denied; and, without a name, allowed by a CIDR
    /// rule or the open preset).
    pub fn check_addr(&self, ip: IpAddr, port: u16, name: Option<&str>) -> Verdict {
        let name = name
            .map(normalize_host)
            .filter(|n| !n.is_empty() && n.parse::<IpAddr>().is_err());
        let mut name_allowed = None;
        if let Some(n) = &name {
            let v = self.name_verdict(n, Some(port));
            if !v.allowed || v.reason == Reason::Exposure {
                return v;
            }
            name_allowed = Some(v);
        }
        let v = self.addr_verdict(ip, Some(port), name_allowed.is_some());
        match (v.allowed, name_allowed) {
            (true, Some(nv)) => nv,
            _ => v,
        }
    }

    /// Checks an address an upstream DNS server returned for an allowed name
    /// (port-agnostic): always-blocked ranges, host addresses and
    /// port-agnostic CIDR denies.
    pub fn check_resolved(&self, ip: IpAddr) -> Verdict {
        self.addr_verdict(ip, None, true)
    }

    fn name_verdict(&self, name: &str, port: Option<u16>) -> Verdict {
        if !valid_name(name) {
            return Verdict::deny(Reason::Other, format!("invalid host name {name:?}"));
        }
        for d in &self.deny {
            let applies = port.is_some() || d.rule.is_port_agnostic();
            if applies && d.rule.matches_name(name, port) {
                return Verdict::deny(Reason::DenyRule, format!("deny {} ({})", d.rule, d.source));
            }
        }
        if name == HOST_INTERNAL {
            return match port {
                Some(p) if self.exposures.iter().any(|e| e.port == p) => Verdict::allow(
                    Reason::Exposure,
                    format!("exposure {HOST_INTERNAL}:{p} (--host-port {p})"),
                ),
                None if !self.exposures.is_empty() => Verdict::allow(
                    Reason::Exposure,
                    format!("exposure {HOST_INTERNAL} (--host-port)"),
                ),
                Some(p) => Verdict::deny(
                    Reason::AlwaysBlocked,
                    format!(
                        "{HOST_INTERNAL}:{p} is not exposed (start the sandbox with --host-port {p})"
                    ),
                ),
                None => Verdict::deny(
                    Reason::AlwaysBlocked,
                    format!("{HOST_INTERNAL}: no host port is exposed (use --host-port PORT)"),
                ),
            };
        }
        for a in &self.allow {
            if a.rule.matches_name(name, port) {
                return Verdict::allow(
                    Reason::AllowRule,
                    format!("allow {} ({})", a.rule, a.source),
                );
            }
        }
        match self.preset {
            Preset::Open => Verdict::allow(Reason::Preset, "preset open: any public destination"),
            Preset::Balanced => {
                for e in balanced_entries() {
                    if e.rule.matches_name(name, port) {
                        return Verdict::allow(
                            Reason::Preset,
                            format!("allow {} (preset balanced: {})", e.rule, e.why),
                        );
                    }
                }
                Verdict::deny(
                    Reason::Default,
                    "default: not in allowlist (preset balanced)",
                )
            }
            Preset::None => {
                Verdict::deny(Reason::Default, "default: not in allowlist (preset none)")
            }
        }
    }

    fn addr_verdict(&self, ip: IpAddr, port: Option<u16>, name_allowed: bool) -> Verdict {
        if let Some(b) = addr::classify(ip) {
            return Verdict::deny(Reason::AlwaysBlocked, format!("always-blocked: {b}"));
        }
        let eq = addr::equivalents(ip);
        if let Some(h) = eq.iter().find(|e| {
            self.host_addrs
                .iter()
                .any(|h| h.to_canonical() == e.to_canonical())
        }) {
            return Verdict::deny(
                Reason::AlwaysBlocked,
                format!("always-blocked: the host's own address {h}"),
            );
        }
        for d in &self.deny {
            let applies = port.is_some() || d.rule.is_port_agnostic();
            if applies && eq.iter().any(|e| d.rule.matches_ip(*e, port)) {
                return Verdict::deny(Reason::DenyRule, format!("deny {} ({})", d.rule, d.source));
            }
        }
        if name_allowed {
            return Verdict::allow(Reason::AllowRule, "address allowed");
        }
        let canon = addr::canonical(ip);
        for a in &self.allow {
            if a.rule.matches_ip(canon, port) {
                return Verdict::allow(
                    Reason::AllowRule,
                    format!("allow {} ({})", a.rule, a.source),
                );
            }
        }
        match self.preset {
            Preset::Open => Verdict::allow(Reason::Preset, "preset open: any public address"),
            p => Verdict::deny(
                Reason::Default,
                format!("default: address not in allowlist (preset {p})"),
            ),
        }
    }
}

/// A policy shared between the gate and the DNS resolver, replaceable while
/// they run: the next connection or query sees the new policy.
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    /// Wraps a policy.
    pub fn new(policy: Policy) -> PolicyHandle {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(policy)))
    }

    /// The current policy.
    pub fn get(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    /// Replaces the policy; running connections keep the verdict they had,
    /// new ones use this policy.
    pub fn reload(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }
}

// -------------------------------------------------------------- trust store

/// The SHA-256 of some bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One trusted file content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustEntry {
    /// SHA-256 of the file content, lowercase hex.
    pub sha256: String,
    /// The path it was trusted at (informational; trust follows content).
    pub path: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TrustFile {
    #[serde(default)]
    trusted: Vec<TrustEntry>,
}

/// Remembers which project files the user trusted, by content hash: editing
/// a trusted file (e.g. by pulling a change) makes it untrusted again.
#[derive(Debug, Clone)]
pub struct TrustStore {
    path: PathBuf,
    entries: Vec<TrustEntry>,
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| PolicyError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })
}

impl TrustStore {
    /// Loads the store (an absent file is an empty store).
    pub fn load(path: &Path) -> Result<TrustStore> {
        let entries = match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str::<TrustFile>(&text)
                    .map_err(|e| PolicyError::Toml {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?
                    .trusted
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(PolicyError::Io {
                    action: "cannot read trust store",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(TrustStore {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// Trusts the current content of `file` and saves the store. Returns the hash.
    pub fn trust(&mut self, file: &Path) -> Result<String> {
        let hash = sha256_hex(&read_file(file)?);
        if !self.entries.iter().any(|e| e.sha256 == hash) {
            let shown = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
            self.entries.push(TrustEntry {
                sha256: hash.clone(),
                path: shown.display().to_string(),
            });
            self.save()?;
        }
        Ok(hash)
    }

    /// Forgets the current content of `file`; true when it was trusted.
    pub fn untrust(&mut self, file: &Path) -> Result<bool> {
        let hash = sha256_hex(&read_file(file)?);
        let before = self.entries.len();
        self.entries.retain(|e| e.sha256 != hash);
        if self.entries.len() != before {
            self.save()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether the current content of `file` is trusted.
    pub fn is_trusted(&self, file: &Path) -> Result<bool> {
        Ok(self.is_trusted_bytes(&read_file(file)?))
    }

    /// Whether this content is trusted.
    pub fn is_trusted_bytes(&self, bytes: &[u8]) -> bool {
        let hash = sha256_hex(bytes);
        self.entries.iter().any(|e| e.sha256 == hash)
    }

    /// The trusted entries.
    pub fn entries(&self) -> &[TrustEntry] {
        &self.entries
    }

    fn save(&self) -> Result<()> {
        let io = |action, source| PolicyError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("cannot create the directory of", e))?;
        }
        let text = toml::to_string(&TrustFile {
            trusted: self.entries.clone(),
        })
        .map_err(|e| io("cannot serialize", std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| io("cannot write", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("cannot replace", e))?;
        Ok(())
    }
}

/// The host's own interface addresses (always blocked as destinations).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(a) = ifa.address else { continue };
            if let Some(v4) = a.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Rule {
        s.parse().unwrap()
    }

    #[test]
    fn rule_parsing_round_trips() {
        for (input, shown) in [
            ("example.com", "example.com"),
            ("Example.COM.", "example.com"),
            ("*.example.com", "*.example.com"),
            ("example.com:8443", "example.com:8443"),
            ("*.example.com:443", "*.example.com:443"),
            ("203.0.113.0/24", "203.0.113.0/24"),
            ("203.0.113.7/24", "203.0.113.0/24"),
            ("203.0.113.5", "203.0.113.5"),
            ("203.0.113.5:443", "203.0.113.5:443"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("[2001:db8::/48]:443", "[2001:db8::/48]:443"),
        ] {
            assert_eq!(r(input).to_string(), shown, "{input}");
        }
        for bad in [
            "",
            "exa mple.com",
            "example.com:0",
            "example.com:99999",
            "foo.*.com",
            "*",
            "[2001:db8::1",
            "[example.com]:443",
            "2001:db8::1:443x",
            "203.0.113.0/33",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn wildcard_does_not_match_apex() {
        let rule = r("*.x.test");
        assert!(rule.matches_name("a.x.test", Some(443)));
        assert!(rule.matches_name("a.b.x.test", Some(443)));
        assert!(!rule.matches_name("x.test", Some(443)));
        assert!(!rule.matches_name("evilx.test", Some(443)));
        let p = Policy::new(Preset::None).allow(rule, Source::Flag);
        assert!(!p.check("x.test", 443).allowed);
        assert!(p.check("sub.x.test", 443).allowed);
    }

    #[test]
    fn port_rules() {
        let p = Policy::new(Preset::None).allow(r("example.com:8443"), Source::Flag);
        assert!(p.check("example.com", 8443).allowed);
        let v = p.check("example.com", 443);
        assert!(!v.allowed);
        assert_eq!(v.rule, "default: not in allowlist (preset none)");
        // DNS may resolve a name that is allowed on some port.
        assert!(p.check_name("example.com").allowed);
        // A port-specific deny does not stop DNS, but stops that port.
        let p = Policy::new(Preset::Open).deny(r("example.com:25"), Source::Flag);
        assert!(p.check_name("example.com").allowed);
        assert!(!p.check("example.com", 25).allowed);
        assert!(p.check("example.com", 443).allowed);
    }

    #[test]
    fn deny_beats_allow() {
        let p = Policy::new(Preset::Open)
            .allow(r("a.evil.test"), Source::UserConfig)
            .deny(r("*.evil.test"), Source::Flag);
        let v = p.check("a.evil.test", 443);
        assert!(!v.allowed);
        assert_eq!(v.rule, "deny *.evil.test (flag)");
        assert_eq!(v.reason, Reason::DenyRule);
        assert!(!p.check_name("a.evil.test").allowed);
    }

    #[test]
    fn default_is_none() {
        let p = Policy::default();
        let v = p.check("example.com", 443);
        assert!(!v.allowed);
        assert_eq!(v.rule, "default: not in allowlist (preset none)");
        assert!(v.allow_rule_would_help());
    }

    #[test]
    fn balanced_file_is_valid_and_documented() {
        let entries = balanced_entries();
        assert!(entries.len() > 20);
        for e in entries {
            assert!(!e.why.trim().is_empty(), "{} needs a why", e.rule);
        }
        let p = Policy::new(Preset::Balanced);
        for host in [
            "api.anthropic.com",
            "api.openai.com",
            "registry.npmjs.org",
            "pypi.org",
            "files.pythonhosted.org",
            "static.crates.io",
            "index.crates.io",
            "proxy.golang.org",
            "github.com",
            "objects.githubusercontent.com",
        ] {
            let v = p.check(host, 443);
            assert!(v.allowed, "{host}: {}", v.rule);
            assert!(v.rule.contains("preset balanced"), "{}", v.rule);
        }
        assert!(!p.check("evil.test", 443).allowed);
        assert!(!p.check("githubusercontent.com", 443).allowed);
        assert_eq!(
            p.check("evil.test", 443).rule,
            "default: not in allowlist (preset balanced)"
        );
    }

    #[test]
    fn open_preset_still_blocks_ranges() {
        let p = Policy::new(Preset::Open);
        assert!(p.check("anything.test", 443).allowed);
        assert!(p.check("203.0.113.10", 443).allowed);
        for a in [
            "169.254.169.254",
            "127.0.0.1",
            "10.0.0.5",
            "100.64.1.1",
            "[::1]",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:5",
            "fe80::1",
            "fd00::1",
        ] {
            let v = p.check(a, 80);
            assert!(!v.allowed, "{a}");
            assert!(v.rule.starts_with("always-blocked:"), "{a}: {}", v.rule);
        }
        // An allowed name resolving to a blocked address is refused.
        let v = p.check_addr("127.0.0.1".parse().unwrap(), 443, Some("allowed.test"));
        assert!(!v.allowed);
        assert!(v.rule.contains("loopback"));
        // Allow rules cannot open always-blocked ranges.
        let p = Policy::new(Preset::None).allow(r("10.0.0.0/8"), Source::Flag);
        assert!(!p.check("10.0.0.5", 80).allowed);
    }

    #[test]
    fn check_addr_needs_name_and_address() {
        let p = Policy::new(Preset::None)
            .allow(r("allowed.test"), Source::Flag)
            .allow(r("198.51.100.0/24"), Source::Flag)
            .deny(r("203.0.113.66"), Source::Flag);
        let ok: IpAddr = "203.0.113.10".parse().unwrap();
        assert!(p.check_addr(ok, 443, Some("allowed.test")).allowed);
        assert_eq!(
            p.check_addr(ok, 443, Some("allowed.test")).rule,
            "allow allowed.test (flag)"
        );
        // No name: the address itself must be allowed.
        assert!(!p.check_addr(ok, 443, None).allowed);
        assert!(
            p.check_addr("198.51.100.9".parse().unwrap(), 443, None)
                .allowed
        );
        assert!(
            p.check_addr("::ffff:198.51.100.9".parse().unwrap(), 443, None)
                .allowed
        );
        // Denied address even for an allowed name, in any embedding.
        for a in ["203.0.113.66", "::ffff:203.0.113.66", "64:ff9b::cb00:7142"] {
            let v = p.check_addr(a.parse().unwrap(), 443, Some("allowed.test"));
            assert!(!v.allowed, "{a}");
            assert_eq!(v.rule, "deny 203.0.113.66 (flag)");
        }
        // Denied name with an allowed address.
        assert!(
            !p.check_addr("198.51.100.9".parse().unwrap(), 443, Some("other.test"))
                .allowed
        );
    }

    #[test]
    fn host_addresses_are_blocked() {
        let p = Policy::new(Preset::Open).with_host_addrs(vec!["203.0.113.77".parse().unwrap()]);
        let v = p.check("203.0.113.77", 22);
        assert!(!v.allowed);
        assert!(v.rule.contains("host's own address"));
        assert!(!p.check("::ffff:203.0.113.77", 22).allowed);
        // The real host addresses include loopback at least.
        assert!(host_addresses().iter().any(|a| a.is_loopback()));
    }

    #[test]
    fn exposures() {
        let p = Policy::new(Preset::None).expose(HostExposure { port: 5432 });
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(p.check(HOST_INTERNAL, 5432).allowed);
        assert!(p.check_addr(lo, 5432, Some(HOST_INTERNAL)).allowed);
        assert!(!p.check(HOST_INTERNAL, 22).allowed);
        assert!(!p.check_addr(lo, 22, Some(HOST_INTERNAL)).allowed);
        assert!(!p.check_addr(lo, 5432, None).allowed);
        assert!(!Policy::default().check(HOST_INTERNAL, 5432).allowed);
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "airlock-net-policy-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn project_cannot_widen_until_trusted() {
        let dir = tmpdir("trust");
        let proj = dir.join("airlock.toml");
        std::fs::write(
            &proj,
            "[sandbox]\nname = \"x\"\n\n[network]\npreset = \"open\"\nallow = [\"widen.test\"]\ndeny = [\"narrow.test\"]\n",
        )
        .unwrap();
        let store_path = dir.join("trust.toml");
        let mut store = TrustStore::load(&store_path).unwrap();
        assert!(!store.is_trusted(&proj).unwrap());

        let user = NetworkConfig {
            preset: Some(Preset::None),
            allow: vec![r("narrow.test"), r("user.test")],
            deny: vec![],
        };
        let mut src = PolicySources {
            user: Some(user),
            project: ProjectConfig::load(&proj, &store).unwrap(),
            ..Default::default()
        };
        let p = Policy::from_sources(&src);
        assert_eq!(p.preset(), Preset::None);
        assert!(!p.check("widen.test", 443).allowed);
        assert!(p.check("user.test", 443).allowed);
        let v = p.check("narrow.test", 443);
        assert!(!v.allowed, "project denies apply even untrusted");
        assert_eq!(v.rule, "deny narrow.test (project airlock.toml)");
        assert_eq!(p.warnings().len(), 2, "{:?}", p.warnings());

        store.trust(&proj).unwrap();
        let store = TrustStore::load(&store_path).unwrap();
        assert!(store.is_trusted(&proj).unwrap());
        src.project = ProjectConfig::load(&proj, &store).unwrap();
        let p = Policy::from_sources(&src);
        // The user config set a preset; it wins over the project's.
        assert_eq!(p.preset(), Preset::None);
        let v = p.check("widen.test", 443);
        assert!(v.allowed);
        assert_eq!(v.rule, "allow widen.test (trusted project airlock.toml)");

        // Changing the file makes it untrusted again.
        std::fs::write(
            &proj,
            "[network]\nallow = [\"widen.test\", \"more.test\"]\n",
        )
        .unwrap();
        assert!(!store.is_trusted(&proj).unwrap());
        src.project = ProjectConfig::load(&proj, &store).unwrap();
        assert!(!Policy::from_sources(&src).check("more.test", 443).allowed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn untrusted_project_preset_only_narrows() {
        let proj = |preset, trusted| ProjectConfig {
            path: "airlock.toml".into(),
            network: NetworkConfig {
                preset: Some(preset),
                ..Default::default()
            },
            trusted,
        };
        let user = Some(NetworkConfig {
            preset: Some(Preset::Balanced),
            ..Default::default()
        });
        let mk = |p: ProjectConfig, user: Option<NetworkConfig>| {
            Policy::from_sources(&PolicySources {
                user,
                project: Some(p),
                ..Default::default()
            })
            .preset()
        };
        assert_eq!(mk(proj(Preset::None, false), user.clone()), Preset::None);
        assert_eq!(
            mk(proj(Preset::Open, false), user.clone()),
            Preset::Balanced
        );
        assert_eq!(mk(proj(Preset::Open, false), None), Preset::None);
        assert_eq!(mk(proj(Preset::Open, true), None), Preset::Open);
        assert_eq!(mk(proj(Preset::Open, true), user), Preset::Balanced);
        // Flags win over everything.
        let p = Policy::from_sources(&PolicySources {
            flags: NetworkConfig {
                preset: Some(Preset::Open),
                ..Default::default()
            },
            project: Some(proj(Preset::None, false)),
            ..Default::default()
        });
        assert_eq!(p.preset(), Preset::Open);
    }

    #[test]
    fn network_table_parsing() {
        let cfg = NetworkConfig::from_toml_str(
            "[network]\npreset = \"balanced\"\nallow = [\"*.example.com\", \"[2001:db8::1]:443\"]\n",
            Path::new("config.toml"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.preset, Some(Preset::Balanced));
        assert_eq!(cfg.allow.len(), 2);
        let err = NetworkConfig::from_toml_str(
            "[network]\nallow = [\"foo.*.com\"]\n",
            Path::new("config.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("foo.*.com"), "{err}");
        assert!(
            NetworkConfig::from_toml_str("[other]\nx = 1\n", Path::new("c.toml"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn destinations_and_sandbox_rule_files() {
        assert_eq!(
            parse_destination("a.test", 443).unwrap(),
            ("a.test".into(), 443)
        );
        assert_eq!(
            parse_destination("A.test:80", 443).unwrap(),
            ("a.test".into(), 80)
        );
        assert_eq!(
            parse_destination("[::1]:22", 443).unwrap(),
            ("::1".into(), 22)
        );
        assert_eq!(
            parse_destination("2001:db8::1", 443).unwrap(),
            ("2001:db8::1".into(), 443)
        );
        assert!(parse_destination("a.test:x", 443).is_err());
        assert!(parse_destination("bad host", 443).is_err());

        let dir = tmpdir("sandbox-rules");
        let path = dir.join("sb").join("policy.toml");
        let mut cfg = NetworkConfig::load(&path).unwrap().unwrap_or_default();
        assert!(cfg.add_allow(r("a.test")));
        assert!(!cfg.add_allow(r("a.test")));
        assert!(cfg.add_deny(r("*.evil.test")));
        cfg.save(&path).unwrap();
        let back = NetworkConfig::load(&path).unwrap().unwrap();
        assert_eq!(back, cfg);
        let mut back = back;
        assert!(back.remove(&r("*.evil.test")));
        assert!(!back.remove(&r("*.evil.test")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reload_is_visible() {
        let h = PolicyHandle::new(Policy::default());
        assert!(!h.get().check("a.test", 80).allowed);
        h.reload(Policy::new(Preset::None).allow(r("a.test"), Source::Sandbox));
        assert_eq!(
            h.get().check("a.test", 80).rule,
            "allow a.test (sandbox policy)"
        );
    }
}
