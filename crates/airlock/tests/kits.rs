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
        assert!(secret_set(&env, "anthropic", SECRET, &[]).status.success());
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

/// `airlock secret set` with stdin fed `value`, extra variables `vars`; the output.
fn secret_set(
    env: &Env,
    service: &str,
    value: &str,
    vars: &[(&str, &str)],
) -> std::process::Output {
    env.airlock_with_input(&["secret", "set", service], value.as_bytes(), vars)
}

const KEYRING_SECRET: &str = "sk-ant-keyring-secret-0123456789abcdef";

/// With a Secret Service on the session bus, secrets are stored there (never in Airlock's file),
/// listed as such, found there when a sandbox starts, and removed from it; the sandbox can reach
/// neither the bus nor the secret. Without one, the file; `AIRLOCK_SECRET_STORE` forces either.
#[test]
fn secrets_live_in_the_os_keyring_when_the_session_has_one() {
    for who in everyone() {
        let mut env = Env::new(&who);
        let file = env.airlock_home.join("data/secrets.json");
        // No session bus: forcing the keyring fails and says what to do; auto uses the file.
        let out = secret_set(
            &env,
            "openai",
            "sk-x",
            &[("AIRLOCK_SECRET_STORE", "keyring")],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr(&out).contains("no D-Bus session bus")
                && stderr(&out).contains("AIRLOCK_SECRET_STORE=file"),
            "{}",
            stderr(&out)
        );
        let out = secret_set(
            &env,
            "openai",
            "sk-openai-in-file",
            &[("AIRLOCK_SECRET_STORE", "auto")],
        );
        assert!(out.status.success());
        assert!(stderr(&out).contains("no OS keyring"), "{}", stderr(&out));
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains("sk-openai-in-file")
        );

        let kr = SessionKeyring::start(&env);
        env.extra_env.extend(kr.env());
        let missing = "no anthropic secret";
        let out = env.airlock(&["run", "--rm", "--kit", "claude", "--", "true"]);
        assert!(stderr(&out).contains(missing), "{}", stderr(&out));

        // set: into the keyring, not the file.
        let out = secret_set(&env, "anthropic", KEYRING_SECRET, &[]);
        assert!(out.status.success());
        assert!(
            stderr(&out).contains("in the OS keyring"),
            "{}",
            stderr(&out)
        );
        assert_eq!(
            kr.lookup(&env, "anthropic").as_deref(),
            Some(KEYRING_SECRET)
        );
        assert!(
            !std::fs::read_to_string(&file)
                .unwrap()
                .contains(KEYRING_SECRET)
        );
        // Encrypted at rest: the keyring's own file does not hold it in clear either.
        let keyrings = env.home.join(".local/share/keyrings");
        let mut at_rest = 0;
        for e in std::fs::read_dir(&keyrings).unwrap().flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !bytes
                    .windows(KEYRING_SECRET.len())
                    .any(|w| w == KEYRING_SECRET.as_bytes())
            );
            at_rest += 1;
        }
        assert!(at_rest > 0, "gnome-keyring keeps its keyring under $HOME");

        // ls: where each one is.
        let ls = stdout(&env.airlock(&["secret", "ls"]));
        assert!(
            ls.lines()
                .any(|l| l.starts_with("anthropic") && l.contains("OS keyring")),
            "{ls}"
        );
        assert!(
            ls.lines()
                .any(|l| l.starts_with("openai") && l.contains("secrets.json")),
            "{ls}"
        );
        assert!(!ls.contains(KEYRING_SECRET));
        let json: serde_json::Value =
            serde_json::from_slice(&env.airlock(&["secret", "ls", "--json"]).stdout).unwrap();
        assert!(
            json.as_array()
                .unwrap()
                .iter()
                .any(|e| e["service"] == "anthropic" && e["store"] == "keyring"),
            "{json}"
        );

        // lookup at sandbox start: found in the keyring; inside, no bus and no secret.
        let probe = format!(
            "echo key=$ANTHROPIC_API_KEY; echo bus=${{DBUS_SESSION_BUS_ADDRESS:-none}}; \
             test -e {} && echo bus-visible || echo bus-invisible",
            kr.socket.display()
        );
        let out = env.airlock(&["run", "--rm", "--kit", "claude", "--", "sh", "-c", &probe]);
        assert!(out.status.success());
        assert!(!stderr(&out).contains(missing), "{}", stderr(&out));
        let o = stdout(&out);
        assert!(o.starts_with("key=airlock-placeholder-"), "{o}");
        assert!(o.contains("bus=none\nbus-invisible"), "{o}");
        assert!(!o.contains(KEYRING_SECRET));

        // AIRLOCK_SECRET_STORE=file: the file, even with a keyring there.
        let out = secret_set(
            &env,
            "gemini",
            "gemini-in-file",
            &[("AIRLOCK_SECRET_STORE", "file")],
        );
        assert!(out.status.success());
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains("gemini-in-file")
        );
        assert_eq!(kr.lookup(&env, "gemini"), None);

        // rm: from the keyring and the file alike.
        let out = secret_set(&env, "gemini", "gemini-in-keyring", &[]);
        assert!(out.status.success());
        let file_again = secret_set(
            &env,
            "gemini",
            "gemini-in-file",
            &[("AIRLOCK_SECRET_STORE", "file")],
        );
        assert!(file_again.status.success());
        assert_eq!(
            kr.lookup(&env, "gemini").as_deref(),
            Some("gemini-in-keyring")
        );
        for service in ["anthropic", "gemini", "openai"] {
            assert!(env.airlock(&["secret", "rm", service]).status.success());
            assert_eq!(kr.lookup(&env, service), None, "{service}");
        }
        let left = std::fs::read_to_string(&file).unwrap();
        assert!(
            !left.contains("gemini-in-file") && !left.contains("sk-openai"),
            "{left}"
        );
        assert_eq!(
            env.airlock(&["secret", "rm", "anthropic"]).status.code(),
            Some(3)
        );
        let out = env.airlock(&["run", "--rm", "--kit", "claude", "--", "true"]);
        assert!(stderr(&out).contains(missing), "{}", stderr(&out));
    }
}
