//! The protocol between Airlock (the host) and its guest agent (PID 1 of a microVM sandbox).
//!
//! One byte stream (a virtio-serial port, or vsock) carries many conversations at once: every
//! frame names a *channel*. Channel 0 is the control channel (handshake, setup, health,
//! shutdown); each `exec` or file transfer gets a channel of its own, chosen by the host.
//!
//! Wire format of a frame (little endian):
//!
//! ```text
//! u32 length of what follows | u32 channel | postcard-encoded Message
//! ```
//!
//! Why a hand-made frame around postcard: the stream has no message boundaries and we need
//! them cheaply on both ends (the guest agent is a tiny static binary). postcard (serde) encodes
//! the messages; the 8-byte header is the whole of the hand-written part.
//!
//! Versioning: the host opens with [`Message::Hello`] carrying [`VERSION`]; the agent answers
//! with its own. A mismatch ends the connection with a clear error (the host rebuilds the
//! guest image from the agent it ships, so a mismatch means a stale cache or a foreign agent).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol version. Bump on any incompatible change to [`Message`].
pub const VERSION: u32 = 2;

/// The largest frame either side accepts (stdio data is sent in pieces well below this).
pub const MAX_FRAME: usize = 4 << 20;

/// The largest piece of stdio or file data put in one frame.
pub const CHUNK: usize = 64 << 10;

/// The control channel.
pub const CONTROL: u32 = 0;

/// Flow control of a command's stdin: the host may have this many `Stdin` frames of a channel
/// unacknowledged; the guest returns credit (`StdinCredit`) as the command consumes them. So
/// a command that does not read its stdin never makes the guest's one reader wait.
pub const STDIN_WINDOW: u32 = 64;

/// The name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "airlock.agent";

/// The virtiofs tag of the host's share.
pub const SHARE_TAG: &str = "airlock";

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("the guest channel failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is larger than the protocol allows")]
    TooLarge(usize),
    #[error("a malformed frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error(
        "the guest agent speaks protocol version {theirs}, this Airlock speaks {ours}; remove the cached guest image (`airlock gc`) so it is rebuilt"
    )]
    Version { ours: u32, theirs: u32 },
}

pub type Result<T> = std::result::Result<T, ProtoError>;

/// Terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

/// How the guest assembles the sandbox's filesystem, sent once after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// The sandbox's hostname.
    pub hostname: String,
    /// The workspace's absolute path (the same inside as on the host).
    pub workspace: String,
    /// Mount the workspace read-only.
    pub workspace_readonly: bool,
    /// The sandbox user's home (empty: none). Like the workspace it is served from the host
    /// side (the sandbox's home layer), so it persists and behaves as in the namespace tier.
    pub home: String,
    /// Block device holding the sandbox's writable layer (ext4).
    pub disk: String,
    /// Start a private Docker daemon with its storage on the sandbox disk.
    pub docker: bool,
    /// Guest IPv4 address/prefix, gateway and resolver of the user-mode network.
    pub net_address: String,
    pub net_gateway: String,
    pub net_resolver: String,
    /// Unix time on the host, to set the guest clock (no RTC trust needed).
    pub time_unix_ms: u64,
    /// Workspace subdirectories (absolute) that get a directory of the sandbox disk's own
    /// instead of the workspace share (`--cache-dir`): the guest's native file speed, never in
    /// the workspace's layer.
    #[serde(default)]
    pub cache_dirs: Vec<String>,
    /// The sandbox user's uid and gid: the owner of the cache directories, and the group of
    /// the Docker socket (`--docker`).
    #[serde(default)]
    pub user_ids: (u32, u32),
    /// Which missing components of a cache directory's path the guest makes.
    #[serde(default)]
    pub cache_create: CacheCreate,
}

/// Which missing components of a cache directory's path are made: only where the workspace is
/// the sandbox's own, never in a live or read-only host workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheCreate {
    /// A live (`rw`) or read-only workspace: the path must exist on the host.
    #[default]
    None,
    /// A copy-on-write workspace: the directory itself (its parent must exist, so the layer
    /// holds nothing else made for it).
    Last,
    /// The sandbox's own clone: any of the path.
    All,
}

/// A command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub argv: Vec<String>,
    /// The complete environment (the host computes it).
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Allocate a PTY of this size; stdout then carries the terminal's output.
    pub tty: Option<WinSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Handshake, both ways, on the control channel.
    Hello {
        version: u32,
        agent: String,
    },
    /// Host → guest, control: assemble the filesystem; answered with `Ready` or `Error`.
    Setup(Setup),
    /// Guest → host, control: the filesystem is ready; `kernel` is the guest's `uname -r`.
    Ready {
        kernel: String,
    },
    /// Host → guest: start a command on this channel; answered with `Started` or `Error`.
    Exec(Exec),
    /// Guest → host: the command runs with this pid (in the guest).
    Started {
        pid: u32,
    },
    /// Host → guest: data for the command's stdin (or terminal).
    Stdin(Vec<u8>),
    /// Host → guest: stdin reached its end.
    StdinEof,
    /// Guest → host: output.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Host → guest: the terminal's new size.
    Resize(WinSize),
    /// Host → guest: deliver this signal to the command's process group.
    Signal(i32),
    /// Guest → host: the command ended; `code` is its status, or 128+N when signal N killed it.
    Exited {
        code: i32,
    },
    /// Host → guest: read a file in the sandbox; answered with `Data` frames then `Done`.
    ReadFile {
        path: String,
    },
    /// Host → guest: create or replace a file; followed by `Data` frames and `Done`, answered
    /// with `Done` or `Error`.
    WriteFile {
        path: String,
        mode: u32,
    },
    /// File content, either way.
    Data(Vec<u8>),
    /// End of a transfer, either way.
    Done,
    /// Host → guest, control: are you alive? Answered with `Health`.
    Ping,
    /// Guest → host: uptime and load of the guest.
    Health {
        uptime_ms: u64,
        processes: u32,
    },
    /// Host → guest, control: sync the disk, stop everything and power off.
    Shutdown,
    /// Either way: what failed. Ends the channel's conversation.
    Error(String),
    /// Host → guest: connect to this TCP port on the guest's loopback (a published port);
    /// answered with `Connected` or `Error`. Then `Data` flows both ways and `Done` ends a
    /// direction (a half-close).
    Connect {
        port: u16,
    },
    /// Guest → host: the connection asked for with `Connect` is open.
    Connected,
    /// Guest → host: this many more `Stdin` frames may be sent on the channel (see
    /// [`STDIN_WINDOW`]).
    StdinCredit(u32),
}

/// One frame: a message on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub channel: u32,
    pub message: Message,
}

impl Frame {
    pub fn new(channel: u32, message: Message) -> Frame {
        Frame { channel, message }
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = postcard::to_stdvec(&self.message)?;
        let len = body.len() + 4;
        if len > MAX_FRAME {
            return Err(ProtoError::TooLarge(len));
        }
        let mut out = Vec::with_capacity(len + 4);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.channel.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Write the frame in one `write_all` (callers sharing a stream hold a lock around this).
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        w.write_all(&self.encode()?)?;
        w.flush()?;
        Ok(())
    }

    /// Read one frame; `None` at a clean end of stream (between frames).
    pub fn read_from(r: &mut impl Read) -> Result<Option<Frame>> {
        let mut head = [0u8; 4];
        if !read_exact_or_eof(r, &mut head)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(head) as usize;
        if len > MAX_FRAME {
            return Err(ProtoError::TooLarge(len));
        }
        if len < 4 {
            return Err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a frame shorter than its header",
            )));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        let channel = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let message = postcard::from_bytes(&body[4..])?;
        Ok(Some(Frame { channel, message }))
    }
}

/// Fill `buf`, or return false if the stream ended before its first byte.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(ProtoError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stream ended inside a frame",
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Check the peer's `Hello`.
pub fn check_hello(frame: &Frame) -> Result<String> {
    match &frame.message {
        Message::Hello { version, agent } if *version == VERSION => Ok(agent.clone()),
        Message::Hello { version, .. } => Err(ProtoError::Version {
            ours: VERSION,
            theirs: *version,
        }),
        other => Err(ProtoError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected a handshake, got {other:?}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_back_to_back() {
        let frames = vec![
            Frame::new(
                CONTROL,
                Message::Hello {
                    version: VERSION,
                    agent: "t".into(),
                },
            ),
            Frame::new(
                7,
                Message::Exec(Exec {
                    argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                    env: vec![("A".into(), "b".into())],
                    cwd: "/w".into(),
                    uid: 1000,
                    gid: 1000,
                    tty: Some(WinSize { rows: 24, cols: 80 }),
                }),
            ),
            Frame::new(7, Message::Stdout(vec![0, 1, 2, 255])),
            Frame::new(7, Message::Exited { code: 130 }),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire).unwrap();
        }
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(&Frame::read_from(&mut r).unwrap().unwrap(), f);
        }
        assert!(Frame::read_from(&mut r).unwrap().is_none());
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let wire = Frame::new(1, Message::Stdout(vec![9; 100]))
            .encode()
            .unwrap();
        let mut r = &wire[..wire.len() - 1];
        assert!(Frame::read_from(&mut r).is_err());
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let mut r = &huge[..];
        assert!(matches!(
            Frame::read_from(&mut r),
            Err(ProtoError::TooLarge(_))
        ));
        assert!(
            Frame::new(1, Message::Data(vec![0; MAX_FRAME]))
                .encode()
                .is_err()
        );
    }

    #[test]
    fn a_version_mismatch_is_reported() {
        let old = Frame::new(
            CONTROL,
            Message::Hello {
                version: VERSION + 1,
                agent: "x".into(),
            },
        );
        let e = check_hello(&old).unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
        assert!(check_hello(&Frame::new(CONTROL, Message::Ping)).is_err());
    }
}
