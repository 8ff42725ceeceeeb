//! Test harness: real sandboxes, run as root and as an unprivileged user.
//!
//! Every test runs its scenario once per [`Who`]: as root (when the tests run as root) and as
//! the unprivileged user named by `AIRLOCK_TEST_USER` (default `airtest`; `.ci/run` creates it).
//! Run as a normal user, the tests run rootless only. Each scenario gets its own throwaway
//! `AIRLOCK_HOME`, `HOME` and workspace, owned by the user it runs as.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_airlock");

#[derive(Debug, Clone)]
pub enum Who {
    Root,
    User { name: String, uid: u32, gid: u32 },
}

impl Who {
    pub fn label(&self) -> String {
        match self {
            Who::Root => "root".into(),
            Who::User { name, .. } => format!("user {name}"),
        }
    }
    pub fn is_root(&self) -> bool {
        matches!(self, Who::Root)
    }
    pub fn uid(&self) -> u32 {
        match self {
            Who::Root => 0,
            Who::User { uid, .. } => *uid,
        }
    }
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read immediately.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// Who the scenarios run as. As root, an unprivileged test user must exist: rootless is how
/// most people run Airlock, so its absence is a failure, not a skip.
pub fn everyone() -> Vec<Who> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        let gid = unsafe { libc::getegid() };
        let name = std::env::var("USER").unwrap_or_else(|_| "me".into());
        return vec![Who::User {
            name,
            uid: euid,
            gid,
        }];
    }
    let name = std::env::var("AIRLOCK_TEST_USER").unwrap_or_else(|_| "airtest".into());
    let (uid, gid) = lookup_user(&name).unwrap_or_else(|| {
        panic!("the rootless tests need an unprivileged user {name:?}: run `useradd -m {name}` (as .ci/run does) or set AIRLOCK_TEST_USER")
    });
    vec![Who::Root, Who::User { name, uid, gid }]
}

/// One scenario's private world.
pub struct Env {
    pub who: Who,
    pub base: PathBuf,
    pub airlock_home: PathBuf,
    pub home: PathBuf,
    pub ws: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

impl Env {
    pub fn new(who: &Who) -> Env {
        let base = tempfile::Builder::new()
            .prefix("airlock-test-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = Env {
            who: who.clone(),
            airlock_home: base.join("airlock"),
            home: base.join("home"),
            ws: base.join("project"),
            base,
            extra_env: vec![],
        };
        std::fs::create_dir_all(&env.home).unwrap();
        std::fs::create_dir_all(&env.ws).unwrap();
        std::fs::write(env.ws.join("README.md"), "hello from the host\n").unwrap();
        std::fs::create_dir_all(env.ws.join("src")).unwrap();
        std::fs::write(env.ws.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
        env.chown_all();
        env
    }

    /// Give everything under the scenario's base to the user it runs as.
    pub fn chown_all(&self) {
        if let Who::User { uid, gid, .. } = self.who {
            let st = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&self.base)
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    /// Runs `airlock ARGS` with a terminal: under `script` (util-linux), which gives it a PTY
    /// as its stdin and stdout, as this user. Output is what the terminal showed. A hang (a
    /// terminal handover that never completes) ends after 120 s with status 124 (coreutils'
    /// `timeout`) instead of stalling the suite.
    pub fn with_terminal(&self, args: &[&str]) -> Output {
        let c = self.command(args);
        let line = std::iter::once(c.get_program().to_string_lossy().into_owned())
            .chain(c.get_args().map(|a| format!("'{}'", a.to_string_lossy())))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("timeout");
        if let Who::User { uid, gid, .. } = &self.who {
            script.uid(*uid).gid(*gid);
        }
        script
            .args(["-s", "KILL", "120", "script", "-eqc", &line, "/dev/null"])
            .current_dir(&self.ws)
            .env_clear()
            .stdin(Stdio::null());
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                script.env(k, v);
            }
        }
        script.output().unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(&self.ws)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.home)
            .env("AIRLOCK_HOME", &self.airlock_home)
            .env("LANG", "C.UTF-8")
            // Never the keyring of whoever runs the tests ($XDG_RUNTIME_DIR/bus is found even
            // without the variable); the keyring tests bring their own and override this.
            .env("AIRLOCK_SECRET_STORE", "file")
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        if let Who::User { uid, gid, name } = &self.who {
            // SAFETY: geteuid cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                c.env("USER", name).uid(*uid).gid(*gid);
            }
        }
        c
    }

    pub fn airlock(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("spawning airlock");
        eprintln!(
            "[{}] airlock {}\n  exit: {:?}\n  stdout: {}\n  stderr: {}",
            self.who.label(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    /// `airlock ARGS` with `input` on its stdin (how secrets are given: never in argv) and extra
    /// variables `vars`.
    pub fn airlock_with_input(&self, args: &[&str], input: &[u8], vars: &[(&str, &str)]) -> Output {
        use std::io::Write;
        let mut c = self.command(args);
        for (k, v) in vars {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning airlock");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        eprintln!(
            "[{}] airlock {} (stdin given) {vars:?}\n  exit: {:?}\n  stderr: {}",
            self.who.label(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    /// `airlock run --rm -- sh -c SCRIPT`, asserting success; returns stdout.
    /// `airlock exec NAME -- sh -c SCRIPT`.
    pub fn exec_sh(&self, name: &str, script: &str) -> Output {
        self.airlock(&["exec", name, "--", "sh", "-c", script])
    }

    pub fn sh(&self, script: &str) -> String {
        let out = self.airlock(&["run", "--rm", "--", "sh", "-c", script]);
        assert!(
            out.status.success(),
            "[{}] script failed: {script}",
            self.who.label()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `git ARGS` in the workspace, as this user, asserting success; returns trimmed stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(&self.ws)
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1");
        if let Who::User { uid, gid, .. } = self.who {
            c.uid(uid).gid(gid);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Make the workspace a git repository (branch `main`, identity "Host User") holding one
    /// commit of everything in it.
    pub fn commit_all(&self) {
        self.git(&["init", "-q", "-b", "main"]);
        self.git(&["config", "user.name", "Host User"]);
        self.git(&["config", "user.email", "host@example.test"]);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-qm", "initial"]);
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.ws.join(rel)
    }

    /// Names of every file under the Airlock home (state, runtime).
    pub fn state_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    out.push(e.path());
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&e.path(), out);
                    }
                }
            }
        }
        let mut out = vec![];
        walk(&self.airlock_home, &mut out);
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: stop anything a failed test left, then delete the scenario's files.
        let _ = self.command(&["gc"]).output();
        if let Ok(out) = self.command(&["ls", "--json"]).output()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            for s in v.as_array().into_iter().flatten() {
                if let Some(n) = s["name"].as_str() {
                    let _ = self.command(&["rm", "--force", n]).output();
                }
            }
        }
        let _ = Command::new("rm").arg("-rf").arg(&self.base).status();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A sandbox name unique to this test run (cgroups are shared between scenarios).
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 3];
    // SAFETY: getrandom fills our local buffer.
    unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    format!("{prefix}-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

/// True if a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s.rfind(')').map(|i| &s[i + 2..i + 3]), Some("Z" | "X")),
        Err(_) => false,
    }
}

pub fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

pub fn inspect(env: &Env, name: &str) -> serde_json::Value {
    let out = env.airlock(&["inspect", name, "--json"]);
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Keep `Command` in use for scenarios that need pre_exec hooks.
pub fn with_pre_exec(
    c: &mut Command,
    f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static,
) {
    // SAFETY: the hook only makes async-signal-safe syscalls (dup2/fcntl) in the tests that use it.
    unsafe { c.pre_exec(f) };
}

/// A private D-Bus session bus with a Secret Service provider (gnome-keyring, its login keyring
/// created and unlocked under the scenario's `$HOME`), running as the scenario's user. Airlock
/// reaches it through `DBUS_SESSION_BUS_ADDRESS` ([`SessionKeyring::env`]). Stopped on drop
/// (gnome-keyring exits with its bus).
pub struct SessionKeyring {
    bus: std::process::Child,
    pub address: String,
    pub socket: PathBuf,
}

impl SessionKeyring {
    pub fn start(env: &Env) -> SessionKeyring {
        use std::io::{BufRead, Write};
        let socket = env.base.join("session-bus");
        let address = format!("unix:path={}", socket.display());
        let runtime = env.base.join("xdg-runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
        env.chown_all();
        let as_user = |c: &mut Command| {
            c.env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", &env.home)
                .env("XDG_RUNTIME_DIR", &runtime)
                .env("DBUS_SESSION_BUS_ADDRESS", &address);
            if let Who::User { uid, gid, .. } = env.who {
                c.uid(uid).gid(gid);
            }
        };
        let mut c = Command::new("dbus-daemon");
        c.args([
            "--session",
            "--nofork",
            "--nopidfile",
            &format!("--address={address}"),
            "--print-address=1",
        ]);
        as_user(&mut c);
        let mut bus = c
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus) is needed for the keyring tests");
        let mut line = String::new();
        std::io::BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("unix:"),
            "dbus-daemon did not start: {line:?}"
        );
        let mut k = Command::new("gnome-keyring-daemon");
        k.args(["--unlock", "--components=secrets"]);
        as_user(&mut k);
        let mut k = k
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon (Debian package gnome-keyring) is needed for the keyring tests");
        k.stdin
            .take()
            .unwrap()
            .write_all(b"test keyring password")
            .unwrap();
        assert!(
            k.wait().unwrap().success(),
            "gnome-keyring-daemon --unlock failed"
        );
        let kr = SessionKeyring {
            bus,
            address,
            socket,
        };
        // A session bus takes connections from its own user only: ask as that user.
        wait_until(
            || {
                let mut c = Command::new("dbus-send");
                if let Who::User { uid, gid, .. } = env.who {
                    c.uid(uid).gid(gid);
                }
                c.args([
                    &format!("--bus={}", kr.address),
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.secrets",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("boolean true"))
            },
            "gnome-keyring to own org.freedesktop.secrets",
        );
        kr
    }

    /// What `airlock` needs to use it (and not the file store the harness otherwise forces).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.address.clone()),
            ("AIRLOCK_SECRET_STORE".into(), "auto".into()),
        ]
    }

    /// The secret the keyring holds for Airlock's `service`, asked directly (secret-tool).
    pub fn lookup(&self, env: &Env, service: &str) -> Option<String> {
        let mut c = Command::new("secret-tool");
        c.args(["lookup", "application", "airlock", "service", service])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &env.home)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address);
        if let Who::User { uid, gid, .. } = env.who {
            c.uid(uid).gid(gid);
        }
        let out = c
            .output()
            .expect("secret-tool (Debian package libsecret-tools) is needed for the keyring tests");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for SessionKeyring {
    fn drop(&mut self) {
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}
