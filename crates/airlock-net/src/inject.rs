//! Credential injection at the boundary.
//!
//! Inside a sandbox an agent holds only a *placeholder* (for example
//! `ANTHROPIC_API_KEY=airlock-placeholder-3f…`). The gate recognises requests
//! to a credential's hosts and swaps the placeholder for the real secret in
//! the request head on the way out; responses coming back are scrubbed of
//! the secret. The real secret lives only in the host-side process that runs
//! the gate.
//!
//! - [`Credential`]: one service's secret, hosts, header and format.
//! - [`Injector`]: the set of credentials of a sandbox: which hosts are
//!   intercepted ([`Injector::intercepts`]), head rewriting
//!   ([`Injector::rewrite_request_head`]) and exfiltration detection
//!   ([`Injector::carries_placeholder`], [`Injector::head_placeholder`]).
//! - [`Scrubber`], [`HttpScrubber`] and [`StreamScan`]: streaming
//!   replacement (following HTTP response framing, so chunked bodies are
//!   scrubbed as their payload) and detection across chunk boundaries.
//! - [`SandboxCa`]: the per-sandbox CA whose leaf certificates terminate TLS
//!   for intercepted hosts (and only those).
//! - [`upstream_client_config`]: the TLS client used towards the real
//!   upstream, verified against the host's trust store.
//!
//! See "Credential injection" in `DESIGN.md` for the threat model.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::policy::normalize_host;

mod scrub;
use scrub::mask_for;
pub use scrub::{HttpScrubber, IDLE_MASK_MIN, Scrubber, StreamScan};

/// Errors of credential injection setup.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A credential is unusable.
    #[error("credential {service}: {msg}")]
    Credential {
        /// The service.
        service: String,
        /// What is wrong.
        msg: String,
    },
    /// Certificate generation failed.
    #[error("sandbox CA: {0}")]
    Cert(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// No trust anchors for upstream verification.
    #[error("no trusted root certificates for upstream TLS: {0}")]
    NoRoots(String),
}

/// The crypto provider used for every TLS configuration here (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const PLACEHOLDER_PREFIX: &str = "airlock-placeholder-";

/// A fresh placeholder: `airlock-placeholder-` and random hex, as long as
/// `len` when that leaves at least 16 hex digits (64 bits), else longer.
/// With the same length as the secret, a scrubbed echo shows exactly the
/// placeholder and the response's framing (Content-Length, chunk sizes) is
/// unchanged.
pub fn new_placeholder(len: usize) -> String {
    let hex_len = len.saturating_sub(PLACEHOLDER_PREFIX.len()).max(16);
    let mut bytes = vec![0u8; hex_len.div_ceil(2)];
    // The placeholder is not a secret; the randomness only makes it unique.
    if provider().secure_random.fill(&mut bytes).is_err() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            ^ u128::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    let mut s = String::from(PLACEHOLDER_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s.truncate(PLACEHOLDER_PREFIX.len() + hex_len);
    s
}

/// One service's credential. The secret stays in the host-side process.
#[derive(Clone)]
pub struct Credential {
    /// The service name (`anthropic`, `github`, ...), used in logs.
    pub service: String,
    /// The hosts it is sent to: exact names or `*.suffix` (subdomains, not
    /// the apex), as in policy rules.
    pub hosts: Vec<String>,
    /// The request header that carries it (`x-api-key`, `authorization`).
    pub header: String,
    /// The header value, with `{secret}` standing for the secret
    /// (`{secret}`, `Bearer {secret}`).
    pub format: String,
    /// What the sandbox sees instead of the secret.
    pub placeholder: String,
    /// The real secret.
    pub secret: Zeroizing<String>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("service", &self.service)
            .field("hosts", &self.hosts)
            .field("header", &self.header)
            .field("format", &self.format)
            .field("placeholder", &self.placeholder)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// A credential with a fresh placeholder of the secret's length (see
    /// [`new_placeholder`]).
    pub fn new(
        service: &str,
        hosts: &[&str],
        header: &str,
        format: &str,
        secret: Zeroizing<String>,
    ) -> Credential {
        Credential {
            service: service.to_string(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            header: header.to_string(),
            format: format.to_string(),
            placeholder: new_placeholder(secret.len()),
            secret,
        }
    }

    /// Whether `host` is one of this credential's hosts.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.hosts.iter().any(|h| {
            let h = normalize_host(h);
            match h.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|pre| pre.len() > 1 && pre.ends_with('.')),
                None => host == h,
            }
        })
    }

    /// The header value carrying the real secret.
    fn value(&self) -> Zeroizing<String> {
        Zeroizing::new(self.format.replace("{secret}", &self.secret))
    }

    fn check(&self) -> Result<(), InjectError> {
        let bad = |msg: &str| {
            Err(InjectError::Credential {
                service: self.service.clone(),
                msg: msg.to_string(),
            })
        };
        if self.secret.is_empty() {
            return bad("the secret is empty");
        }
        if self
            .secret
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
        {
            return bad("the secret contains spaces or control characters");
        }
        if self.placeholder.len() < 16 || self.secret.contains(self.placeholder.as_str()) {
            return bad("the placeholder is too short or part of the secret");
        }
        if self.placeholder.contains(self.secret.as_str()) {
            return bad("the secret is part of the placeholder");
        }
        if !self.format.contains("{secret}") {
            return bad("the format has no {secret}");
        }
        if self.header.is_empty()
            || !self
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return bad("invalid header name");
        }
        if self.hosts.is_empty() {
            return bad("no hosts");
        }
        Ok(())
    }
}

// ------------------------------------------------------------ base64

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `Basic` authorization value (`Basic base64(user:password)`). With the
/// placeholder as password, the gate swaps it for the secret inside (see
/// [`Injector::rewrite_request_head`]): how `git` over HTTPS is given a
/// code host's token.
pub fn basic_authorization(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        b64_encode(format!("{user}:{password}").as_bytes())
    )
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// The credentials of `Basic` authorization values.
fn basic_payload(value: &[u8]) -> Option<Vec<u8>> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    b64_decode(rest)
}

// ------------------------------------------------------------ heads

/// A parsed HTTP/1 request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: String,
    /// The request target (origin or absolute form).
    pub target: String,
    /// The minor version (`HTTP/1.x`).
    pub version: u8,
    /// Header names and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    /// Parses a complete head (`buf` may hold more after it). `None` when
    /// the head is incomplete or malformed.
    pub fn parse(buf: &[u8]) -> Option<(RequestHead, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => Some((
                RequestHead {
                    method: req.method?.to_string(),
                    target: req.path?.to_string(),
                    version: req.version?,
                    headers: req
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                },
                n,
            )),
            _ => None,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Serializes the head, ending with the empty line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.{}\r\n",
            self.method, self.target, self.version
        )
        .into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// What [`Injector::rewrite_request_head`] did.
#[derive(Debug, Default)]
pub struct Rewrite {
    /// The services whose secret was put into the head.
    pub injected: Vec<String>,
    /// Extra (secret form, stand-in) pairs to scrub from the response,
    /// e.g. the base64 of `user:secret` of a rewritten `Basic` value.
    pub scrub: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A request carried the placeholder of `service` to a host that is not
/// one of that credential's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exfiltration {
    /// The credential whose placeholder was sent.
    pub service: String,
    /// Where it was sent.
    pub host: String,
}

impl Exfiltration {
    /// The rule string logged for it.
    pub fn rule(&self) -> String {
        format!(
            "exfiltration: placeholder of {} sent to {}",
            self.service, self.host
        )
    }
}

// ------------------------------------------------------------ injector

/// A sandbox's credentials. Only their hosts are ever intercepted.
#[derive(Debug)]
pub struct Injector {
    creds: Vec<Credential>,
    /// Inject into plain-HTTP (unencrypted) requests to a credential's host
    /// too. Off by default: the secret would cross the network in clear
    /// text; such requests carrying the placeholder are refused instead.
    pub allow_plain_http: bool,
}

impl Injector {
    /// An injector for `creds`; checks each credential and that no
    /// placeholder is contained in another's.
    pub fn new(creds: Vec<Credential>) -> Result<Injector, InjectError> {
        for c in &creds {
            c.check()?;
            for o in &creds {
                if !std::ptr::eq(c, o)
                    && (o.placeholder.contains(c.placeholder.as_str())
                        || o.secret.contains(c.placeholder.as_str()))
                {
                    return Err(InjectError::Credential {
                        service: c.service.clone(),
                        msg: format!("its placeholder is part of {}'s", o.service),
                    });
                }
            }
        }
        Ok(Injector {
            creds,
            allow_plain_http: false,
        })
    }

    /// The credentials.
    pub fn credentials(&self) -> &[Credential] {
        &self.creds
    }

    /// Whether connections to `host` are intercepted (it is a host of some
    /// credential). No other host ever is.
    pub fn intercepts(&self, host: &str) -> bool {
        self.creds.iter().any(|c| c.matches_host(host))
    }

    /// The service of the first placeholder found in `bytes`, literally.
    pub fn carries_placeholder(&self, bytes: &[u8]) -> Option<&str> {
        self.creds
            .iter()
            .find(|c| contains(bytes, c.placeholder.as_bytes()))
            .map(|c| c.service.as_str())
    }

    /// Whether credential `c`'s placeholder is anywhere in the head: the
    /// target, a header value, or a `Basic` value's decoded credentials.
    fn head_has(c: &Credential, head: &RequestHead) -> bool {
        let ph = c.placeholder.as_bytes();
        contains(head.target.as_bytes(), ph)
            || head
                .headers
                .iter()
                .any(|(_, v)| contains(v, ph) || basic_payload(v).is_some_and(|p| contains(&p, ph)))
    }

    /// The first placeholder in `head` whose credential does not belong to
    /// `host`: an exfiltration attempt.
    pub fn head_placeholder(&self, host: &str, head: &RequestHead) -> Option<Exfiltration> {
        self.creds
            .iter()
            .find(|c| !c.matches_host(host) && Self::head_has(c, head))
            .map(|c| Exfiltration {
                service: c.service.clone(),
                host: normalize_host(host),
            })
    }

    /// Whether `head` carries the placeholder of a credential of `host`.
    pub fn wants_injection(&self, host: &str, head: &RequestHead) -> bool {
        self.creds
            .iter()
            .any(|c| c.matches_host(host) && Self::head_has(c, head))
    }

    /// Rewrites a request head going to `host`.
    ///
    /// - A placeholder of a credential that is not `host`'s: refused
    ///   ([`Exfiltration`]); the head is left as it was.
    /// - For each credential of `host` whose placeholder the head carries:
    ///   the credential header's value becomes the formatted secret (or,
    ///   for a `Basic` value, the placeholder inside its decoded
    ///   credentials becomes the secret), and the placeholder anywhere else
    ///   in header values or in the target becomes the secret.
    /// - `Accept-Encoding` becomes `identity`, so the response can be
    ///   scrubbed (compressed bodies cannot be).
    pub fn rewrite_request_head(
        &self,
        host: &str,
        head: &mut RequestHead,
    ) -> Result<Rewrite, Exfiltration> {
        if let Some(e) = self.head_placeholder(host, head) {
            return Err(e);
        }
        let mut rw = Rewrite::default();
        for c in self.creds.iter().filter(|c| c.matches_host(host)) {
            if !Self::head_has(c, head) {
                continue;
            }
            let ph = c.placeholder.as_bytes();
            let secret = c.secret.as_bytes();
            for (name, value) in head.headers.iter_mut() {
                if contains(value, ph) {
                    *value = if name.eq_ignore_ascii_case(&c.header) {
                        c.value().as_bytes().to_vec()
                    } else {
                        replace_all(value, ph, secret)
                    };
                } else if let Some(p) = basic_payload(value).filter(|p| contains(p, ph)) {
                    let user_ph = b64_encode(&p);
                    let real = Zeroizing::new(replace_all(&p, ph, secret));
                    let enc = b64_encode(&real);
                    rw.scrub.push((
                        enc.as_bytes().to_vec(),
                        mask_for(enc.as_bytes(), user_ph.as_bytes()),
                    ));
                    *value = format!("Basic {enc}").into_bytes();
                }
            }
            if head.target.contains(c.placeholder.as_str()) {
                head.target = head.target.replace(c.placeholder.as_str(), &c.secret);
            }
            rw.injected.push(c.service.clone());
        }
        if self.intercepts(host) {
            let mut seen = false;
            head.headers.retain_mut(|(n, v)| {
                if !n.eq_ignore_ascii_case("accept-encoding") {
                    return true;
                }
                if seen {
                    return false;
                }
                seen = true;
                *v = b"identity".to_vec();
                true
            });
        }
        Ok(rw)
    }

    /// A scrubber replacing every credential's secret with a same-length
    /// stand-in (its placeholder when the lengths agree).
    pub fn scrubber(&self) -> Scrubber {
        let mut s = Scrubber::default();
        for c in &self.creds {
            let secret = c.secret.as_bytes();
            s.add(secret.to_vec(), mask_for(secret, c.placeholder.as_bytes()));
        }
        s
    }

    /// A scrubber for a connection's responses: [`Injector::scrubber`]
    /// following HTTP/1 framing (see [`HttpScrubber`]).
    pub fn response_scrubber(&self) -> HttpScrubber {
        HttpScrubber::new(self.scrubber())
    }

    /// A detector of any placeholder in a byte stream.
    pub fn scanner(&self) -> StreamScan {
        StreamScan::new(
            self.creds
                .iter()
                .map(|c| (c.placeholder.as_bytes().to_vec(), c.service.clone()))
                .collect(),
        )
    }
}

// ------------------------------------------------------------ CA

/// Everything the gate needs to inject credentials for one sandbox
/// ([`crate::GateConfig::injection`]).
#[derive(Debug, Clone)]
pub struct Injection {
    /// The credentials.
    pub injector: Arc<Injector>,
    /// The sandbox's CA (its certificate must be in the sandbox's trust
    /// bundle).
    pub ca: Arc<SandboxCa>,
    /// Extra trust anchors for upstream verification (tests), added to
    /// the host's trust store.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Whether the host's trust store is loaded (always in production;
    /// tests turn it off to trust only `extra_roots`).
    pub use_host_store: bool,
}

impl Injection {
    /// Injection of `injector`'s credentials with TLS terminated by `ca`,
    /// upstreams verified against the host's trust store.
    pub fn new(injector: Arc<Injector>, ca: Arc<SandboxCa>) -> Injection {
        Injection {
            injector,
            ca,
            extra_roots: Vec::new(),
            use_host_store: true,
        }
    }
}

/// A per-sandbox certificate authority (ECDSA P-256, 30 days, pathlen 0,
/// server authentication only, optionally name-constrained to the
/// credentials' hosts). Its certificate goes into the sandbox's trust
/// bundle; its key never leaves the host-side process.
pub struct SandboxCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    not_after: time::OffsetDateTime,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

const VALIDITY_DAYS: i64 = 30;

impl SandboxCa {
    /// A new CA for sandbox `name`, not name-constrained.
    pub fn generate(name: &str) -> Result<SandboxCa, InjectError> {
        Self::build(name, &[])
    }

    /// A new CA for sandbox `name` that can only certify `hosts` (and their
    /// subdomains; `*.suffix` stands for `suffix`): X.509 name constraints,
    /// so even its key could not be used for any other site. Recommended:
    /// pass every credential's hosts.
    pub fn generate_for_hosts(name: &str, hosts: &[String]) -> Result<SandboxCa, InjectError> {
        Self::build(name, hosts)
    }

    fn build(name: &str, hosts: &[String]) -> Result<SandboxCa, InjectError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::default();
        let clean: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .take(40)
            .collect();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Airlock sandbox {clean} CA"),
        );
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Airlock");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(VALIDITY_DAYS);
        if !hosts.is_empty() {
            let mut permitted: Vec<String> = hosts
                .iter()
                .map(|h| {
                    let h = normalize_host(h);
                    h.strip_prefix("*.").map(str::to_string).unwrap_or(h)
                })
                .collect();
            permitted.sort();
            permitted.dedup();
            params.name_constraints = Some(rcgen::NameConstraints {
                permitted_subtrees: permitted
                    .into_iter()
                    .map(rcgen::GeneralSubtree::DnsName)
                    .collect(),
                excluded_subtrees: Vec::new(),
            });
        }
        let cert = params.self_signed(&key)?;
        let not_after = params.not_after;
        Ok(SandboxCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
            not_after,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM), for the sandbox's trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A TLS server configuration presenting a leaf certificate for `host`
    /// (cached per host), offering only `http/1.1` in ALPN.
    pub fn leaf_for(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, InjectError> {
        let host = normalize_host(host);
        if let Some(c) = self
            .leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
        {
            return Ok(c.clone());
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![host.clone()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host.clone());
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = self
            .not_after
            .min(now + time::Duration::days(VALIDITY_DAYS));
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host, cfg.clone());
        Ok(cfg)
    }
}

/// The TLS client configuration towards real upstreams: the host's trust
/// store (`rustls-native-certs`: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// system bundle such as `/etc/ssl/certs/ca-certificates.crt`) plus
/// `extra_roots`, full verification, ALPN `http/1.1` only.
pub fn upstream_client_config(
    extra_roots: &[CertificateDer<'static>],
    use_host_store: bool,
) -> Result<Arc<rustls::ClientConfig>, InjectError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut errors = Vec::new();
    if use_host_store {
        let native = rustls_native_certs::load_native_certs();
        errors.extend(native.errors.iter().map(|e| e.to_string()));
        let (_ok, _bad) = roots.add_parsable_certificates(native.certs);
    }
    for c in extra_roots {
        roots.add(c.clone())?;
    }
    if roots.is_empty() {
        return Err(InjectError::NoRoots(if errors.is_empty() {
            "the host trust store is empty".into()
        } else {
            errors.join("; ")
        }));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(service: &str, hosts: &[&str], header: &str, format: &str, secret: &str) -> Credential {
        Credential::new(
            service,
            hosts,
            header,
            format,
            Zeroizing::new(secret.to_string()),
        )
    }

    fn head(s: &str) -> RequestHead {
        RequestHead::parse(s.as_bytes()).unwrap().0
    }

    const SECRET: &str = "sk-ant-REALSECRET-0123456789abcdefghijklmnopqrstuvwxyz";

    #[test]
    fn placeholder_has_secret_length_and_debug_redacts() {
        let c = cred(
            "anthropic",
            &["api.anthropic.test"],
            "x-api-key",
            "{secret}",
            SECRET,
        );
        assert_eq!(c.placeholder.len(), SECRET.len());
        assert!(c.placeholder.starts_with("airlock-placeholder-"));
        let short = new_placeholder(5);
        assert_eq!(short.len(), 20 + 16);
        assert_ne!(new_placeholder(40), new_placeholder(40));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("REALSECRET"), "{dbg}");
    }

    #[test]
    fn host_matching() {
        let c = cred(
            "gh",
            &["github.test", "*.githubusercontent.test"],
            "authorization",
            "Bearer {secret}",
            SECRET,
        );
        assert!(c.matches_host("github.test"));
        assert!(c.matches_host("GitHub.Test."));
        assert!(!c.matches_host("api.github.test"));
        assert!(c.matches_host("raw.githubusercontent.test"));
        assert!(!c.matches_host("githubusercontent.test"));
        assert!(!c.matches_host("evilgithubusercontent.test"));
        let inj = Injector::new(vec![c]).unwrap();
        assert!(inj.intercepts("github.test"));
        assert!(!inj.intercepts("example.test"));
    }

    #[test]
    fn header_rewrite_and_exfiltration() {
        let a = cred(
            "anthropic",
            &["api.anthropic.test"],
            "x-api-key",
            "{secret}",
            SECRET,
        );
        let o = cred(
            "openai",
            &["api.openai.test"],
            "authorization",
            "Bearer {secret}",
            "sk-openai-secret-value-000000000000000",
        );
        let (pa, po) = (a.placeholder.clone(), o.placeholder.clone());
        let inj = Injector::new(vec![a, o]).unwrap();

        let mut h = head(&format!(
            "POST /v1/messages?x={pa} HTTP/1.1\r\nHost: api.anthropic.test\r\nx-api-key: {pa}\r\nX-Other: a{pa}b\r\nAccept-Encoding: gzip, br\r\nAccept-Encoding: zstd\r\n\r\n"
        ));
        let rw = inj
            .rewrite_request_head("api.anthropic.test", &mut h)
            .unwrap();
        assert_eq!(rw.injected, vec!["anthropic".to_string()]);
        assert_eq!(h.header("x-api-key"), Some(SECRET.as_bytes()));
        assert_eq!(h.header("x-other"), Some(format!("a{SECRET}b").as_bytes()));
        assert_eq!(h.target, format!("/v1/messages?x={SECRET}"));
        assert_eq!(h.header("accept-encoding"), Some(&b"identity"[..]));
        assert_eq!(
            h.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("accept-encoding"))
                .count(),
            1
        );

        // Bearer format replaces the whole value.
        let mut h = head(&format!(
            "GET / HTTP/1.1\r\nHost: api.openai.test\r\nAuthorization: Bearer {po}\r\n\r\n"
        ));
        inj.rewrite_request_head("api.openai.test", &mut h).unwrap();
        assert_eq!(
            h.header("authorization"),
            Some(&b"Bearer sk-openai-secret-value-000000000000000"[..])
        );

        // Without the placeholder nothing is injected.
        let mut h = head("GET / HTTP/1.1\r\nHost: api.anthropic.test\r\nx-api-key: mine\r\n\r\n");
        let rw = inj
            .rewrite_request_head("api.anthropic.test", &mut h)
            .unwrap();
        assert!(rw.injected.is_empty());
        assert_eq!(h.header("x-api-key"), Some(&b"mine"[..]));

        // Another credential's placeholder to this host: exfiltration, untouched.
        let src = format!(
            "GET / HTTP/1.1\r\nHost: api.anthropic.test\r\nx-api-key: {pa}\r\nX-Leak: {po}\r\n\r\n"
        );
        let mut h = head(&src);
        let e = inj
            .rewrite_request_head("api.anthropic.test", &mut h)
            .unwrap_err();
        assert_eq!(e.service, "openai");
        assert_eq!(
            e.rule(),
            "exfiltration: placeholder of openai sent to api.anthropic.test"
        );
        assert_eq!(h, head(&src));

        // Any placeholder to an unrelated host.
        let h = head(&format!("GET /?k={pa} HTTP/1.1\r\nHost: evil.test\r\n\r\n"));
        assert_eq!(
            inj.head_placeholder("evil.test", &h).unwrap().service,
            "anthropic"
        );
        assert_eq!(
            inj.carries_placeholder(format!("xx{po}yy").as_bytes()),
            Some("openai")
        );
        assert_eq!(inj.carries_placeholder(b"nothing"), None);
    }

    #[test]
    fn basic_auth_is_rewritten_inside() {
        let g = cred(
            "github",
            &["github.test"],
            "authorization",
            "Bearer {secret}",
            "ghp_realtoken0123456789abcdefghijklmnop",
        );
        let ph = g.placeholder.clone();
        let inj = Injector::new(vec![g]).unwrap();
        let basic = b64_encode(format!("x-access-token:{ph}").as_bytes());
        let mut h = head(&format!(
            "GET /o/r.git/info/refs HTTP/1.1\r\nHost: github.test\r\nAuthorization: Basic {basic}\r\n\r\n"
        ));
        let rw = inj.rewrite_request_head("github.test", &mut h).unwrap();
        let real = b64_encode(b"x-access-token:ghp_realtoken0123456789abcdefghijklmnop");
        assert_eq!(
            h.header("authorization"),
            Some(format!("Basic {real}").as_bytes())
        );
        assert_eq!(
            rw.scrub,
            vec![(real.as_bytes().to_vec(), basic.as_bytes().to_vec())]
        );
        // The value git is configured with inside a sandbox is rewritten the same way.
        let mut h = head(&format!(
            "GET /o/r.git/info/refs HTTP/1.1\r\nHost: github.test\r\nAuthorization: {}\r\n\r\n",
            basic_authorization("x-access-token", &ph)
        ));
        inj.rewrite_request_head("github.test", &mut h).unwrap();
        assert_eq!(
            h.header("authorization"),
            Some(format!("Basic {real}").as_bytes())
        );
        // Basic-wrapped placeholder to another host is caught too.
        let h = head(&format!(
            "GET / HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Basic {basic}\r\n\r\n"
        ));
        assert!(inj.head_placeholder("evil.test", &h).is_some());
    }

    #[test]
    fn base64_roundtrip() {
        for s in ["", "a", "ab", "abc", "abcd", "x-access-token:secret"] {
            assert_eq!(b64_decode(&b64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64_encode(b"hello"), "aGVsbG8=");
        assert!(b64_decode("not base64!").is_none());
    }

    #[test]
    fn bad_credentials_are_refused() {
        let mut c = cred("a", &["a.test"], "x-api-key", "{secret}", SECRET);
        c.format = "static".into();
        assert!(Injector::new(vec![c]).is_err());
        let c = cred("a", &["a.test"], "bad header", "{secret}", SECRET);
        assert!(Injector::new(vec![c]).is_err());
        let c = cred("a", &["a.test"], "x-api-key", "{secret}", "");
        assert!(Injector::new(vec![c]).is_err());
    }

    fn scrub_chunks(s: &mut Scrubber, input: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in input.chunks(size) {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn scrubber_across_chunk_boundaries() {
        let c = cred(
            "anthropic",
            &["api.anthropic.test"],
            "x-api-key",
            "{secret}",
            SECRET,
        );
        let ph = c.placeholder.clone();
        let inj = Injector::new(vec![c]).unwrap();
        let input =
            format!("{{\"echo\":\"{SECRET}\",\"again\":\"{SECRET}{SECRET}\"}} tail sk-ant-REAL");
        let want = format!("{{\"echo\":\"{ph}\",\"again\":\"{ph}{ph}\"}} tail sk-ant-REAL");
        for size in [
            1,
            2,
            3,
            7,
            16,
            SECRET.len() - 1,
            SECRET.len(),
            SECRET.len() + 1,
            1000,
        ] {
            let mut s = inj.scrubber();
            let out = scrub_chunks(&mut s, input.as_bytes(), size);
            assert_eq!(String::from_utf8(out).unwrap(), want, "chunk size {size}");
            assert_eq!(s.replaced, 3);
        }
        // Nothing to replace: bytes pass unchanged, the tail is flushed.
        let mut s = inj.scrubber();
        assert_eq!(scrub_chunks(&mut s, b"short", 2), b"short");
        // Only a possible start of a secret is held back.
        let mut s = inj.scrubber();
        let mut out = Vec::new();
        s.feed(b"{\"a\":1}\n", &mut out);
        assert_eq!(out, b"{\"a\":1}\n");
        assert!(!s.pending());
        s.feed(b"ask", &mut out);
        assert_eq!(out, b"{\"a\":1}\na");
        assert!(s.pending());
        s.flush_idle(&mut out);
        assert_eq!(out, b"{\"a\":1}\nask", "short prefixes pass on idle");
        let mut out = Vec::new();
        s.feed(&SECRET.as_bytes()[..20], &mut out);
        assert!(out.is_empty());
        s.flush_idle(&mut out);
        assert_eq!(
            out,
            &ph.as_bytes()[..20],
            "long prefixes are masked on idle"
        );
    }

    #[test]
    fn ca_issues_leaf_configs() {
        let ca =
            SandboxCa::generate_for_hosts("sb", &["api.anthropic.test".into(), "*.x.test".into()])
                .unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = ca.leaf_for("api.anthropic.test").unwrap();
        let b = ca.leaf_for("API.anthropic.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached per host");
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
