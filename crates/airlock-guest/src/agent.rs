//! The protocol engine: one reader (the caller's thread) dispatches the host's frames; each
//! running command has a thread pumping its output and one feeding its stdin; each file being read
//! has a thread sending it. All frames go out through one writer behind a lock, a whole frame at
//! a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_vm_proto::{CHUNK, CONTROL, Exec, Frame, Message, ProtoError, VERSION};

use crate::exec::{self, ChildIo, Command, Ids, Stdio};
use crate::files::{self, Upload};
use crate::reaper::{self, Reaper, lock};
use crate::sys;
use crate::{AGENT, Context, GuestError, Result, log};

/// Pieces of stdin queued for one command before the reader waits for it to read them.
const STDIN_QUEUE: usize = 256;

/// After a terminal's command exits, how long its output may stay quiet before we stop reading,
/// and how long we read at most (a background process may keep the terminal open).
const TTY_DRAIN_QUIET: Duration = Duration::from_millis(200);
const TTY_DRAIN_MAX: Duration = Duration::from_secs(2);

/// How the agent runs.
pub enum Mode {
    /// PID 1 of the VM: `Setup` assembles the sandbox at /newroot; the end of the host's
    /// connection is waited out (the host may reconnect).
    Vm,
    /// An ordinary process serving one connection with commands run under `root` ("/": no
    /// chroot); `Setup` is refused. For tests and development.
    Process { root: PathBuf },
}

/// Why `serve` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host asked for a shutdown.
    Shutdown,
    /// The connection ended (only in `Mode::Process`).
    EndOfStream,
}

/// The shared writer: whole frames, one at a time.
#[derive(Clone)]
pub struct Out {
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Out {
    pub fn new(writer: impl Write + Send + 'static) -> Out {
        Out {
            writer: Arc::new(Mutex::new(Box::new(writer))),
        }
    }

    /// Send a frame. A failure (the host went away) is not the sender's problem: the reader
    /// notices the end of the connection.
    pub fn send(&self, channel: u32, message: Message) {
        let frame = Frame::new(channel, message);
        let _ = frame.write_to(&mut *lock(&self.writer));
    }

    fn error(&self, channel: u32, error: impl std::fmt::Display) {
        self.send(channel, Message::Error(error.to_string()));
    }
}

/// A running command, as the reader sees it.
struct Running {
    pid: libc::pid_t,
    /// None once stdin was closed.
    stdin: Option<SyncSender<Vec<u8>>>,
    /// The terminal's master (for resizing), when it has one.
    tty: Option<Arc<File>>,
}

enum Channel {
    Exec(Running),
    Upload(Upload),
    /// A connection to a port on the guest's loopback (a published port): the stream, and the
    /// queue its writer thread takes the host's bytes from.
    Forward(std::net::TcpStream, SyncSender<Vec<u8>>),
}

type Channels = Arc<Mutex<HashMap<u32, Channel>>>;

struct Agent {
    out: Out,
    reaper: Reaper,
    channels: Channels,
    vm: bool,
    /// The sandbox's root, once known.
    root: Option<PathBuf>,
    /// The handshake happened on this connection.
    greeted: bool,
    /// What `Ready` said, once `Setup` succeeded.
    ready: Option<String>,
}

/// Serve the protocol on `reader`/`writer` until `Shutdown` (or, in `Mode::Process`, the end of
/// the connection).
pub fn serve(
    reader: impl Read,
    writer: impl Write + Send + 'static,
    mode: Mode,
    reaper: Reaper,
) -> Ended {
    let (vm, root) = match mode {
        Mode::Vm => (true, None),
        Mode::Process { root } => (false, Some(root)),
    };
    let mut agent = Agent {
        out: Out::new(writer),
        reaper,
        channels: Arc::default(),
        vm,
        root,
        greeted: false,
        ready: None,
    };
    let mut reader = reader;
    loop {
        let frame = match Frame::read_from(&mut reader) {
            Ok(Some(frame)) => frame,
            Ok(None) if agent.vm => {
                // No host on the other end of the port (yet, or any more): wait for one.
                agent.greeted = false;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(None) => break,
            Err(ProtoError::Decode(e)) => {
                // The frame's length was sound, so the stream is still in step.
                agent.out.error(CONTROL, format!("a malformed frame: {e}"));
                continue;
            }
            Err(e) if agent.vm => {
                log!("reading the host's port: {e}");
                agent.greeted = false;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => {
                log!("reading the host's stream: {e}");
                break;
            }
        };
        if agent.handle(frame) {
            agent.stop_commands();
            return Ended::Shutdown;
        }
    }
    agent.stop_commands();
    Ended::EndOfStream
}

impl Agent {
    /// Handle one frame; true when the host asked for a shutdown.
    fn handle(&mut self, frame: Frame) -> bool {
        let Frame { channel, message } = frame;
        match message {
            Message::Hello { version, .. } if version == VERSION => {
                self.greeted = true;
                self.out.send(
                    CONTROL,
                    Message::Hello {
                        version: VERSION,
                        agent: AGENT.into(),
                    },
                );
            }
            Message::Hello { version, .. } => self.out.error(
                CONTROL,
                format!(
                    "the guest agent speaks protocol version {VERSION}, the host version {version}; remove the cached guest image (`airlock gc`) so it is rebuilt"
                ),
            ),
            _ if !self.greeted => self
                .out
                .error(channel, "the handshake (Hello) must come first"),
            Message::Shutdown => return true,
            Message::Ping => self.out.send(
                channel,
                Message::Health {
                    uptime_ms: sys::uptime().as_millis() as u64,
                    processes: sys::process_count(),
                },
            ),
            Message::Setup(setup) if channel == CONTROL => {
                let reply = self.setup(&setup);
                if let Err(e) = &reply {
                    log!("setup failed: {e}");
                }
                self.reply(CONTROL, reply.map(|kernel| Message::Ready { kernel }));
            }
            Message::Exec(exec) => {
                let started = self.exec(channel, exec);
                if let Err(e) = started {
                    self.out.error(channel, e);
                }
            }
            Message::ReadFile { path } => {
                if let Err(e) = self.read_file(channel, &path) {
                    self.out.error(channel, e);
                }
            }
            Message::WriteFile { path, mode } => {
                let upload = self
                    .open_channel(channel)
                    .and_then(|root| Upload::create(&root, &path, mode));
                match upload {
                    Ok(upload) => {
                        lock(&self.channels).insert(channel, Channel::Upload(upload));
                    }
                    Err(e) => self.out.error(channel, e),
                }
            }
            Message::Connect { port } => {
                if let Err(e) = self.connect(channel, port) {
                    self.out.error(channel, e);
                }
            }
            Message::Stdin(data) => self.stdin(channel, Some(data)),
            Message::StdinEof => self.stdin(channel, None),
            Message::Resize(size) => {
                if let Some(Channel::Exec(Running { tty: Some(master), .. })) =
                    lock(&self.channels).get(&channel)
                {
                    let _ = exec::set_window_size(master, size);
                }
            }
            Message::Signal(signal) => {
                let mut channels = lock(&self.channels);
                match channels.get(&channel) {
                    Some(Channel::Exec(running)) => signal_group(running.pid, signal),
                    // The host's end of a forwarded connection went away.
                    Some(Channel::Forward(stream, _)) => {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        channels.remove(&channel);
                    }
                    _ => {}
                }
            }
            Message::Data(data) => {
                let mut channels = lock(&self.channels);
                if let Some(Channel::Forward(stream, queue)) = channels.get_mut(&channel) {
                    // Never block the one reader on a server that does not read: a full queue
                    // ends that connection instead.
                    if queue.try_send(data).is_err() {
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        channels.remove(&channel);
                        drop(channels);
                        self.out
                            .error(channel, "the connection in the sandbox closed or stalled");
                    }
                    return false;
                }
                if let Some(Channel::Upload(upload)) = channels.get_mut(&channel)
                    && let Err(e) = upload.write(&data)
                {
                    if let Some(Channel::Upload(upload)) = channels.remove(&channel) {
                        upload.abort();
                    }
                    drop(channels);
                    self.out.error(channel, e);
                }
            }
            Message::Done => {
                let removed = {
                    let mut channels = lock(&self.channels);
                    match channels.get(&channel) {
                        Some(Channel::Upload(_)) => channels.remove(&channel),
                        // The host's side of a forwarded connection is done sending: an empty piece
                        // tells the writer thread to half-close once the queue is written.
                        Some(Channel::Forward(_, queue)) => {
                            let _ = queue.try_send(Vec::new());
                            None
                        }
                        _ => None,
                    }
                };
                if let Some(Channel::Upload(upload)) = removed {
                    let finished = upload.finish().map(|()| Message::Done);
                    self.reply(channel, finished);
                }
            }
            Message::Error(_) => {
                // The host gives up on a transfer.
                let removed = {
                    let mut channels = lock(&self.channels);
                    match channels.get(&channel) {
                        Some(Channel::Upload(_)) => channels.remove(&channel),
                        _ => None,
                    }
                };
                if let Some(Channel::Upload(upload)) = removed {
                    upload.abort();
                }
            }
            Message::Setup(_)
            | Message::Ready { .. }
            | Message::Started { .. }
            | Message::Stdout(_)
            | Message::Stderr(_)
            | Message::Exited { .. }
            | Message::Health { .. }
            | Message::Connected
            | Message::StdinCredit(_) => {
                let what = kind(&message);
                self.out
                    .error(channel, format!("unexpected message {what} on channel {channel}"));
            }
        }
        false
    }

    fn reply(&self, channel: u32, result: Result<Message>) {
        match result {
            Ok(message) => self.out.send(channel, message),
            Err(e) => self.out.error(channel, e),
        }
    }

    fn setup(&mut self, setup: &airlock_vm_proto::Setup) -> Result<String> {
        if !self.vm {
            return Err(GuestError::Refused(
                "this agent is not PID 1 of a VM: it does not assemble a sandbox".into(),
            ));
        }
        if let Some(kernel) = &self.ready {
            // A host that reconnected asks again: the sandbox is already assembled.
            return Ok(kernel.clone());
        }
        let kernel = crate::boot::setup(setup, &self.reaper)?;
        self.root = Some(PathBuf::from(crate::boot::NEWROOT));
        self.ready = Some(kernel.clone());
        Ok(kernel)
    }

    /// Check that a new conversation may start on `channel`; the sandbox's root.
    fn open_channel(&self, channel: u32) -> Result<PathBuf> {
        if channel == CONTROL {
            return Err(GuestError::Refused(
                "this needs a channel of its own (not the control channel)".into(),
            ));
        }
        if lock(&self.channels).contains_key(&channel) {
            return Err(GuestError::Refused(format!("channel {channel} is busy")));
        }
        self.root
            .clone()
            .ok_or_else(|| GuestError::Refused("the sandbox is not set up yet (no Setup)".into()))
    }

    fn exec(&mut self, channel: u32, exec: Exec) -> Result<()> {
        let root = self.open_channel(channel)?;
        let ids = ids_for(&root, exec.uid, exec.gid)?;
        let stdio = match exec.tty {
            Some(size) => Stdio::Tty(size),
            None => Stdio::Pipes,
        };
        let command = Command {
            argv: exec.argv,
            env: exec.env,
            cwd: exec.cwd,
            ids,
            stdio,
            root,
        };
        // The reaper writes the wait status into this pipe; the output pump waits on it.
        let (exit_r, exit_w) = sys::pipe().context(|| "create a pipe".into())?;
        let on_exit = Box::new(move |status: i32| {
            let _ = File::from(exit_w).write_all(&status.to_ne_bytes());
        });
        let child = exec::spawn(&command, &self.reaper, on_exit)?;
        let pid = child.pid;
        let (stdin_tx, stdin_rx) = sync_channel::<Vec<u8>>(STDIN_QUEUE);
        let (stdin, outputs, tty) = match child.io {
            ChildIo::Pipes {
                stdin,
                stdout,
                stderr,
            } => (
                stdin,
                vec![(stdout, Stream::Stdout), (stderr, Stream::Stderr)],
                None,
            ),
            ChildIo::Tty { master } => {
                let (writer, reader) = match (master.try_clone(), master.try_clone()) {
                    (Ok(w), Ok(r)) => (w, r),
                    (Err(e), _) | (_, Err(e)) => {
                        signal_group(pid, libc::SIGKILL);
                        return Err(e).context(|| "duplicate the terminal".into());
                    }
                };
                (
                    writer,
                    vec![(reader, Stream::Stdout)],
                    Some(Arc::new(master)),
                )
            }
            ChildIo::LogFile => {
                // Not asked for above; never leave a command without its streams.
                signal_group(pid, libc::SIGKILL);
                return Err(GuestError::Refused(
                    "the command was started without streams".into(),
                ));
            }
        };
        let is_tty = tty.is_some();
        lock(&self.channels).insert(
            channel,
            Channel::Exec(Running {
                pid,
                stdin: Some(stdin_tx),
                tty,
            }),
        );
        self.out.send(channel, Message::Started { pid: pid as u32 });

        let credit = self.out.clone();
        let fed = spawn_thread("stdin", move || {
            feed_stdin(stdin_rx, stdin, &credit, channel)
        });
        let out = self.out.clone();
        let channels = self.channels.clone();
        let pumped = fed.and_then(|()| {
            spawn_thread("output", move || {
                let code = pump_output(&out, channel, outputs, File::from(exit_r), is_tty);
                {
                    let mut channels = lock(&channels);
                    if matches!(channels.get(&channel), Some(Channel::Exec(r)) if r.pid == pid) {
                        channels.remove(&channel);
                    }
                }
                out.send(channel, Message::Exited { code });
            })
        });
        if let Err(e) = pumped {
            // Without its threads the command cannot be served: stop it.
            signal_group(pid, libc::SIGKILL);
            lock(&self.channels).remove(&channel);
            return Err(e).context(|| "start a thread".into());
        }
        Ok(())
    }

    fn stdin(&self, channel: u32, data: Option<Vec<u8>>) {
        let sender = {
            let mut channels = lock(&self.channels);
            let Some(Channel::Exec(running)) = channels.get_mut(&channel) else {
                return;
            };
            match data {
                // End of input: for pipes, closing our end is the EOF; a terminal has no EOF
                // of its own (the host sends ^D if it wants one), so it stays open.
                None => {
                    if running.tty.is_none() {
                        running.stdin = None;
                    }
                    return;
                }
                Some(_) => running.stdin.clone(),
            }
        };
        if let (Some(sender), Some(data)) = (sender, data) {
            // Waits when the command does not read and its queue is full (backpressure).
            let _ = sender.send(data);
        }
    }

    fn read_file(&self, channel: u32, path: &str) -> Result<()> {
        let root = self.open_channel(channel)?;
        let file = files::open_for_reading(&root, path)?;
        let out = self.out.clone();
        let path = path.to_owned();
        spawn_thread("read-file", move || {
            let sent = files::read_in_pieces(file, CHUNK, |piece| {
                out.send(channel, Message::Data(piece));
            });
            match sent {
                Ok(()) => out.send(channel, Message::Done),
                Err(e) => out.error(
                    channel,
                    format!("cannot read {path}: {}", sys::errno_text(&e)),
                ),
            }
        })
        .context(|| "start a thread".into())
    }

    /// End of service: stop every command still running (in the VM, the shutdown kills the rest).
    /// Open a connection to `port` on the guest's loopback for the host; its bytes flow back on
    /// `channel` from a thread of its own, ending with `Done`.
    fn connect(&mut self, channel: u32, port: u16) -> Result<()> {
        self.open_channel(channel)?;
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .or_else(|_| std::net::TcpStream::connect(("::1", port)))
            .map_err(|e| {
                GuestError::Refused(format!(
                    "nothing accepts connections on port {port} in the sandbox: {e}"
                ))
            })?;
        let clone = || {
            stream
                .try_clone()
                .map_err(|e| GuestError::Refused(format!("port {port}: {e}")))
        };
        let (reader, mut writer) = (clone()?, clone()?);
        let (queue, pieces) = sync_channel::<Vec<u8>>(STDIN_QUEUE);
        std::thread::spawn(move || {
            for piece in pieces {
                if piece.is_empty() {
                    let _ = writer.shutdown(std::net::Shutdown::Write);
                    return;
                }
                if writer.write_all(&piece).is_err() {
                    return;
                }
            }
        });
        lock(&self.channels).insert(channel, Channel::Forward(stream, queue));
        self.out.send(channel, Message::Connected);
        let out = self.out.clone();
        let channels = self.channels.clone();
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; CHUNK];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.send(channel, Message::Data(buf[..n].to_vec())),
                }
            }
            out.send(channel, Message::Done);
            let channels = lock(&channels);
            if let Some(Channel::Forward(s, _)) = channels.get(&channel) {
                let _ = s.shutdown(std::net::Shutdown::Read);
            }
            // The host closes its end once it has seen Done; its Signal removes the channel.
        });
        Ok(())
    }

    fn stop_commands(&self) {
        for channel in lock(&self.channels).values() {
            if let Channel::Exec(running) = channel {
                signal_group(running.pid, libc::SIGKILL);
            }
        }
    }
}

/// The ids a command runs with: any, for a root agent; its own, otherwise.
fn ids_for(root: &Path, uid: u32, gid: u32) -> Result<Option<Ids>> {
    // SAFETY: getters without preconditions.
    let (euid, my_uid, my_gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    if euid == 0 {
        return Ok(Some(Ids {
            uid,
            gid,
            groups: exec::supplementary_groups(root, uid, gid),
        }));
    }
    if uid == my_uid && gid == my_gid {
        return Ok(None);
    }
    Err(GuestError::Refused(format!(
        "the agent runs as uid {my_uid} and cannot run commands as uid {uid} gid {gid}"
    )))
}

/// Deliver `signal` to the command's process group (it leads its own session), or to the
/// command alone if the group is gone.
fn signal_group(pid: libc::pid_t, signal: i32) {
    // SAFETY: kill has no memory effects; a bad signal number is EINVAL.
    unsafe {
        if libc::kill(-pid, signal) != 0 {
            libc::kill(pid, signal);
        }
    }
}

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(body)
        .map(|_| ())
}

/// How many consumed `Stdin` pieces are acknowledged at a time.
const CREDIT_BATCH: u32 = 16;

/// Write what the host sends to the command's stdin, returning credit as pieces are consumed
/// (the host keeps at most `STDIN_WINDOW` in flight, fewer than the queue holds, so the reader
/// never waits). After a write fails (the command closed it), keep draining.
fn feed_stdin(pieces: Receiver<Vec<u8>>, mut stdin: File, out: &Out, channel: u32) {
    let mut broken = false;
    let mut consumed = 0;
    for piece in pieces {
        if !broken && stdin.write_all(&piece).is_err() {
            broken = true;
        }
        consumed += 1;
        if consumed == CREDIT_BATCH {
            out.send(channel, Message::StdinCredit(consumed));
            consumed = 0;
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Send the command's output until it exits and its streams end (a terminal: until it reports
/// EIO, or after its command exited, is quiet for a moment, or the drain time is up). Returns the
/// exit code.
fn pump_output(
    out: &Out,
    channel: u32,
    outputs: Vec<(File, Stream)>,
    mut exit: File,
    tty: bool,
) -> i32 {
    let mut outputs: Vec<Option<(File, Stream)>> = outputs.into_iter().map(Some).collect();
    let mut code: Option<i32> = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let open: Vec<usize> = (0..outputs.len())
            .filter(|&i| outputs[i].is_some())
            .collect();
        if code.is_some() && open.is_empty() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd {
                fd: outputs[i].as_ref().map_or(-1, |(f, _)| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if code.is_none() {
            fds.push(libc::pollfd {
                fd: exit.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = match (exited_at, tty) {
            (Some(at), true) => {
                let left = TTY_DRAIN_MAX.saturating_sub(at.elapsed());
                if left.is_zero() {
                    break;
                }
                left.min(TTY_DRAIN_QUIET).as_millis() as libc::c_int
            }
            _ => -1,
        };
        // SAFETY: poll reads and writes the array of the length we pass.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log!("poll: {}", io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if ready == 0 {
            // A terminal stayed quiet after its command exited.
            break;
        }
        for (k, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            if k == open.len() {
                let mut status = [0u8; 4];
                code = Some(match exit.read_exact(&mut status) {
                    Ok(()) => reaper::exit_code(i32::from_ne_bytes(status)),
                    Err(_) => 255,
                });
                exited_at = Some(Instant::now());
                continue;
            }
            let i = open[k];
            let Some((file, stream)) = outputs[i].as_mut() else {
                continue;
            };
            match file.read(&mut buf) {
                Ok(0) => outputs[i] = None,
                Ok(n) => {
                    let piece = buf[..n].to_vec();
                    out.send(
                        channel,
                        match stream {
                            Stream::Stdout => Message::Stdout(piece),
                            Stream::Stderr => Message::Stderr(piece),
                        },
                    );
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                // EIO: a terminal whose every other end is closed.
                Err(_) => outputs[i] = None,
            }
        }
    }
    code.unwrap_or(255)
}

/// A message's name, for error messages (without its possibly large content).
fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "Hello",
        Message::Setup(_) => "Setup",
        Message::Ready { .. } => "Ready",
        Message::Exec(_) => "Exec",
        Message::Started { .. } => "Started",
        Message::Stdin(_) => "Stdin",
        Message::StdinEof => "StdinEof",
        Message::Stdout(_) => "Stdout",
        Message::Stderr(_) => "Stderr",
        Message::Resize(_) => "Resize",
        Message::Signal(_) => "Signal",
        Message::Exited { .. } => "Exited",
        Message::ReadFile { .. } => "ReadFile",
        Message::WriteFile { .. } => "WriteFile",
        Message::Data(_) => "Data",
        Message::Done => "Done",
        Message::Ping => "Ping",
        Message::Health { .. } => "Health",
        Message::Shutdown => "Shutdown",
        Message::Error(_) => "Error",
        Message::Connect { .. } => "Connect",
        Message::Connected => "Connected",
        Message::StdinCredit(_) => "StdinCredit",
    }
}
