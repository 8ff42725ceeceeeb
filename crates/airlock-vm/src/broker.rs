//! The host end of the guest channel.
//!
//! QEMU exposes the guest agent's virtio-serial port as one unix socket that takes one client.
//! The sandbox's supervisor holds that connection for the VM's whole life ([`Broker`]) and
//! serves Airlock's own commands (`exec`, `stop`, file transfers) on a private control socket in
//! the sandbox's runtime directory: every client connection becomes a channel of the guest
//! protocol, so any number of `airlock exec` run at once.
//!
//! The control socket lives outside the jail that runs QEMU (mode 0600, in a 0700 directory):
//! nothing in the sandbox, guest or VMM, can reach it.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_vm_proto::{CONTROL, Frame, Message, Setup, VERSION, check_hello};

use crate::error::{Result, VmError};

/// A running broker; dropping it removes the control socket.
pub struct Broker {
    control: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.control);
    }
}

/// Why a boot failed, with the last lines of the VMM's and the guest console's logs. The logs
/// live in a directory the jail can write: open them without following links or blocking (a
/// planted FIFO or symlink must not hang or mislead the supervisor), and read only their tail.
pub fn boot_failure(e: &VmError, logs: &[&Path]) -> String {
    let mut msg = e.to_string();
    for log in logs {
        let Some(text) = log_tail(log, 16 << 10) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.is_empty() {
            msg.push_str(&format!("\n--- last lines of {}:", log.display()));
            for l in &lines[lines.len().saturating_sub(12)..] {
                msg.push_str("\n  ");
                msg.push_str(l);
            }
        }
    }
    msg
}

/// The last `max` bytes of a regular file, as text.
fn log_tail(path: &Path, max: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    f.seek(SeekFrom::Start(meta.len().saturating_sub(max)))
        .ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

impl Broker {
    /// Connect to the agent socket QEMU created, shake hands, send the setup and wait until the
    /// guest is ready; then serve `control`. `alive` says whether the VMM still runs: the wait
    /// ends early when it died.
    pub fn start(
        agent_sock: &Path,
        control: &Path,
        setup: Setup,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<Broker> {
        let deadline = Instant::now() + timeout;
        let left = |what: &str| -> Result<Duration> {
            let d = deadline.saturating_duration_since(Instant::now());
            if d.is_zero() {
                Err(VmError::Boot(format!(
                    "the guest did not {what} within {} s",
                    timeout.as_secs()
                )))
            } else {
                Ok(d)
            }
        };
        let stream = loop {
            if !alive() {
                return Err(VmError::Boot(
                    "the VMM exited while the guest booted".into(),
                ));
            }
            match UnixStream::connect(agent_sock) {
                Ok(s) => break s,
                Err(_) => {
                    left("start its VMM")?;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let mut w = stream
            .try_clone()
            .map_err(VmError::io("the guest channel"))?;
        let mut r = BufReader::new(
            stream
                .try_clone()
                .map_err(VmError::io("the guest channel"))?,
        );
        Frame::new(
            CONTROL,
            Message::Hello {
                version: VERSION,
                agent: format!("airlock {}", env!("CARGO_PKG_VERSION")),
            },
        )
        .write_to(&mut w)?;
        // The agent answers once the guest kernel has booted it; poll so a dead VMM ends the wait.
        stream
            .set_read_timeout(Some(Duration::from_millis(250)))
            .map_err(VmError::io("the guest channel"))?;
        let hello = loop {
            match Frame::read_from(&mut r) {
                Ok(Some(f)) => break f,
                Ok(None) => return Err(VmError::Boot("the guest closed its channel".into())),
                Err(airlock_vm_proto::ProtoError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if !alive() {
                        return Err(VmError::Boot(
                            "the VMM exited while the guest booted".into(),
                        ));
                    }
                    left("answer")?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        check_hello(&hello)?;
        stream
            .set_read_timeout(Some(left("answer")?))
            .map_err(VmError::io("the guest channel"))?;
        Frame::new(CONTROL, Message::Setup(setup)).write_to(&mut w)?;
        match Frame::read_from(&mut r)? {
            Some(Frame {
                message: Message::Ready { .. },
                ..
            }) => {}
            Some(Frame {
                message: Message::Error(e),
                ..
            }) => return Err(VmError::Boot(format!("the guest could not set up: {e}"))),
            other => {
                return Err(VmError::Boot(format!(
                    "the guest answered its setup with {other:?}"
                )));
            }
        };
        stream
            .set_read_timeout(None)
            .map_err(VmError::io("the guest channel"))?;

        let _ = std::fs::remove_file(control);
        let listener = UnixListener::bind(control).map_err(VmError::io_path(control))?;
        std::fs::set_permissions(control, std::fs::Permissions::from_mode(0o600))
            .map_err(VmError::io_path(control))?;
        let clients: Clients = Arc::new(Mutex::new(Some(HashMap::new())));
        let to_guest = Arc::new(Mutex::new(BufWriter::new(w)));
        {
            let clients = clients.clone();
            std::thread::spawn(move || relay_from_guest(r, clients));
        }
        std::thread::spawn(move || accept_clients(listener, to_guest, clients));
        Ok(Broker {
            control: control.to_path_buf(),
        })
    }
}

/// How many bytes of guest output may wait for one client before it is cut off. Output has no
/// flow control (only stdin does), so a client that stops reading (a stalled pipe, or anyone connected to a
/// published port who never reads) must not stall the guest channel that every other client
/// shares: past this, its channel is closed (and its command killed).
const CLIENT_BACKLOG_BYTES: usize = 64 << 20;

/// One client's outbox: frames from the guest, written to its socket by a thread of its own.
struct Outbox {
    tx: std::sync::mpsc::Sender<Frame>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// The clients, by channel; `None` once the guest is gone (no new client is served).
type Clients = Arc<Mutex<Option<HashMap<u32, Outbox>>>>;

fn frame_bytes(m: &Message) -> usize {
    match m {
        Message::Stdout(d) | Message::Stderr(d) | Message::Data(d) => d.len() + 16,
        _ => 64,
    }
}

/// Frames from the guest go to the outbox of the client that owns their channel. Frames for a
/// channel nobody owns (stale answers after a reconnect, or a guest making things up) are dropped;
/// a malformed frame means the stream is out of step: the guest is treated as gone.
fn relay_from_guest(mut r: BufReader<UnixStream>, clients: Clients) {
    while let Ok(Some(frame)) = Frame::read_from(&mut r) {
        let mut guard = clients.lock().unwrap_or_else(|e| e.into_inner());
        let Some(map) = guard.as_mut() else { break };
        let Some(out) = map.get(&frame.channel) else {
            continue;
        };
        let size = frame_bytes(&frame.message);
        let backlog = out.queued.fetch_add(size, Ordering::Relaxed) + size;
        let to_client = Frame::new(CONTROL, frame.message);
        if backlog > CLIENT_BACKLOG_BYTES || out.tx.send(to_client).is_err() {
            // Dropping the outbox ends its writer thread, which closes the client's socket.
            map.remove(&frame.channel);
        }
    }
    // The guest is gone: every client learns it from the end of its stream, new ones at once.
    clients.lock().unwrap_or_else(|e| e.into_inner()).take();
}

fn accept_clients(
    listener: UnixListener,
    to_guest: Arc<Mutex<BufWriter<UnixStream>>>,
    clients: Clients,
) {
    let next = Arc::new(AtomicU32::new(1));
    for client in listener.incoming().flatten() {
        let channel = next.fetch_add(1, Ordering::Relaxed).max(1);
        let Ok(mut w) = client.try_clone() else {
            continue;
        };
        let (tx, rx) = std::sync::mpsc::channel::<Frame>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let mut guard = clients.lock().unwrap_or_else(|e| e.into_inner());
            let Some(map) = guard.as_mut() else {
                let _ = client.shutdown(std::net::Shutdown::Both);
                continue;
            };
            map.insert(
                channel,
                Outbox {
                    tx,
                    queued: queued.clone(),
                },
            );
        }
        std::thread::spawn(move || {
            for f in rx {
                queued.fetch_sub(frame_bytes(&f.message), Ordering::Relaxed);
                if f.write_to(&mut w).is_err() {
                    break;
                }
            }
            let _ = w.shutdown(std::net::Shutdown::Both);
        });
        let to_guest = to_guest.clone();
        let clients = clients.clone();
        std::thread::spawn(move || serve_client(client, channel, to_guest, clients));
    }
}

/// A client's frames go to the guest on the client's channel. When the client goes away with a
/// command still running, the command is killed (as ssh does when its connection drops).
fn serve_client(
    client: UnixStream,
    channel: u32,
    to_guest: Arc<Mutex<BufWriter<UnixStream>>>,
    clients: Clients,
) {
    let mut r = BufReader::new(client);
    let send = |m: Message| -> bool {
        let mut g = to_guest.lock().unwrap_or_else(|e| e.into_inner());
        Frame::new(channel, m).write_to(&mut *g).is_ok()
    };
    while let Ok(Some(frame)) = Frame::read_from(&mut r) {
        // Handshakes and setup belong to the broker alone.
        if matches!(frame.message, Message::Hello { .. } | Message::Setup(_)) {
            continue;
        }
        if !send(frame.message) {
            break;
        }
    }
    let had_channel = clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(|m| m.remove(&channel))
        .is_some();
    if had_channel {
        send(Message::Signal(libc::SIGKILL));
    }
}

/// A client of the control socket: one channel to the guest.
pub struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    pub fn connect(control: &Path) -> Result<Client> {
        let s = UnixStream::connect(control).map_err(|e| {
            VmError::NotRunning(format!(
                "cannot reach the VM's control socket {}: {e}",
                control.display()
            ))
        })?;
        Ok(Client {
            r: BufReader::new(s.try_clone().map_err(VmError::io("the control socket"))?),
            w: s,
        })
    }

    pub fn send(&mut self, m: Message) -> Result<()> {
        Frame::new(CONTROL, m).write_to(&mut self.w)?;
        Ok(())
    }

    /// A second handle for writing from another thread.
    pub fn writer(&self) -> Result<UnixStream> {
        self.w
            .try_clone()
            .map_err(VmError::io("the control socket"))
    }

    pub fn set_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.w
            .set_read_timeout(t)
            .map_err(VmError::io("the control socket"))
    }

    /// The next message; `None` when the VM went away.
    pub fn recv(&mut self) -> Result<Option<Message>> {
        Ok(Frame::read_from(&mut self.r)?.map(|f| f.message))
    }

    /// Copy `data` to `path` in the guest (created or replaced, with `mode`).
    pub fn write_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.send(Message::WriteFile {
            path: path.into(),
            mode,
        })?;
        for chunk in data.chunks(airlock_vm_proto::CHUNK) {
            self.send(Message::Data(chunk.to_vec()))?;
        }
        self.send(Message::Done)?;
        match self.recv()? {
            Some(Message::Done) => Ok(()),
            Some(Message::Error(e)) => Err(VmError::Guest(e)),
            Some(other) => Err(VmError::Guest(format!("unexpected answer {other:?}"))),
            None => Err(VmError::Guest("the VM went away".into())),
        }
    }
}

/// Write all of `data` to `fd` (our stdout or stderr).
pub fn write_fd(fd: i32, data: &[u8]) {
    let mut f = std::mem::ManuallyDrop::new(
        // SAFETY: fd is one of our stdio descriptors; ManuallyDrop keeps it open afterwards.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) },
    );
    let _ = f.write_all(data);
    let _ = f.flush();
}

/// Read from `fd` into `buf`, retrying on EINTR.
pub fn read_fd(fd: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut f = std::mem::ManuallyDrop::new(
        // SAFETY: as in write_fd.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) },
    );
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Published ports of a VM (`-p HOST:SANDBOX`): the supervisor listens on the host side, and each
/// connection becomes a channel to the guest agent, which connects to the port on the guest's own
/// loopback. So a dev server bound to 127.0.0.1 in the guest is reachable, and no packet of it
/// crosses the guest's network (or the policy gate, which is for the sandbox's way out).
pub struct Publisher {
    _listeners: Vec<std::net::TcpListener>,
}

impl Publisher {
    /// Bind every mapping now (a taken port fails the start), then serve them.
    pub fn start(control: &Path, maps: &[airlock_core::spec::PortMap]) -> Result<Publisher> {
        let mut listeners = Vec::new();
        for m in maps {
            let addr = std::net::SocketAddr::new(m.host_ip, m.host_port);
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                VmError::Setup(format!(
                    "publishing {m}: cannot listen on {addr}: {e}; pick another host port"
                ))
            })?;
            let served = l.try_clone().map_err(VmError::io("a published port"))?;
            let control = control.to_path_buf();
            let port = m.sandbox_port;
            std::thread::spawn(move || {
                for conn in served.incoming().flatten() {
                    let control = control.clone();
                    std::thread::spawn(move || forward(&control, conn, port));
                }
            });
            listeners.push(l);
        }
        Ok(Publisher {
            _listeners: listeners,
        })
    }
}

/// Relay one host connection to `port` in the guest, both ways, with half-closes.
fn forward(control: &Path, conn: std::net::TcpStream, port: u16) {
    let Ok(mut client) = Client::connect(control) else {
        return;
    };
    if client.send(Message::Connect { port }).is_err()
        || !matches!(client.recv(), Ok(Some(Message::Connected)))
    {
        return;
    }
    let (Ok(mut to_guest), Ok(mut from_host)) = (client.writer(), conn.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut buf = vec![0u8; airlock_vm_proto::CHUNK];
        loop {
            match from_host.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if Frame::new(CONTROL, Message::Data(buf[..n].to_vec()))
                        .write_to(&mut to_guest)
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = Frame::new(CONTROL, Message::Done).write_to(&mut to_guest);
    });
    let mut to_host = conn;
    while let Ok(Some(m)) = client.recv() {
        match m {
            Message::Data(d) => {
                if to_host.write_all(&d).is_err() {
                    break;
                }
            }
            Message::Done => {
                let _ = to_host.shutdown(std::net::Shutdown::Write);
                break;
            }
            _ => break,
        }
    }
    let _ = up.join();
    let _ = to_host.shutdown(std::net::Shutdown::Both);
}
