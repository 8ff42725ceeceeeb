//! diff, apply, reset and cp on real sandboxes, as root and rootless.

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Run a script in a new named sandbox (foreground: the sandbox is stopped afterwards).
fn agent(env: &Env, name: &str, script: &str) {
    let out = env.airlock(&["run", "--name", name, "--", "sh", "-c", script]);
    assert!(
        out.status.success(),
        "[{}] agent script failed: {script}",
        env.who.label()
    );
}

/// Run more in an existing (stopped) sandbox, leaving it stopped.
fn agent_again(env: &Env, name: &str, script: &str) {
    let out = env.airlock(&["run", "--name", name, "--", "sh", "-c", script]);
    assert!(out.status.success(), "agent script failed: {script}");
}

fn diff_json(env: &Env, name: &str) -> Vec<Value> {
    let out = env.airlock(&["diff", name, "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["changes"].as_array().unwrap().clone()
}

fn kinds(changes: &[Value]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn find<'a>(changes: &'a [Value], path: &str) -> &'a Value {
    changes
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no change for {path} in {changes:?}"))
}

fn upper(env: &Env, name: &str) -> PathBuf {
    env.airlock_home
        .join("data/sandboxes")
        .join(name)
        .join("layers/workspace/upper")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_change_type_round_trips_through_diff_and_apply() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path("gone/deep")).unwrap();
        std::fs::write(env.path("gone/a"), "a\n").unwrap();
        std::fs::write(env.path("gone/deep/b"), "b\n").unwrap();
        std::fs::create_dir_all(env.path("replaced")).unwrap();
        std::fs::write(env.path("replaced/old1"), "1\n").unwrap();
        std::fs::write(env.path("replaced/kept"), "k\n").unwrap();
        std::fs::write(env.path("run.sh"), "echo hi\n").unwrap();
        std::fs::write(env.path("tofile"), "").unwrap();
        std::fs::create_dir(env.path("todir")).unwrap();
        std::fs::write(env.path("todir/x"), "x\n").unwrap();
        symlink("README.md", env.path("oldlink")).unwrap();
        env.chown_all();
        let name = unique("rt");
        agent(
            &env,
            &name,
            "set -e
             printf 'hello from the agent\\n' > README.md
             echo new > added.txt
             mkdir -p newdir/sub && echo n > newdir/sub/f
             rm -rf gone
             rm -rf replaced && mkdir replaced && echo k > replaced/kept && echo fresh > replaced/fresh
             chmod 755 run.sh
             ln -s src/main.c newlink
             ln -sfn src oldlink
             rm tofile && mkdir tofile && echo in > tofile/inner
             rm -rf todir && echo now-a-file > todir
             printf '\\0\\1\\2' > blob.bin",
        );
        let changes = diff_json(&env, &name);
        let k = kinds(&changes);
        for (p, kind) in [
            ("README.md", "modified"),
            ("added.txt", "added"),
            ("newdir", "added"),
            ("newdir/sub/f", "added"),
            ("gone/a", "deleted"),
            ("gone/deep/b", "deleted"),
            ("gone/deep", "deleted"),
            ("gone", "deleted"),
            ("replaced/old1", "deleted"),
            ("replaced/fresh", "added"),
            ("run.sh", "mode-changed"),
            ("newlink", "symlink"),
            ("oldlink", "symlink"),
            ("tofile", "type-changed"),
            ("tofile/inner", "added"),
            ("todir/x", "deleted"),
            ("todir", "type-changed"),
            ("blob.bin", "added"),
        ] {
            assert!(
                k.contains(&(p.to_string(), kind.to_string())),
                "[{}] missing {p} {kind} in {k:?}",
                who.label()
            );
        }
        assert!(
            !k.iter().any(|(p, _)| p == "replaced/kept"),
            "unchanged content is not a change"
        );
        assert_eq!(find(&changes, "blob.bin")["binary"], true);
        assert_eq!(find(&changes, "newlink")["new"]["target"], "src/main.c");
        // The human diff has a unified diff.
        let out = env.airlock(&["diff", &name]);
        assert!(stdout(&out).contains("+hello from the agent"));
        assert!(stdout(&out).contains("-hello from the host"));
        assert!(stdout(&out).contains("Binary file blob.bin"));
        let out = env.airlock(&["diff", &name, "--stat"]);
        assert!(stdout(&out).contains("M  README.md"));
        // Nothing has touched the host yet.
        assert_eq!(read(&env.path("README.md")), "hello from the host\n");

        let out = env.airlock(&["apply", &name]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(read(&env.path("README.md")), "hello from the agent\n");
        assert_eq!(read(&env.path("added.txt")), "new\n");
        assert_eq!(read(&env.path("newdir/sub/f")), "n\n");
        assert!(!env.path("gone").exists());
        assert!(!env.path("replaced/old1").exists());
        assert_eq!(read(&env.path("replaced/fresh")), "fresh\n");
        assert_eq!(read(&env.path("replaced/kept")), "k\n");
        let mode = std::fs::metadata(env.path("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(env.path("newlink")).unwrap(),
            Path::new("src/main.c")
        );
        assert_eq!(
            std::fs::read_link(env.path("oldlink")).unwrap(),
            Path::new("src")
        );
        assert_eq!(read(&env.path("tofile/inner")), "in\n");
        assert_eq!(read(&env.path("todir")), "now-a-file\n");
        assert_eq!(std::fs::read(env.path("blob.bin")).unwrap(), b"\0\x01\x02");
        // Applied changes left the sandbox's layer; sandbox and host agree.
        assert!(diff_json(&env, &name).is_empty());
        let left: Vec<_> = std::fs::read_dir(upper(&env, &name)).unwrap().collect();
        assert!(left.is_empty(), "upper layer not pruned: {left:?}");
        let out = env.airlock(&[
            "run",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "cat README.md replaced/kept replaced/fresh; ls gone 2>&1 || true; ls replaced",
        ]);
        assert_eq!(
            stdout(&out),
            "hello from the agent\nk\nfresh\nls: cannot access 'gone': No such file or directory\nfresh\nkept\n"
        );
    }
}

#[test]
fn symlinks_from_inside_are_written_as_symlinks_never_followed() {
    for who in everyone() {
        let env = Env::new(&who);
        let passwd_before = std::fs::read(ROOT_FILE).unwrap();
        let outside = env.base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        env.chown_all();
        let name = unique("sym");
        agent(
            &env,
            &name,
            "ln -s /etc/passwd pw && ln -s ../../outside/evil out && ln -s ../outside up",
        );
        let out = env.airlock(&["apply", &name]);
        assert!(out.status.success());
        assert_eq!(
            std::fs::read_link(env.path("pw")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(env.path("out")).unwrap(),
            Path::new("../../outside/evil")
        );
        assert_eq!(std::fs::read(ROOT_FILE).unwrap(), passwd_before);
        assert!(!outside.join("evil").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}

const ROOT_FILE: &str = "/etc/passwd";

#[test]
fn host_symlink_swapped_in_after_the_agents_work_is_not_written_through() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path("sub")).unwrap();
        let outside = env.base.join("outside-dir");
        std::fs::create_dir_all(&outside).unwrap();
        env.chown_all();
        let name = unique("hsym");
        agent(&env, &name, "echo evil > sub/x");
        // On the host, `sub` becomes a symlink pointing out of the workspace.
        std::fs::rename(env.path("sub"), env.base.join("sub.real")).unwrap();
        symlink(&outside, env.path("sub")).unwrap();
        let out = env.airlock(&["apply", &name]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "not everything could be applied"
        );
        assert!(stdout(&out).contains("symlink"), "{}", stdout(&out));
        assert!(
            !outside.join("x").exists(),
            "written through a host symlink"
        );
        assert!(
            std::fs::symlink_metadata(env.path("sub"))
                .unwrap()
                .is_symlink()
        );
        // Even with --force, nothing goes through the symlink.
        let out = env.airlock(&["apply", &name, "--force"]);
        assert!(!outside.join("x").exists());
        let _ = out;
    }
}

#[test]
fn a_symlink_swapped_in_between_scan_and_apply_is_refused() {
    // Two steps through the library: scan, then the host changes, then apply.
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path("dir")).unwrap();
        let outside = env.base.join("target");
        std::fs::create_dir_all(&outside).unwrap();
        env.chown_all();
        let name = unique("race");
        agent(
            &env,
            &name,
            "echo payload > dir/new.txt && echo ok > top.txt",
        );
        let up = upper(&env, &name);
        let changes = airlock_review::scan(&up, &env.ws).unwrap();
        assert_eq!(
            changes.iter().map(|c| c.path.clone()).collect::<Vec<_>>(),
            vec![PathBuf::from("dir/new.txt"), PathBuf::from("top.txt")]
        );
        std::fs::remove_dir(env.path("dir")).unwrap();
        symlink(&outside, env.path("dir")).unwrap();
        let opts = airlock_review::ApplyOptions {
            force: true,
            ..Default::default()
        };
        let report = airlock_review::apply(&changes, &up, &env.ws, &opts).unwrap();
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(
            report.failed[0]
                .reason
                .as_ref()
                .unwrap()
                .contains("symlink")
        );
        assert_eq!(report.applied.len(), 1);
        assert!(!outside.join("new.txt").exists());
        assert_eq!(read(&env.path("top.txt")), "ok\n");
    }
}

#[test]
fn dotdot_and_outside_paths_are_refused() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("dots");
        agent(&env, &name, "echo x > a.txt");
        for bad in ["../a.txt", "src/../../x", "/etc/passwd"] {
            let out = env.airlock(&["apply", &name, bad]);
            assert_eq!(out.status.code(), Some(2), "{bad}");
        }
        let out = env.airlock(&["diff", &name, "../x"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(!env.path("a.txt").exists());
        let out = env.airlock(&["cp", &format!("{name}:../../etc/passwd"), "/tmp/x"]);
        assert_eq!(out.status.code(), Some(2));
    }
}

#[test]
fn conflicts_are_reported_and_skipped_unless_forced() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::write(env.path("early.txt"), "host v1\n").unwrap();
        env.chown_all();
        let name = unique("conf");
        // A host edit before the sandbox takes its copy is no conflict.
        agent(&env, &name, "true");
        std::fs::write(env.path("early.txt"), "host v2\n").unwrap();
        agent_again(
            &env,
            &name,
            "echo agent > README.md; echo agent > early.txt; echo other > other.txt",
        );
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(env.path("README.md"), "edited on the host\n").unwrap();
        let out = env.airlock(&["apply", &name, "--json"]);
        assert_eq!(out.status.code(), Some(1));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let conflicts = r["conflicts"].as_array().unwrap();
        assert_eq!(conflicts.len(), 1, "{r}");
        assert_eq!(conflicts[0]["path"], "README.md");
        assert_eq!(read(&env.path("README.md")), "edited on the host\n");
        assert_eq!(read(&env.path("early.txt")), "agent\n");
        assert_eq!(read(&env.path("other.txt")), "other\n");
        // The conflict stays in the sandbox until forced.
        assert_eq!(
            kinds(&diff_json(&env, &name)),
            vec![("README.md".into(), "modified".into())]
        );
        let out = env.airlock(&["apply", &name, "--force"]);
        assert!(out.status.success());
        assert_eq!(read(&env.path("README.md")), "agent\n");
        assert!(diff_json(&env, &name).is_empty());
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom fills our local buffer.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    u64::from_le_bytes(b)
}

#[test]
fn an_apply_killed_at_random_points_leaves_every_file_old_or_new() {
    const N: usize = 300;
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path("many")).unwrap();
        let old = |i: usize| format!("old {i}\n").repeat(300 + i);
        let new = |i: usize| format!("new content {i}\n").repeat(500 + 3 * i);
        for i in 0..N {
            std::fs::write(env.path(&format!("many/f{i}")), old(i)).unwrap();
        }
        env.chown_all();
        let name = unique("kill");
        agent(
            &env,
            &name,
            &format!(
                "i=0; while [ $i -lt {N} ]; do n=$((500 + 3 * i)); j=0; : > many/f$i; \
                 awk -v i=$i -v n=$n 'BEGIN {{ for (k = 0; k < n; k++) printf \"new content %d\\n\", i }}' > many/f$i; \
                 i=$((i + 1)); done"
            ),
        );
        assert_eq!(diff_json(&env, &name).len(), N);
        // Returns how many files are new.
        let check = || {
            let mut n_new = 0;
            for i in 0..N {
                let got = read(&env.path(&format!("many/f{i}")));
                assert!(
                    got == old(i) || got == new(i),
                    "many/f{i} is neither old nor new"
                );
                n_new += usize::from(got == new(i));
            }
            n_new
        };
        let mut killed = 0;
        let mut progress = vec![];
        // How long an apply may run before it is killed, at most: doubled whenever a kill landed
        // before the apply wrote anything (a loaded machine starts it slower), so the kills reach
        // the middle of an apply whatever the machine's speed.
        let mut window_us: u64 = 15_000;
        for _ in 0..30 {
            let mut child = env
                .command(&["apply", &name])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_micros(2_000 + random_u64() % window_us));
            let _ = child.kill();
            let st = child.wait().unwrap();
            let n_new = check();
            progress.push(n_new);
            if st.success() {
                break;
            }
            killed += 1;
            if n_new == 0 {
                window_us = (window_us * 2).min(2_000_000);
            }
        }
        eprintln!(
            "[{}] apply killed {killed} times; new files after each: {progress:?}",
            who.label()
        );
        assert!(killed > 0, "no apply was killed: make the delays shorter");
        assert!(
            progress.iter().any(|&n| n > 0 && n < N),
            "no kill landed in the middle of an apply: {progress:?}"
        );
        let out = env.airlock(&["apply", &name]);
        assert!(out.status.success());
        for i in 0..N {
            assert_eq!(read(&env.path(&format!("many/f{i}"))), new(i));
        }
        assert!(diff_json(&env, &name).is_empty());
    }
}

#[test]
fn sensitive_files_and_git_internals_need_their_flags() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path(".git/hooks")).unwrap();
        std::fs::write(env.path(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        env.chown_all();
        let name = unique("sens");
        agent(
            &env,
            &name,
            "printf '#!/bin/sh\\ncurl evil\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit
             echo 'alias ls=evil' > .bashrc
             echo 'ref: refs/heads/agent' > .git/HEAD
             mkdir -p .github/workflows && echo 'on: push' > .github/workflows/ci.yml
             echo plain > plain.txt",
        );
        let changes = diff_json(&env, &name);
        let hook = find(&changes, ".git/hooks/pre-commit");
        assert_eq!(hook["sensitive"], true);
        assert_eq!(hook["category"], "sensitive");
        assert_eq!(find(&changes, ".bashrc")["sensitive"], true);
        assert_eq!(
            find(&changes, ".github/workflows/ci.yml")["sensitive"],
            true
        );
        assert_eq!(find(&changes, ".git/HEAD")["category"], "git-internal");
        assert_eq!(find(&changes, "plain.txt")["sensitive"], false);
        let out = env.airlock(&["diff", &name, "--stat"]);
        assert!(stdout(&out).contains("A! .bashrc"), "{}", stdout(&out));

        let out = env.airlock(&["apply", &name]);
        assert!(out.status.success());
        assert_eq!(read(&env.path("plain.txt")), "plain\n");
        assert!(!env.path(".git/hooks/pre-commit").exists());
        assert!(!env.path(".bashrc").exists());
        assert!(!env.path(".github/workflows").exists());
        assert_eq!(read(&env.path(".git/HEAD")), "ref: refs/heads/main\n");

        let out = env.airlock(&["apply", &name, "--allow-sensitive"]);
        assert!(out.status.success());
        assert!(env.path(".git/hooks/pre-commit").exists());
        assert_eq!(read(&env.path(".bashrc")), "alias ls=evil\n");
        assert_eq!(read(&env.path(".github/workflows/ci.yml")), "on: push\n");
        assert_eq!(read(&env.path(".git/HEAD")), "ref: refs/heads/main\n");

        let out = env.airlock(&["apply", &name, "--include-git"]);
        assert!(out.status.success());
        assert_eq!(read(&env.path(".git/HEAD")), "ref: refs/heads/agent\n");
        assert!(diff_json(&env, &name).is_empty());
    }
}

#[test]
fn reset_discards_changes_and_running_sandboxes_are_refused() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("reset");
        agent(
            &env,
            &name,
            "echo changed > README.md; rm src/main.c; echo x > new; echo h > $HOME/h",
        );
        assert_eq!(diff_json(&env, &name).len(), 3);
        assert!(env.airlock(&["start", &name]).status.success());
        for args in [vec!["apply", name.as_str()], vec!["reset", name.as_str()]] {
            let out = env.airlock(&args);
            assert_eq!(out.status.code(), Some(4));
            assert!(stderr(&out).contains(&format!("airlock stop {name}")));
        }
        // diff works on a running sandbox.
        assert_eq!(diff_json(&env, &name).len(), 3);
        assert!(env.airlock(&["stop", &name]).status.success());

        assert!(
            env.airlock(&["reset", &name, "--workspace"])
                .status
                .success()
        );
        assert!(diff_json(&env, &name).is_empty());
        assert_eq!(read(&env.path("README.md")), "hello from the host\n");
        assert!(env.path("src/main.c").exists());
        assert!(!env.path("new").exists());
        let out = env.airlock(&[
            "run",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "cat README.md; cat $HOME/h",
        ]);
        assert_eq!(stdout(&out), "hello from the host\nh\n");
        assert!(env.airlock(&["reset", &name, "--all"]).status.success());
        let out = env.airlock(&["run", "--name", &name, "--", "sh", "-c", "ls -A $HOME"]);
        assert_eq!(stdout(&out), "");
    }
}

#[test]
fn rw_mode_has_nothing_to_review() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("rw");
        assert!(
            env.airlock(&["create", "--name", &name, "--workspace-mode", "rw"])
                .status
                .success()
        );
        let out = env.airlock(&["diff", &name]);
        assert!(out.status.success());
        assert!(stderr(&out).contains("nothing to review"));
        let out = env.airlock(&["apply", &name]);
        assert!(out.status.success());
        assert!(diff_json(&env, &name).is_empty());
    }
}

#[test]
fn cp_copies_both_ways_without_following_symlinks() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("cp");
        agent(
            &env,
            &name,
            "mkdir -p out && echo report > out/r.txt && ln -s /etc/shadow out/s && echo hh > $HOME/hf",
        );
        let dest = env.base.join("got");
        std::fs::create_dir_all(&dest).unwrap();
        env.chown_all();
        let out = env.airlock(&["cp", &format!("{name}:out"), dest.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(read(&dest.join("out/r.txt")), "report\n");
        assert_eq!(
            std::fs::read_link(dest.join("out/s")).unwrap(),
            Path::new("/etc/shadow")
        );
        let f = env.base.join("single.txt");
        let out = env.airlock(&["cp", &format!("{name}:README.md"), f.to_str().unwrap()]);
        assert!(out.status.success());
        assert_eq!(read(&f), "hello from the host\n");
        let out = env.airlock(&["cp", &format!("{name}:~/hf"), f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "no overwrite without --force");
        let out = env.airlock(&[
            "cp",
            "--force",
            &format!("{name}:~/hf"),
            f.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        assert_eq!(read(&f), "hh\n");

        // Into the sandbox: the workspace layer (host untouched) and the home.
        let src = env.base.join("in.txt");
        std::fs::write(&src, "from host\n").unwrap();
        env.chown_all();
        let out = env.airlock(&["cp", src.to_str().unwrap(), &format!("{name}:src/")]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = env.airlock(&["cp", src.to_str().unwrap(), &format!("{name}:~/in.txt")]);
        assert!(out.status.success());
        assert!(!env.path("src/in.txt").exists());
        let out = env.airlock(&[
            "run",
            "--name",
            &name,
            "--",
            "sh",
            "-c",
            "cat src/in.txt ~/in.txt",
        ]);
        assert_eq!(stdout(&out), "from host\nfrom host\n");
        let out = env.airlock(&["cp", src.to_str().unwrap(), &format!("{name}:/etc/x")]);
        assert_eq!(out.status.code(), Some(2));
    }
}
