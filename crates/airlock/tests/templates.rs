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
        let out = env.airlock(&["exec", &base, "--", "sh", "-c", warm]);
        assert!(out.status.success());
        if who.is_root() {
            let out = env.airlock(&[
                "exec",
                &base,
                "--",
                "sh",
                "-c",
                "echo tool > /usr/local/bin/installed-tool",
            ]);
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
