//! Process and kernel surface, and writable persistence places outside the workspace.
//! Nothing is written (writability is `faccessat(W_OK, AT_EACCESS)`), no real signal is
//! sent (`kill(pid, 0)` only), and the user-namespace test runs in a child that exits
//! at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{list_dir, modifiable, read_head, tilde, writable};
use crate::{Category, Ctx, Finding, Severity};

fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

struct Proc {
    pid: i32,
    ppid: i32,
    sid: i32,
    uid: u32,
    comm: String,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces: split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state ppid pgrp session …
    let ppid = f.get(1)?.parse().ok()?;
    let sid = f.get(3)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status_field(&status, "Uid")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Proc {
        pid,
        ppid,
        sid,
        uid,
        comm,
    })
}

const MAX_PROCS: usize = 4096;

fn processes(ctx: &Ctx, out: &mut Vec<Finding>) {
    let me = std::process::id() as i32;
    let Some(self_p) = read_proc(me) else { return };
    let mut procs = vec![];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten().take(MAX_PROCS * 2) {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                && let Some(p) = read_proc(pid)
            {
                procs.push(p);
                if procs.len() >= MAX_PROCS {
                    break;
                }
            }
        }
    }
    // Our ancestors (e.g. the sandbox's init and shell) are expected.
    let mut ancestors = vec![me];
    let mut cur = self_p.ppid;
    while cur > 0 && ancestors.len() < 64 {
        ancestors.push(cur);
        cur = procs.iter().find(|p| p.pid == cur).map_or(0, |p| p.ppid);
    }
    let outside: Vec<&Proc> = procs
        .iter()
        .filter(|p| p.sid != self_p.sid && !ancestors.contains(&p.pid) && p.ppid != 2 && p.pid != 2)
        .collect();
    let other_uid: Vec<&&Proc> = outside.iter().filter(|p| p.uid != ctx.uid).collect();
    let pid1 = procs.iter().find(|p| p.pid == 1).map(|p| p.comm.clone());
    if !outside.is_empty() {
        out.push(Finding::new(
            "process.visible",
            Category::Process,
            if other_uid.is_empty() {
                Severity::Low
            } else {
                Severity::Medium
            },
            "/proc",
            "Processes outside this session are visible",
            format!(
                "{} processes visible, {} outside this session, {} of other users; pid 1 is `{}`",
                procs.len(),
                outside.len(),
                other_uid.len(),
                pid1.as_deref().unwrap_or("?")
            ),
            "run the agent in its own PID namespace with its own /proc",
        ));
    }
    // Signalable: kill(pid, 0) checks permission without sending anything.
    let target = outside
        .iter()
        .find(|p| p.uid != ctx.uid)
        .or_else(|| outside.first());
    if let Some(t) = target {
        let pid = nix::unistd::Pid::from_raw(t.pid);
        if nix::sys::signal::kill(pid, None).is_ok() {
            out.push(Finding::new(
                "process.signalable",
                Category::Process,
                if t.uid != ctx.uid { Severity::High } else { Severity::Medium },
                format!("pid {}", t.pid),
                "Processes outside this session can be signalled",
                format!(
                    "kill(pid {}, 0) on `{}` (uid {}) was permitted: the agent could kill or stop it",
                    t.pid, t.comm, t.uid
                ),
                "run the agent in its own PID namespace, as its own user",
            ));
        }
    }
    // ptrace
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    let (sev, detail) = match scope {
        None => (
            Severity::Medium,
            "no Yama LSM: any process may ptrace (read the memory of) same-user processes"
                .to_string(),
        ),
        Some(0) => (
            Severity::Medium,
            "ptrace_scope=0: any process may ptrace (read the memory of) same-user processes"
                .into(),
        ),
        Some(n) => (
            Severity::Info,
            format!("ptrace_scope={n}: ptrace restricted"),
        ),
    };
    let (sev, title, fix) = if sev == Severity::Info {
        (sev, "ptrace is restricted", "nothing to do")
    } else if !outside.iter().any(|p| p.uid == ctx.uid) {
        (
            Severity::Info,
            "ptrace is permitted, but no same-user process outside this session is visible",
            "nothing to do",
        )
    } else {
        (
            sev,
            "ptrace of other processes is allowed",
            "run the agent in its own PID namespace, or set kernel.yama.ptrace_scope=1",
        )
    };
    out.push(Finding::new(
        "process.ptrace",
        Category::Process,
        sev,
        "ptrace",
        title,
        detail,
        fix,
    ));
}

const CAP_NAMES: &[(u32, &str)] = &[
    (1, "CAP_DAC_OVERRIDE"),
    (2, "CAP_DAC_READ_SEARCH"),
    (7, "CAP_SETUID"),
    (12, "CAP_NET_ADMIN"),
    (16, "CAP_SYS_MODULE"),
    (17, "CAP_SYS_RAWIO"),
    (19, "CAP_SYS_PTRACE"),
    (21, "CAP_SYS_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

fn kernel_surface(ctx: &Ctx, out: &mut Vec<Finding>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status_field(&status, "CapEff")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .unwrap_or(0);
    let dangerous: Vec<&str> = CAP_NAMES
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) != 0)
        .map(|(_, n)| *n)
        .collect();
    if cap_eff != 0 {
        let (sev, where_) = if ctx.initial_userns && !dangerous.is_empty() {
            (Severity::High, "in the host's user namespace")
        } else if ctx.initial_userns {
            (Severity::Medium, "in the host's user namespace")
        } else {
            (Severity::Info, "confined to a user namespace")
        };
        out.push(Finding::new(
            "process.capabilities",
            Category::Process,
            sev,
            "CapEff",
            if sev == Severity::Info {
                "Capabilities are confined to a user namespace"
            } else {
                "The process holds effective capabilities on the host"
            },
            format!(
                "CapEff={cap_eff:016x} {where_}{}{}",
                if dangerous.is_empty() { "" } else { "; includes " },
                dangerous.join(", ")
            ),
            "run the agent as an unprivileged user (or with capabilities confined to a user namespace)",
        ));
    }
    let seccomp = status_field(&status, "Seccomp").unwrap_or_default();
    let filters = status_field(&status, "Seccomp_filters").unwrap_or_default();
    let (sev, title) = match seccomp.as_str() {
        "2" => (Severity::Info, "A seccomp filter is active"),
        "1" => (Severity::Info, "Strict seccomp mode is active"),
        _ => (Severity::Low, "No seccomp filter"),
    };
    out.push(Finding::new(
        "process.seccomp",
        Category::Process,
        sev,
        "Seccomp",
        title,
        format!("Seccomp={seccomp}, filters={filters}"),
        if sev == Severity::Info {
            "nothing to do"
        } else {
            "run the agent under a seccomp filter that blocks rarely needed, risky syscalls"
        },
    ));
    let nnp = status_field(&status, "NoNewPrivs").unwrap_or_default();
    if nnp != "1" {
        out.push(Finding::new(
            "process.no_new_privs",
            Category::Process,
            Severity::Low,
            "NoNewPrivs",
            "no_new_privs is not set",
            "setuid/setcap programs (sudo, su, …) can raise privileges",
            "set PR_SET_NO_NEW_PRIVS for the agent (airlock does)",
        ));
    }
    if userns_creatable() {
        out.push(Finding::new(
            "process.userns",
            Category::Process,
            Severity::Low,
            "unshare(CLONE_NEWUSER)",
            "User namespaces can be created",
            "unprivileged user namespaces expose more kernel code (namespaced capabilities, mounts, netfilter)",
            "block unshare/clone of new user namespaces in the agent's seccomp filter",
        ));
    }
    sudo(ctx, out);
}

/// Try `unshare(CLONE_NEWUSER)` in a forked child that exits immediately.
fn userns_creatable() -> bool {
    // SAFETY: after fork the child calls only async-signal-safe functions (unshare,
    // _exit) and never returns into Rust code; the parent reaps it with waitpid.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain syscalls in the child; _exit does not run destructors or atexit.
        unsafe {
            let rc = libc::unshare(libc::CLONE_NEWUSER);
            libc::_exit(if rc == 0 { 0 } else { 1 });
        }
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

fn find_in_path(ctx: &Ctx, prog: &str) -> Option<PathBuf> {
    let path = ctx.var("PATH").unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

fn sudo(ctx: &Ctx, out: &mut Vec<Finding>) {
    if ctx.euid == 0 {
        if ctx.initial_userns {
            out.push(Finding::new(
                "process.root",
                Category::Process,
                Severity::High,
                "uid 0",
                "Running as root on the host",
                "the process is uid 0 in the host's user namespace",
                "run the agent as an unprivileged user in a sandbox",
            ));
        }
        return;
    }
    let Some(sudo) = find_in_path(ctx, "sudo") else {
        return;
    };
    let child = Command::new(&sudo)
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    let deadline = Instant::now() + Duration::from_millis(1500);
    let ok = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    if ok {
        out.push(Finding::new(
            "process.sudo",
            Category::Process,
            Severity::High,
            sudo.display().to_string(),
            "Passwordless sudo works",
            "`sudo -n true` succeeded: the agent can become root",
            "remove NOPASSWD rules for this user, or run the agent with no_new_privs in a sandbox",
        ));
    }
}

/// Writable places outside the workspace that give persistence.
fn persistence(ctx: &Ctx, out: &mut Vec<Finding>) {
    let h = |rel: &str| ctx.home.join(rel);
    let mut groups: Vec<(&str, Severity, &str, Vec<PathBuf>, &str)> = vec![
        (
            "persistence.shell_rc",
            Severity::Medium,
            "Shell startup files can be modified",
            [
                ".bashrc",
                ".bash_profile",
                ".bash_login",
                ".profile",
                ".zshrc",
                ".zprofile",
                ".zshenv",
                ".config/fish/config.fish",
            ]
            .iter()
            .map(|r| h(r))
            .collect(),
            "hide or mount read-only the home directory's shell startup files",
        ),
        (
            "persistence.autostart",
            Severity::Medium,
            "Desktop autostart or systemd user units can be added",
            [
                ".config/autostart",
                ".config/systemd/user",
                ".config/environment.d",
            ]
            .iter()
            .map(|r| h(r))
            .collect(),
            "don't give the agent write access to ~/.config",
        ),
        (
            "persistence.ssh",
            Severity::Medium,
            "SSH authorized_keys or config can be modified",
            [".ssh/authorized_keys", ".ssh/config", ".ssh/rc"]
                .iter()
                .map(|r| h(r))
                .collect(),
            "hide ~/.ssh from the agent",
        ),
        (
            "persistence.path_dirs",
            Severity::Medium,
            "Directories on PATH can be written",
            path_dirs(ctx),
            "keep PATH directories outside the workspace read-only for the agent",
        ),
        (
            "persistence.global_packages",
            Severity::Low,
            "Global package directories can be written",
            global_pkg_dirs(ctx),
            "install global packages as another user, or mount them read-only for the agent",
        ),
        (
            "persistence.cron",
            Severity::Medium,
            "Cron tables can be written",
            [
                "/var/spool/cron/crontabs",
                "/var/spool/cron",
                "/etc/cron.d",
                "/etc/crontab",
            ]
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.exists())
            .collect(),
            "run the agent without write access to cron spools",
        ),
        (
            "persistence.git_hooks",
            Severity::Medium,
            "Git configuration or global hooks can be modified",
            git_places(ctx),
            "mount ~/.gitconfig and core.hooksPath read-only for the agent",
        ),
    ];
    for (id, sev, title, paths, fix) in groups.drain(..) {
        let mut hits = vec![];
        for p in paths {
            if ctx.in_workspace(&p) {
                continue;
            }
            let note = if p.is_dir() {
                writable(&p).then_some("writable")
            } else {
                modifiable(&p)
            };
            if let Some(note) = note {
                hits.push(format!("{} ({note})", tilde(&p, &ctx.home)));
            }
        }
        if hits.is_empty() {
            continue;
        }
        let subject = hits[0].split(" (").next().unwrap_or("").to_string();
        let n = hits.len();
        hits.truncate(6);
        let more = if n > 6 {
            format!(" and {} more", n - 6)
        } else {
            String::new()
        };
        out.push(Finding::new(
            id,
            Category::Persistence,
            sev,
            subject,
            title,
            format!("{}{more}", hits.join(", ")),
            fix,
        ));
    }
    // Hooks of a workspace repository run on the host when the user runs git there.
    if let Some(ws) = &ctx.workspace {
        let hooks = ws.join(".git/hooks");
        if hooks.is_dir() && writable(&hooks) {
            out.push(Finding::new(
                "persistence.workspace_git_hooks",
                Category::Persistence,
                Severity::Low,
                tilde(&hooks, &ctx.home),
                "The workspace's git hooks can be written",
                "hooks run with the user's privileges whenever git runs in this repository outside the sandbox",
                "review .git/hooks after a session, or keep .git read-only for the agent",
            ));
        }
    }
}

fn path_dirs(ctx: &Ctx) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ctx
        .var("PATH")
        .unwrap_or("")
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .take(32)
        .collect();
    v.push(ctx.home.join(".local/bin"));
    v.retain(|p| p.is_dir());
    // `/bin` and `/usr/bin` are often one directory: report it once.
    let mut seen = vec![];
    v.retain(|p| {
        let c = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let new = !seen.contains(&c);
        seen.push(c);
        new
    });
    v
}

fn global_pkg_dirs(ctx: &Ctx) -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from("/usr/local/lib/node_modules"),
        PathBuf::from("/usr/lib/node_modules"),
        ctx.home.join(".npm-global"),
    ];
    for base in [ctx.home.join(".local/lib"), PathBuf::from("/usr/local/lib")] {
        for p in list_dir(&base, 64).unwrap_or_default() {
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python"))
            {
                v.push(p.join("site-packages"));
                v.push(p.join("dist-packages"));
            }
        }
    }
    v.retain(|p| p.is_dir());
    v
}

fn git_places(ctx: &Ctx) -> Vec<PathBuf> {
    let mut v = vec![
        ctx.home.join(".gitconfig"),
        ctx.home.join(".config/git/config"),
    ];
    for cfg in v.clone() {
        let Some(b) = read_head(&cfg, 64 * 1024) else {
            continue;
        };
        for line in String::from_utf8_lossy(&b).lines() {
            let l = line.trim();
            if let Some((k, val)) = l.split_once('=')
                && k.trim().eq_ignore_ascii_case("hookspath")
            {
                let val = val.trim().trim_matches('"');
                let p = match val.strip_prefix("~/") {
                    Some(rest) => ctx.home.join(rest),
                    None => PathBuf::from(val),
                };
                if p.is_absolute() {
                    v.push(p);
                }
            }
        }
    }
    // Only existing config files count (creating ~/.gitconfig is also possible, but
    // reported under the home directory's general writability is too noisy).
    v.retain(|p| p.exists());
    v
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    processes(ctx, out);
    kernel_surface(ctx, out);
    persistence(ctx, out);
}
