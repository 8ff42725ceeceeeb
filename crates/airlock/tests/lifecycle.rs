//! Lifecycle, limits, exit codes and errors of real sandboxes.

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn exit_codes_are_the_commands() {
    for who in everyone() {
        let env = Env::new(&who);
        let code = |args: &[&str]| env.airlock(args).status.code();
        assert_eq!(code(&["run", "--rm", "--", "sh", "-c", "exit 3"]), Some(3));
        assert_eq!(
            code(&["run", "--rm", "--", "sh", "-c", "kill -9 $$"]),
            Some(137)
        );
        assert_eq!(
            code(&["run", "--rm", "--", "no-such-command-xyz"]),
            Some(127)
        );
        assert_eq!(code(&["run", "--rm", "--", "true"]), Some(0));
        let out = env.airlock(&[
            "run",
            "--rm",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; cat",
        ]);
        assert_eq!(stdout(&out), "out\n");
        assert!(stderr(&out).contains("err"));
        // --rm leaves nothing behind, on disk or in the runtime root where it kept its files.
        assert!(
            env.state_files().iter().all(|p| {
                let p = p.to_string_lossy();
                !(p.contains("/sandboxes/") || p.contains("/ephemeral/"))
            }),
            "{:?}",
            env.state_files()
        );
    }
}

#[test]
fn stdin_is_streamed_in_run_and_exec() {
    for who in everyone() {
        let env = Env::new(&who);
        let mut c = env.command(&["run", "--rm", "--", "sh", "-c", "tr a-z A-Z"]);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"streamed\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "STREAMED\n");
    }
}

/// The sandbox's root is assembled in a tmpfs of its own, in its own mount namespace: while it
/// runs nothing of it shows on the host (the scratch directory it covers stays empty, no mount
/// point is made in the runtime directory), and its resolver configuration is written inside,
/// read-only.
#[test]
fn a_running_sandbox_builds_nothing_on_the_host() {
    for who in everyone() {
        let env = Env::new(&who);
        let script = "cat /etc/resolv.conf; (echo x >/etc/resolv.conf) 2>/dev/null || echo read-only; read line";
        let mut c = env.command(&["run", "--rm", "--", "sh", "-c", script]);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        use std::io::BufRead;
        while !seen.contains("read-only") {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.push_str(&line);
        }
        assert!(seen.contains("nameserver 127.0.0.53"), "{seen}");
        assert!(seen.contains("read-only"), "{seen}");
        // The sandbox is running (it waits for its stdin): look at the host now.
        let scratch = env.airlock_home.join("run/scratch");
        let inside: Vec<_> = std::fs::read_dir(&scratch).unwrap().flatten().collect();
        assert!(inside.is_empty(), "{} holds {inside:?}", scratch.display());
        let sandboxes = env.airlock_home.join("run/sandboxes");
        let runtime: Vec<_> = env
            .state_files()
            .into_iter()
            .filter_map(|p| p.strip_prefix(&sandboxes).ok().map(|r| r.to_path_buf()))
            .collect();
        assert!(
            runtime.iter().all(|p| p.components().count() <= 1
                || (p.components().count() == 2 && p.ends_with("state.json"))),
            "only the running sandbox's state is in the runtime directory: {runtime:?}"
        );
        assert!(
            runtime.iter().any(|p| p.ends_with("state.json")),
            "{runtime:?}"
        );
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"done\n").unwrap();
        assert!(child.wait().unwrap().success());
    }
}

/// With a terminal, `run` and `exec -t` give the command a PTY of its own inside the sandbox and
/// return its exit code (driven through `script`, which gives airlock a terminal).
#[test]
fn a_terminal_gets_a_pty_in_run_and_exec() {
    for who in everyone() {
        let env = Env::new(&who);
        let out = env.with_terminal(&["run", "--rm", "--", "sh", "-c", "tty; exit 4"]);
        assert_eq!(out.status.code(), Some(4), "[{}] run", who.label());
        assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
        let name = unique("tty");
        assert!(env.airlock(&["create", "--name", &name]).status.success());
        assert!(env.airlock(&["start", &name]).status.success());
        let out = env.with_terminal(&["exec", "-t", &name, "--", "sh", "-c", "tty; exit 5"]);
        assert_eq!(out.status.code(), Some(5), "[{}] exec -t", who.label());
        assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}

#[test]
fn stop_and_start_keep_the_sandbox_state_and_rm_leaves_no_residue() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("keep");
        assert!(
            env.airlock(&["create", "--name", &name, "--memory", "256m"])
                .status
                .success()
        );
        assert!(env.airlock(&["start", &name]).status.success());
        let info = inspect(&env, &name);
        assert_eq!(info["state"], "running");
        let init = info["init_pid"].as_i64().unwrap() as i32;
        let supervisor = info["supervisor_pid"].as_i64().unwrap() as i32;
        let cgroups: Vec<String> = info["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        if who.is_root() {
            assert!(!cgroups.is_empty(), "root gets a cgroup");
            assert!(
                info["limits_enforcement"]
                    .as_str()
                    .unwrap()
                    .starts_with("cgroup")
            );
        } else {
            // Rootless on this cgroup-v1 host: rlimits, and inspect says so.
            assert!(
                info["limits_enforcement"]
                    .as_str()
                    .unwrap()
                    .starts_with("rlimits ("),
                "{info}"
            );
        }
        let out = env.exec_sh(
            &name,
            "echo kept > work.txt; echo home > $HOME/h.txt; echo $$",
        );
        assert!(out.status.success());
        assert_eq!(env.exec_sh(&name, "exit 7").status.code(), Some(7));
        // exec joins the same sandbox: same hostname, same pid namespace as init.
        let out = env.exec_sh(&name, "hostname; cat /proc/1/comm");
        assert!(stdout(&out).starts_with(&format!("{name}\n")));
        assert!(env.airlock(&["stop", &name]).status.success());
        assert!(
            !alive(init) && !alive(supervisor),
            "stop ends every process"
        );
        assert_eq!(inspect(&env, &name)["state"], "stopped");
        for c in &cgroups {
            assert!(
                !std::path::Path::new(c).exists(),
                "stop removes the cgroup {c}"
            );
        }
        // exec starts it again, with the writable layers as they were.
        let out = env.exec_sh(&name, "cat work.txt $HOME/h.txt");
        assert_eq!(stdout(&out), "kept\nhome\n");
        assert!(
            !env.path("work.txt").exists(),
            "the host workspace is untouched"
        );
        let info = inspect(&env, &name);
        let init = info["init_pid"].as_i64().unwrap() as i32;
        assert!(info["disk_used_bytes"].as_u64().unwrap() > 0);

        // rm refuses a running sandbox without --force, then removes everything.
        let out = env.airlock(&["rm", &name]);
        assert_eq!(out.status.code(), Some(4));
        assert!(env.airlock(&["rm", "--force", &name]).status.success());
        assert!(!alive(init));
        let left: Vec<_> = env
            .state_files()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&name))
            .collect();
        assert!(left.is_empty(), "rm left {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&env.airlock_home.display().to_string()),
            "no mount of the sandbox remains"
        );
        if who.is_root() {
            let cg = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!cg.contains(&name));
            for c in &cgroups {
                assert!(!std::path::Path::new(c).exists());
                let scope = std::path::Path::new(c).parent().unwrap();
                assert!(
                    !scope.exists(),
                    "the store's empty cgroup scope {} is removed too",
                    scope.display()
                );
            }
        }
        assert_eq!(env.airlock(&["inspect", &name]).status.code(), Some(3));
    }
}

#[test]
fn killing_the_supervisor_kills_the_sandbox_and_gc_cleans_up() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("orphan");
        let mut child = env
            .command(&[
                "run",
                "--name",
                &name,
                "--",
                "sh",
                "-c",
                "sleep 300 & sleep 300",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut info = serde_json::Value::Null;
        wait_until(
            || {
                let o = env.command(&["inspect", &name, "--json"]).output().unwrap();
                info = serde_json::from_slice(&o.stdout).unwrap_or_default();
                info["state"] == "running" && info["pids"].as_array().is_some_and(|p| p.len() >= 3)
            },
            "the sandbox to run its command",
        );
        let pids: Vec<i32> = info["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_i64().unwrap() as i32)
            .collect();
        child.kill().unwrap(); // SIGKILL to the supervising `airlock run`
        child.wait().unwrap();
        wait_until(
            || pids.iter().all(|p| !alive(*p)),
            "every process of the sandbox to die with its supervisor",
        );
        assert_eq!(inspect(&env, &name)["state"], "crashed");
        let out = env.airlock(&["gc"]);
        assert!(out.status.success());
        assert!(
            stdout(&out).contains(&format!("runtime state of {name}")),
            "gc reports what it removed: {}",
            stdout(&out)
        );
        assert_eq!(inspect(&env, &name)["state"], "stopped");
        assert!(
            stdout(&env.airlock(&["gc"])).is_empty(),
            "a second gc finds nothing"
        );
    }
}

#[test]
fn a_fork_bomb_is_stopped_by_pids() {
    for who in everyone() {
        let env = Env::new(&who);
        let out = env.airlock(&[
            "run", "--rm", "--pids", "40", "--timeout", "60s", "--", "sh", "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done 2>/dev/null; echo started $(jobs -p | wc -l); kill $(jobs -p) 2>/dev/null; exit 0",
        ]);
        let o = stdout(&out);
        let started: usize = o
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            started < 40,
            "--pids 40 caps the sandbox's processes (started {started}): {o}"
        );
        // The host keeps working.
        assert!(
            std::process::Command::new("true")
                .status()
                .unwrap()
                .success()
        );
    }
}

#[test]
fn a_memory_bomb_is_stopped_by_memory() {
    for who in everyone() {
        let env = Env::new(&who);
        let out = env.airlock(&[
            "run",
            "--rm",
            "--memory",
            "96m",
            "--timeout",
            "60s",
            "--",
            "/usr/bin/python3",
            "-c",
            "b = bytearray(1024 * 1024 * 1024); print('allocated', len(b))",
        ]);
        assert!(
            !out.status.success(),
            "a 1 GiB allocation must fail under --memory 96m"
        );
        assert!(!stdout(&out).contains("allocated"));
        assert!(
            std::process::Command::new("true")
                .status()
                .unwrap()
                .success()
        );
    }
}

#[test]
fn timeout_kills_the_sandbox() {
    for who in everyone() {
        let env = Env::new(&who);
        let out = env.airlock(&["run", "--rm", "--timeout", "1s", "--", "sleep", "60"]);
        assert_eq!(out.status.code(), Some(124));
        assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_creates_nothing() {
    for who in everyone() {
        let env = Env::new(&who);
        let cases: &[(&[&str], i32, &str)] = &[
            (&["inspect", "nope"], 3, "no sandbox named"),
            (&["exec", "nope", "--", "true"], 3, "no sandbox named"),
            (&["create", "--name", "Bad_Name"], 2, "invalid sandbox name"),
            (
                &["create", "--name", "ok", "--workspace", "/does/not/exist"],
                2,
                "/does/not/exist",
            ),
            (
                &["create", "--name", "ok", "--memory", "lots"],
                2,
                "invalid size",
            ),
            (
                &["create", "--name", "ok", "--timeout", "0s"],
                2,
                "invalid duration",
            ),
            (
                &["create", "--name", "ok", "--workspace", "/"],
                2,
                "refusing workspace",
            ),
            (
                &["run", "--rm", "--workspace", "/etc/hostname", "--", "true"],
                2,
                "not a directory",
            ),
        ];
        for (args, code, msg) in cases {
            let out = env.airlock(args);
            assert_eq!(out.status.code(), Some(*code), "{args:?}");
            assert!(stderr(&out).contains(msg), "{args:?}: {}", stderr(&out));
        }
        let home = env.home.display().to_string();
        let out = env.airlock(&["create", "--name", "ok", "--workspace", &home]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "the home directory is refused as a workspace"
        );
        let ls = env.airlock(&["ls", "--json"]);
        assert_eq!(stdout(&ls).trim(), "[]", "nothing half-created");
        assert!(
            env.state_files()
                .iter()
                .all(|p| !p.to_string_lossy().contains("/sandboxes/.tmp-"))
        );
        // An existing name is a conflict.
        assert!(env.airlock(&["create", "--name", "dup"]).status.success());
        assert_eq!(
            env.airlock(&["create", "--name", "dup"]).status.code(),
            Some(4)
        );
    }
}

#[test]
fn exec_takes_env_and_workdir_and_ls_lists_json() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("exec");
        assert!(
            env.airlock(&["create", "--name", &name, "-e", "FROM_CREATE=1"])
                .status
                .success()
        );
        let out = env.airlock(&[
            "exec",
            "-e",
            "FOO=bar",
            "-w",
            "src",
            &name,
            "--",
            "sh",
            "-c",
            "echo $FOO $FROM_CREATE; pwd",
        ]);
        assert_eq!(stdout(&out), format!("bar 1\n{}/src\n", env.ws.display()));
        let out = env.airlock(&["exec", "-w", "/nonexistent", &name, "--", "true"]);
        assert_eq!(out.status.code(), Some(126));
        assert!(stderr(&out).contains("/nonexistent"));
        let ls: serde_json::Value =
            serde_json::from_slice(&env.airlock(&["ls", "--json"]).stdout).unwrap();
        assert_eq!(ls[0]["name"], name.as_str());
        assert_eq!(ls[0]["state"], "running");
        assert_eq!(ls[0]["mode"], "cow");
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}

/// Limits land in whichever cgroup hierarchy the host has (v1 here, v2 on current distributions),
/// or in rlimits where no cgroup can be created; `inspect` says which.
#[test]
fn limits_are_enforced_by_the_hosts_cgroups_or_rlimits() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("limits");
        let args = [
            "create", "--name", &name, "--memory", "128m", "--pids", "77", "--cpus", "0.5",
        ];
        assert!(env.airlock(&args).status.success());
        assert!(env.airlock(&["start", &name]).status.success());
        let info = inspect(&env, &name);
        let how = info["limits_enforcement"].as_str().unwrap().to_string();
        let dirs: Vec<std::path::PathBuf> = info["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().into())
            .collect();
        let read = |f: &str| {
            dirs.iter()
                .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
                .map(|s| s.trim().to_string())
        };
        if how == "cgroup v1" {
            assert_eq!(read("memory.limit_in_bytes").as_deref(), Some("134217728"));
            assert_eq!(read("pids.max").as_deref(), Some("77"));
            assert_eq!(read("cpu.cfs_quota_us").as_deref(), Some("50000"));
        } else if how == "cgroup v2" {
            assert_eq!(read("memory.max").as_deref(), Some("134217728"));
            assert_eq!(read("pids.max").as_deref(), Some("77"));
            assert_eq!(read("cpu.max").as_deref(), Some("50000 100000"));
        } else {
            assert!(!who.is_root(), "root always gets a cgroup: {how}");
            assert!(how.starts_with("rlimits ("), "{how}");
            let out = env.exec_sh(
                &name,
                "grep -E 'Max processes|Max address space' /proc/self/limits",
            );
            let o = stdout(&out);
            assert!(
                o.lines()
                    .any(|l| l.starts_with("Max processes") && l.contains(" 77 ")),
                "{o}"
            );
            assert!(
                o.lines()
                    .any(|l| l.starts_with("Max address space") && l.contains("134217728")),
                "{o}"
            );
        }
        // The sandbox's own processes are in it.
        if let Some(procs) = read("cgroup.procs") {
            let init = info["init_pid"].as_i64().unwrap().to_string();
            assert!(
                procs.lines().any(|p| p == init),
                "init {init} not in {procs}"
            );
        }
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
        for d in &dirs {
            assert!(!d.exists(), "rm removes {}", d.display());
        }
    }
}
