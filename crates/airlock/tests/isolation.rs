//! Filesystem and process isolation of the namespace tier, checked from inside real sandboxes.

mod common;

use std::os::fd::AsRawFd;
use std::process::Stdio;

use common::*;

#[test]
fn workspace_is_at_the_same_path_and_cow_leaves_the_host_untouched() {
    for who in everyone() {
        let env = Env::new(&who);
        let ws = env.ws.display().to_string();
        let out = env.sh(&format!(
            "set -e; test \"$(pwd)\" = {ws}; cat README.md; echo changed >> README.md; \
             echo new > created.txt; rm src/main.c; mkdir -p build/deep; echo x > build/deep/o; \
             chmod 600 README.md; cat README.md; ls"
        ));
        assert!(
            out.contains("hello from the host\nhello from the host\nchanged"),
            "{out}"
        );
        assert!(out.contains("created.txt"));
        // The host directory is exactly as it was.
        assert_eq!(
            std::fs::read_to_string(env.path("README.md")).unwrap(),
            "hello from the host\n"
        );
        assert!(env.path("src/main.c").exists());
        assert!(!env.path("created.txt").exists());
        assert!(!env.path("build").exists());
    }
}

#[test]
fn rw_mode_is_live_and_ro_mode_refuses_writes() {
    for who in everyone() {
        let env = Env::new(&who);
        let out = env.airlock(&[
            "run",
            "--rm",
            "--workspace-mode",
            "rw",
            "--",
            "sh",
            "-c",
            "echo live > live.txt",
        ]);
        assert!(out.status.success());
        assert_eq!(
            std::fs::read_to_string(env.path("live.txt")).unwrap(),
            "live\n"
        );
        let out = env.airlock(&[
            "run",
            "--rm",
            "--workspace-mode",
            "ro",
            "--",
            "sh",
            "-c",
            "echo no > ro.txt",
        ]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{}",
            stderr(&out)
        );
        assert!(!env.path("ro.txt").exists());
    }
}

#[test]
fn host_home_secrets_and_environment_stay_outside() {
    for who in everyone() {
        let mut env = Env::new(&who);
        std::fs::create_dir_all(env.home.join(".ssh")).unwrap();
        std::fs::write(
            env.home.join(".ssh/id_ed25519"),
            "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n",
        )
        .unwrap();
        std::fs::create_dir_all(env.home.join(".aws")).unwrap();
        std::fs::write(
            env.home.join(".aws/credentials"),
            "[default]\naws_secret_access_key=SECRETVALUE\n",
        )
        .unwrap();
        env.chown_all();
        env.extra_env
            .push(("AWS_SECRET_ACCESS_KEY".into(), "SECRETVALUE".into()));
        env.extra_env
            .push(("SSH_AUTH_SOCK".into(), "/tmp/ssh-agent.sock".into()));
        env.extra_env.push(("TERM".into(), "xterm-test".into()));
        let home = env.home.display().to_string();
        let out = env.sh(&format!(
            "test \"$HOME\" = {home} && echo home-path-ok; ls -A $HOME; \
             cat $HOME/.ssh/id_ed25519 2>&1; cat $HOME/.aws/credentials 2>&1; \
             env; tr '\\0' '\\n' < /proc/1/environ 2>&1; tr '\\0' ' ' < /proc/1/cmdline 2>&1; ls /home 2>&1; ls -A /root 2>&1; \
             test -e /var/run/docker.sock || echo no-docker-sock; \
             grep -c . /etc/shadow || echo shadow-empty; ls /etc/ssh 2>&1"
        ));
        assert!(out.contains("home-path-ok"), "{out}");
        assert!(
            !out.contains("secret\n") && !out.contains("SECRETVALUE"),
            "a host secret leaked: {out}"
        );
        assert!(out.contains("No such file or directory"), "{out}");
        assert!(!out.contains("SSH_AUTH_SOCK"), "{out}");
        assert!(
            out.contains("TERM=xterm-test"),
            "allowlisted variables pass: {out}"
        );
        assert!(out.contains("AIRLOCK_SANDBOX="), "{out}");
        assert!(out.contains("no-docker-sock"));
        assert!(
            out.contains("shadow-empty"),
            "/etc/shadow must be masked: {out}"
        );
        // No other user's home: /home holds nothing but (for a user) the path to their own.
        for other in ["cloudsdk", "airtest"] {
            if !matches!(&who, Who::User { name, .. } if name == other) {
                assert!(
                    !out.lines().any(|l| l.trim() == other),
                    "home of {other} visible: {out}"
                );
            }
        }
    }
}

#[test]
fn host_processes_are_invisible_and_cannot_be_signalled() {
    for who in everyone() {
        let env = Env::new(&who);
        let me = std::process::id();
        let out = env.sh(&format!(
            "ls /proc | grep -c '^[0-9]*$'; cat /proc/1/comm; \
             kill -0 {me} 2>&1 && echo SIGNALLED-HOST; echo done"
        ));
        let count: usize = out.lines().next().unwrap().trim().parse().unwrap();
        assert!(
            count <= 6,
            "only the sandbox's own processes are visible, saw {count}: {out}"
        );
        assert!(!out.contains("SIGNALLED-HOST"), "{out}");
        assert!(out.contains("done"), "{out}");
        assert!(alive(me as i32));
    }
}

#[test]
fn hostname_is_the_sandbox_name_and_network_is_loopback_only() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("net");
        let out = env.airlock(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "hostname; cat /proc/net/dev | tail -n +3 | cut -d: -f1",
        ]);
        assert!(out.status.success());
        let o = stdout(&out);
        assert!(o.starts_with(&format!("{name}\n")), "{o}");
        let ifaces: Vec<&str> = o.lines().skip(1).map(str::trim).collect();
        assert_eq!(ifaces, vec!["lo"], "{o}");
    }
}

const SYSCALL_PROBE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def err(rc):
    return "ok" if rc == 0 or rc > 0 else errno.errorcode[ctypes.get_errno()]
print("mount", err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
print("unshare_user", err(libc.unshare(0x10000000)))
print("unshare_ns", err(libc.unshare(0x00020000)))
print("bpf", err(libc.syscall(321, 0, 0, 0)))
print("keyctl", err(libc.syscall(250, 0, 0, 0)))
print("io_uring", err(libc.syscall(425, 1, 0)))
print("open_by_handle_at", err(libc.syscall(304, 0, 0, 0)))
print("perf_event_open", err(libc.syscall(298, 0, 0, -1, -1, 0)))
print("ptrace_traceme_ok", err(0))
"#;

#[test]
fn dangerous_syscalls_are_refused() {
    for who in everyone() {
        let env = Env::new(&who);
        let out = env.airlock(&["run", "--rm", "--", "/usr/bin/python3", "-c", SYSCALL_PROBE]);
        assert!(out.status.success(), "{}", stderr(&out));
        let o = stdout(&out);
        for call in [
            "mount",
            "unshare_user",
            "unshare_ns",
            "bpf",
            "keyctl",
            "io_uring",
            "open_by_handle_at",
            "perf_event_open",
        ] {
            let line = o
                .lines()
                .find(|l| l.starts_with(&format!("{call} ")))
                .unwrap_or_else(|| panic!("{call} missing: {o}"));
            assert!(
                line.ends_with(" EPERM"),
                "{call} must be refused with EPERM: {line}"
            );
        }
    }
}

#[test]
fn tiocsti_cannot_inject_into_any_terminal() {
    for who in everyone() {
        let env = Env::new(&who);
        let pty = nix::pty::openpty(None, None).unwrap();
        if let Who::User { uid, gid, .. } = who {
            let path =
                std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        let script = "import fcntl, termios, os\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n    print('INJECTED')\nexcept OSError as e:\n    print('refused', e.errno)\n";
        // With the caller's terminal as stdio: Airlock gives the command a PTY of its own (the
        // default on a terminal) and, with -T, no controlling terminal at all.
        for extra in [&[][..], &["-T"][..]] {
            let mut args = vec!["run", "--rm"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--", "/usr/bin/python3", "-c", script]);
            let mut cmd = env.command(&args);
            let slave_in = pty.slave.try_clone().unwrap();
            let slave_out = pty.slave.try_clone().unwrap();
            cmd.stdin(Stdio::from(slave_in))
                .stdout(Stdio::from(slave_out))
                .stderr(Stdio::piped());
            let out = cmd.output().unwrap();
            // Read what the command printed through the terminal.
            let mut buf = vec![0u8; 4096];
            // SAFETY: non-blocking read from our own master fd into a local buffer.
            let n = unsafe {
                libc::fcntl(pty.master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
                libc::read(pty.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
            };
            let text = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
            assert!(out.status.success(), "{} / {text}", stderr(&out));
            assert!(
                text.contains("refused"),
                "TIOCSTI must fail ({extra:?}): {text}"
            );
            assert!(!text.contains("INJECTED"));
        }
    }
}

#[test]
fn no_descriptor_of_the_caller_leaks_in() {
    for who in everyone() {
        let env = Env::new(&who);
        let leak = std::fs::File::open("/etc/hostname").unwrap();
        let raw = leak.as_raw_fd();
        let mut cmd = env.command(&[
            "run",
            "--rm",
            "--",
            "/usr/bin/python3",
            "-c",
            "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))",
        ]);
        // Hand airlock an inheritable descriptor 9, as a careless parent would.
        with_pre_exec(&mut cmd, move || {
            // SAFETY: dup2 in the child between fork and exec.
            if unsafe { libc::dup2(raw, 9) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let o = stdout(&out);
        assert_eq!(
            o.trim(),
            "[0, 1, 2, 3]",
            "only stdio (and listdir's own fd) may be open inside: {o}"
        );
        let cwd = env.sh("readlink /proc/self/cwd; readlink /proc/1/cwd 2>&1 || true");
        assert!(cwd.starts_with(&env.ws.display().to_string()), "{cwd}");
    }
}

#[test]
fn installing_into_system_directories_stays_in_the_sandbox_when_ids_allow() {
    for who in everyone() {
        let env = Env::new(&who);
        let marker = format!("/usr/local/bin/airlock-test-{}", std::process::id());
        let out = env.airlock(&[
            "run",
            "--rm",
            "--",
            "sh",
            "-c",
            &format!("echo '#!/bin/sh' > {marker} && echo wrote"),
        ]);
        if who.is_root() {
            assert!(
                out.status.success() && stdout(&out).contains("wrote"),
                "root: system dirs are copy-on-write"
            );
        } else {
            assert!(!out.status.success(), "rootless: system dirs are read-only");
        }
        assert!(
            !std::path::Path::new(&marker).exists(),
            "the host's /usr must never change"
        );
    }
}
