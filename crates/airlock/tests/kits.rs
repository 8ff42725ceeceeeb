//! Kits and secrets: the agent's command, allowlist and placeholders; the real secret never
//! enters the sandbox.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;

const SECRET: &str = "sk-ant-real-secret-0123456789abcdef";

#[test]
fn kits_apply_their_policy_and_the_sandbox_only_ever_holds_a_placeholder() {
    for who in everyone() {
        let mut env = Env::new(&who);
        // Store the secret (from stdin, never argv), and also have it in airlock's environment.
        let mut set = env
            .command(&["secret", "set", "anthropic"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        set.stdin
            .take()
            .unwrap()
            .write_all(SECRET.as_bytes())
            .unwrap();
        assert!(set.wait_with_output().unwrap().status.success());
        let ls = stdout(&env.airlock(&["secret", "ls"]));
        assert!(ls.contains("anthropic") && !ls.contains(SECRET), "{ls}");
        env.extra_env
            .push(("ANTHROPIC_API_KEY".into(), SECRET.into()));

        // `run shell` works: a login shell (here fed a command on stdin).
        let mut sh = env
            .command(&["run", "shell", "--rm"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        sh.stdin
            .take()
            .unwrap()
            .write_all(b"echo shell-kit-ok\n")
            .unwrap();
        let out = sh.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("shell-kit-ok"));

        // A kit's environment, placeholder and allowlist; the secret is nowhere inside.
        let name = unique("kit");
        let probe = "echo KEY=$ANTHROPIC_API_KEY; grep -rl \"$0\" /proc/[0-9]*/environ 2>/dev/null | wc -l; \
                     grep -rsl sk-ant-real-secret $HOME /tmp /etc/ssl 2>/dev/null | wc -l; \
                     cat /proc/self/environ /proc/1/environ 2>/dev/null | tr '\\0' '\\n' | grep -c sk-ant-real-secret";
        let out = env.airlock(&[
            "run", "--name", &name, "--kit", "claude", "--", "sh", "-c", probe, SECRET,
        ]);
        let o = stdout(&out);
        assert!(o.starts_with("KEY=airlock-placeholder-"), "{o}");
        assert!(
            !o.contains(SECRET),
            "the real secret must not appear inside: {o}"
        );
        let counts: Vec<&str> = o.lines().skip(1).collect();
        assert_eq!(
            counts,
            vec!["0", "0", "0"],
            "no process environment or file inside holds the secret: {o}"
        );
        let spec = std::fs::read_to_string(
            env.airlock_home
                .join("data/sandboxes")
                .join(&name)
                .join("sandbox.json"),
        )
        .unwrap();
        assert!(
            !spec.contains(SECRET),
            "the sandbox's spec holds placeholders only"
        );
        let policy = stdout(&env.airlock(&["policy", "ls", "--sandbox", &name]));
        assert!(
            policy.contains("api.anthropic.com"),
            "the kit's allowlist applies: {policy}"
        );
        assert_eq!(
            env.airlock(&["policy", "check", "--sandbox", &name, "api.anthropic.com"])
                .status
                .code(),
            Some(0)
        );
        assert_eq!(
            env.airlock(&["policy", "check", "--sandbox", &name, "example.org"])
                .status
                .code(),
            Some(1)
        );
        assert!(env.airlock(&["rm", &name]).status.success());

        // A kit whose agent is not installed says exactly how to install it.
        let out = env.airlock(&["run", "codex", "--rm"]);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            stderr(&out).contains("airlock save codex-base codex"),
            "{}",
            stderr(&out)
        );
        assert!(env.airlock(&["secret", "rm", "anthropic"]).status.success());
    }
}

#[test]
fn ssh_agent_forwarding_is_off_by_default_and_opt_in() {
    for who in everyone() {
        let mut env = Env::new(&who);
        let sock = env.base.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        if let Who::User { uid, gid, .. } = who {
            std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).unwrap();
        }
        env.extra_env
            .push(("SSH_AUTH_SOCK".into(), sock.display().to_string()));
        let probe = "import os, socket\np = os.environ.get('SSH_AUTH_SOCK')\nprint('var', p)\ntry:\n    s = socket.socket(socket.AF_UNIX); s.connect(p or '/nonexistent'); print('agent reachable')\nexcept Exception as e:\n    print('agent unreachable')\n";
        let off = stdout(&env.airlock(&["run", "--rm", "--", "/usr/bin/python3", "-c", probe]));
        assert!(
            off.contains("var None") && off.contains("agent unreachable"),
            "{off}"
        );
        let out = env.airlock(&[
            "run",
            "--rm",
            "--ssh-agent",
            "--",
            "/usr/bin/python3",
            "-c",
            probe,
        ]);
        assert!(
            stderr(&out).contains("--ssh-agent"),
            "a warning says what it allows"
        );
        let on = stdout(&out);
        assert!(
            on.contains("var /run/airlock/ssh-agent.sock") && on.contains("agent reachable"),
            "{on}"
        );
        drop(listener);
    }
}
