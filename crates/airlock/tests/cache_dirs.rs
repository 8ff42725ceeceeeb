//! Cache directories (`--cache-dir`): workspace subdirectories that get a plain directory of the
//! sandbox's own instead of the copy-on-write layer. Real sandboxes, as root and rootless.
mod common;

use common::*;

/// The file system type of each path, as the sandbox sees it (`stat -f`).
const FSTYPES: &str = "stat -f -c %T . target";

/// A cache directory is the sandbox's own: not the overlay, kept across runs, not on the host,
/// never in `diff`, gone with `rm`; what the host has at that path is hidden, not changed.
#[test]
fn a_cache_dir_is_the_sandboxs_own_directory_out_of_review() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path("deps")).unwrap();
        std::fs::write(env.path("deps/host.txt"), "the host's\n").unwrap();
        // One from the project's file (named on stderr), one from the flag, one given by both.
        std::fs::write(
            env.path("airlock.toml"),
            "[workspace]\ncache_dirs = [\"target\", \"deps\"]\n",
        )
        .unwrap();
        env.chown_all();
        let name = unique("cache");
        let out = env.airlock(&["create", "--name", &name, "--cache-dir", "target"]);
        assert!(out.status.success());
        assert!(
            stderr(&out).contains("cache directories from") && stderr(&out).contains("deps"),
            "{}",
            stderr(&out)
        );
        let spec = inspect(&env, &name);
        assert_eq!(
            spec["cache_dirs"],
            serde_json::json!(["target", "deps"]),
            "{spec}"
        );

        let work = format!(
            "set -e; {FSTYPES}; ls -A deps | wc -l; echo built > target/out; echo dep > deps/d; \
             echo src > src/new.c; id -u; stat -c %u target deps"
        );
        let out = env.airlock(&["run", "--name", &name, "--", "sh", "-c", &work]);
        assert!(out.status.success(), "[{}]", who.label());
        let o = stdout(&out);
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines[0], "overlayfs", "the workspace is copy-on-write: {o}");
        assert_ne!(lines[1], "overlayfs", "a cache directory is not: {o}");
        assert_eq!(lines[2], "0", "the host's deps/ is hidden inside: {o}");
        assert_eq!(
            [lines[4], lines[5]],
            [lines[3], lines[3]],
            "the sandbox's user owns its cache directories: {o}"
        );

        // Mounted like the workspace: no set-id programs, no device nodes.
        let out = env.airlock(&["run", "--name", &name, "--", "cat", "/proc/self/mountinfo"]);
        let ws_target = env.path("target");
        let line = stdout(&out)
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(ws_target.to_str().unwrap()))
            .map(str::to_string)
            .unwrap_or_default();
        let opts = line.split(' ').nth(5).unwrap_or_default();
        assert!(
            opts.contains("nosuid") && opts.contains("nodev"),
            "[{}] {line}",
            who.label()
        );

        // Kept across runs of the sandbox.
        let out = env.airlock(&["run", "--name", &name, "--", "cat", "target/out", "deps/d"]);
        assert_eq!(stdout(&out), "built\ndep\n");

        // Nothing of it on the host; the host's own content is as it was.
        assert!(!env.path("target").exists());
        assert!(!env.path("deps/d").exists());
        assert_eq!(
            std::fs::read_to_string(env.path("deps/host.txt")).unwrap(),
            "the host's\n"
        );

        // Review shows the source change only.
        let out = env.airlock(&["diff", "--json", &name]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let paths: Vec<&str> = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["src/new.c"], "{v}");

        // `airlock cp` reaches into a cache directory both ways.
        let out_file = env.base.join("out.txt");
        let src = format!("{name}:target/out");
        assert!(
            env.airlock(&["cp", &src, &out_file.to_string_lossy()])
                .status
                .success()
        );
        assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "built\n");
        let dst = format!("{name}:deps/from-host");
        assert!(
            env.airlock(&["cp", &out_file.to_string_lossy(), &dst])
                .status
                .success()
        );
        let out = env.airlock(&["run", "--name", &name, "--", "cat", "deps/from-host"]);
        assert_eq!(stdout(&out), "built\n");
        assert!(!env.path("deps/from-host").exists());

        let dir = env.airlock_home.join("data/sandboxes").join(&name);
        assert!(dir.join("caches/0/out").exists());
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
        assert!(!dir.exists());

        // A `--rm` sandbox's cache directory lives in memory with its other layers.
        std::fs::remove_file(env.path("airlock.toml")).unwrap();
        let out = env.airlock(&[
            "run",
            "--rm",
            "--cache-dir",
            &env.path("target").to_string_lossy(),
            "--",
            "sh",
            "-c",
            "stat -f -c %T target; echo x > target/y",
        ]);
        assert_eq!(stdout(&out), "tmpfs\n", "[{}]", who.label());
        assert!(!env.path("target").exists());
    }
}

/// Bad `--cache-dir` values are refused before anything is created, each with what to do.
#[test]
fn bad_cache_dirs_are_refused_before_anything_is_created() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::write(env.path("afile"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", env.path("alink")).unwrap();
        env.chown_all();
        let outside = env.home.to_string_lossy().into_owned();
        for (args, expect) in [
            (vec!["--cache-dir", "../up"], "contains '..'"),
            (vec!["--cache-dir", "."], "the workspace itself"),
            (
                vec!["--cache-dir", outside.as_str()],
                "is outside the workspace",
            ),
            (vec!["--cache-dir", ".git/x"], ".git"),
            (
                vec!["--cache-dir", "a", "--cache-dir", "a/b"],
                "overlaps --cache-dir a",
            ),
            (vec!["--cache-dir", "missing/target"], "must exist"),
            (vec!["--cache-dir", "afile"], "symlink or a file"),
            (vec!["--cache-dir", "alink"], "symlink or a file"),
            (
                vec!["--workspace-mode", "rw", "--cache-dir", "target"],
                "mkdir -p",
            ),
        ] {
            let mut a = vec!["create", "--name", "bad"];
            a.extend(args.iter().copied());
            let out = env.airlock(&a);
            assert_eq!(out.status.code(), Some(2), "[{}] {args:?}", who.label());
            assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
        }
        std::fs::write(
            env.path("airlock.toml"),
            "[workspace]\ncache_dirs = \"target\"\n",
        )
        .unwrap();
        let out = env.airlock(&["create", "--name", "bad"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("must be a list of paths"),
            "{}",
            stderr(&out)
        );
        // An entry of the project's file is named with the file it came from; a key Airlock does
        // not know is said, not silently dropped.
        std::fs::write(
            env.path("airlock.toml"),
            "[workspace]\ncache_dir = [\"typo\"]\ncache_dirs = [\"../x\"]\n",
        )
        .unwrap();
        let out = env.airlock(&["create", "--name", "bad"]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains("cache_dir is not a setting"), "{err}");
        assert!(
            err.contains("cache_dirs of")
                && err.contains("airlock.toml ../x")
                && err.contains("contains '..'"),
            "{err}"
        );
        assert!(
            !env.airlock_home.join("data/sandboxes/bad").exists(),
            "nothing half-created"
        );
        assert!(!env.path("target").exists());
    }
}

/// In a kept sandbox the agent chooses what is at a cache directory's path for the next start:
/// a symlink there (here in a clone workspace, where the agent can rename the directory it is in)
/// stops the start with what to do, instead of mounting the cache wherever the link points.
#[test]
fn a_symlink_left_at_a_cache_dir_stops_the_next_start() {
    for who in everyone() {
        let env = Env::new(&who);
        env.commit_all();
        let name = unique("cachelink");
        let out = env.airlock(&[
            "create",
            "--name",
            &name,
            "--workspace-mode",
            "clone",
            "--cache-dir",
            "src/cache",
        ]);
        assert!(out.status.success());
        let target = env.base.join("elsewhere");
        std::fs::create_dir_all(&target).unwrap();
        env.chown_all();
        let attack = format!(
            "set -e; echo c > src/cache/c; mv src src2; mkdir src; ln -s {} src/cache; ls -l src",
            target.display()
        );
        let out = env.exec_sh(&name, &attack);
        assert!(out.status.success(), "[{}]", who.label());
        assert!(env.airlock(&["stop", &name]).status.success());
        let out = env.airlock(&["start", &name]);
        assert_ne!(out.status.code(), Some(0), "[{}]", who.label());
        assert!(
            stderr(&out).contains("cache directory src/cache")
                && stderr(&out).contains("is a symlink or a file")
                && stderr(&out).contains("in the sandbox's clone on the host")
                && stderr(&out).contains("not `rm -r`"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "nothing reached the symlink's target"
        );
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}

/// `airlock cp` into a cache directory works before the first start and in a read-only
/// workspace (the cache directory is writable there), and a whole cache directory copied out
/// into a directory keeps its name.
#[test]
fn cp_reaches_a_cache_dir_before_the_first_start_and_in_a_read_only_workspace() {
    for who in everyone() {
        let env = Env::new(&who);
        std::fs::create_dir_all(env.path("target")).unwrap();
        let file = env.base.join("in.txt");
        std::fs::write(&file, "copied in\n").unwrap();
        let outdir = env.base.join("outdir");
        std::fs::create_dir_all(&outdir).unwrap();
        env.chown_all();
        let name = unique("cachecp");
        let out = env.airlock(&[
            "create",
            "--name",
            &name,
            "--workspace-mode",
            "ro",
            "--cache-dir",
            "target",
        ]);
        assert!(out.status.success());
        let dst = format!("{name}:target/in.txt");
        let out = env.airlock(&["cp", &file.to_string_lossy(), &dst]);
        assert!(out.status.success(), "[{}] cp in", who.label());
        let out = env.airlock(&["run", "--name", &name, "--", "cat", "target/in.txt"]);
        assert_eq!(stdout(&out), "copied in\n", "[{}]", who.label());
        assert!(!env.path("target/in.txt").exists(), "nothing on the host");
        let src = format!("{name}:target");
        let out = env.airlock(&["cp", &src, &outdir.to_string_lossy()]);
        assert!(out.status.success(), "[{}] cp out", who.label());
        assert_eq!(
            std::fs::read_to_string(outdir.join("target/in.txt")).unwrap(),
            "copied in\n"
        );
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}

/// `diff` suggests a cache directory when a dependency tree or build output fills the review,
/// and says nothing for a few files.
#[test]
fn diff_suggests_a_cache_dir_for_a_dependency_tree() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("hint");
        assert!(env.airlock(&["create", "--name", &name]).status.success());
        let out = env.exec_sh(
            &name,
            "mkdir -p node_modules/pkg build && for i in $(seq 120); do echo x > node_modules/pkg/f$i; done && echo y > build/out",
        );
        assert!(out.status.success(), "[{}]", who.label());
        let out = env.airlock(&["diff", "--stat", &name]);
        assert!(out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("under node_modules/") && err.contains("--cache-dir node_modules"),
            "[{}] {err}",
            who.label()
        );
        assert!(!err.contains("--cache-dir build"), "{err}");
        let out = env.exec_sh(&name, "rm -rf node_modules");
        assert!(out.status.success());
        let out = env.airlock(&["diff", "--stat", &name]);
        assert!(!stderr(&out).contains("--cache-dir"), "{}", stderr(&out));
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}
