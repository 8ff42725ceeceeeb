//! The agent's protocol engine, driven as the host would drive it: the real binary in
//! `--serve-stdio` mode (its own process, so its reaper owns its children) over a socket pair.
//! Commands run with root "/" (no chroot) and the test's own ids unless the test says otherwise.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_vm_proto::{CHUNK, CONTROL, Exec, Frame, Message, VERSION, WinSize};

struct Agent {
    process: Child,
    stream: UnixStream,
    /// Frames already read for channels nobody asked about yet.
    waiting: HashMap<u32, VecDeque<Message>>,
}

impl Agent {
    fn start() -> Agent {
        Agent::start_unsaid(&[]).greeted()
    }

    /// The agent without the handshake.
    fn start_unsaid(args: &[&str]) -> Agent {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_airlock-guest"))
            .arg("--serve-stdio")
            .args(args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Agent {
            process,
            stream: ours,
            waiting: HashMap::new(),
        }
    }

    fn greeted(mut self) -> Agent {
        self.send(
            CONTROL,
            Message::Hello {
                version: VERSION,
                agent: "test host".into(),
            },
        );
        match self.recv(CONTROL) {
            Message::Hello { version, agent } => {
                assert_eq!(version, VERSION);
                assert!(agent.starts_with("airlock-guest "), "{agent}");
            }
            other => panic!("expected Hello, got {other:?}"),
        }
        self
    }

    fn send(&mut self, channel: u32, message: Message) {
        Frame::new(channel, message)
            .write_to(&mut self.stream)
            .unwrap();
    }

    /// The next message on `channel`.
    fn recv(&mut self, channel: u32) -> Message {
        if let Some(m) = self.waiting.get_mut(&channel).and_then(VecDeque::pop_front) {
            return m;
        }
        loop {
            let frame = Frame::read_from(&mut self.stream)
                .unwrap()
                .expect("the agent closed the stream");
            if frame.channel == channel {
                return frame.message;
            }
            self.waiting
                .entry(frame.channel)
                .or_default()
                .push_back(frame.message);
        }
    }

    /// Start a command; its pid, or the error.
    fn start_exec(&mut self, channel: u32, exec: Exec) -> Result<u32, String> {
        self.send(channel, Message::Exec(exec));
        match self.recv(channel) {
            Message::Started { pid } => Ok(pid),
            Message::Error(e) => Err(e),
            other => panic!("expected Started or Error, got {other:?}"),
        }
    }

    /// Collect a started command's output until it exits.
    fn finish(&mut self, channel: u32) -> Ran {
        let mut ran = Ran::default();
        loop {
            match self.recv(channel) {
                Message::Stdout(d) => {
                    assert!(d.len() <= CHUNK);
                    ran.stdout.extend(d)
                }
                Message::Stderr(d) => ran.stderr.extend(d),
                Message::StdinCredit(n) => ran.credit += n,
                Message::Exited { code } => {
                    ran.code = code;
                    return ran;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn run(&mut self, channel: u32, exec: Exec) -> Ran {
        self.start_exec(channel, exec).unwrap();
        self.send(channel, Message::StdinEof);
        self.finish(channel)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[derive(Default, Debug)]
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: i32,
    /// Stdin credit the agent returned.
    credit: u32,
}

impl Ran {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn ids() -> (u32, u32) {
    // SAFETY: getters without preconditions.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn is_root() -> bool {
    ids().0 == 0
}

fn cmd(argv: &[&str]) -> Exec {
    let (uid, gid) = ids();
    Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        cwd: "/".into(),
        uid,
        gid,
        tty: None,
    }
}

fn sh(script: &str) -> Exec {
    cmd(&["sh", "-c", script])
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("airlock-guest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn handshake_answers_and_refuses_another_version_without_dying() {
    let mut agent = Agent::start_unsaid(&[]);
    agent.send(1, Message::Exec(sh("true")));
    assert!(matches!(agent.recv(1), Message::Error(e) if e.contains("Hello")));
    agent.send(
        CONTROL,
        Message::Hello {
            version: VERSION + 1,
            agent: "future".into(),
        },
    );
    match agent.recv(CONTROL) {
        Message::Error(e) => assert!(e.contains("version"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut agent = agent.greeted();
    assert_eq!(agent.run(1, sh("exit 0")).code, 0);
}

#[test]
fn exit_codes_and_separate_streams() {
    let mut agent = Agent::start();
    let ran = agent.run(1, sh("echo out; echo err >&2; exit 3"));
    assert_eq!(ran.code, 3);
    assert_eq!(ran.out(), "out\n");
    assert_eq!(ran.err(), "err\n");
    // The channel is free again once the command exited.
    assert_eq!(agent.run(1, sh("exit 0")).code, 0);
}

#[test]
fn the_environment_and_directory_are_exactly_the_hosts() {
    let mut agent = Agent::start();
    let mut exec = cmd(&["env"]);
    exec.env.push(("GREETING".into(), "hello world".into()));
    exec.cwd = "/tmp".into();
    let ran = agent.run(1, exec);
    assert_eq!(
        ran.out(),
        "PATH=/usr/local/bin:/usr/bin:/bin\nGREETING=hello world\n"
    );
    let mut exec = cmd(&["pwd"]);
    exec.cwd = "/tmp".into();
    assert_eq!(agent.run(2, exec).out(), "/tmp\n");

    let mut exec = cmd(&["pwd"]);
    exec.cwd = "/no/such/dir".into();
    let e = agent.start_exec(3, exec).unwrap_err();
    assert_eq!(
        e,
        "cannot change to directory /no/such/dir: No such file or directory"
    );
}

#[test]
fn a_missing_program_is_an_error_not_a_start() {
    let mut agent = Agent::start();
    let e = agent
        .start_exec(5, cmd(&["no-such-program-here"]))
        .unwrap_err();
    assert_eq!(
        e,
        "cannot run no-such-program-here: No such file or directory"
    );
    let dir = temp_dir("noexec");
    let file = dir.join("data");
    std::fs::write(&file, "not a program").unwrap();
    let e = agent
        .start_exec(6, cmd(&[file.to_str().unwrap()]))
        .unwrap_err();
    assert_eq!(
        e,
        format!("cannot run {}: Permission denied", file.display())
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // The agent goes on.
    assert_eq!(agent.run(5, sh("exit 7")).code, 7);
}

#[test]
fn stdin_is_piped_in_order_with_end_of_file() {
    let mut agent = Agent::start();
    agent.start_exec(1, cmd(&["cat"])).unwrap();
    agent.send(1, Message::Stdin(b"hello ".to_vec()));
    agent.send(1, Message::Stdin(b"world\n".to_vec()));
    agent.send(1, Message::StdinEof);
    let ran = agent.finish(1);
    assert_eq!((ran.code, ran.out()), (0, "hello world\n".to_string()));

    // More than the pipes and the queue hold at once, echoed back in chunks.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    agent.start_exec(2, cmd(&["cat"])).unwrap();
    for piece in data.chunks(CHUNK) {
        agent.send(2, Message::Stdin(piece.to_vec()));
    }
    agent.send(2, Message::StdinEof);
    let ran = agent.finish(2);
    assert_eq!(ran.code, 0);
    assert!(ran.stdout == data, "{} bytes back", ran.stdout.len());
    // Consumed pieces are acknowledged in batches of 16.
    let pieces = data.chunks(CHUNK).count() as u32;
    assert_eq!(
        ran.credit,
        pieces - pieces % 16,
        "credit for {pieces} pieces"
    );
}

#[test]
fn a_host_that_keeps_to_the_stdin_window_never_stalls_the_reader() {
    let mut agent = Agent::start();
    // A command that never reads its stdin (and would never end by itself).
    agent.start_exec(1, cmd(&["sleep", "600"])).unwrap();
    for _ in 0..airlock_vm_proto::STDIN_WINDOW {
        agent.send(1, Message::Stdin(vec![b'x'; CHUNK]));
    }
    // The window is spent and nothing was read: the agent still answers (a reader stuck on the
    // command's stdin would never answer, and the test would hang instead of passing).
    agent.send(CONTROL, Message::Ping);
    assert!(matches!(agent.recv(CONTROL), Message::Health { .. }));
    agent.send(1, Message::Signal(libc::SIGKILL));
    assert_eq!(agent.finish(1).code, 137);
}

#[test]
fn a_command_that_ignores_stdin_does_not_stall_the_agent() {
    let mut agent = Agent::start();
    agent.start_exec(1, sh("exit 4")).unwrap();
    for _ in 0..8 {
        agent.send(1, Message::Stdin(vec![b'x'; CHUNK]));
    }
    assert_eq!(agent.finish(1).code, 4);
    agent.send(CONTROL, Message::Ping);
    assert!(matches!(agent.recv(CONTROL), Message::Health { .. }));
}

#[test]
fn signals_reach_the_process_group() {
    let mut agent = Agent::start();
    agent.start_exec(1, cmd(&["sleep", "600"])).unwrap();
    agent.send(1, Message::Signal(libc::SIGTERM));
    assert_eq!(agent.finish(1).code, 143);

    // The whole group: a shell and its child.
    agent.start_exec(2, sh("sleep 30; echo never")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    agent.send(2, Message::Signal(libc::SIGKILL));
    let ran = agent.finish(2);
    assert_eq!(ran.code, 137);
    assert_eq!(ran.out(), "");
}

#[test]
fn a_terminal_is_a_real_pty_with_the_hosts_size() {
    let mut agent = Agent::start();
    let mut exec = sh("tty; stty size; test -t 0 && test -t 2 && echo all-terminal");
    exec.tty = Some(WinSize { rows: 24, cols: 80 });
    let ran = agent.run(1, exec);
    assert_eq!(ran.code, 0);
    let out = ran.out();
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("24 80"), "{out:?}");
    assert!(out.contains("all-terminal"), "{out:?}");
    assert!(ran.stderr.is_empty());

    // Resize while it runs; typed input arrives through the terminal.
    let mut exec = sh("read line; echo \"got $line\"; stty size");
    exec.tty = Some(WinSize { rows: 24, cols: 80 });
    agent.start_exec(2, exec).unwrap();
    // The end of the host's input does not close a terminal.
    agent.send(2, Message::StdinEof);
    agent.send(
        2,
        Message::Resize(WinSize {
            rows: 50,
            cols: 132,
        }),
    );
    agent.send(2, Message::Stdin(b"typed\n".to_vec()));
    let ran = agent.finish(2);
    let out = ran.out();
    assert_eq!(ran.code, 0);
    assert!(out.contains("got typed"), "{out:?}");
    assert!(out.contains("50 132"), "{out:?}");

    // ^C through the terminal interrupts its foreground process.
    let mut exec = cmd(&["sleep", "30"]);
    exec.tty = Some(WinSize { rows: 24, cols: 80 });
    agent.start_exec(3, exec).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    agent.send(3, Message::Stdin(vec![3]));
    assert_eq!(agent.finish(3).code, 130);
}

#[test]
fn many_quick_commands_all_report_their_exit() {
    let mut agent = Agent::start();
    for round in 0..3 {
        for ch in 1..=20u32 {
            agent.start_exec(ch, cmd(&["true"])).unwrap();
        }
        for ch in 1..=20u32 {
            assert_eq!(agent.finish(ch).code, 0, "round {round} channel {ch}");
        }
    }
}

#[test]
fn concurrent_commands_keep_their_channels_apart() {
    let mut agent = Agent::start();
    agent
        .start_exec(1, sh("for i in 1 2 3; do echo one$i; sleep 0.05; done"))
        .unwrap();
    agent
        .start_exec(
            2,
            sh("for i in 1 2 3; do echo two$i >&2; sleep 0.05; done; exit 2"),
        )
        .unwrap();
    agent.send(1, Message::Exec(cmd(&["true"])));
    let (two, mut one) = (agent.finish(2), Ran::default());
    let mut refused = None;
    loop {
        match agent.recv(1) {
            Message::Stdout(d) => one.stdout.extend(d),
            Message::Error(e) => refused = Some(e),
            Message::Exited { code } => {
                one.code = code;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused.is_some_and(|e| e.contains("busy")));
    assert_eq!((one.code, one.out()), (0, "one1\none2\none3\n".to_string()));
    assert_eq!((two.code, two.err()), (2, "two1\ntwo2\ntwo3\n".to_string()));
}

#[test]
fn orphans_are_reaped() {
    let mut agent = Agent::start();
    // The shell exits at once; its background child becomes the agent's (a subreaper here,
    // PID 1 in the VM) and must not linger as a zombie.
    let ran = agent.run(1, sh("sleep 0.2 >/dev/null 2>&1 & echo $!"));
    let orphan: u32 = ran.out().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(format!("/proc/{orphan}/stat")) {
            Err(_) => break,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap().trim_start().chars().next();
                assert!(
                    Instant::now() < deadline,
                    "pid {orphan} still there: {state:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A command whose background child keeps stdout open ends when the output does.
    let ran = agent.run(2, sh("(sleep 0.3; echo late) & echo early"));
    assert_eq!(ran.out(), "early\nlate\n");
}

#[test]
fn files_round_trip() {
    let dir = temp_dir("files");
    let path = dir.join("sub/file.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let content: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 256) as u8).collect();
    let mut agent = Agent::start();
    let p = path.to_str().unwrap().to_string();

    agent.send(
        1,
        Message::WriteFile {
            path: p.clone(),
            mode: 0o640,
        },
    );
    for piece in content.chunks(CHUNK) {
        agent.send(1, Message::Data(piece.to_vec()));
    }
    agent.send(1, Message::Done);
    assert_eq!(agent.recv(1), Message::Done);
    assert_eq!(std::fs::read(&path).unwrap(), content);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o640);

    agent.send(2, Message::ReadFile { path: p.clone() });
    let mut back = Vec::new();
    loop {
        match agent.recv(2) {
            Message::Data(d) => {
                assert!(d.len() <= CHUNK);
                back.extend(d);
            }
            Message::Done => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, content);

    // Replace: the old content is gone, nothing temporary is left behind.
    agent.send(
        3,
        Message::WriteFile {
            path: p.clone(),
            mode: 0o600,
        },
    );
    agent.send(3, Message::Data(b"short".to_vec()));
    agent.send(3, Message::Done);
    assert_eq!(agent.recv(3), Message::Done);
    assert_eq!(std::fs::read(&path).unwrap(), b"short");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["file.bin"]);

    // An abandoned transfer leaves the file as it was.
    agent.send(
        4,
        Message::WriteFile {
            path: p.clone(),
            mode: 0o600,
        },
    );
    agent.send(4, Message::Data(b"half".to_vec()));
    agent.send(4, Message::Error("the host gave up".into()));
    agent.send(CONTROL, Message::Ping);
    assert!(matches!(agent.recv(CONTROL), Message::Health { .. }));
    assert_eq!(std::fs::read(&path).unwrap(), b"short");
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );

    // Errors.
    agent.send(
        5,
        Message::ReadFile {
            path: dir.join("missing").to_str().unwrap().into(),
        },
    );
    match agent.recv(5) {
        Message::Error(e) => assert!(e.ends_with("missing: No such file or directory"), "{e}"),
        other => panic!("{other:?}"),
    }
    agent.send(
        6,
        Message::ReadFile {
            path: dir.to_str().unwrap().into(),
        },
    );
    assert!(matches!(agent.recv(6), Message::Error(e) if e.contains("not a regular file")));
    agent.send(
        7,
        Message::WriteFile {
            path: dir.join("no/such/dir/f").to_str().unwrap().into(),
            mode: 0o644,
        },
    );
    assert!(matches!(agent.recv(7), Message::Error(e) if e.contains("No such file")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_paths_stay_inside_the_sandbox_root() {
    let root = temp_dir("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "decoy\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    let mut agent = Agent::start_unsaid(&["--root", root.to_str().unwrap()]).greeted();
    for (ch, path) in [
        (1, "/etc/passwd"),
        (2, "/../../../../etc/passwd"),
        (3, "/abs-link"),
        (4, "etc-link/passwd"),
    ] {
        agent.send(ch, Message::ReadFile { path: path.into() });
        assert_eq!(agent.recv(ch), Message::Data(b"decoy\n".to_vec()), "{path}");
        assert_eq!(agent.recv(ch), Message::Done);
    }
    // Writing through an absolute symlinked directory lands inside the root too.
    agent.send(
        5,
        Message::WriteFile {
            path: "/etc-link/../../etc/new".into(),
            mode: 0o644,
        },
    );
    agent.send(5, Message::Data(b"inside".to_vec()));
    agent.send(5, Message::Done);
    assert_eq!(agent.recv(5), Message::Done);
    assert_eq!(std::fs::read(root.join("etc/new")).unwrap(), b"inside");
    assert!(!Path::new("/etc/new").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn ping_reports_health() {
    let mut agent = Agent::start();
    agent.send(CONTROL, Message::Ping);
    match agent.recv(CONTROL) {
        Message::Health {
            uptime_ms,
            processes,
        } => {
            assert!(uptime_ms > 0);
            assert!(processes > 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn setup_is_refused_outside_the_vm_and_unknown_frames_are_answered() {
    let mut agent = Agent::start();
    agent.send(
        CONTROL,
        Message::Setup(airlock_vm_proto::Setup {
            hostname: "h".into(),
            workspace: "/w".into(),
            workspace_readonly: false,
            home: String::new(),
            disk: "/dev/vda".into(),
            docker: false,
            net_address: String::new(),
            net_gateway: String::new(),
            net_resolver: String::new(),
            time_unix_ms: 0,
            cache_dirs: vec![],
            user_ids: (0, 0),
            cache_create: airlock_vm_proto::CacheCreate::None,
        }),
    );
    assert!(matches!(agent.recv(CONTROL), Message::Error(e) if e.contains("not PID 1")));
    agent.send(9, Message::Stdout(vec![1]));
    assert!(matches!(agent.recv(9), Message::Error(e) if e.contains("unexpected message Stdout")));
    agent.send(CONTROL, Message::Exec(cmd(&["true"])));
    assert!(matches!(agent.recv(CONTROL), Message::Error(e) if e.contains("control channel")));
    // Frames for channels that are not open are dropped quietly.
    agent.send(42, Message::Stdin(b"x".to_vec()));
    agent.send(42, Message::Signal(9));
    agent.send(42, Message::Done);
    agent.send(CONTROL, Message::Ping);
    assert!(matches!(agent.recv(CONTROL), Message::Health { .. }));
}

#[test]
fn shutdown_stops_commands_and_the_agent() {
    let mut agent = Agent::start();
    let pid = agent.start_exec(1, cmd(&["sleep", "30"])).unwrap();
    agent.send(CONTROL, Message::Shutdown);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.process.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    // SAFETY: probing a pid with signal 0.
    let gone = || unsafe { libc::kill(pid as i32, 0) } != 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(), "the command outlived the shutdown");
}

#[test]
fn commands_run_as_the_requested_user() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let mut agent = Agent::start();
    let mut exec = sh("id -u; id -g; id -G");
    exec.uid = 65534;
    exec.gid = 65534;
    let ran = agent.run(1, exec);
    assert_eq!(ran.code, 0, "{}", ran.err());
    let lines: Vec<&str> = ran
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(&lines[..2], ["65534", "65534"]);
    assert!(!lines[2].split(' ').any(|g| g == "0"), "{lines:?}");

    // Their terminal is theirs.
    let mut exec = sh("stat -c %u \"$(tty)\"");
    exec.uid = 65534;
    exec.gid = 65534;
    exec.tty = Some(WinSize { rows: 24, cols: 80 });
    assert!(agent.run(2, exec).out().contains("65534"));
}

#[test]
fn a_non_root_agent_refuses_other_users() {
    if is_root() {
        eprintln!("skipped: only meaningful for an unprivileged agent");
        return;
    }
    let mut agent = Agent::start();
    let mut exec = cmd(&["true"]);
    exec.uid = 0;
    let e = agent.start_exec(1, exec).unwrap_err();
    assert!(e.contains("cannot run commands as uid 0"), "{e}");
}

#[test]
fn a_root_agent_chroots_commands_into_the_sandbox_root() {
    if !is_root() {
        eprintln!("skipped: chroot needs root");
        return;
    }
    let root = temp_dir("chroot");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("work")).unwrap();
    let mut agent = Agent::start_unsaid(&["--root", root.to_str().unwrap()]).greeted();
    // The host's /bin/sh is not in this root.
    let e = agent
        .start_exec(1, cmd(&["/bin/sh", "-c", "true"]))
        .unwrap_err();
    assert_eq!(e, "cannot run /bin/sh: No such file or directory");
    // With a static busybox (when the machine has one) the root is all the command sees.
    let busybox = Path::new("/bin/busybox");
    if busybox.exists() {
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        let mut exec = cmd(&["busybox", "sh", "-c", "pwd; busybox ls /"]);
        exec.cwd = "/work".into();
        let ran = agent.run(2, exec);
        assert_eq!(ran.out(), "/work\nbin\nwork\n", "{}", ran.err());
    }
    std::fs::remove_dir_all(&root).unwrap();
}
