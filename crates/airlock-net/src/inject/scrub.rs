//! Response scrubbing: replacing secrets echoed by an upstream before the
//! sandbox reads them.
//!
//! - [`Scrubber`]: a streaming matcher over a byte stream. It replaces every
//!   pattern with a same-length stand-in and holds back the longest suffix
//!   that could still be the start of a pattern, so a secret split across
//!   any number of reads is caught.
//! - [`HttpScrubber`]: follows HTTP/1 response framing (heads, Content-Length
//!   and chunked bodies, trailers, interim responses, upgrades) and scrubs
//!   the *payload*, so a secret split across two chunks of a chunked body,
//!   with the chunk framing between its halves, is caught too. Chunked
//!   bodies are re-framed around the scrubbed bytes.
//! - [`StreamScan`]: detection (not replacement) of patterns in a stream.
//!
//! Stand-ins have the pattern's length, so a Content-Length stays right
//! whatever the placeholder's length: the stand-in is the placeholder cut
//! or padded with `x` ([`mask_for`]).

use std::collections::VecDeque;
use std::fmt;

use zeroize::Zeroizing;

/// See [`Scrubber::flush_idle`].
pub const IDLE_MASK_MIN: usize = 16;

/// The longest response head or framing line followed; past it the stream
/// is scrubbed as raw bytes.
const MAX_FRAMING: usize = 64 * 1024;

/// A same-length stand-in for `form`: `preferred` when the lengths agree,
/// else `preferred` cut or padded with `x`.
pub(crate) fn mask_for(form: &[u8], preferred: &[u8]) -> Vec<u8> {
    let mut m: Vec<u8> = preferred.iter().copied().take(form.len()).collect();
    m.resize(form.len(), b'x');
    m
}

/// Replaces patterns in a byte stream with same-length stand-ins, across
/// chunk boundaries.
///
/// It holds back the longest suffix of what it was fed that is a proper
/// prefix of some pattern, until more data shows whether it is one
/// ([`Scrubber::feed`]) or the stream ends ([`Scrubber::finish`]). Same
/// length keeps HTTP framing (Content-Length) valid.
#[derive(Default)]
pub struct Scrubber {
    /// (pattern, stand-in), longest pattern first.
    patterns: Vec<(Zeroizing<Vec<u8>>, Vec<u8>)>,
    /// Held back: not passed on yet, possibly the start of a pattern.
    tail: Zeroizing<Vec<u8>>,
    /// Passed on by [`Scrubber::flush_idle`] although possibly the start
    /// of a pattern: if the next bytes complete it, they are masked.
    shown: Zeroizing<Vec<u8>>,
    max: usize,
    /// How many replacements were made.
    pub replaced: usize,
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("patterns", &self.patterns.len())
            .field("held", &self.tail.len())
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl Scrubber {
    /// Adds a pattern; `to` is cut or padded to `from`'s length.
    pub fn add(&mut self, from: Vec<u8>, to: Vec<u8>) {
        if from.is_empty() || self.patterns.iter().any(|(f, _)| **f == from) {
            return;
        }
        let to = mask_for(&from, &to);
        self.max = self.max.max(from.len());
        self.patterns.push((Zeroizing::new(from), to));
        // Longest first: of two patterns starting at the same byte, the
        // longer one is replaced whole.
        self.patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    }

    /// Whether it has no pattern (everything passes unchanged).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Feeds `data`; appends what is safe to pass on to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.patterns.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        let shown = self.shown.len();
        let mut buf = Zeroizing::new(Vec::with_capacity(shown + self.tail.len() + data.len()));
        buf.extend_from_slice(&self.shown);
        buf.extend_from_slice(&self.tail);
        buf.extend_from_slice(data);
        self.replace_from(&mut buf, shown);
        let cut = buf.len() - self.held_suffix(&buf);
        if cut > shown {
            out.extend_from_slice(&buf[shown..cut]);
        }
        self.shown.clear();
        self.tail.clear();
        if cut < shown {
            self.shown.extend_from_slice(&buf[cut..shown]);
            self.tail.extend_from_slice(&buf[shown..]);
        } else {
            self.tail.extend_from_slice(&buf[cut..]);
        }
    }

    /// Replaces every whole pattern in `buf`, in place, leaving bytes
    /// before `from` (already passed on) as they are.
    fn replace_from(&mut self, buf: &mut [u8], from: usize) {
        let mut i = 0;
        while i < buf.len() {
            let hit = self
                .patterns
                .iter()
                .position(|(f, _)| buf[i..].starts_with(f));
            match hit {
                Some(p) if i + self.patterns[p].0.len() > from => {
                    let (f, to) = &self.patterns[p];
                    let n = f.len();
                    let skip = from.saturating_sub(i);
                    buf[i + skip..i + n].copy_from_slice(&to[skip..]);
                    self.replaced += 1;
                    i += n;
                }
                _ => i += 1,
            }
        }
    }

    /// The length of the longest suffix of `buf` that is a proper prefix of
    /// a pattern.
    fn held_suffix(&self, buf: &[u8]) -> usize {
        (1..self.max.min(buf.len() + 1))
            .rev()
            .find(|&k| {
                let suffix = &buf[buf.len() - k..];
                self.patterns
                    .iter()
                    .any(|(f, _)| f.len() > k && f.starts_with(suffix))
            })
            .unwrap_or(0)
    }

    /// Replaces every whole pattern in a complete piece (a response head,
    /// a trailer line): nothing is held back.
    pub fn scrub_whole(&mut self, piece: &mut [u8]) {
        if !self.patterns.is_empty() {
            self.replace_from(piece, 0);
        }
    }

    /// Whether bytes are held back.
    pub fn pending(&self) -> bool {
        !self.tail.is_empty()
    }

    /// The stream went idle with bytes held back (a possible start of a
    /// secret): passes them on, masked once the possible start is at least
    /// [`IDLE_MASK_MIN`] bytes long, and remembers them: if the next bytes
    /// complete a secret, that rest is masked. So a pause can show at most
    /// the first `IDLE_MASK_MIN - 1` bytes of a secret, never the whole.
    pub fn flush_idle(&mut self, out: &mut Vec<u8>) {
        if self.tail.is_empty() {
            return;
        }
        let mut start = Zeroizing::new(self.shown.to_vec());
        start.extend_from_slice(&self.tail);
        let mask = self
            .patterns
            .iter()
            .find(|(f, _)| f.starts_with(&start))
            .map(|(_, to)| to);
        match mask {
            Some(to) if start.len() >= IDLE_MASK_MIN => {
                out.extend_from_slice(&to[self.shown.len()..start.len()]);
            }
            _ => out.extend_from_slice(&self.tail),
        }
        self.tail.clear();
        self.shown = start;
    }

    /// Ends the stream: appends the held-back bytes.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tail);
        self.tail.clear();
        self.shown.clear();
    }
}

// ------------------------------------------------------------ HTTP

/// Where an [`HttpScrubber`] is in the response stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a response head.
    Head,
    /// A Content-Length body: bytes left.
    Length(u64),
    /// A chunk-size line.
    ChunkLine,
    /// Chunk data: bytes left.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines, up to the empty line.
    Trailers,
    /// A body delimited by the end of the connection.
    UntilClose,
    /// No HTTP framing (after `101 Switching Protocols`, a `CONNECT`, or
    /// a malformed response): bytes scrubbed as a plain stream.
    Raw,
}

/// Scrubs a stream of HTTP/1 responses: heads and trailers whole, bodies as
/// streams of *payload* bytes, so a secret split across chunks is caught.
///
/// Content-Length bodies keep their length (same-length stand-ins); chunked
/// bodies are re-framed: each run of scrubbed bytes becomes one chunk (chunk
/// extensions are dropped). The matcher is flushed at the end of each body,
/// so nothing is held across responses. The request methods must be given
/// in order ([`HttpScrubber::expect`]): a `HEAD` response has no body, a
/// successful `CONNECT` switches to raw bytes.
#[derive(Debug)]
pub struct HttpScrubber {
    scrub: Scrubber,
    state: State,
    /// Received, not yet processed (an incomplete head or framing line).
    input: Zeroizing<Vec<u8>>,
    methods: VecDeque<String>,
}

impl HttpScrubber {
    /// A response scrubber with `scrub`'s patterns.
    pub fn new(scrub: Scrubber) -> HttpScrubber {
        HttpScrubber {
            scrub,
            state: State::Head,
            input: Zeroizing::new(Vec::new()),
            methods: VecDeque::new(),
        }
    }

    /// Adds a pattern (see [`Scrubber::add`]).
    pub fn add(&mut self, from: Vec<u8>, to: Vec<u8>) {
        self.scrub.add(from, to);
    }

    /// The next request on the connection has `method`.
    pub fn expect(&mut self, method: &str) {
        self.methods.push_back(method.to_string());
    }

    /// How many replacements were made.
    pub fn replaced(&self) -> usize {
        self.scrub.replaced
    }

    /// Feeds bytes from the upstream; appends what may go to the client.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.input.extend_from_slice(data);
        let input = std::mem::take(&mut *self.input);
        let input = Zeroizing::new(input);
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match self.state {
                State::Head => {
                    let Some(n) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if rest.len() > MAX_FRAMING {
                            self.state = State::Raw;
                            continue;
                        }
                        break;
                    };
                    let mut head = Zeroizing::new(rest[..n + 4].to_vec());
                    self.scrub.scrub_whole(&mut head);
                    self.state = self.framing(&head);
                    out.extend_from_slice(&head);
                    pos += n + 4;
                }
                State::Length(left) => {
                    let k = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.scrub.feed(&rest[..k], out);
                    pos += k;
                    let left = left - k as u64;
                    self.state = if left == 0 {
                        self.scrub.finish(out);
                        State::Head
                    } else {
                        State::Length(left)
                    };
                }
                State::ChunkLine => {
                    let Some(n) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_FRAMING {
                            self.state = State::Raw;
                            continue;
                        }
                        break;
                    };
                    let Some(size) = chunk_size(&rest[..n]) else {
                        // Not chunked after all: scrub what follows as it is.
                        self.state = State::Raw;
                        continue;
                    };
                    pos += n + 2;
                    if size == 0 {
                        let mut last = Vec::new();
                        self.scrub.finish(&mut last);
                        put_chunk(out, &last);
                        out.extend_from_slice(b"0\r\n");
                        self.state = State::Trailers;
                    } else {
                        self.state = State::ChunkData(size);
                    }
                }
                State::ChunkData(left) => {
                    let k = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let mut part = Vec::with_capacity(k);
                    self.scrub.feed(&rest[..k], &mut part);
                    put_chunk(out, &part);
                    pos += k;
                    let left = left - k as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if &rest[..2] != b"\r\n" {
                        self.state = State::Raw;
                        continue;
                    }
                    pos += 2;
                    self.state = State::ChunkLine;
                }
                State::Trailers => {
                    let Some(n) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_FRAMING {
                            self.state = State::Raw;
                            continue;
                        }
                        break;
                    };
                    let mut line = Zeroizing::new(rest[..n + 2].to_vec());
                    self.scrub.scrub_whole(&mut line);
                    out.extend_from_slice(&line);
                    pos += n + 2;
                    if n == 0 {
                        self.state = State::Head;
                    }
                }
                State::UntilClose | State::Raw => {
                    self.scrub.feed(rest, out);
                    pos = input.len();
                }
            }
        }
        self.input.extend_from_slice(&input[pos..]);
    }

    /// The framing of the body after response head `head`.
    fn framing(&mut self, head: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = resp.parse(head) else {
            return State::Raw;
        };
        let code = resp.code.unwrap_or(0);
        if code == 101 {
            self.methods.pop_front();
            return State::Raw;
        }
        if (100..200).contains(&code) {
            // Interim (100 Continue, 103 Early Hints): the final one follows.
            return State::Head;
        }
        let method = self.methods.pop_front().unwrap_or_default();
        if method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&code) {
            return State::Raw;
        }
        if method.eq_ignore_ascii_case("HEAD") || code == 204 || code == 304 {
            return State::Head;
        }
        let values = |name: &str| {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        let te = values("transfer-encoding");
        if !te.is_empty() {
            let last = te.join(",");
            let last = last.rsplit(',').next().unwrap_or("").trim();
            return if last == "chunked" {
                State::ChunkLine
            } else {
                State::UntilClose
            };
        }
        let cl = values("content-length");
        let mut lengths = cl.iter().flat_map(|v| v.split(',')).map(str::trim);
        match lengths.next().map(str::parse::<u64>) {
            Some(Ok(n)) if lengths.all(|v| v.parse() == Ok(n)) => {
                if n == 0 {
                    State::Head
                } else {
                    State::Length(n)
                }
            }
            Some(_) => State::Raw,
            None => State::UntilClose,
        }
    }

    /// Whether [`HttpScrubber::flush_idle`] would pass something on: only
    /// raw streams (after an upgrade) release held bytes when idle. Bodies
    /// hold them until their next bytes or their end.
    pub fn pending(&self) -> bool {
        self.state == State::Raw && self.scrub.pending()
    }

    /// The upstream went idle: see [`Scrubber::flush_idle`] (raw streams
    /// only).
    pub fn flush_idle(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Raw {
            self.scrub.flush_idle(out);
        }
    }

    /// The upstream closed: passes on everything held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::ChunkData(_) => {
                let mut last = Vec::new();
                self.scrub.finish(&mut last);
                put_chunk(out, &last);
            }
            _ => self.scrub.finish(out),
        }
        let mut rest = Zeroizing::new(std::mem::take(&mut *self.input));
        self.scrub.scrub_whole(&mut rest);
        out.extend_from_slice(&rest);
    }
}

/// The size of a chunk-size line (`1a;ext=1`), without its CRLF.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text.split(';').next()?.trim();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// Appends `data` as one chunk (nothing when empty: an empty chunk would
/// end the body).
fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

// ------------------------------------------------------------ detection

/// Finds patterns in a byte stream across chunk boundaries.
#[derive(Debug)]
pub struct StreamScan {
    patterns: Vec<(Vec<u8>, String)>,
    tail: Vec<u8>,
    max: usize,
}

impl StreamScan {
    /// A scanner for (pattern, label) pairs.
    pub fn new(patterns: Vec<(Vec<u8>, String)>) -> StreamScan {
        let patterns: Vec<_> = patterns
            .into_iter()
            .filter(|(p, _)| !p.is_empty())
            .collect();
        let max = patterns.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        StreamScan {
            patterns,
            tail: Vec::new(),
            max,
        }
    }

    /// Feeds `data`; the label of a pattern found (possibly spanning the
    /// previous chunks).
    pub fn feed(&mut self, data: &[u8]) -> Option<&str> {
        if self.max == 0 {
            return None;
        }
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(data);
        let hit = self
            .patterns
            .iter()
            .position(|(p, _)| buf.windows(p.len()).any(|w| w == p.as_slice()));
        let keep = (self.max - 1).min(buf.len());
        self.tail = buf[buf.len() - keep..].to_vec();
        hit.map(|i| self.patterns[i].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"sk-ant-REALSECRET-0123456789abcdefghijklmnop";

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn scrubber(stand_in: &[u8]) -> Scrubber {
        let mut s = Scrubber::default();
        s.add(SECRET.to_vec(), stand_in.to_vec());
        s
    }

    #[test]
    fn a_secret_split_at_every_position_is_replaced() {
        let stand_in = mask_for(SECRET, b"airlock-placeholder-00112233445566778899aabb");
        for at in 0..=SECRET.len() {
            let mut s = scrubber(&stand_in);
            let mut out = Vec::new();
            let mut first = b"echo: ".to_vec();
            first.extend_from_slice(&SECRET[..at]);
            let mut second = SECRET[at..].to_vec();
            second.extend_from_slice(b" end");
            s.feed(&first, &mut out);
            s.feed(&second, &mut out);
            s.finish(&mut out);
            let mut want = b"echo: ".to_vec();
            want.extend_from_slice(&stand_in);
            want.extend_from_slice(b" end");
            assert_eq!(out, want, "split at {at}");
            assert_eq!(s.replaced, 1);
        }
    }

    #[test]
    fn a_secret_split_across_three_reads_and_repeated() {
        let stand_in = vec![b'P'; SECRET.len()];
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend_from_slice(SECRET);
            input.push(b'|');
        }
        input.extend_from_slice(&SECRET[..10]); // a prefix at the end: passed on at finish
        for a in (0..input.len()).step_by(5) {
            for b in (a..input.len()).step_by(7) {
                let mut s = scrubber(&stand_in);
                let mut out = Vec::new();
                s.feed(&input[..a], &mut out);
                s.feed(&input[a..b], &mut out);
                s.feed(&input[b..], &mut out);
                s.finish(&mut out);
                assert!(!contains(&out, SECRET), "{a} {b}");
                assert_eq!(out.len(), input.len());
                assert_eq!(s.replaced, 3);
                assert!(out.ends_with(&SECRET[..10]));
            }
        }
    }

    #[test]
    fn only_a_possible_start_is_held_back() {
        let mut s = scrubber(b"x");
        let mut out = Vec::new();
        s.feed(b"{\"a\":1}\n", &mut out);
        assert_eq!(out, b"{\"a\":1}\n");
        assert!(!s.pending());
        s.feed(b"ask", &mut out);
        assert_eq!(out, b"{\"a\":1}\na", "\"sk\" could start the secret");
        assert!(s.pending());
        s.feed(b"y", &mut out);
        assert_eq!(out, b"{\"a\":1}\nasky");
        assert!(!s.pending());
    }

    #[test]
    fn idle_pauses_never_show_a_whole_secret() {
        let stand_in = vec![b'P'; SECRET.len()];
        for at in 1..SECRET.len() {
            let mut s = scrubber(&stand_in);
            let mut out = Vec::new();
            s.feed(&SECRET[..at], &mut out);
            s.flush_idle(&mut out);
            s.feed(&SECRET[at..], &mut out);
            s.finish(&mut out);
            assert_eq!(out.len(), SECRET.len());
            let shown = out.iter().zip(SECRET).take_while(|(a, b)| a == b).count();
            assert!(
                shown < IDLE_MASK_MIN,
                "pause at {at}: {shown} bytes of the secret shown"
            );
            assert!(out.ends_with(&stand_in[at.max(shown)..]), "pause at {at}");
        }
        // Two pauses.
        let mut s = scrubber(&stand_in);
        let mut out = Vec::new();
        for part in [&SECRET[..5], &SECRET[5..20], &SECRET[20..]] {
            s.feed(part, &mut out);
            s.flush_idle(&mut out);
        }
        s.finish(&mut out);
        assert_eq!(&out[..5], &SECRET[..5]);
        assert_eq!(&out[5..], &stand_in[5..]);
        // A pause on something that is not a secret after all changes nothing.
        let mut s = scrubber(&stand_in);
        let mut out = Vec::new();
        s.feed(b"ok sk-ant-RE", &mut out);
        s.flush_idle(&mut out);
        s.feed(b"ADME", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"ok sk-ant-README");
    }

    #[test]
    fn stand_ins_keep_the_length() {
        let mut s = Scrubber::default();
        s.add(b"SECRETVALUE".to_vec(), b"ph".to_vec());
        s.add(b"SHORT".to_vec(), b"a-much-longer-placeholder".to_vec());
        let mut out = Vec::new();
        s.feed(b"a SECRETVALUE b SHORT c", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a phxxxxxxxxx b a-muc c");
    }

    fn http(stand_in: &[u8]) -> HttpScrubber {
        HttpScrubber::new(scrubber(stand_in))
    }

    /// Feeds `input` in pieces cut at `cuts`, then ends the stream.
    fn run(h: &mut HttpScrubber, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            h.feed(&input[last..c], &mut out);
            last = c;
        }
        h.feed(&input[last..], &mut out);
        h.finish(&mut out);
        out
    }

    /// The body of a chunked message (`chunked` starts at its first chunk
    /// line); the bytes after it.
    fn dechunk(mut chunked: &[u8]) -> (Vec<u8>, &[u8]) {
        let mut body = Vec::new();
        loop {
            let i = chunked.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&chunked[..i]).unwrap(), 16).unwrap();
            chunked = &chunked[i + 2..];
            if size == 0 {
                assert!(chunked.starts_with(b"\r\n"), "no trailers here");
                return (body, &chunked[2..]);
            }
            body.extend_from_slice(&chunked[..size]);
            assert_eq!(&chunked[size..size + 2], b"\r\n");
            chunked = &chunked[size + 2..];
        }
    }

    #[test]
    fn chunked_body_with_the_secret_split_across_chunks_at_every_position() {
        let stand_in = mask_for(SECRET, b"airlock-placeholder-0123456789abcdef");
        for at in 0..=SECRET.len() {
            let mut a = b"{\"you_sent\":\"".to_vec();
            a.extend_from_slice(&SECRET[..at]);
            let mut b = SECRET[at..].to_vec();
            b.extend_from_slice(b"\"}");
            let mut input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for part in [&a, &b] {
                if !part.is_empty() {
                    input.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                    input.extend_from_slice(part);
                    input.extend_from_slice(b"\r\n");
                }
            }
            input.extend_from_slice(b"0\r\n\r\n");
            let mut want = b"{\"you_sent\":\"".to_vec();
            want.extend_from_slice(&stand_in);
            want.extend_from_slice(b"\"}");
            // Whole, and also read in pieces cut inside the framing.
            for cuts in [vec![], vec![50, 52], vec![input.len() - 3]] {
                let mut h = http(&stand_in);
                h.expect("GET");
                let out = run(&mut h, &input, &cuts);
                assert!(!contains(&out, SECRET), "split at {at}, cuts {cuts:?}");
                let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let (body, after) = dechunk(&out[head_end..]);
                assert_eq!(body, want, "split at {at}, cuts {cuts:?}");
                assert!(after.is_empty());
                assert_eq!(h.replaced(), 1);
            }
        }
    }

    #[test]
    fn content_length_stays_right_whatever_the_placeholder_length() {
        // Placeholders longer and shorter than the secret.
        for stand_in in [
            b"airlock-placeholder-0123456789abcdef0123456789abcdef0123".to_vec(),
            b"airlock-placeholder-0123".to_vec(),
        ] {
            let body = [b"key=".as_slice(), SECRET, b"; again ", SECRET].concat();
            let input = [
                format!(
                    "HTTP/1.1 200 OK\r\nX-Echo: {}\r\nContent-Length: {}\r\n\r\n",
                    String::from_utf8_lossy(SECRET),
                    body.len()
                )
                .as_bytes(),
                &body,
            ]
            .concat();
            for cut in 1..input.len() {
                let mut h = http(&stand_in);
                h.expect("GET");
                let out = run(&mut h, &input, &[cut]);
                assert!(!contains(&out, SECRET), "cut {cut}");
                let text = String::from_utf8(out).unwrap();
                let (head, got) = text.split_once("\r\n\r\n").unwrap();
                let cl: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(got.len(), cl, "the body matches its Content-Length");
                assert_eq!(h.replaced(), 3);
            }
        }
    }

    #[test]
    fn keep_alive_responses_head_interim_and_upgrade() {
        let stand_in = vec![b'P'; SECRET.len()];
        let s = String::from_utf8_lossy(SECRET).into_owned();
        let p = String::from_utf8_lossy(&stand_in).into_owned();
        // HEAD: Content-Length but no body; 100 Continue before the final
        // response; 204; a body ending with a secret's start, passed on at
        // its end (not held across responses); then an upgrade.
        let input = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nends sk-a\
             HTTP/1.1 204 No Content\r\nX-K: {s}\r\n\r\n\
             HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: {s}\r\n\r\n\
             HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw {s} bytes"
        );
        let want = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nends sk-a\
             HTTP/1.1 204 No Content\r\nX-K: {p}\r\n\r\n\
             HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: {p}\r\n\r\n\
             HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nraw {p} bytes"
        );
        for cut in 1..input.len() {
            let mut h = http(&stand_in);
            for m in ["HEAD", "POST", "DELETE", "GET", "GET"] {
                h.expect(m);
            }
            let mut out = Vec::new();
            h.feed(&input.as_bytes()[..cut], &mut out);
            let before_end = out.len();
            h.feed(&input.as_bytes()[cut..], &mut out);
            h.finish(&mut out);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), want, "cut {cut}");
            // The 9-byte body ending in "sk-a" is complete: not held back.
            let body_end = want.find("ends sk-a").unwrap() + 9;
            if cut >= input.find("ends sk-a").unwrap() + 9 {
                assert!(
                    before_end >= body_end,
                    "cut {cut}: a finished body is not held"
                );
            }
        }
    }

    #[test]
    fn bodies_hold_a_possible_start_but_raw_streams_release_it_when_idle() {
        let stand_in = vec![b'P'; SECRET.len()];
        let mut h = http(&stand_in);
        h.expect("GET");
        let mut out = Vec::new();
        h.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab sk\r\n",
            &mut out,
        );
        assert!(!h.pending(), "a body holds until its next bytes or its end");
        let mut idle = Vec::new();
        h.flush_idle(&mut idle);
        assert!(idle.is_empty());
        h.feed(b"3\r\n-an\r\n0\r\n\r\n", &mut out);
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let (body, _) = dechunk(&out[head_end..]);
        assert_eq!(body, b"ab sk-an");

        let mut h = http(&stand_in);
        h.expect("GET");
        let mut out = Vec::new();
        h.feed(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\nframe sk",
            &mut out,
        );
        assert!(out.ends_with(b"frame "));
        assert!(h.pending());
        h.flush_idle(&mut out);
        assert!(out.ends_with(b"frame sk"));
    }

    #[test]
    fn malformed_framing_is_still_scrubbed_as_a_stream() {
        let stand_in = vec![b'P'; SECRET.len()];
        let s = String::from_utf8_lossy(SECRET).into_owned();
        for input in [
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{s}"),
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n{s}"),
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{s}"),
            format!("HTTP/1.0 200 OK\r\n\r\n{s}"),
            format!("garbage\r\n\r\n{s}"),
        ] {
            let bytes = input.as_bytes();
            for cut in [1, bytes.len() / 2, bytes.len() - 1] {
                let mut h = http(&stand_in);
                h.expect("GET");
                let out = run(&mut h, bytes, &[cut]);
                assert!(!contains(&out, SECRET), "{input:?} cut {cut}");
                assert_eq!(out.len(), bytes.len());
            }
        }
    }

    #[test]
    fn stream_scan_across_chunks() {
        let mut sc = StreamScan::new(vec![(b"airlock-placeholder-abc".to_vec(), "svc".into())]);
        assert_eq!(sc.feed(b"data airlock-place"), None);
        assert_eq!(sc.feed(b"holder-a"), None);
        assert_eq!(sc.feed(b"bc more"), Some("svc"));
    }
}
