//! The microVM tier, for real: QEMU (TCG here, KVM where it works), the host's kernel package
//! as the guest kernel, Airlock's initramfs and guest agent. Slow under TCG, so the scenarios are
//! few and each covers several properties. They run as root and rootless, like every other test.

mod common;
mod vm_support;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn vm_env(who: &Who) -> Env {
    let mut env = Env::new(who);
    env.extra_env.push((
        "AIRLOCK_GUEST_AGENT".into(),
        vm_support::guest_agent(BIN).display().to_string(),
    ));
    env
}

fn host_kernel() -> String {
    let out = Command::new("uname").arg("-r").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Host pids of the processes in a sandbox's pid namespace (its init and descendants).
fn processes_under(init: i32) -> Vec<(i32, String)> {
    let mut out = vec![];
    let mut frontier = vec![init];
    while let Some(p) = frontier.pop() {
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                out.push((c, comm.trim().to_string()));
                frontier.push(c);
            }
        }
    }
    out
}

#[test]
fn a_vm_runs_commands_on_its_own_kernel_with_exit_codes_and_stdio() {
    for who in everyone() {
        let env = vm_env(&who);
        let out = env.airlock(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--",
            "sh",
            "-c",
            "uname -r; cat /proc/version; pwd; id -u; echo to-stderr >&2; read line; echo \"got $line\"; exit 7",
        ]);
        assert_eq!(out.status.code(), Some(7), "[{}]", who.label());
        let so = stdout(&out);
        let mut lines = so.lines();
        let guest_kernel = lines.next().unwrap_or_default();
        assert!(!guest_kernel.is_empty());
        assert_ne!(guest_kernel, host_kernel(), "the guest runs its own kernel");
        let version = lines.next().unwrap_or_default();
        assert!(
            version.contains(guest_kernel),
            "/proc/version is the guest's: {version}"
        );
        assert_eq!(lines.next(), Some(env.ws.to_str().unwrap()), "same path");
        assert_eq!(lines.next(), Some(who.uid().to_string().as_str()));
        assert!(stderr(&out).contains("to-stderr"));
        // stdin was /dev/null: `read` hit EOF.
        assert_eq!(lines.next(), Some("got "));
        // --workspace-mode ro holds in the guest too (it is enforced on the host side).
        let out = env.airlock(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--workspace-mode",
            "ro",
            "--",
            "sh",
            "-c",
            "echo x > README.md || echo refused; cat README.md",
        ]);
        assert!(out.status.success(), "[{}] ro", who.label());
        assert_eq!(stdout(&out), "refused\nhello from the host\n");
        // Nothing left behind by --rm.
        assert!(
            !env.airlock_home.join("sandboxes").exists()
                || std::fs::read_dir(env.airlock_home.join("sandboxes"))
                    .unwrap()
                    .flatten()
                    .all(|e| e.file_name().to_string_lossy().starts_with('.')),
            "[{}] --rm left {:?}",
            who.label(),
            env.state_files()
        );
    }
}

#[test]
fn a_vm_sandbox_is_copy_on_write_persists_across_stop_start_and_rm_leaves_nothing() {
    for who in everyone() {
        let env = vm_env(&who);
        let name = unique("vm");
        let out = env.airlock(&[
            "create",
            "--isolation",
            "vm",
            "--name",
            &name,
            "--cache-dir",
            "target",
        ]);
        assert!(out.status.success(), "[{}] create", who.label());
        let out = env.exec_sh(&name, "echo changed > README.md && echo new > made-in-vm.txt && mkdir -p ~/.cache && echo warm > ~/.cache/x && cat README.md \
             && echo built > target/o && stat -f -c %T . target && stat -c %u target && id -u");
        assert!(out.status.success(), "[{}] exec", who.label());
        let o = stdout(&out);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines[0], "changed");
        // The workspace comes through the file share; the cache directory is the guest disk's
        // own (ext4), owned by the sandbox's user.
        assert_ne!(lines[1], lines[2], "{o}");
        assert_eq!(lines[2], "ext2/ext3", "{o}");
        assert_eq!(lines[3], lines[4], "{o}");
        assert!(!env.path("target").exists());
        // The host's workspace is untouched; the change is in the sandbox's layer.
        assert_eq!(
            std::fs::read_to_string(env.path("README.md")).unwrap(),
            "hello from the host\n"
        );
        assert!(!env.path("made-in-vm.txt").exists());
        let diff = env.airlock(&["diff", &name]);
        assert!(diff.status.success());
        assert!(
            stdout(&diff).contains("made-in-vm.txt"),
            "diff shows the new file"
        );
        assert!(
            !stdout(&diff).contains("target"),
            "diff shows nothing of the cache directory: {}",
            stdout(&diff)
        );

        // The guest's root can install into the system directories: the write lands on the
        // sandbox's disk, never on the host.
        let out = env.airlock(&[
            "exec",
            "--root",
            &name,
            "--",
            "sh",
            "-c",
            "id -u && echo installed > /usr/local/share/airlock-vm-test",
        ]);
        assert!(out.status.success(), "[{}] exec --root", who.label());
        assert_eq!(stdout(&out), "0\n");
        assert!(!std::path::Path::new("/usr/local/share/airlock-vm-test").exists());

        // The guest's disk and the workspace layer survive a stop/start.
        assert!(env.airlock(&["stop", &name]).status.success());
        assert_eq!(inspect(&env, &name)["state"], "stopped");
        let out = env.exec_sh(
            &name,
            "cat made-in-vm.txt ~/.cache/x /usr/local/share/airlock-vm-test target/o",
        );
        assert!(out.status.success(), "[{}] exec after stop", who.label());
        assert_eq!(stdout(&out), "new\nwarm\ninstalled\nbuilt\n");

        // Stdin streams through the guest's flow-control window: 6 MB in, counted inside.
        let big = env.base.join("stdin.bin");
        std::fs::write(&big, vec![b'a'; 6 << 20]).unwrap();
        let out = env
            .command(&["exec", &name, "--", "sh", "-c", "wc -c"])
            .stdin(std::fs::File::open(&big).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "[{}] stdin", who.label());
        assert_eq!(stdout(&out).trim(), (6u64 << 20).to_string());

        // exec -t: a PTY in the guest (through `script`, which gives airlock a terminal).
        let out = env.with_terminal(&["exec", "-t", &name, "--", "sh", "-c", "tty; exit 5"]);
        assert_eq!(out.status.code(), Some(5), "[{}] exec -t", who.label());
        assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));

        // The audit probe runs inside the guest (a host binary copied in through the agent).
        let out = env.airlock(&[
            "audit",
            "--sandbox",
            &name,
            "--json",
            "--net-targets",
            "none",
        ]);
        assert!(out.status.success(), "[{}] audit in the VM", who.label());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["context"]["kind"], "sandbox");
        assert_ne!(
            report["context"]["kernel"].as_str().unwrap_or_default(),
            host_kernel(),
            "the probe ran on the guest's kernel: {}",
            report["context"]
        );

        // rm: no VMM process, no disk, no state.
        let state = inspect(&env, &name);
        assert!(
            state["vm"].as_str().unwrap_or_default().contains("QEMU"),
            "inspect describes the VM: {state}"
        );
        let init = state["init_pid"]
            .as_i64()
            .expect("inspect shows the init pid") as i32;
        let vmm = processes_under(init);
        assert!(
            vmm.iter().any(|(_, c)| c.starts_with("qemu")),
            "[{}] a QEMU process runs in the sandbox: {vmm:?}",
            who.label()
        );
        assert!(env.airlock(&["rm", "--force", &name]).status.success());
        for (pid, comm) in &vmm {
            assert!(!alive(*pid), "{comm} ({pid}) outlived rm");
        }
        assert!(!alive(init));
        assert!(
            !env.airlock_home.join("sandboxes").join(&name).exists(),
            "the disk is gone"
        );
    }
}

/// A free TCP port on the host's loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_vm_reaches_nothing_but_the_gate_and_publishes_ports() {
    for who in everyone() {
        let env = vm_env(&who);
        let name = unique("vmnet");
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:8000");
        let out = env.airlock(&[
            "create",
            "--isolation",
            "vm",
            "--name",
            &name,
            "-p",
            &publish,
        ]);
        assert!(out.status.success(), "[{}] create", who.label());
        // Direct connections to an address fail (the default policy denies everything before a
        // packet leaves; the address is a documentation one anyway), and so does a name lookup.
        let out = env.airlock(&[
            "exec",
            &name,
            "--",
            "python3",
            "-c",
            "import socket\n\
             s = socket.socket(); s.settimeout(5)\n\
             try:\n    s.connect(('203.0.113.7', 80)); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); r = s.recv(100); print('refused by the gate: ' + r.decode(errors='replace').splitlines()[0] if r else 'refused: closed')\n\
             except OSError as e:\n    print('refused', e)\n\
             try:\n    socket.getaddrinfo('example.com', 443); print('resolved')\n\
             except OSError as e:\n    print('no-dns', e)\n",
        ]);
        assert!(out.status.success(), "[{}]", who.label());
        let so = stdout(&out);
        assert!(so.contains("refused"), "[{}] {so}", who.label());
        // With transparent capture (root here) the gate itself answers a denied HTTP request.
        assert!(
            !so.contains("refused by the gate") || so.contains(" 403 "),
            "[{}] {so}",
            who.label()
        );
        assert!(so.contains("no-dns"), "[{}] {so}", who.label());

        // A server in the guest, bound to its loopback, is reachable at the published port.
        let out = env.exec_sh(
            &name,
            "python3 -m http.server --bind 127.0.0.1 8000 >/dev/null 2>&1 &",
        );
        assert!(out.status.success());
        let mut body = String::new();
        wait_until(
            || {
                use std::io::{Read, Write};
                let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    return false;
                };
                let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let _ = c.write_all(b"GET /README.md HTTP/1.0\r\n\r\n");
                body.clear();
                let _ = c.read_to_string(&mut body);
                body.contains("hello from the host")
            },
            "the guest's server behind the published port",
        );

        // A supervisor killed outright takes its VM with it, and gc cleans up after it.
        let state = inspect(&env, &name);
        let init = state["init_pid"].as_i64().unwrap() as i32;
        let supervisor = state["supervisor_pid"].as_i64().unwrap() as i32;
        let vmm = processes_under(init);
        assert!(vmm.iter().any(|(_, c)| c.starts_with("qemu")), "{vmm:?}");
        // SAFETY: SIGKILL to the supervisor this test's airlock started (pid from its state).
        unsafe { libc::kill(supervisor, libc::SIGKILL) };
        wait_until(
            || vmm.iter().all(|(p, _)| !alive(*p)) && !alive(init),
            "the VMM to die with its supervisor",
        );
        assert!(env.airlock(&["gc"]).status.success());
        assert_eq!(inspect(&env, &name)["state"], "stopped");
        assert!(env.airlock(&["rm", "--force", &name]).status.success());

        // exec --root in a namespace sandbox: a no-op for root, refused rootless (no root to give).
        let ns = unique("ns");
        assert!(env.airlock(&["create", "--name", &ns]).status.success());
        let out = env.airlock(&["exec", "--root", &ns, "--", "id", "-u"]);
        if who.is_root() {
            assert_eq!(stdout(&out), "0\n");
        } else {
            assert_eq!(out.status.code(), Some(2));
            assert!(stderr(&out).contains("--isolation vm"), "{}", stderr(&out));
        }
        assert!(env.airlock(&["rm", "--force", &ns]).status.success());

        // --docker without the VM tier is a usage error, and nothing is created.
        let out = env.airlock(&[
            "run",
            "--rm",
            "--docker",
            "--isolation",
            "namespace",
            "--",
            "true",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("--isolation vm"));
    }
}

/// A Docker image archive (`docker save` format) whose one layer is a static busybox.
fn busybox_image(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("busybox-image.tar");
    let script = r#"
import hashlib, io, json, sys, tarfile
out = sys.argv[1]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    t.add("/bin/busybox", arcname="bin/busybox")
    for name in ("sh", "echo", "cat", "uname"):
        i = tarfile.TarInfo("bin/" + name); i.type = tarfile.SYMTYPE; i.linkname = "busybox"
        t.addfile(i)
layer = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
config_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": config_name, "RepoTags": ["airlock-test/busybox:1"],
    "Layers": ["layer/layer.tar"]}]).encode()
with tarfile.open(out, "w") as t:
    for name, data in (("layer/layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
"#;
    let st = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "building the test image");
    out
}

#[test]
fn docker_runs_inside_the_vm_on_its_own_daemon() {
    for who in everyone() {
        let env = vm_env(&who);
        busybox_image(&env.ws);
        env.chown_all();
        let out = env.airlock(&[
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--docker",
            // A guest that hangs fails the test instead of hanging it.
            "--timeout",
            "600",
            "--",
            "sh",
            "-c",
            "set -e; docker load -q -i busybox-image.tar >/dev/null; \
             docker run --rm --network none airlock-test/busybox:1 sh -c 'echo hello-from-a-container; uname -r'; \
             docker info --format 'daemon-kernel {{.KernelVersion}}'; uname -r",
        ]);
        assert!(out.status.success(), "[{}] docker in the VM", who.label());
        let so = stdout(&out);
        let lines: Vec<&str> = so.lines().collect();
        assert_eq!(lines.first(), Some(&"hello-from-a-container"), "{so}");
        let guest = lines.last().copied().unwrap_or_default();
        assert_ne!(guest, host_kernel());
        // The container, and the daemon that ran it, are on the guest's kernel: the daemon is
        // the VM's own, not the host's.
        assert_eq!(lines.get(1).copied(), Some(guest), "{so}");
        assert!(so.contains(&format!("daemon-kernel {guest}")), "{so}");
    }
}

#[test]
fn doctor_reports_both_tiers_and_the_accelerator_decision() {
    for who in everyone() {
        let env = vm_env(&who);
        let out = env.airlock(&["doctor", "--json"]);
        assert!(out.status.success(), "[{}] doctor", who.label());
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["namespace_tier"], true, "{report}");
        assert_eq!(report["vm_tier"], true, "{report}");
        let accel = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "vm accelerator")
            .expect("an accelerator check")
            .clone();
        // KVM, or TCG with the reason why not.
        match accel["status"].as_str() {
            Some("ok") => assert_eq!(accel["detail"], "KVM"),
            Some("degraded") => {
                assert!(accel["detail"].as_str().unwrap().contains("TCG"), "{accel}")
            }
            other => panic!("unexpected accelerator status {other:?}"),
        }
        // Without a guest agent the VM tier is reported missing, with what to do.
        let mut bare = Env::new(&who);
        bare.extra_env.push((
            "AIRLOCK_GUEST_AGENT".into(),
            "/nonexistent/airlock-guest".into(),
        ));
        let out = bare.airlock(&["doctor"]);
        assert!(out.status.success(), "the namespace tier is still ready");
        let text = stdout(&out);
        assert!(
            text.contains("guest agent") && text.contains("missing"),
            "{text}"
        );
    }
}
