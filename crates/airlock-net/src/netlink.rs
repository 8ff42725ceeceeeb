//! A minimal netlink client shared by [`crate::tun`] (rtnetlink: addresses and
//! routes) and [`crate::capture`] (nf_tables: the kernel redirect rule).
//!
//! Hand-rolled on purpose: each user sends a handful of fixed messages once
//! per sandbox, in the sandbox's init, on the start path. The async netlink
//! crates (`rtnetlink`, `netlink-proto`) bring `futures` and a protocol task;
//! the nf_tables crates are GPL (`rustables`) or have no NAT expressions
//! (`nf_tables` 0.1). Messages are built byte by byte in native endianness,
//! as the kernel expects; every request is acknowledged and every error is
//! reported.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// Kernel uapi values (linux/netlink.h).
pub(crate) const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
pub(crate) const NLM_F_REQUEST: u16 = 0x01;
pub(crate) const NLM_F_ACK: u16 = 0x04;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
/// `struct nlattr` flag marking an attribute that holds attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

/// Adds a route for every destination of one family (`dst_len` 0) through interface `oif`, in
/// the main table: `RTM_NEWROUTE` with a `struct rtmsg` (u8 family, dst_len, src_len, tos,
/// table, protocol, scope, type; u32 flags) and `RTA_OIF`.
pub(crate) fn add_default_route(
    nl: &mut Netlink,
    family: libc::c_int,
    scope: u8,
    kind: u8,
    oif: u32,
) -> io::Result<()> {
    const RTM_NEWROUTE: u16 = 24;
    const RTA_OIF: u16 = 4;
    const RT_TABLE_MAIN: u8 = 254;
    const RTPROT_STATIC: u8 = 4;
    let mut body = vec![
        family as u8,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        scope,
        kind,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut body, RTA_OIF, &oif.to_ne_bytes());
    nl.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &body)
}

/// How long [`Netlink::transact`] waits for the kernel's answers.
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A failed [`Netlink::transact`]: the error, and the index of the message it answered (when the
/// kernel named one of ours).
#[derive(Debug)]
pub(crate) struct TransactError {
    pub(crate) at: Option<usize>,
    pub(crate) error: io::Error,
}

impl From<TransactError> for io::Error {
    fn from(e: TransactError) -> io::Error {
        e.error
    }
}

/// A netlink socket talking to the kernel.
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`). Answers are
    /// awaited for at most [`ANSWER_TIMEOUT`].
    pub(crate) fn open(protocol: libc::c_int) -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by `socket` and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid `timeval` of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// A fresh sequence number.
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// One request, acknowledged.
    pub(crate) fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let seq = self.next_seq();
        let mut msg = Vec::new();
        push_message(&mut msg, kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body);
        Ok(self.transact(&msg, &[seq])?)
    }

    /// Sends `msgs` (one or more complete messages) in one datagram and waits until every
    /// sequence number in `acks` is acknowledged. An error answer to any message of `msgs` fails
    /// the whole exchange: a netfilter batch is atomic (after an error nothing of it is applied),
    /// and a batch refused as a whole (no capability, no nf_tables) is answered on its first
    /// message, which asks for no acknowledgement. [`TransactError::at`] is the index in `msgs`
    /// of the message an error answered. No answer within [`ANSWER_TIMEOUT`] is an error too.
    pub(crate) fn transact(&mut self, msgs: &[u8], acks: &[u32]) -> Result<(), TransactError> {
        let fail = |at: Option<usize>, error: io::Error| TransactError { at, error };
        // Every sequence number sent, in order, to name the message an error answers.
        let mut sent = Vec::new();
        let mut rest = msgs;
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
            sent.push(u32::from_ne_bytes(
                rest[8..12].try_into().unwrap_or_default(),
            ));
            rest = &rest[((len + 3) & !3).clamp(NLMSG_HDRLEN, rest.len())..];
        }
        // SAFETY: `sockaddr_nl` is plain old data; all-zero is valid.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msgs` is a valid buffer of `msgs.len()` bytes and `kernel`
        // a valid `sockaddr_nl` of the given length.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msgs.as_ptr().cast(),
                msgs.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(fail(None, io::Error::last_os_error()));
        }
        let mut pending: Vec<u32> = acks.to_vec();
        let mut buf = vec![0u8; 8192];
        while !pending.is_empty() {
            // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes; with MSG_TRUNC the
            // kernel writes at most that and returns the datagram's real length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        let msg = format!(
                            "the kernel did not answer the netlink request within {} s",
                            ANSWER_TIMEOUT.as_secs()
                        );
                        return Err(fail(None, io::Error::new(io::ErrorKind::TimedOut, msg)));
                    }
                    _ => return Err(fail(None, e)),
                }
            }
            if n as usize > buf.len() {
                let e = io::Error::new(io::ErrorKind::InvalidData, "truncated netlink answer");
                return Err(fail(None, e));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let mlen = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
                let mtype = u16::from_ne_bytes(rest[4..6].try_into().unwrap_or_default());
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap_or_default());
                if mlen < NLMSG_HDRLEN || mlen > rest.len() {
                    let e = io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer");
                    return Err(fail(None, e));
                }
                if mtype == NLMSG_ERROR && mlen >= NLMSG_HDRLEN + 4 {
                    let code = i32::from_ne_bytes(
                        rest[NLMSG_HDRLEN..NLMSG_HDRLEN + 4]
                            .try_into()
                            .unwrap_or_default(),
                    );
                    let at = sent.iter().position(|s| *s == mseq);
                    if code != 0 && at.is_some() {
                        return Err(fail(at, io::Error::from_raw_os_error(-code)));
                    }
                    pending.retain(|s| *s != mseq);
                }
                let step = (mlen + 3) & !3;
                rest = &rest[step.min(rest.len())..];
            }
        }
        Ok(())
    }
}

/// Appends one netlink message: `struct nlmsghdr` (u32 len, u16 type, u16
/// flags, u32 seq, u32 port id) and `body`.
pub(crate) fn push_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, body: &[u8]) {
    let len = NLMSG_HDRLEN + body.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(body);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Appends one attribute (`struct rtattr` / `struct nlattr`: u16 len, u16
/// type, payload, padding to 4).
pub(crate) fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Appends a nested attribute whose payload `fill` writes.
pub(crate) fn push_nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    fill(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    buf.resize((buf.len() + 3) & !3, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded() {
        let mut b = Vec::new();
        push_attr(&mut b, 1, &[1, 2, 3, 4, 5]);
        assert_eq!(b.len(), 12);
        assert_eq!(&b[0..2], &9u16.to_ne_bytes());
    }

    #[test]
    fn nested_attributes_carry_their_length_and_flag() {
        let mut b = Vec::new();
        push_nested(&mut b, 4, |b| {
            push_attr(b, 1, b"abc\0");
            push_attr(b, 2, &[7]);
        });
        // 4 (header) + 8 (abc\0) + 8 (one byte padded)
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 20);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 4 | NLA_F_NESTED);
        assert_eq!(b.len(), 20);
    }

    #[test]
    fn messages_are_padded_and_sized() {
        let mut b = Vec::new();
        push_message(&mut b, 0x10, NLM_F_REQUEST, 7, &[1, 2, 3]);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 19);
        assert_eq!(b.len(), 20);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
    }
}
