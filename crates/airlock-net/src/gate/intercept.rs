//! The gate's side of credential injection: TLS termination for
//! intercepted hosts, the per-request rewrite loop, response scrubbing and
//! the placeholder check on cleartext traffic to other hosts.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Gate, find_head_end, parse_authority, respond};
use crate::inject::{HttpScrubber, Injector, RequestHead, StreamScan, upstream_client_config};
use crate::log::DecisionPath;
use crate::policy::{Reason, Verdict, normalize_host};

/// How long an intercepted connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(300);
/// How long the scrubber waits for the rest of a possible secret in a raw
/// stream (after an upgrade) before passing on what it holds.
const SCRUB_IDLE: Duration = Duration::from_millis(100);
const MAX_HEAD: usize = super::MAX_HEAD;

/// A stream whose first bytes were already read (`prefix`).
pub(super) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a connection goes, for logging.
pub(super) struct Ctx {
    pub(super) path: DecisionPath,
    pub(super) host: String,
    pub(super) addr: Option<IpAddr>,
    pub(super) port: u16,
}

/// A refusal to send the client instead of the next response.
struct Refuse {
    code: u16,
    reason: &'static str,
    body: String,
    rule: Option<String>,
}

impl Gate {
    fn log_ctx(&self, ctx: &Ctx, v: &Verdict) {
        self.log(ctx.path, Some(&ctx.host), ctx.addr, ctx.port, v);
    }

    /// The TLS client configuration towards upstreams, built once.
    fn upstream_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let Some(inj) = self.inner.config.injection.as_ref() else {
            return Err("credential injection is off".into());
        };
        self.inner
            .upstream_tls
            .get_or_init(|| {
                upstream_client_config(&inj.extra_roots, inj.use_host_store)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Terminates the client's TLS with a leaf of the sandbox CA for
    /// `host`, opens verified TLS to the real upstream over `up` (already
    /// checked by the policy) and runs the request loop between them.
    pub(super) async fn intercept_tls<C>(
        &self,
        client: C,
        up: TcpStream,
        path: DecisionPath,
        host: &str,
        port: u16,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(inj) = self.inner.config.injection.clone() else {
            return;
        };
        let ctx = Ctx {
            path,
            host: host.to_string(),
            addr: up.peer_addr().ok().map(|a| a.ip()),
            port,
        };
        let deny = |rule: String| Verdict::deny(Reason::Other, rule);
        let leaf = match inj.ca.leaf_for(host) {
            Ok(l) => l,
            Err(e) => {
                self.log_ctx(
                    &ctx,
                    &deny(format!(
                        "credential injection: no certificate for {host}: {e}"
                    )),
                );
                return;
            }
        };
        // Upstream first: the client learns of a failure on a readable 502.
        let upstream = match (self.upstream_tls(), ServerName::try_from(host.to_string())) {
            (Ok(cfg), Ok(name)) => tokio::time::timeout(
                self.inner.config.connect_timeout,
                tokio_rustls::TlsConnector::from(cfg).connect(name, up),
            )
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            })
            .map_err(|e| e.to_string()),
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(e.to_string()),
        };
        let accept = tokio::time::timeout(
            self.inner.config.handshake_timeout,
            tokio_rustls::TlsAcceptor::from(leaf).accept(client),
        )
        .await;
        let mut client = match accept {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.log_ctx(&ctx, &deny(format!(
                    "credential injection: the sandbox's TLS handshake for {host} failed (does it trust the sandbox CA?): {e}"
                )));
                return;
            }
            Err(_) => return,
        };
        match upstream {
            Ok(up) => self.session(client, up, &inj.injector, &ctx, false).await,
            Err(e) => {
                let v = deny(format!("upstream TLS to {host} failed: {e}"));
                self.log_ctx(&ctx, &v);
                let _ = respond(
                    &mut client,
                    502,
                    "Bad Gateway",
                    &format!("Airlock: upstream TLS to {host} failed: {e}\n"),
                    Some(&v.rule),
                )
                .await;
            }
        }
    }

    /// The request loop of an intercepted connection: each request head is
    /// checked and rewritten, bodies are forwarded as framed
    /// (Content-Length or chunked), responses stream back scrubbed.
    /// `plain`: the upstream connection is not encrypted.
    async fn session<C, U>(&self, client: C, up: U, inj: &Arc<Injector>, ctx: &Ctx, plain: bool)
    where
        C: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut cr, cw) = tokio::io::split(client);
        let (ur, mut uw) = tokio::io::split(up);
        let scrub = Arc::new(Mutex::new(inj.response_scrubber()));
        let (tx, rx) = tokio::sync::oneshot::channel::<Refuse>();
        let upward = async {
            if let Some(r) = self
                .requests(&mut cr, &mut uw, inj, ctx, plain, &scrub)
                .await
            {
                let _ = tx.send(r);
            } else {
                drop(tx);
                let _ = uw.shutdown().await;
            }
        };
        let down = pump_down(ur, cw, Some(scrub.clone()), Some(rx));
        let _ = tokio::join!(upward, down);
    }

    async fn requests<R, W>(
        &self,
        cr: &mut R,
        uw: &mut W,
        inj: &Injector,
        ctx: &Ctx,
        plain: bool,
        scrub: &Mutex<HttpScrubber>,
    ) -> Option<Refuse>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let host = &ctx.host;
        let mut buf = Vec::new();
        loop {
            // The next head.
            let head_len = loop {
                if let Some(n) = find_head_end(&buf) {
                    break n;
                }
                if buf.len() > MAX_HEAD {
                    return Some(refuse(
                        431,
                        "Request Header Fields Too Large",
                        "request head too large\n".into(),
                        None,
                    ));
                }
                match tokio::time::timeout(IDLE, fill(cr, &mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                }
            };
            let Some((mut head, _)) = RequestHead::parse(&buf[..head_len]) else {
                return Some(refuse(
                    400,
                    "Bad Request",
                    "malformed HTTP request\n".into(),
                    None,
                ));
            };
            // The request must be for the intercepted host (no fronting).
            if let Some(other) = foreign_authority(&head, host, ctx.port) {
                let v = Verdict::deny(
                    Reason::Other,
                    format!("credential injection: request for {other} on a connection to {host}"),
                );
                self.log_ctx(ctx, &v);
                return Some(refuse(
                    403,
                    "Forbidden",
                    format!("Airlock: {}\n", v.rule),
                    Some(v.rule),
                ));
            }
            if plain && !inj.allow_plain_http && inj.wants_injection(host, &head) {
                let v = Verdict::deny(
                    Reason::Other,
                    format!(
                        "credential injection: the secret for {host} is never sent over plain HTTP; use https://"
                    ),
                );
                self.log_ctx(ctx, &v);
                return Some(refuse(
                    403,
                    "Forbidden",
                    format!("Airlock: {}\n", v.rule),
                    Some(v.rule),
                ));
            }
            if plain && !inj.allow_plain_http {
                // Nothing to inject: only the check for other placeholders.
                if let Some(e) = inj.head_placeholder(host, &head) {
                    let v = Verdict::deny(Reason::Other, e.rule());
                    self.log_ctx(ctx, &v);
                    return Some(refuse(
                        403,
                        "Forbidden",
                        format!("Airlock: {}\n", v.rule),
                        Some(v.rule),
                    ));
                }
            } else {
                match inj.rewrite_request_head(host, &mut head) {
                    Ok(rw) => {
                        let mut sc = scrub.lock().unwrap_or_else(|e| e.into_inner());
                        for (f, t) in rw.scrub {
                            sc.add(f, t);
                        }
                        drop(sc);
                        for service in &rw.injected {
                            let v = Verdict::allow(
                                Reason::Other,
                                format!("credential {service} injected"),
                            );
                            self.log_ctx(ctx, &v);
                        }
                    }
                    Err(e) => {
                        let v = Verdict::deny(Reason::Other, e.rule());
                        self.log_ctx(ctx, &v);
                        return Some(refuse(
                            403,
                            "Forbidden",
                            format!("Airlock refused the request: {}\n", v.rule),
                            Some(v.rule),
                        ));
                    }
                }
            }
            let te = head
                .header("transfer-encoding")
                .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase());
            let cl = head
                .header("content-length")
                .map(|v| String::from_utf8_lossy(v).trim().to_string());
            let body = match (&te, &cl) {
                (Some(_), Some(_)) => {
                    return Some(refuse(
                        400,
                        "Bad Request",
                        "both Transfer-Encoding and Content-Length\n".into(),
                        None,
                    ));
                }
                (Some(t), None) if t.trim().ends_with("chunked") => Body::Chunked,
                (Some(_), None) => {
                    return Some(refuse(
                        501,
                        "Not Implemented",
                        "unsupported Transfer-Encoding\n".into(),
                        None,
                    ));
                }
                (None, Some(n)) => match n.parse::<u64>() {
                    Ok(n) => Body::Length(n),
                    Err(_) => {
                        return Some(refuse(
                            400,
                            "Bad Request",
                            "invalid Content-Length\n".into(),
                            None,
                        ));
                    }
                },
                (None, None) => Body::Length(0),
            };
            let upgrade =
                head.header("upgrade").is_some() || head.method.eq_ignore_ascii_case("CONNECT");
            // The response scrubber follows the responses' framing, which
            // depends on the method (HEAD: no body; CONNECT: a tunnel).
            scrub
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expect(&head.method);
            if uw.write_all(&head.to_bytes()).await.is_err() {
                return None;
            }
            buf.drain(..head_len);
            let ok = match body {
                Body::Length(n) => copy_len(cr, uw, &mut buf, n).await,
                Body::Chunked => copy_chunked(cr, uw, &mut buf).await,
            };
            if ok.is_err() {
                return None;
            }
            if uw.flush().await.is_err() {
                return None;
            }
            if upgrade {
                // Switching protocols: from here on, bytes as they come.
                if !buf.is_empty() && uw.write_all(&buf).await.is_err() {
                    return None;
                }
                let _ = tokio::io::copy(cr, uw).await;
                return None;
            }
        }
    }

    /// Splices `client` and `up`, scanning what the client sends for
    /// placeholders (`scan`: the connection is cut and the attempt logged)
    /// and scrubbing the responses that come back (`scrub`).
    pub(super) async fn splice_checked<C, U>(
        &self,
        client: C,
        up: U,
        scan: Option<StreamScan>,
        scrub: Option<HttpScrubber>,
        ctx: &Ctx,
    ) where
        C: AsyncRead + AsyncWrite + Unpin + Send,
        U: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut cr, cw) = tokio::io::split(client);
        let (ur, mut uw) = tokio::io::split(up);
        let scrub = scrub.map(|s| Arc::new(Mutex::new(s)));
        let upward = async {
            let mut scan = scan;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(service) = scan
                    .as_mut()
                    .and_then(|s| s.feed(&chunk[..n]).map(str::to_string))
                {
                    let e = crate::inject::Exfiltration {
                        service,
                        host: ctx.host.clone(),
                    };
                    self.log_ctx(ctx, &Verdict::deny(Reason::Other, e.rule()));
                    return true;
                }
                if uw.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
            }
            let _ = uw.shutdown().await;
            false
        };
        let down = pump_down(ur, cw, scrub, None);
        tokio::pin!(upward, down);
        tokio::select! {
            cut = &mut upward => {
                if !cut {
                    down.await;
                }
            }
            _ = &mut down => {}
        }
    }

    /// A transparent plain-HTTP connection while injection is on.
    pub(super) async fn transparent_http<S>(
        &self,
        inj: &Arc<Injector>,
        mut client: S,
        buf: Vec<u8>,
        dst: SocketAddr,
        host: &str,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let host = normalize_host(host);
        let ctx = Ctx {
            path: DecisionPath::Transparent,
            host: host.clone(),
            addr: Some(dst.ip()),
            port: dst.port(),
        };
        let head = RequestHead::parse(&buf).map(|(h, _)| h);
        let exfil = head
            .as_ref()
            .and_then(|h| inj.head_placeholder(&host, h))
            .map(|e| e.rule())
            .or_else(|| {
                (!inj.intercepts(&host))
                    .then(|| inj.carries_placeholder(&buf))
                    .flatten()
                    .map(|service| format!("exfiltration: placeholder of {service} sent to {host}"))
            });
        if let Some(rule) = exfil {
            let v = Verdict::deny(Reason::Other, rule);
            self.log_ctx(&ctx, &v);
            let body = self.refusal_body(&host, dst.port(), &v);
            let _ = respond(&mut client, 403, "Forbidden", &body, Some(&v.rule)).await;
            return;
        }
        let Ok(up) = self.connect(dst).await else {
            return;
        };
        if inj.intercepts(&host) {
            let client = Prefixed::new(buf, client);
            self.session(client, up, inj, &ctx, true).await;
            return;
        }
        let mut scan = inj.scanner();
        let _ = scan.feed(&buf);
        let mut up = up;
        if up.write_all(&buf).await.is_err() {
            return;
        }
        self.splice_checked(client, up, Some(scan), None, &ctx)
            .await;
    }
}

enum Body {
    Length(u64),
    Chunked,
}

fn refuse(code: u16, reason: &'static str, body: String, rule: Option<String>) -> Refuse {
    Refuse {
        code,
        reason,
        body,
        rule,
    }
}

/// The host a request names (Host header or absolute-form target) when it
/// is not `host`.
fn foreign_authority(head: &RequestHead, host: &str, port: u16) -> Option<String> {
    let mut names = Vec::new();
    if let Some(v) = head.header("host") {
        names.push(String::from_utf8_lossy(v).trim().to_string());
    }
    let t = head.target.to_ascii_lowercase();
    for scheme in ["http://", "https://"] {
        if let Some(rest) = t.strip_prefix(scheme) {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            names.push(rest[..end].to_string());
        }
    }
    names.into_iter().find(|n| {
        parse_authority(n, Some(port))
            .map(|(h, _)| normalize_host(&h))
            .as_deref()
            != Some(host)
    })
}

async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = r.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn copy_len<R, W>(r: &mut R, w: &mut W, buf: &mut Vec<u8>, mut n: u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        if buf.is_empty() && fill(r, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
        w.write_all(&buf[..k]).await?;
        buf.drain(..k);
        n -= k as u64;
    }
    Ok(())
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(buf.drain(..i + 2).collect());
        }
        if buf.len() > 8192 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk line too long",
            ));
        }
        if fill(r, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn copy_chunked<R, W>(r: &mut R, w: &mut W, buf: &mut Vec<u8>) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let line = read_line(r, buf).await?;
        let text = String::from_utf8_lossy(&line);
        let size = text.trim_end().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        w.write_all(&line).await?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                let t = read_line(r, buf).await?;
                w.write_all(&t).await?;
                if t == b"\r\n" {
                    return Ok(());
                }
            }
        }
        copy_len(r, w, buf, size + 2).await?;
    }
}

/// Upstream to client, scrubbed (when `scrub` is given). A `refuse`
/// message ends the stream with that response instead.
async fn pump_down<R, W>(
    mut ur: R,
    mut cw: W,
    scrub: Option<Arc<Mutex<HttpScrubber>>>,
    mut refuse_rx: Option<tokio::sync::oneshot::Receiver<Refuse>>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(16 * 1024);
    loop {
        let pending = scrub
            .as_ref()
            .is_some_and(|s| s.lock().unwrap_or_else(|e| e.into_inner()).pending());
        let read = async {
            if pending {
                tokio::time::timeout(SCRUB_IDLE, ur.read(&mut chunk))
                    .await
                    .ok()
            } else {
                Some(ur.read(&mut chunk).await)
            }
        };
        let res = match refuse_rx.as_mut() {
            Some(rx) => tokio::select! {
                r = read => r,
                m = rx => {
                    refuse_rx = None;
                    if let Ok(r) = m {
                        let _ = respond(&mut cw, r.code, r.reason, &r.body, r.rule.as_deref()).await;
                        return;
                    }
                    continue;
                }
            },
            None => read.await,
        };
        out.clear();
        let done = {
            let mut sc = scrub
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()));
            match (res, sc.as_deref_mut()) {
                (None, Some(sc)) => {
                    sc.flush_idle(&mut out);
                    false
                }
                (None, None) => false,
                (Some(Ok(0)) | Some(Err(_)), sc) => {
                    if let Some(sc) = sc {
                        sc.finish(&mut out);
                    }
                    true
                }
                (Some(Ok(n)), Some(sc)) => {
                    sc.feed(&chunk[..n], &mut out);
                    false
                }
                (Some(Ok(n)), None) => {
                    out.extend_from_slice(&chunk[..n]);
                    false
                }
            }
        };
        if !out.is_empty() && cw.write_all(&out).await.is_err() {
            return;
        }
        if done {
            let _ = cw.shutdown().await;
            return;
        }
        if cw.flush().await.is_err() {
            return;
        }
    }
}
