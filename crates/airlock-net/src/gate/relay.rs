//! Zero-copy relay between two kernel sockets.
//!
//! When both sides of an allowed connection are kernel sockets (a proxy
//! client on the gate's TCP or unix listener, and the upstream TCP
//! connection), the bytes need not pass through user space: each direction
//! moves them with splice(2) from the source socket into a pipe and from the
//! pipe into the destination socket, in the kernel (page references, no
//! copies). tokio's readiness drives the non-blocking calls, so a relay costs
//! no thread. Streams without a file descriptor (the transparent path's
//! in-process stream, TLS interception) keep the user-space copy.
//!
//! Semantics are those of [`tokio::io::copy_bidirectional`]: when one side
//! reaches EOF, the other side's write half is shut down and the other
//! direction carries on; the result is the byte count of each direction, or
//! the first error.

use std::any::Any;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};
use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// Pipe size asked for each direction: one call moves up to this much. An
/// unprivileged process gets it up to `/proc/sys/fs/pipe-max-size` (1 MiB
/// by default); if refused, the default pipe (64 KiB) still works.
const PIPE_SIZE: usize = 1 << 20;

/// A tokio socket with a file descriptor that splice(2) accepts.
#[derive(Clone, Copy)]
pub(crate) enum KernelSocket<'a> {
    Tcp(&'a TcpStream),
    Unix(&'a UnixStream),
}

/// `s` as a kernel socket, when its type is one (a poor man's
/// specialization: the gate's handlers are generic over the client stream).
pub(crate) fn kernel_socket<S: Any>(s: &S) -> Option<KernelSocket<'_>> {
    let s: &dyn Any = s;
    if let Some(t) = s.downcast_ref::<TcpStream>() {
        return Some(KernelSocket::Tcp(t));
    }
    s.downcast_ref::<UnixStream>().map(KernelSocket::Unix)
}

impl KernelSocket<'_> {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            KernelSocket::Tcp(s) => s.as_fd(),
            KernelSocket::Unix(s) => s.as_fd(),
        }
    }

    async fn ready(&self, interest: Interest) -> io::Result<()> {
        match self {
            KernelSocket::Tcp(s) => s.ready(interest).await.map(drop),
            KernelSocket::Unix(s) => s.ready(interest).await.map(drop),
        }
    }

    /// Runs `f` if the socket is ready for `interest`; a `WouldBlock` from
    /// `f` clears the readiness (tokio's `try_io`).
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match self {
            KernelSocket::Tcp(s) => s.try_io(interest, f),
            KernelSocket::Unix(s) => s.try_io(interest, f),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match shutdown(self.fd().as_raw_fd(), Shutdown::Write) {
            // The peer is already gone: nothing left to tell it.
            Ok(()) | Err(Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// One pipe per direction.
pub(crate) struct Pipes {
    a_to_b: Pipe,
    b_to_a: Pipe,
}

impl Pipes {
    /// Two non-blocking pipes, enlarged to [`PIPE_SIZE`] where allowed.
    pub(crate) fn new() -> io::Result<Pipes> {
        Ok(Pipes {
            a_to_b: Pipe::new()?,
            b_to_a: Pipe::new()?,
        })
    }
}

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// The pipe's capacity in bytes.
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // Refused above the limits (pipe-max-size, the per-user pipe
        // budget): the default size will do.
        let size = match fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32)) {
            Ok(n) => n as usize,
            Err(_) => fcntl(&w, FcntlArg::F_GETPIPE_SZ)? as usize,
        };
        Ok(Pipe { r, w, size })
    }
}

/// Relays between `a` and `b` until both directions reach EOF; returns the
/// bytes moved `a` to `b` and `b` to `a`.
pub(crate) async fn splice_bidirectional(
    a: KernelSocket<'_>,
    b: KernelSocket<'_>,
    pipes: Pipes,
) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b, &pipes.a_to_b), one_way(b, a, &pipes.b_to_a))
}

fn splice_nb(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

/// Moves `src` to `dst` through `pipe` until EOF on `src`, then shuts
/// `dst`'s write half down.
async fn one_way(src: KernelSocket<'_>, dst: KernelSocket<'_>, pipe: &Pipe) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // Fill: only ever into an empty pipe, so that EAGAIN means "the
        // socket has nothing" and not "the pipe is full" (a pipe counts
        // slots, not bytes: it can be full well short of its size), which
        // would clear a readiness that is still there.
        let n = loop {
            src.ready(Interest::READABLE).await?;
            match src.try_io(Interest::READABLE, || {
                splice_nb(src.fd(), pipe.w.as_fd(), pipe.size)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            dst.shutdown_write()?;
            return Ok(total);
        }
        // Drain all of it before the next fill.
        let mut left = n;
        while left > 0 {
            dst.ready(Interest::WRITABLE).await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice_nb(pipe.r.as_fd(), dst.fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected loopback TCP pair.
    async fn tcp_pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let (c, s) = tokio::join!(TcpStream::connect(l.local_addr().unwrap()), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    /// Deterministic, position-dependent bytes, so that a reordered, lost
    /// or repeated chunk shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    }

    /// Writes `data` in odd-sized pieces, then shuts the write half down
    /// (if `half_close`); reads everything the other side sends until EOF.
    async fn talk<S>(mut s: S, data: Vec<u8>, half_close: bool) -> (S, Vec<u8>)
    where
        S: AsyncReadExt + AsyncWriteExt + Unpin,
    {
        let (mut r, mut w) = tokio::io::split(&mut s);
        let send = async {
            for piece in data.chunks(123_457) {
                w.write_all(piece).await.unwrap();
            }
            if half_close {
                w.shutdown().await.unwrap();
            }
        };
        let recv = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(send, recv);
        (s, got)
    }

    /// The relay's byte counts are those sent each way, and what arrived is what was sent.
    fn assert_relayed(
        counts: io::Result<(u64, u64)>,
        (up, down): (&[u8], &[u8]),
        (server_got, client_got): (&[u8], &[u8]),
    ) {
        assert_eq!(counts.unwrap(), (up.len() as u64, down.len() as u64));
        assert!(server_got == up, "upload corrupted");
        assert!(client_got == down, "download corrupted");
    }

    /// Several MB each way at once through the splice relay between two
    /// real loopback TCP connections: bytes arrive intact, each side's
    /// half-close reaches the other end, the counts are right.
    #[tokio::test]
    async fn splice_relay_moves_both_ways_and_propagates_half_close() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, gate_a) = tcp_pair(&l).await;
        let (gate_b, server) = tcp_pair(&l).await;
        let (a, b) = (
            kernel_socket(&gate_a).unwrap(),
            kernel_socket(&gate_b).unwrap(),
        );
        let up = pattern(9 << 20, 0x5a);
        let down = pattern(7 << 20, 0xa5);

        let relay = splice_bidirectional(a, b, Pipes::new().unwrap());
        // The client half-closes first; the server, having seen EOF, sends
        // all its data only then, and closes.
        let client_side = talk(client, up.clone(), true);
        let server_side = async {
            let mut s = server;
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            for piece in down.chunks(100_003) {
                s.write_all(piece).await.unwrap();
            }
            drop(s);
            got
        };
        let (counts, (_client, client_got), server_got) =
            tokio::join!(relay, client_side, server_side);
        assert_relayed(counts, (&up, &down), (&server_got, &client_got));
    }

    /// Both directions at once, with a unix socket on the client side (the
    /// gate's unix proxy listener) and TCP upstream.
    #[tokio::test]
    async fn splice_relay_unix_to_tcp_concurrent() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, gate_a) = UnixStream::pair().unwrap();
        let (gate_b, server) = tcp_pair(&l).await;
        let (a, b) = (
            kernel_socket(&gate_a).unwrap(),
            kernel_socket(&gate_b).unwrap(),
        );
        let up = pattern(5 << 20, 1);
        let down = pattern(6 << 20, 2);
        let (counts, (_c, client_got), (_s, server_got)) = tokio::join!(
            splice_bidirectional(a, b, Pipes::new().unwrap()),
            talk(client, up.clone(), true),
            talk(server, down.clone(), true),
        );
        assert_relayed(counts, (&up, &down), (&server_got, &client_got));
    }

    /// A peer that resets the connection ends the relay with an error, not
    /// a hang.
    #[tokio::test]
    async fn splice_relay_reports_a_reset() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, gate_a) = tcp_pair(&l).await;
        let (gate_b, server) = tcp_pair(&l).await;
        let (a, b) = (
            kernel_socket(&gate_a).unwrap(),
            kernel_socket(&gate_b).unwrap(),
        );
        // SO_LINGER 0: close sends a RST.
        let zero = nix::sys::socket::sockopt::Linger;
        let l_zero = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&server, zero, &l_zero).unwrap();
        let mut client = client;
        client.write_all(&pattern(64 << 10, 3)).await.unwrap();
        drop(server);
        let r = splice_bidirectional(a, b, Pipes::new().unwrap()).await;
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn only_kernel_sockets_are_spliceable() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (d, _) = tokio::io::duplex(16);
            assert!(kernel_socket(&d).is_none());
            let (u, _) = UnixStream::pair().unwrap();
            assert!(matches!(kernel_socket(&u), Some(KernelSocket::Unix(_))));
        });
    }
}
