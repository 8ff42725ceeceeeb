//! Templates: warm starts by layer stacking.

mod common;

use common::*;

#[test]
fn templates_stack_are_read_only_and_survive_their_source() {
    for who in everyone() {
        let env = Env::new(&who);
        let base = unique("base");
        assert!(env.airlock(&["create", "--name", &base]).status.success());
        let warm = "mkdir -p $HOME/.cache/pkgs && echo warm > $HOME/.cache/pkgs/index && echo ws > in-workspace.txt";
        let out = env.exec_sh(&base, warm);
        assert!(out.status.success());
        if who.is_root() {
            let out = env.exec_sh(&base, "echo tool > /usr/local/bin/installed-tool");
            assert!(out.status.success());
        }
        // Saving needs a stopped sandbox.
        assert_eq!(env.airlock(&["save", &base, "warm"]).status.code(), Some(4));
        assert!(env.airlock(&["stop", &base]).status.success());
        assert!(env.airlock(&["save", &base, "warm"]).status.success());
        assert!(
            env.airlock(&["rm", &base]).status.success(),
            "the template survives its source"
        );

        let ls = env.airlock(&["template", "ls", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
        assert_eq!(v[0]["name"], "warm");

        // A new sandbox starts with the template's home (and system layer), not its workspace changes.
        let child = unique("child");
        let check = "cat $HOME/.cache/pkgs/index; test -e in-workspace.txt && echo LEAKED-WORKSPACE; cat /usr/local/bin/installed-tool 2>/dev/null; echo changed > $HOME/.cache/pkgs/index; echo ok";
        let out = env.airlock(&[
            "run",
            "--name",
            &child,
            "--template",
            "warm",
            "--",
            "sh",
            "-c",
            check,
        ]);
        let o = stdout(&out);
        assert!(o.starts_with("warm\n"), "{o}");
        assert!(!o.contains("LEAKED-WORKSPACE"));
        assert_eq!(o.contains("tool"), who.is_root(), "{o}");
        assert!(o.ends_with("ok\n"));
        // Writes went to the sandbox's own layer: the template is unchanged (read-only).
        let tpl_file = env
            .airlock_home
            .join("data/templates/warm/home/.cache/pkgs/index");
        assert_eq!(std::fs::read_to_string(&tpl_file).unwrap(), "warm\n");
        // A one-shot sandbox from the same template sees the original.
        let out = env.airlock(&[
            "run",
            "--rm",
            "--template",
            "warm",
            "--",
            "cat",
            &format!("{}/.cache/pkgs/index", env.home.display()),
        ]);
        assert_eq!(stdout(&out), "warm\n");

        // In use: refused; after the user is gone: removed.
        assert_eq!(
            env.airlock(&["template", "rm", "warm"]).status.code(),
            Some(4)
        );
        assert!(env.airlock(&["rm", &child]).status.success());
        assert!(env.airlock(&["template", "rm", "warm"]).status.success());
        assert!(!env.airlock_home.join("data/templates/warm").exists());
        assert_eq!(
            env.airlock(&["run", "--rm", "--template", "warm", "--", "true"])
                .status
                .code(),
            Some(3)
        );
    }
}

#[test]
fn clone_mode_keeps_the_host_repository_read_only_and_fetch_brings_commits_back() {
    for who in everyone() {
        let env = Env::new(&who);
        env.commit_all();
        let host_head = env.git(&["rev-parse", "HEAD"]);
        let name = unique("clone");
        let out = env.airlock(&["create", "--name", &name, "--workspace-mode", "clone"]);
        assert!(out.status.success());
        assert!(
            stderr(&out).contains("git -C"),
            "create prints the fetch command: {}",
            stderr(&out)
        );
        let work = "set -e; echo agent >> README.md; git commit -qam 'agent change'; git log --oneline | wc -l; \
                    (echo x > /run/airlock/source/README.md) 2>/dev/null && echo WROTE-HOST; \
                    (touch /run/airlock/source/.git/hooks/evil) 2>/dev/null && echo WROTE-HOST-GIT; \
                    git fetch -q origin && echo fetched-origin";
        let out = env.exec_sh(&name, work);
        let o = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(o.starts_with("2\n"), "{o}");
        assert!(
            !o.contains("WROTE-HOST"),
            "the host repository is read-only inside: {o}"
        );
        assert!(o.contains("fetched-origin"));
        // The host is untouched until the user fetches.
        assert_eq!(env.git(&["rev-parse", "HEAD"]), host_head);
        assert_eq!(
            std::fs::read_to_string(env.path("README.md")).unwrap(),
            "hello from the host\n"
        );
        assert!(!env.path(".git/hooks/evil").exists());
        // `airlock cp` works on the sandbox's clone, never on the host's repository.
        let host_file = env.base.join("note.txt");
        std::fs::write(&host_file, "from the host\n").unwrap();
        env.chown_all();
        let dst = format!("{name}:note.txt");
        assert!(
            env.airlock(&["cp", &host_file.to_string_lossy(), &dst])
                .status
                .success()
        );
        assert!(
            !env.path("note.txt").exists(),
            "cp into a clone sandbox wrote to the host"
        );
        let out = env.exec_sh(&name, "cat note.txt");
        assert_eq!(stdout(&out), "from the host\n");
        let back = env.base.join("readme-out");
        let src = format!("{name}:README.md");
        assert!(
            env.airlock(&["cp", &src, &back.to_string_lossy()])
                .status
                .success()
        );
        assert_eq!(
            std::fs::read_to_string(&back).unwrap(),
            "hello from the host\nagent\n",
            "cp out of a clone sandbox reads its clone"
        );
        let clone = env
            .airlock_home
            .join("data/sandboxes")
            .join(&name)
            .join("clone");
        let refspec = format!("+refs/heads/*:refs/remotes/airlock-{name}/*");
        env.git(&["fetch", "-q", clone.to_str().unwrap(), &refspec]);
        let log = env.git(&["log", "--format=%s %an", &format!("airlock-{name}/main")]);
        assert!(log.starts_with("agent change Host User"), "{log}");
        assert!(env.airlock(&["rm", "-f", &name]).status.success());
    }
}
