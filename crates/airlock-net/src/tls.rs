//! Just enough TLS to read the server name (SNI) of a ClientHello.
//!
//! Hand-rolled on purpose: we need three length-prefixed walks over bytes we
//! never modify (records → handshake → extensions → server_name), while
//! `tls-parser` would bring `nom` and a full TLS message model, and `rustls`
//! does not expose a parser for someone else's ClientHello. Every read is
//! bounds-checked through a small `Reader`; anything unexpected is `Malformed`.

/// What the first bytes of a stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// Not a TLS handshake record.
    NotTls,
    /// The start of a TLS handshake; more bytes are needed.
    Incomplete,
    /// A complete ClientHello, with its server name when it has one.
    Hello {
        /// The `server_name` extension's host name (lowercase).
        sni: Option<String>,
    },
    /// A TLS handshake record that is not a valid ClientHello.
    Malformed,
}

/// The largest ClientHello we reassemble (real ones are under 2 KiB;
/// post-quantum key shares make them about 1.8 KiB).
pub const MAX_HELLO: usize = 64 * 1024;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n.into())
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

/// Parses the start of a client's stream as a TLS ClientHello, reassembling
/// it from several records if needed.
pub fn parse_client_hello(buf: &[u8]) -> ClientHello {
    if buf.is_empty() {
        return ClientHello::Incomplete;
    }
    if buf[0] != 0x16 {
        return ClientHello::NotTls;
    }
    if buf.len() >= 2 && buf[1] != 0x03 {
        return ClientHello::NotTls;
    }
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return ClientHello::Incomplete;
        }
        if rest[0] != 0x16 || rest[1] != 0x03 {
            return ClientHello::Malformed;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return ClientHello::Malformed;
        }
        if rest.len() < 5 + len {
            return ClientHello::Incomplete;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return ClientHello::Malformed;
            }
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if body_len + 4 > MAX_HELLO {
                return ClientHello::Malformed;
            }
            if handshake.len() >= body_len + 4 {
                return match parse_hello_body(&handshake[4..4 + body_len]) {
                    Some(sni) => ClientHello::Hello { sni },
                    None => ClientHello::Malformed,
                };
            }
        }
    }
}

/// `Some(sni)` for a valid ClientHello body, `None` when malformed.
fn parse_hello_body(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { buf: body };
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.buf.is_empty() {
        return Some(None); // no extensions (old clients)
    }
    let mut exts = Reader { buf: r.vec16()? };
    let mut sni = None;
    while !exts.buf.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if ty != 0 {
            continue;
        }
        if sni.is_some() {
            return None; // duplicate server_name extension
        }
        let mut list = Reader {
            buf: Reader { buf: data }.vec16()?,
        };
        while !list.buf.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 && sni.is_none() {
                let s = std::str::from_utf8(name).ok()?;
                if s.is_empty() || !s.is_ascii() || s.contains(['\0', '/', ' ']) {
                    return None;
                }
                sni = Some(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    Some(sni)
}

/// Builds a minimal but well-formed TLS 1.2/1.3 ClientHello with the given
/// SNI (for tests of the gate, here and in the lead's integration tests).
pub fn build_client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x03]);
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        let mut list = vec![0u8];
        list.extend_from_slice(&(n.len() as u16).to_be_bytes());
        list.extend_from_slice(n);
        let mut ext = (list.len() as u16).to_be_bytes().to_vec();
        ext.extend_from_slice(&list);
        exts.extend_from_slice(&[0x00, 0x00]);
        exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&ext);
    }
    // supported_versions: TLS 1.3
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sni() {
        let hello = build_client_hello(Some("Allowed.Test"));
        assert_eq!(
            parse_client_hello(&hello),
            ClientHello::Hello {
                sni: Some("allowed.test".into())
            }
        );
        assert_eq!(
            parse_client_hello(&build_client_hello(None)),
            ClientHello::Hello { sni: None }
        );
        for cut in 0..hello.len() {
            assert_eq!(
                parse_client_hello(&hello[..cut]),
                ClientHello::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn reassembles_fragmented_records() {
        let hello = build_client_hello(Some("split.test"));
        let hs = &hello[5..];
        let (a, b) = hs.split_at(20);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            parse_client_hello(&two),
            ClientHello::Hello {
                sni: Some("split.test".into())
            }
        );
    }

    #[test]
    fn rejects_non_tls_and_garbage() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n"),
            ClientHello::NotTls
        );
        assert_eq!(parse_client_hello(b"SSH-2.0-x"), ClientHello::NotTls);
        let mut bad = build_client_hello(Some("a.test"));
        bad[5] = 0x02; // ServerHello
        assert_eq!(parse_client_hello(&bad), ClientHello::Malformed);
        let mut short = build_client_hello(Some("a.test"));
        // Extension length claims more than there is.
        let n = short.len();
        short[n - 9] = 0xff;
        assert!(matches!(
            parse_client_hello(&short),
            ClientHello::Malformed | ClientHello::Hello { .. }
        ));
        // Random bytes never panic.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let len = (x % 300) as usize;
            let mut v = vec![0x16, 0x03, 0x01];
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                v.push((x >> 16) as u8);
            }
            let _ = parse_client_hello(&v);
        }
    }
}
