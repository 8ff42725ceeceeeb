//! Filesystem and process isolation of the namespace tier, checked from inside real sandboxes.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// Host ids (real, effective, saved, filesystem) of a process, from /proc/PID/status.
fn host_uids(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

#[test]
fn root_inside_is_never_root_outside() {
    for who in everyone() {
        let env = Env::new(&who);
        // A host file only its owner may read, and one owned by an id no sandbox maps.
        std::fs::write(env.ws.join("owner-only"), "mine\n").unwrap();
        std::fs::set_permissions(
            env.ws.join("owner-only"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(env.ws.join("stranger"), "not yours\n").unwrap();
        env.chown_all();
        let name = unique("ids");
        let out = env.airlock(&["create", "--name", &name]);
        assert!(out.status.success(), "{}: {}", who.label(), stderr(&out));
        std::os::unix::fs::chown(env.ws.join("stranger"), Some(3_000_000_000), None).unwrap();
        let out = env.exec_sh(
            &name,
            "cat /proc/self/uid_map; id -u; cat owner-only; stat -c '%u' owner-only stranger; echo new > made-inside; stat -c '%u' made-inside",
        );
        let text = stdout(&out);
        assert!(
            out.status.success(),
            "{}: {text} {}",
            who.label(),
            stderr(&out)
        );
        let lines: Vec<&str> = text.lines().collect();
        let map: Vec<u64> = lines[0]
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let inside_uid: u32 = lines[1].parse().unwrap();
        assert_eq!(
            inside_uid,
            who.uid(),
            "{}: the agent runs as the invoker's uid",
            who.label()
        );
        if who.is_root() {
            assert_eq!(map[0], 0, "root: the map starts at uid 0 inside");
            assert!(
                map[1] >= 65536,
                "root: uid 0 inside must map to an unprivileged host uid, got {text}"
            );
            assert_eq!(
                map[2], 65536,
                "root: a subordinate-sized range, not all ids: {text}"
            );
        } else {
            assert_eq!(
                map,
                vec![who.uid() as u64, who.uid() as u64, 1],
                "{}: only the user's own uid",
                who.label()
            );
        }
        // Idmapped mounts: the workspace keeps its owners inside, an unmapped owner is nobody.
        assert_eq!(
            lines[2],
            "mine",
            "{}: the owner reads its 0600 file",
            who.label()
        );
        assert_eq!(
            lines[3],
            who.uid().to_string(),
            "{}: host owner shown inside",
            who.label()
        );
        assert_eq!(
            lines[4],
            "65534",
            "{}: an id outside the map is nobody",
            who.label()
        );
        assert_eq!(lines[5], who.uid().to_string(), "{}", who.label());

        // From the host, every process of the sandbox runs under a non-root uid.
        let info = inspect(&env, &name);
        let init = info["init_pid"].as_i64().unwrap() as i32;
        let uids = host_uids(init);
        if who.is_root() {
            assert!(
                uids.iter().all(|&u| u as u64 == map[1]),
                "root: the sandbox's init must run as the mapped host uid {}, not as root: {uids:?}",
                map[1]
            );
        } else {
            assert!(uids.iter().all(|&u| u == who.uid()), "{uids:?}");
        }
        // A command started by `exec` (the path that joins from the host) too.
        let mut child = env
            .command(&["exec", &name, "--", "sleep", "30"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut sleeper = None;
        wait_until(
            || {
                sleeper = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
                    let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                    let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
                    let same_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?
                        == std::fs::read_link(format!("/proc/{init}/ns/pid")).ok()?;
                    (same_ns && cmd.starts_with("sleep\0")).then_some(pid)
                });
                sleeper.is_some()
            },
            "the exec'd sleep to appear",
        );
        let uids = host_uids(sleeper.unwrap());
        assert!(
            uids.iter()
                .all(|&u| u != 0 && (!who.is_root() || u as u64 == map[1])),
            "{}: exec'd commands must not run as host root: {uids:?}",
            who.label()
        );
        let _ = child.kill();
        let _ = child.wait();
        // What the agent wrote to its cow layer belongs on disk to the invoker (root's files to
        // root), not to the shifted id: diff, apply and templates see the host's ids.
        let upper = env
            .airlock_home
            .join("data/sandboxes")
            .join(&name)
            .join("layers/workspace/upper/made-inside");
        assert_eq!(
            std::fs::metadata(&upper).unwrap().uid(),
            who.uid(),
            "{}: owner of {} on disk",
            who.label(),
            upper.display()
        );
        assert!(
            !env.ws.join("made-inside").exists(),
            "cow: the host workspace is untouched"
        );
        let out = env.airlock(&["rm", "-f", &name]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// Masks in copy-on-write system directories live in the sandbox's own upper layer (an empty
/// file, an empty opaque directory): whatever the agent does to them, and across restarts, the
/// host's content never shows.
#[test]
fn masks_hold_whatever_the_agent_does_and_across_restarts() {
    let host_private = std::fs::read_dir("/etc/ssl/private")
        .map(|d| d.count())
        .unwrap_or(0);
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("masks");
        let out = env.airlock(&["create", "--name", &name]);
        assert!(out.status.success(), "{}", stderr(&out));
        let check = "grep -c . /etc/shadow || echo shadow-empty; ls -A /etc/ssl/private 2>/dev/null | wc -l";
        let probe = |when: &str| {
            let out = env.exec_sh(&name, check);
            let text = stdout(&out);
            assert!(
                text.contains("shadow-empty"),
                "{} {when}: /etc/shadow shows host content: {text}",
                who.label()
            );
            assert!(
                text.trim_end().ends_with('0'),
                "{} {when}: /etc/ssl/private shows the host's {host_private} entries: {text}",
                who.label()
            );
        };
        probe("at first");
        if who.is_root() {
            // The agent removes and recreates the masked paths; nothing of the host comes back.
            let out = env.exec_sh(
                &name,
                "rm -rf /etc/ssl/private && mkdir /etc/ssl/private && rm -f /etc/shadow && echo ok",
            );
            assert!(stdout(&out).contains("ok"), "{}", stderr(&out));
            probe("after the agent recreated them");
        }
        for cmd in [["stop", &name], ["start", &name]] {
            let out = env.airlock(&cmd);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        probe("after a restart");
        let out = env.airlock(&["rm", "-f", &name]);
        assert!(out.status.success(), "{}", stderr(&out));
        // A workspace over a system directory is mounted over its upper layer: the masks under
        // it must still hold (they are mounts there).
        for mode in ["cow", "rw"] {
            let out = env.airlock(&[
                "run",
                "--rm",
                "--workspace",
                "/etc/ssl",
                "--workspace-mode",
                mode,
                "--",
                "sh",
                "-c",
                "ls -A /etc/ssl/private | wc -l",
            ]);
            assert_eq!(
                stdout(&out).trim(),
                "0",
                "{} {mode}: /etc/ssl/private under a workspace at /etc/ssl shows host entries ({host_private} on the host): {}",
                who.label(),
                stderr(&out)
            );
        }
    }
}

/// `inspect` lists the host paths a namespace sandbox hides, and each of them is empty inside,
/// for root (masks in copy-on-write upper layers) and rootless users (masks as mounts) alike.
#[test]
fn inspect_lists_what_is_hidden_and_it_is_empty_inside() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = "hidden".to_string();
        assert!(env.airlock(&["create", &name]).status.success());
        let hidden = inspect(&env, &name)["hidden"].clone();
        let list = |k: &str| -> Vec<String> {
            hidden[k]
                .as_array()
                .unwrap_or_else(|| panic!("hidden.{k} in {hidden}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let (files, dirs, private) = (list("files"), list("dirs"), list("private_dirs"));
        // This host has these (Debian): the list is the host's, not a fixed one.
        for p in ["/etc/shadow", "/etc/machine-id"] {
            assert!(files.iter().any(|f| f == p), "{p} not in {files:?}");
        }
        assert!(private.iter().any(|d| d == "/var/log"), "{private:?}");
        // Inside, a hidden file reads as nothing (or cannot be read), a hidden directory lists
        // nothing. Printed per path, so a failure names it.
        let mut script = String::new();
        for f in &files {
            script.push_str(&format!("echo \"{f} $(cat {f} 2>/dev/null | wc -c)\"; "));
        }
        for d in dirs.iter().chain(&private) {
            script.push_str(&format!("echo \"{d} $(ls -A {d} 2>/dev/null | wc -l)\"; "));
        }
        let out = env.airlock(&["exec", &name, "--", "sh", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", stderr(&out));
        let mut seen = 0;
        for line in text.lines() {
            let (path, n) = line.rsplit_once(' ').unwrap();
            assert_eq!(n, "0", "{}: {path} is not empty inside", who.label());
            seen += 1;
        }
        assert_eq!(seen, files.len() + dirs.len() + private.len());
        // And on the host at least /etc/shadow has content: hidden means something here.
        assert!(std::fs::metadata("/etc/shadow").unwrap().len() > 0);
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}
