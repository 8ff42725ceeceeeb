//! Control sockets: a finding when a unix-stream `connect()` succeeds. Nothing is sent;
//! the connection is closed at once. Sockets are non-blocking, so a full backlog or a
//! stopped server cannot hang the probe.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};

use crate::util::{list_dir, tilde};
use crate::{Category, Ctx, Finding, Severity};

/// A unix socket address: a path or an abstract name (without the leading NUL).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SockAddr {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// Outcome of one connect attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Connected (or the server's backlog was full: it listens and we may connect).
    Yes,
    No,
}

pub(crate) fn try_connect(addr: &SockAddr) -> Reach {
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return Reach::No;
    };
    let ua = match addr {
        SockAddr::Path(p) => UnixAddr::new(p.as_path()),
        SockAddr::Abstract(name) => UnixAddr::new_abstract(name),
    };
    let Ok(ua) = ua else { return Reach::No };
    use std::os::fd::AsRawFd;
    match connect(fd.as_raw_fd(), &ua) {
        Ok(()) => Reach::Yes,
        // Non-blocking unix connect to a listener with a full backlog.
        Err(nix::errno::Errno::EAGAIN) => Reach::Yes,
        Err(_) => Reach::No,
    }
    // `fd` (OwnedFd) closes here.
}

/// Kinds of control sockets and how bad reaching one is.
#[derive(Clone, Copy)]
struct Kind {
    id: &'static str,
    severity: Severity,
    title: &'static str,
    why: &'static str,
    fix: &'static str,
}

const DOCKER: Kind = Kind {
    id: "socket.docker",
    severity: Severity::High,
    title: "Docker API socket is reachable",
    why: "the Docker API can start a privileged container that mounts the host: equal to root",
    fix: "don't mount the Docker socket into the agent's environment; use rootless, per-task builders",
};
const PODMAN: Kind = Kind {
    id: "socket.podman",
    severity: Severity::High,
    title: "Podman API socket is reachable",
    why: "the Podman API starts containers outside the sandbox with the user's privileges",
    fix: "don't expose the Podman socket to the agent",
};
const CONTAINERD: Kind = Kind {
    id: "socket.containerd",
    severity: Severity::High,
    title: "Container runtime socket is reachable",
    why: "containerd/CRI-O/BuildKit can run containers and mount the host",
    fix: "don't expose container runtime sockets to the agent",
};
const SSH_AGENT: Kind = Kind {
    id: "socket.ssh_agent",
    severity: Severity::Medium,
    title: "SSH agent is reachable",
    why: "any process can ask the agent to sign with your keys (log into servers, push to git)",
    fix: "unset SSH_AUTH_SOCK for the agent, or add keys with `ssh-add -c` (confirm each use)",
};
const DBUS_SESSION: Kind = Kind {
    id: "socket.dbus_session",
    severity: Severity::Medium,
    title: "D-Bus session bus is reachable",
    why: "the session bus reaches desktop services: secret service, systemd --user, notifications",
    fix: "don't pass DBUS_SESSION_BUS_ADDRESS or the runtime dir to the agent; filter with xdg-dbus-proxy",
};
const DBUS_SYSTEM: Kind = Kind {
    id: "socket.dbus_system",
    severity: Severity::Medium,
    title: "D-Bus system bus is reachable",
    why: "the system bus reaches system services (polkit, NetworkManager, logind)",
    fix: "hide /run/dbus from the agent",
};
const X11: Kind = Kind {
    id: "socket.x11",
    severity: Severity::Medium,
    title: "X11 display is reachable",
    why: "an X11 client can log keystrokes, read the screen and inject input into other windows",
    fix: "don't give the agent an X11 display (hide /tmp/.X11-unix and use a separate network namespace for abstract sockets)",
};
const WAYLAND: Kind = Kind {
    id: "socket.wayland",
    severity: Severity::Medium,
    title: "Wayland display is reachable",
    why: "a Wayland client can open windows on your desktop and may reach privileged protocols",
    fix: "don't pass the runtime dir or WAYLAND_DISPLAY to the agent",
};
const SYSTEMD: Kind = Kind {
    id: "socket.systemd",
    severity: Severity::High,
    title: "systemd manager socket is reachable",
    why: "the manager can start units outside the sandbox (run commands, persist)",
    fix: "hide /run/systemd and $XDG_RUNTIME_DIR/systemd from the agent",
};

/// `unix:///path` or `unix:/path` → path.
fn unix_url(v: &str) -> Option<PathBuf> {
    v.strip_prefix("unix://")
        .or_else(|| v.strip_prefix("unix:"))
        .map(PathBuf::from)
}

/// Addresses from a D-Bus address string: `unix:path=/x,guid=..;unix:abstract=y`.
fn dbus_addrs(v: &str) -> Vec<SockAddr> {
    let mut out = vec![];
    for a in v.split(';') {
        let Some(kv) = a.strip_prefix("unix:") else {
            continue;
        };
        for pair in kv.split(',') {
            if let Some(p) = pair.strip_prefix("path=") {
                out.push(SockAddr::Path(PathBuf::from(
                    airlock_core::units::dbus_unescape(p),
                )));
            } else if let Some(n) = pair.strip_prefix("abstract=") {
                out.push(SockAddr::Abstract(
                    airlock_core::units::dbus_unescape(n).into_bytes(),
                ));
            }
        }
    }
    out
}

/// Every candidate socket: (kind, address, how we found it).
fn candidates(ctx: &Ctx) -> Vec<(Kind, SockAddr, String)> {
    let home = &ctx.home;
    let rt = ctx.runtime_dir();
    let mut c: Vec<(Kind, SockAddr, String)> = vec![];
    let mut path = |k: Kind, p: PathBuf, how: &str| c.push((k, SockAddr::Path(p), how.to_string()));

    if let Some(p) = ctx.var("DOCKER_HOST").and_then(unix_url) {
        path(DOCKER, p, "$DOCKER_HOST");
    }
    for p in ["/var/run/docker.sock", "/run/docker.sock"] {
        path(DOCKER, PathBuf::from(p), "standard path");
    }
    path(DOCKER, rt.join("docker.sock"), "rootless Docker");
    for rel in [
        ".docker/run/docker.sock",
        ".docker/desktop/docker.sock",
        ".colima/default/docker.sock",
        ".colima/docker.sock",
        ".rd/docker.sock",
        ".orbstack/run/docker.sock",
        ".lima/default/sock/docker.sock",
    ] {
        path(DOCKER, home.join(rel), "user install");
    }
    if let Some(p) = ctx.var("CONTAINER_HOST").and_then(unix_url) {
        path(PODMAN, p, "$CONTAINER_HOST");
    }
    path(
        PODMAN,
        PathBuf::from("/run/podman/podman.sock"),
        "standard path",
    );
    path(PODMAN, rt.join("podman/podman.sock"), "rootless Podman");
    for p in [
        "/run/containerd/containerd.sock",
        "/var/run/containerd/containerd.sock",
        "/run/k3s/containerd/containerd.sock",
        "/run/crio/crio.sock",
        "/var/run/crio/crio.sock",
        "/run/buildkit/buildkitd.sock",
    ] {
        path(CONTAINERD, PathBuf::from(p), "standard path");
    }
    path(
        CONTAINERD,
        rt.join("containerd-rootless/containerd.sock"),
        "rootless containerd",
    );
    path(
        CONTAINERD,
        rt.join("buildkit/buildkitd.sock"),
        "rootless BuildKit",
    );

    if let Some(p) = ctx.var("SSH_AUTH_SOCK") {
        path(SSH_AGENT, PathBuf::from(p), "$SSH_AUTH_SOCK");
    }
    path(SSH_AGENT, rt.join("gnupg/S.gpg-agent.ssh"), "gpg-agent");
    path(SSH_AGENT, rt.join("ssh-agent.socket"), "systemd ssh-agent");

    if let Some(v) = ctx.var("DBUS_SESSION_BUS_ADDRESS") {
        for a in dbus_addrs(v) {
            c.push((DBUS_SESSION, a, "$DBUS_SESSION_BUS_ADDRESS".into()));
        }
    }
    c.push((
        DBUS_SESSION,
        SockAddr::Path(rt.join("bus")),
        "runtime dir".into(),
    ));
    for p in [
        "/run/dbus/system_bus_socket",
        "/var/run/dbus/system_bus_socket",
    ] {
        c.push((
            DBUS_SYSTEM,
            SockAddr::Path(PathBuf::from(p)),
            "standard path".into(),
        ));
    }

    // X11: every /tmp/.X11-unix/X<n>, the DISPLAY's, and their abstract twins.
    let mut displays: Vec<String> = list_dir(Path::new("/tmp/.X11-unix"), 16)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_prefix('X')
                .map(str::to_string)
        })
        .collect();
    if let Some(d) = ctx.var("DISPLAY")
        && let Some(n) = d.strip_prefix(':').or_else(|| d.strip_prefix("unix:"))
    {
        displays.push(n.split('.').next().unwrap_or("0").to_string());
    }
    displays.sort();
    displays.dedup();
    for n in displays
        .iter()
        .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
    {
        let p = format!("/tmp/.X11-unix/X{n}");
        c.push((X11, SockAddr::Path(PathBuf::from(&p)), "X11 socket".into()));
        c.push((
            X11,
            SockAddr::Abstract(p.into_bytes()),
            "X11 abstract socket".into(),
        ));
    }

    // Wayland: $WAYLAND_DISPLAY and runtime-dir wayland-* sockets.
    let mut way: Vec<PathBuf> = list_dir(&rt, 64)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.as_bytes().starts_with(b"wayland-") && !n.as_bytes().ends_with(b".lock")
            })
        })
        .collect();
    if let Some(w) = ctx.var("WAYLAND_DISPLAY") {
        way.push(rt.join(w));
    }
    way.sort();
    way.dedup();
    for p in way {
        c.push((WAYLAND, SockAddr::Path(p), "Wayland socket".into()));
    }

    c.push((
        SYSTEMD,
        SockAddr::Path(PathBuf::from("/run/systemd/private")),
        "system manager".into(),
    ));
    c.push((
        SYSTEMD,
        SockAddr::Path(rt.join("systemd/private")),
        "user manager".into(),
    ));
    c
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let mut seen: Vec<(String, SockAddr)> = vec![];
    for (kind, addr, how) in candidates(ctx) {
        // Resolve symlinks so /var/run and /run aliases count once.
        let key_addr = match &addr {
            SockAddr::Path(p) => {
                SockAddr::Path(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            }
            a => a.clone(),
        };
        if seen.iter().any(|(id, a)| id == kind.id && *a == key_addr) {
            continue;
        }
        seen.push((kind.id.to_string(), key_addr));
        if try_connect(&addr) != Reach::Yes {
            continue;
        }
        let subject = match &addr {
            SockAddr::Path(p) => tilde(p, &ctx.home),
            SockAddr::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
        };
        out.push(Finding::new(
            kind.id,
            Category::Sockets,
            kind.severity,
            subject.clone(),
            kind.title,
            format!("connect() to {subject} ({how}) succeeded; {}", kind.why),
            kind.fix,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_dbus() {
        let a = dbus_addrs("unix:path=/run/user/1000/bus,guid=abc;unix:abstract=/tmp/dbus-x%2dy");
        assert_eq!(
            a,
            vec![
                SockAddr::Path("/run/user/1000/bus".into()),
                SockAddr::Abstract(b"/tmp/dbus-x-y".to_vec())
            ]
        );
    }

    #[test]
    fn parse_unix_url() {
        assert_eq!(
            unix_url("unix:///run/x.sock"),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(unix_url("tcp://1.2.3.4:2375"), None);
    }

    #[test]
    fn connect_missing_is_no() {
        assert_eq!(
            try_connect(&SockAddr::Path("/nonexistent/sock".into())),
            Reach::No
        );
    }
}
