//! The network policy of real sandboxes, in a sealed fake internet.
//!
//! Each test builds its own network namespace (no route out: only `lo`, which also holds the
//! documentation, private-range and fake metadata addresses), starts fake HTTP and DNS
//! servers in it, and runs `airlock` inside it. No packet can leave the machine.

mod common;
mod vm_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

struct FakeInternet {
    /// Where airlock runs: its only link leads to `server`.
    ns: String,
    /// The fake internet's hosts.
    server: String,
    servers: Child,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2) is needed for the network tests");
    assert!(st.success(), "ip {args:?}");
}

fn ip_in(ns: &str, args: &[&str]) {
    let mut a = vec!["netns", "exec", ns, "ip"];
    a.extend_from_slice(args);
    ip(&a);
}

impl FakeInternet {
    fn new() -> FakeInternet {
        FakeInternet::with_env(&[])
    }

    fn with_env(server_env: &[(&str, String)]) -> FakeInternet {
        let ns = unique("airlock-client");
        let server = unique("airlock-server");
        ip(&["netns", "add", &ns]);
        ip(&["netns", "add", &server]);
        ip_in(
            &ns,
            &[
                "link", "add", "vc", "type", "veth", "peer", "name", "vs", "netns", &server,
            ],
        );
        for (n, dev) in [(&ns, "vc"), (&server, "vs")] {
            ip_in(n, &["link", "set", "lo", "up"]);
            ip_in(n, &["link", "set", dev, "up"]);
        }
        ip_in(&ns, &["addr", "add", "203.0.113.1/24", "dev", "vc"]);
        ip_in(
            &ns,
            &["-6", "addr", "add", "2001:db8::1/64", "dev", "vc", "nodad"],
        );
        for addr in [
            "203.0.113.10/24",
            "203.0.113.53/24",
            "198.51.100.7/24",
            "10.200.0.5/32",
            "169.254.169.254/32",
        ] {
            ip_in(&server, &["addr", "add", addr, "dev", "vs"]);
        }
        ip_in(
            &server,
            &["-6", "addr", "add", "2001:db8::10/64", "dev", "vs", "nodad"],
        );
        // Routes to the fake hosts only; no default route anywhere: nothing can leave.
        for dst in ["198.51.100.0/24", "10.200.0.5/32", "169.254.169.254/32"] {
            ip_in(
                &ns,
                &["route", "add", dst, "via", "203.0.113.10", "dev", "vc"],
            );
        }
        for n in [&ns, &server] {
            let routes = Command::new("ip")
                .args(["netns", "exec", n, "ip", "route", "show", "default"])
                .output()
                .unwrap();
            assert!(
                routes.stdout.is_empty(),
                "the test namespaces must have no default route"
            );
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fake_internet.py"
        );
        let mut servers = Command::new("ip")
            .args(["netns", "exec", &server, "/usr/bin/python3", script])
            .envs(server_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(servers.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        FakeInternet {
            ns,
            server,
            servers,
        }
    }

    /// `airlock ARGS` inside the fake internet, with its resolver as Airlock's upstream.
    fn airlock(&self, env: &Env, args: &[&str]) -> std::process::Output {
        self.airlock_in(env, args, false)
    }

    /// Like [`FakeInternet::airlock`], with `/dev/net/tun` hidden from Airlock (an empty tmpfs on
    /// /dev/net in a mount namespace of its own), as in a container without the device.
    fn airlock_without_tun(&self, env: &Env, args: &[&str]) -> std::process::Output {
        self.airlock_in(env, args, true)
    }

    fn airlock_in(&self, env: &Env, args: &[&str], hide_tun: bool) -> std::process::Output {
        let c = env.command(args);
        let mut ip = Command::new("ip");
        ip.args(["netns", "exec", &self.ns]);
        if hide_tun {
            ip.args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs -o mode=0755 none /dev/net && exec \"$@\"",
                "sh",
            ]);
        }
        if let Who::User { uid, gid, .. } = env.who {
            // `ip netns exec` needs root; airlock itself runs as the user.
            ip.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
                "--",
            ]);
        }
        ip.arg(c.get_program()).args(c.get_args()).env_clear();
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                ip.env(k, v);
            }
        }
        ip.env("AIRLOCK_UPSTREAM_DNS", "203.0.113.53:53")
            .current_dir(&env.ws)
            .stdin(Stdio::null());
        let out = ip.output().unwrap();
        eprintln!(
            "[{}] airlock {}\n  exit: {:?}\n  stdout: {}\n  stderr: {}",
            env.who.label(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        drop(self.servers.stdin.take());
        let _ = self.servers.kill();
        let _ = self.servers.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
    }
}

/// Inside the sandbox: try each path out and print one line per attempt.
const CLIENT: &str = r#"
import socket, urllib.request, os
def get(url, proxy=True):
    try:
        opener = urllib.request.build_opener() if proxy else urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return "OK " + opener.open(url, timeout=5).read().decode().strip()
    except urllib.error.HTTPError as e:
        return "HTTP %d %s" % (e.code, e.read().decode(errors="replace").replace("\n", " ")[:500])
    except Exception as e:
        return "ERR " + type(e).__name__ + " " + str(e)[:80]
def resolve(name):
    try:
        return "OK " + socket.gethostbyname(name)
    except Exception as e:
        return "ERR " + str(e)
def raw(addr, port=80, host="allowed.test"):
    try:
        s = socket.create_connection((addr, port), timeout=5)
        s.sendall(("GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % host).encode())
        data = s.recv(200).decode(errors="replace")
        return "OK " + data.split("\r\n")[0] if data else "ERR closed"
    except Exception as e:
        return "ERR " + type(e).__name__
def capture_path(addr="203.0.113.10", table="/proc/net/tcp", endpoint="3500007F:0C39"):
    # While a direct connection is open: is its other end a kernel socket on the gate's capture
    # endpoint (127.0.0.53:3129 or [::1]:3129, established) in this namespace, or the user-space
    # stack on tun0? (The gate holds even a connection it will refuse until it has seen the
    # client's first bytes.)
    try:
        s = socket.create_connection((addr, 80), timeout=5)
        rows = [l.split() for l in open(table).read().splitlines()[1:]]
        s.close()
        return "kernel" if any(r[1] == endpoint and r[3] == "01" for r in rows) else "tun"
    except Exception as e:
        return "ERR " + type(e).__name__
def udp(addr, port):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
        s.sendto(b"x", (addr, port)); s.recv(10); return "OK answered"
    except Exception as e:
        return "ERR " + type(e).__name__
print("proxy_allowed", get("http://allowed.test/"))
print("proxy_denied", get("http://denied.test/"))
print("proxy_other", get("http://other.test/"))
print("proxy_rebind", get("http://rebind.test/"))
print("proxy_metadata_ip", get("http://169.254.169.254/latest/meta-data/"))
print("dns_allowed", resolve("allowed.test"))
print("dns_denied", resolve("denied.test"))
print("dns_unlisted", resolve("exfil-abc123.other.test"))
print("direct_allowed", raw("203.0.113.10"))
print("direct_unlisted_ip", raw("198.51.100.7", host="other.test"))
print("direct_private", raw("10.200.0.5", host="rebind.test"))
print("direct_metadata", raw("169.254.169.254", host="meta.test"))
print("direct_v6", raw("2001:db8::10"))
print("udp_other", udp("203.0.113.10", 9999))
print("capture_path", capture_path())
print("congestion", open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip())
print("capture_path_v6", capture_path("2001:db8::10", "/proc/net/tcp6", "00000000000000000000000001000000:0C39"))
print("capture_endpoint", raw("127.0.0.53", 3129))
"#;

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{key} missing in {out}"))
}

/// A CLIENT line that reports a refusal: an error, or the gate's 403.
fn refused(o: &str, k: &str) -> bool {
    let l = line(o, k);
    l.starts_with("ERR") || l.contains(" 403 ")
}

/// What CLIENT prints under `--allow allowed.test --allow rebind.test --deny denied.test`: the
/// allowed name works through the proxy and DNS; everything else is refused on every path.
fn assert_allowed_one_denied_the_rest(o: &str) {
    assert!(
        line(o, "proxy_allowed").starts_with("OK hello from 203.0.113.10"),
        "{o}"
    );
    let denied = line(o, "proxy_denied");
    assert!(
        denied.starts_with("HTTP 403") && denied.contains("denied.test"),
        "the 403 names the rule: {denied}"
    );
    assert!(
        denied.contains("airlock policy"),
        "the 403 says how to change it: {denied}"
    );
    for k in [
        "proxy_other",
        "proxy_rebind",
        "proxy_metadata_ip",
        "dns_denied",
        "dns_unlisted",
        "direct_unlisted_ip",
        "direct_private",
        "direct_metadata",
        "direct_v6",
        "udp_other",
        "capture_endpoint",
    ] {
        assert!(refused(o, k), "{k} must be refused: {o}");
    }
    assert!(line(o, "dns_allowed").starts_with("OK 203.0.113.10"), "{o}");
}

/// `airlock run ARGS` with the policy that [`assert_allowed_one_denied_the_rest`] expects,
/// running [`CLIENT`].
fn gate_run<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run"];
    v.extend_from_slice(args);
    v.extend_from_slice(&[
        "--allow",
        "allowed.test",
        "--allow",
        "rebind.test",
        "--deny",
        "denied.test",
        "--",
        "/usr/bin/python3",
        "-c",
        CLIENT,
    ]);
    v
}

#[test]
fn policy_gate_allows_only_what_the_policy_allows_on_every_path() {
    let host_tuns = tun_devices(None);
    let net = FakeInternet::new();
    let outer_congestion = congestion_control(&net.ns);
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("gate");
        // Preset none plus two allowed names.
        let out = net.airlock(&env, &gate_run(&["--name", &name]));
        assert!(out.status.success(), "{}", stderr(&out));
        let o = stdout(&out);
        assert_allowed_one_denied_the_rest(&o);
        // Transparent capture: TCP (IPv4 and IPv6) is redirected by nf_tables rules to sockets the
        // gate relays with splice(2); UDP (refused above) took the user-space stack on tun0.
        assert!(
            line(&o, "direct_allowed").contains("200 OK"),
            "transparent capture serves allowed names: {o}"
        );
        assert_eq!(line(&o, "capture_path"), "kernel", "{o}");
        assert_eq!(line(&o, "capture_path_v6"), "kernel", "{o}");
        // The sandbox's namespace only has local hops to the gate: Reno, no pacing; the gate's
        // own namespace, where the upstream connections are made, keeps its default. (On a host
        // whose default is Reno already, this cannot tell; CI's default is BBR.)
        assert_eq!(line(&o, "congestion"), "reno", "{o}");
        assert_eq!(congestion_control(&net.ns), outer_congestion);

        // Without a TUN device (a container without /dev/net/tun): TCP is still captured in the
        // kernel, and UDP goes nowhere (delivered to the sandbox's own loopback, where nothing
        // listens).
        let out = net.airlock_without_tun(&env, &gate_run(&["--rm"]));
        assert!(out.status.success(), "{}", stderr(&out));
        let o3 = stdout(&out);
        assert_allowed_one_denied_the_rest(&o3);
        assert!(line(&o3, "direct_allowed").contains("200 OK"), "{o3}");
        assert_eq!(line(&o3, "capture_path"), "kernel", "{o3}");
        assert_eq!(line(&o3, "capture_path_v6"), "kernel", "{o3}");
        assert!(
            line(&o3, "udp_other").starts_with("ERR"),
            "UDP has no way out without tun0: {o3}"
        );

        // Under `open` the public internet is reachable, but never private ranges, metadata, or
        // an allowed name that resolves into them (rebinding).
        let out = net.airlock(
            &env,
            &[
                "run",
                "--rm",
                "--net",
                "open",
                "--",
                "/usr/bin/python3",
                "-c",
                CLIENT,
            ],
        );
        let o2 = stdout(&out);
        assert!(
            line(&o2, "proxy_other").starts_with("OK hello from 198.51.100.7"),
            "{o2}"
        );
        for k in [
            "proxy_rebind",
            "proxy_metadata_ip",
            "direct_private",
            "direct_metadata",
            "udp_other",
        ] {
            assert!(refused(&o2, k), "{k} must be refused under open: {o2}");
        }

        // Every decision is logged.
        let log = env.airlock(&["policy", "log", &name, "--json"]);
        let log = stdout(&log);
        assert!(log.contains("\"denied.test\""), "{log}");
        assert!(log.contains("\"allowed.test\""), "{log}");
        // policy check agrees, and makes no connection.
        let check = env.airlock(&["policy", "check", "--sandbox", &name, "denied.test:80"]);
        assert_eq!(check.status.code(), Some(1));
        assert!(stdout(&check).contains("deny"), "{}", stdout(&check));
        assert_eq!(
            env.airlock(&["policy", "check", "--sandbox", &name, "allowed.test:80"])
                .status
                .code(),
            Some(0)
        );
        assert!(env.airlock(&["rm", &name]).status.success());
    }
    // tun0 is persistent (so that closing it costs the exiting supervisor nothing): it goes with
    // the sandbox's network namespace and is never handed to the one Airlock ran in, nor to the
    // host's.
    assert_eq!(tun_devices(Some(&net.ns)), 0);
    assert_eq!(
        tun_devices(None),
        host_tuns,
        "a sandbox's tun0 reached the host"
    );
}

/// The default TCP congestion control of the network namespace `ns`.
fn congestion_control(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/sys/net/ipv4/tcp_congestion_control",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// How many devices named tun0 the network namespace `ns` (the test's own when `None`) has.
fn tun_devices(ns: Option<&str>) -> usize {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["netns", "exec", ns, "ip"]);
    }
    let out = c.args(["-o", "link", "show"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": tun0"))
        .count()
}

/// The microVM tier's guest goes out through the same gate: the same script gets the same
/// answers, and the decisions land in the same log.
#[test]
fn a_vm_guest_meets_the_same_policy_gate() {
    let net = FakeInternet::new();
    for who in everyone() {
        let mut env = Env::new(&who);
        env.extra_env.push((
            "AIRLOCK_GUEST_AGENT".into(),
            vm_support::guest_agent(BIN).display().to_string(),
        ));
        let name = unique("vmgate");
        let out = net.airlock(&env, &gate_run(&["--isolation", "vm", "--name", &name]));
        assert!(out.status.success(), "{}", stderr(&out));
        assert_allowed_one_denied_the_rest(&stdout(&out));
        let log = stdout(&env.airlock(&["policy", "log", &name, "--json"]));
        assert!(log.contains("\"denied.test\""), "{log}");
        assert!(log.contains("\"allowed.test\""), "{log}");
        assert!(env.airlock(&["rm", &name]).status.success());
    }
}

#[test]
fn default_policy_lets_nothing_out_and_a_policy_change_reaches_a_running_sandbox() {
    let net = FakeInternet::new();
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("deny");
        assert!(
            net.airlock(&env, &["create", "--name", &name])
                .status
                .success()
        );
        let probe = "import urllib.request\ntry:\n    print('OK', urllib.request.urlopen('http://allowed.test/', timeout=5).read().decode().strip())\nexcept Exception as e:\n    print('ERR', e)";
        // The sandbox runs under its supervisor (started inside the fake internet).
        assert!(net.airlock(&env, &["start", &name]).status.success());
        let out = net.airlock(
            &env,
            &["exec", &name, "--", "/usr/bin/python3", "-c", probe],
        );
        assert!(
            stdout(&out).starts_with("ERR"),
            "preset none allows nothing: {}",
            stdout(&out)
        );
        assert!(
            env.airlock(&["policy", "allow", "--sandbox", &name, "allowed.test"])
                .status
                .success()
        );
        let mut reached = String::new();
        wait_until(
            || {
                let out = net.airlock(
                    &env,
                    &["exec", &name, "--", "/usr/bin/python3", "-c", probe],
                );
                reached = stdout(&out);
                reached.starts_with("OK hello")
            },
            "the new rule to reach the running sandbox",
        );
        assert!(env.airlock(&["rm", "--force", &name]).status.success());
    }
}

#[test]
fn published_ports_reach_a_server_started_inside_and_disappear_with_the_sandbox() {
    for who in everyone() {
        let env = Env::new(&who);
        let name = unique("web");
        let host_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let map = format!("{host_port}:8000");
        // The dev server binds the sandbox's own loopback, as most do by default.
        let mut server = env
            .command(&[
                "run",
                "--name",
                &name,
                "-p",
                &map,
                "--",
                "/usr/bin/python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let fetch = || -> Option<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", host_port)).ok()?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        };
        let mut body = String::new();
        wait_until(
            || {
                body = fetch().unwrap_or_default();
                body.starts_with("HTTP/1.0 200")
            },
            "the published server to answer",
        );
        assert!(body.contains("Directory listing"), "{body}");
        let ports = env.airlock(&["ports", &name]);
        assert_eq!(
            stdout(&ports).trim(),
            format!("127.0.0.1:{host_port} -> 8000")
        );
        assert!(env.airlock(&["rm", "--force", &name]).status.success());
        let _ = server.wait();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", host_port)).is_err(),
            "the mapping disappears with the sandbox"
        );
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

/// A test CA and a certificate for the fake internet's TLS upstream (api.secret.test and
/// github.test), in a temporary directory: `ca.pem`, `srv.pem`, `srv.key`.
fn upstream_pki() -> tempfile::TempDir {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Airlock test upstream CA",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=api.secret.test",
        ],
    );
    std::fs::write(
        d.join("ext"),
        "subjectAltName=DNS:api.secret.test,DNS:github.test\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    pki
}

const SECRET: &str = "sk-test-REAL-secret-value-0123456789abcdef";

/// A kit's credential reaches its upstream (over TLS, through the gate's interception), while the
/// sandbox only ever holds and sees the placeholder; sending the placeholder elsewhere is refused.
#[test]
fn credentials_are_injected_at_the_gate_and_never_enter_the_sandbox() {
    let pki = upstream_pki();
    let d = pki.path();
    let upstream_log = d.join("received.log");
    let net = FakeInternet::with_env(&[
        ("FAKE_TLS_CERT", d.join("srv.pem").display().to_string()),
        ("FAKE_TLS_KEY", d.join("srv.key").display().to_string()),
        ("FAKE_TLS_LOG", upstream_log.display().to_string()),
    ]);
    for who in everyone() {
        let mut env = Env::new(&who);
        let kits = env.home.join(".config/airlock/kits");
        std::fs::create_dir_all(&kits).unwrap();
        std::fs::write(
            kits.join("secrettest.toml"),
            "name = \"secrettest\"\ndescription = \"test kit\"\ncommand = []\nallow = [\"api.secret.test\", \"allowed.test\"]\n\n[[credentials]]\nservice = \"secrettest\"\nenv = \"SECRETTEST_API_KEY\"\nhosts = [\"api.secret.test\"]\nheader = \"x-api-key\"\nformat = \"{secret}\"\n",
        )
        .unwrap();
        env.chown_all();
        let set = env.airlock_with_input(
            &[
                "secret",
                "set-custom",
                "secrettest",
                "--host",
                "api.secret.test",
                "--header",
                "x-api-key",
            ],
            SECRET.as_bytes(),
            &[],
        );
        assert!(set.status.success());
        env.extra_env.push((
            "AIRLOCK_UPSTREAM_CA_FILE".into(),
            d.join("ca.pem").display().to_string(),
        ));
        let _ = std::fs::remove_file(&upstream_log);
        let client = r#"
import os, urllib.request
key = os.environ["SECRETTEST_API_KEY"]
print("inside-key", key)
req = urllib.request.Request("https://api.secret.test/v1", headers={"x-api-key": key})
r = urllib.request.urlopen(req, timeout=10)
print("status", r.status)
print("echo-header", r.headers.get("X-Echo-Key"))
print("body", r.read().decode().strip())
r = urllib.request.urlopen(urllib.request.Request("https://api.secret.test/chunked", headers={"x-api-key": key}), timeout=10)
print("chunked", r.read().decode().strip())
try:
    urllib.request.urlopen(urllib.request.Request("http://allowed.test/", headers={"x-api-key": key}), timeout=10)
    print("exfil OK")
except urllib.error.HTTPError as e:
    print("exfil", e.code, e.read().decode(errors="replace").replace("\n", " ")[:300])
"#;
        let out = net.airlock(
            &env,
            &[
                "run",
                "--rm",
                "--kit",
                "secrettest",
                "--",
                "/usr/bin/python3",
                "-c",
                client,
            ],
        );
        let o = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            !o.contains(SECRET),
            "the sandbox must never see the real secret: {o}"
        );
        let placeholder = o
            .lines()
            .find_map(|l| l.strip_prefix("inside-key "))
            .unwrap()
            .to_string();
        assert!(placeholder.starts_with("airlock-placeholder-"), "{o}");
        assert!(o.contains("status 200"), "{o}");
        // The upstream received the real key (and echoed it; the gate scrubbed the echo).
        let received = std::fs::read_to_string(&upstream_log).unwrap();
        assert_eq!(
            received.lines().collect::<Vec<_>>(),
            vec![SECRET, SECRET],
            "the upstream gets the real key"
        );
        // What the sandbox reads instead of the echoed secret: the placeholder, cut or padded to
        // the secret's length (so Content-Length stays right).
        let mut stand_in: String = placeholder.chars().take(SECRET.len()).collect();
        while stand_in.len() < SECRET.len() {
            stand_in.push('x');
        }
        assert!(
            o.lines()
                .any(|l| l == format!("body your key is {stand_in}")),
            "{o}"
        );
        // Echoed in a chunked body, split in its middle across two chunks sent 300 ms apart.
        assert!(
            o.lines()
                .any(|l| l == format!("chunked your key is {stand_in}")),
            "{o}"
        );
        // The placeholder sent to another host is refused and logged as exfiltration.
        let exfil = o.lines().find(|l| l.starts_with("exfil")).unwrap();
        assert!(exfil.starts_with("exfil 403"), "{exfil}");
        assert!(
            exfil.contains("exfiltration") || exfil.contains("placeholder"),
            "{exfil}"
        );
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        } else if meta.is_file()
            && std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            hits.push(p);
        }
    }
    hits
}

fn git(args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.org",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

/// `git clone https://…` inside a sandbox whose kit has the github credential authenticates with
/// the real token, which only the gate puts on the wire: git inside is configured (by environment)
/// to send `Basic x-access-token:PLACEHOLDER`, and the gate swaps the placeholder inside it.
#[test]
fn git_over_https_gets_the_github_token_at_the_gate_and_the_sandbox_never_holds_it() {
    const TOKEN: &str = "ghp_REALtoken0123456789abcdefghijklmnopqr";
    let pki = upstream_pki();
    let d = pki.path();
    // A repository on the fake github.
    let root = d.join("git");
    let work = d.join("work");
    git(&[
        "init",
        "-q",
        "--bare",
        root.join("o/r.git").to_str().unwrap(),
    ]);
    git(&["init", "-q", work.to_str().unwrap()]);
    std::fs::write(work.join("README.md"), "cloned through the gate\n").unwrap();
    let w = work.to_str().unwrap();
    git(&["-C", w, "add", "README.md"]);
    git(&["-C", w, "commit", "-q", "-m", "first"]);
    git(&[
        "-C",
        w,
        "push",
        "-q",
        root.join("o/r.git").to_str().unwrap(),
        "main",
    ]);
    let upstream_log = d.join("received.log");
    let net = FakeInternet::with_env(&[
        ("FAKE_TLS_CERT", d.join("srv.pem").display().to_string()),
        ("FAKE_TLS_KEY", d.join("srv.key").display().to_string()),
        ("FAKE_TLS_LOG", upstream_log.display().to_string()),
        ("FAKE_GIT_ROOT", root.display().to_string()),
        ("FAKE_GIT_TOKEN", TOKEN.to_string()),
    ]);
    let real_basic = {
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut out = out;
        out.stdin
            .take()
            .unwrap()
            .write_all(format!("x-access-token:{TOKEN}").as_bytes())
            .unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    };
    for who in everyone() {
        let mut env = Env::new(&who);
        let kits = env.home.join(".config/airlock/kits");
        std::fs::create_dir_all(&kits).unwrap();
        // A built-in service needs only its name; the hosts here are the fake github's.
        std::fs::write(
            kits.join("gittest.toml"),
            "name = \"gittest\"\ncommand = []\nallow = [\"github.test\"]\n\n[[credentials]]\nservice = \"github\"\nhosts = [\"github.test\"]\n",
        )
        .unwrap();
        env.chown_all();
        let set = env.airlock_with_input(&["secret", "set", "github"], TOKEN.as_bytes(), &[]);
        assert!(set.status.success());
        env.extra_env.push((
            "AIRLOCK_UPSTREAM_CA_FILE".into(),
            d.join("ca.pem").display().to_string(),
        ));
        let _ = std::fs::remove_file(&upstream_log);
        let name = unique("git");
        let script = "export GIT_TERMINAL_PROMPT=0\n\
                      echo \"token=$GITHUB_TOKEN\"\n\
                      git config --get-regexp 'http\\..*\\.extraheader' | sed 's/^/config /'\n\
                      git clone -q https://github.test/o/r.git r && echo cloned\n\
                      cat r/README.md\n\
                      git -C r pull -q && echo pulled\n";
        let out = net.airlock(
            &env,
            &[
                "run", "--name", &name, "--kit", "gittest", "--", "sh", "-c", script,
            ],
        );
        let o = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(o.contains("cloned\ncloned through the gate\npulled"), "{o}");
        let placeholder = o
            .lines()
            .find_map(|l| l.strip_prefix("token="))
            .unwrap()
            .to_string();
        assert!(placeholder.starts_with("airlock-placeholder-"), "{o}");
        assert!(
            o.lines().any(|l| l
                .starts_with("config http.https://github.test/.extraheader Authorization: Basic ")),
            "{o}"
        );
        assert!(!o.contains(TOKEN) && !o.contains(&real_basic), "{o}");
        // The upstream got the real token on every git request, never the placeholder.
        let log = std::fs::read_to_string(&upstream_log).unwrap();
        let requests: Vec<&str> = log.lines().filter(|l| l.starts_with("git ")).collect();
        assert!(requests.len() >= 3, "{log}");
        for r in &requests {
            assert!(r.ends_with(&format!("auth=Basic {real_basic}")), "{r}");
        }
        assert!(!log.contains(&placeholder), "{log}");
        // Nothing the sandbox wrote (its clone, its .git/config) holds the token in any form.
        let dir = env.airlock_home.join("data/sandboxes").join(&name);
        assert!(dir.is_dir());
        for needle in [TOKEN, real_basic.as_str()] {
            let hits = files_containing(&dir, needle.as_bytes());
            assert!(hits.is_empty(), "{needle} found in {hits:?}");
        }
        assert!(
            !files_containing(&dir, b"cloned through the gate").is_empty(),
            "the clone is in the sandbox's layer"
        );
        assert!(env.airlock(&["rm", &name]).status.success());
    }
}

/// The secret a sandbox's gate sends comes from the OS keyring first, then Airlock's file: with
/// both holding one, the upstream gets the keyring's; with the keyring gone, the file's.
#[test]
fn the_gate_takes_the_keyring_secret_before_the_file_one() {
    const IN_KEYRING: &str = "sk-test-from-the-keyring-0123456789abcdef";
    const IN_FILE: &str = "sk-test-from-the-file-0123456789abcdef";
    let pki = upstream_pki();
    let d = pki.path();
    let upstream_log = d.join("received.log");
    let net = FakeInternet::with_env(&[
        ("FAKE_TLS_CERT", d.join("srv.pem").display().to_string()),
        ("FAKE_TLS_KEY", d.join("srv.key").display().to_string()),
        ("FAKE_TLS_LOG", upstream_log.display().to_string()),
    ]);
    let client = r#"
import os, urllib.request
r = urllib.request.urlopen(urllib.request.Request("https://api.secret.test/v1", headers={"x-api-key": os.environ["SECRETTEST_API_KEY"]}), timeout=10)
print("status", r.status)
"#;
    for who in everyone() {
        let mut env = Env::new(&who);
        let kits = env.home.join(".config/airlock/kits");
        std::fs::create_dir_all(&kits).unwrap();
        std::fs::write(
            kits.join("secrettest.toml"),
            "name = \"secrettest\"\ncommand = []\nallow = [\"api.secret.test\"]\n\n[[credentials]]\nservice = \"secrettest\"\nenv = \"SECRETTEST_API_KEY\"\nhosts = [\"api.secret.test\"]\nheader = \"x-api-key\"\nformat = \"{secret}\"\n",
        )
        .unwrap();
        let keyring = SessionKeyring::start(&env);
        env.extra_env.extend(keyring.env());
        env.extra_env.push((
            "AIRLOCK_UPSTREAM_CA_FILE".into(),
            d.join("ca.pem").display().to_string(),
        ));
        let store = |args: &[&str], value: &str, choice: &str| {
            let out =
                env.airlock_with_input(args, value.as_bytes(), &[("AIRLOCK_SECRET_STORE", choice)]);
            assert!(out.status.success(), "{}", stderr(&out));
            stderr(&out)
        };
        let said = store(
            &[
                "secret",
                "set-custom",
                "secrettest",
                "--host",
                "api.secret.test",
                "--header",
                "x-api-key",
            ],
            IN_KEYRING,
            "auto",
        );
        assert!(said.contains("OS keyring"), "{said}");
        store(&["secret", "set", "secrettest"], IN_FILE, "file");
        assert_eq!(
            keyring.lookup(&env, "secrettest").as_deref(),
            Some(IN_KEYRING)
        );
        let run = || {
            let _ = std::fs::remove_file(&upstream_log);
            let out = net.airlock(
                &env,
                &[
                    "run",
                    "--rm",
                    "--kit",
                    "secrettest",
                    "--",
                    "/usr/bin/python3",
                    "-c",
                    client,
                ],
            );
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(stdout(&out).contains("status 200"));
            std::fs::read_to_string(&upstream_log).unwrap()
        };
        assert_eq!(run().trim(), IN_KEYRING, "the keyring comes first");
        drop(keyring);
        assert_eq!(run().trim(), IN_FILE, "without a keyring, the file");
    }
}
