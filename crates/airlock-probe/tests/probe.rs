//! End-to-end tests of the probe with real files, sockets and listeners in a throwaway
//! HOME. No test sends a packet beyond loopback: they use `NetTargets::None`, or run the
//! probe on a thread inside a fresh network namespace that has only `lo` (with fake
//! metadata/outbound/gateway addresses on it) and no route anywhere.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use airlock_probe::{
    Category, ContextKind, JSON_SCHEMA, NetTarget, NetTargetKind, NetTargets, ProbeOptions, Report,
    Severity, TargetAddr, render_compare, run_probe,
};

/// A temporary directory removed on drop (no tempfile crate needed).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "airlock-probe-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// An unencrypted OpenSSH key body (cipher "none"), synthetic: not a usable key.
const FAKE_OPENSSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAACAAAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHw==
-----END OPENSSH PRIVATE KEY-----
";

const PLANTED_SECRET: &str = "sk-ant-api03-Zq8wL2xV9mK4pR7tY1nB6cD3fG5hJ0sA";
const PLANTED_AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8wL2xV9m";

fn options(home: &Path, workspace: &Path, env: Vec<(&str, String)>) -> ProbeOptions {
    ProbeOptions {
        home: home.to_path_buf(),
        workspace: Some(workspace.to_path_buf()),
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        net_targets: NetTargets::None,
        timeout: Duration::from_millis(300),
        extra_loopback_ports: vec![],
        context: ContextKind::Host,
        sandbox_name: None,
    }
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).expect("schema is JSON");
    jsonschema::draft202012::new(&schema).expect("schema is a valid draft 2020-12 schema")
}

fn assert_valid(json: &str) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let errors: Vec<String> = validator().iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "schema errors: {errors:#?}\n{json}");
}

fn find<'a>(r: &'a Report, id: &str, subject_has: &str) -> &'a airlock_probe::Finding {
    r.findings
        .iter()
        .find(|f| f.id == id && f.subject.contains(subject_has))
        .unwrap_or_else(|| {
            panic!(
                "no finding {id} about {subject_has}:\n{}",
                r.render_human(false)
            )
        })
}

#[test]
fn finds_planted_exposures_without_leaking_them() {
    let tmp = TempDir::new("planted");
    let home = tmp.path().join("home");
    let ws = home.join("work/project");
    std::fs::create_dir_all(&ws).unwrap();
    write(&home.join(".ssh/id_ed25519"), FAKE_OPENSSH_KEY);
    write(
        &home.join(".ssh/id_ed25519.pub"),
        "ssh-ed25519 AAAAC3Nza test@example\n",
    );
    // Named like a key but is not one: the header decides.
    write(&home.join(".ssh/id_notakey"), "just some notes\n");
    write(
        &home.join(".aws/credentials"),
        &format!(
            "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {PLANTED_AWS_SECRET}\n"
        ),
    );
    // A .env above the workspace is a finding; one inside it is not.
    write(
        &home.join("work/.env"),
        &format!("ANTHROPIC_API_KEY={PLANTED_SECRET}\n"),
    );
    write(
        &ws.join(".env"),
        &format!("ANTHROPIC_API_KEY={PLANTED_SECRET}\n"),
    );
    let sock_path = home.join(".docker/run/docker.sock");
    std::fs::create_dir_all(sock_path.parent().unwrap()).unwrap();
    let _docker = UnixListener::bind(&sock_path).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();

    let mut opts = options(
        &home,
        &ws,
        vec![
            ("HOME", home.display().to_string()),
            ("PATH", "/usr/bin:/bin".into()),
            ("DOCKER_HOST", format!("unix://{}", sock_path.display())),
            ("ANTHROPIC_API_KEY", PLANTED_SECRET.into()),
            ("OPENAI_API_KEY", "airlock-placeholder-openai".into()),
            ("LANG", "C.UTF-8".into()),
        ],
    );
    opts.extra_loopback_ports = vec![port];
    let report = run_probe(&opts);
    let human = report.render_human(false);
    let colored = report.render_human(true);
    let json = report.to_json();

    let f = find(&report, "env.secret", "ANTHROPIC_API_KEY");
    assert_eq!(
        (f.severity, f.category),
        (Severity::High, Category::Secrets)
    );
    assert!(f.detail.contains("sk-a…(45 chars)"), "{}", f.detail);
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.subject == "OPENAI_API_KEY"),
        "airlock placeholders are not findings"
    );
    let f = find(&report, "file.ssh_private_key", "id_ed25519");
    assert_eq!(
        (f.severity, f.category),
        (Severity::High, Category::Credentials)
    );
    assert_eq!(f.subject, "~/.ssh/id_ed25519");
    assert!(
        report
            .with_id("file.ssh_private_key")
            .all(|f| f.subject == "~/.ssh/id_ed25519")
    );
    assert_eq!(
        find(&report, "file.aws_credentials", ".aws/credentials").severity,
        Severity::High
    );
    let f = find(&report, "file.dotenv", "work/.env");
    assert_eq!(
        (f.severity, f.subject.as_str()),
        (Severity::High, "~/work/.env")
    );
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.subject.contains("project/.env"))
    );
    let f = find(&report, "socket.docker", ".docker/run/docker.sock");
    assert_eq!(
        (f.severity, f.category),
        (Severity::High, Category::Sockets)
    );
    let f = find(
        &report,
        "network.loopback_port",
        &format!("127.0.0.1:{port}"),
    );
    assert_eq!(
        (f.severity, f.category),
        (Severity::Medium, Category::Network)
    );

    // Secret values never appear, not even partly.
    for out in [&human, &colored, &json] {
        for secret in [PLANTED_SECRET, PLANTED_AWS_SECRET] {
            assert!(!out.contains(secret));
            assert!(!out.contains(&secret[4..16]), "partial secret leaked");
        }
        assert!(!out.contains("b3BlbnNzaC1rZXktdjEA"), "key material leaked");
    }

    // NetTargets::None: loopback attempts only, and nothing else.
    assert_eq!(report.context.net_targets, "none");
    assert!(!report.context.net_attempts.is_empty());
    for a in &report.context.net_attempts {
        assert!(
            a.starts_with("tcp 127.0.0.1:") || a.starts_with("tcp [::1]:"),
            "non-loopback attempt with NetTargets::None: {a}"
        );
    }
    assert!(report.with_id("network.not_checked").count() == 1);

    // JSON: valid against the schema, round-trips.
    assert_valid(&json);
    let back = Report::from_json(&json).unwrap();
    assert_eq!(back, report);
    assert_eq!(report.max_severity(), Some(Severity::High));
    assert!(report.count(Severity::High) >= 5);
    assert!(report.count(Severity::Info) >= report.count(Severity::Medium));
    assert!(human.contains("Secrets") && human.contains("fix: "));
}

#[test]
fn clean_home_has_no_secret_or_home_credential_findings() {
    let tmp = TempDir::new("clean");
    let home = tmp.path().join("home");
    let ws = home.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    write(
        &home.join(".ssh/known_hosts"),
        "example.com ssh-ed25519 AAAA\n",
    );
    let opts = options(
        &home,
        &ws,
        vec![
            ("HOME", home.display().to_string()),
            ("PATH", "/usr/bin:/bin".into()),
            ("GITHUB_TOKEN", "airlock-placeholder-github".into()),
            ("TOKENIZERS_PARALLELISM", "false".into()),
            (
                "XDG_RUNTIME_DIR",
                tmp.path().join("run").display().to_string(),
            ),
        ],
    );
    let report = run_probe(&opts);
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.category == Category::Secrets),
        "{}",
        report.render_human(false)
    );
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.category == Category::Credentials && f.subject.starts_with('~')),
        "{}",
        report.render_human(false)
    );
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.subject.contains(".docker"))
    );
    assert_valid(&report.to_json());
}

#[test]
fn schema_is_checked_in_and_rejects_bad_reports() {
    let on_disk = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/report.v1.json"),
    )
    .unwrap();
    assert_eq!(on_disk, JSON_SCHEMA);
    let v = validator();
    let bad = serde_json::json!({
        "schema_version": 1,
        "context": {},
        "findings": [{"id": "x", "severity": "critical"}]
    });
    assert!(!v.is_valid(&bad));
    assert!(Report::from_json(r#"{"schema_version": 2, "context": {}, "findings": []}"#).is_err());
    assert!(Report::from_json("not json").is_err());
}

#[test]
fn compare_shows_closed_exposures() {
    let tmp = TempDir::new("compare");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    write(&home.join(".ssh/id_ed25519"), FAKE_OPENSSH_KEY);
    let host = run_probe(&options(
        &home,
        &home.join("ws"),
        vec![("OPENAI_API_KEY", PLANTED_SECRET.into())],
    ));
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut sb_opts = options(&empty, &empty.join("ws"), vec![]);
    sb_opts.context = ContextKind::Sandbox;
    sb_opts.sandbox_name = Some("test".into());
    let sandbox = run_probe(&sb_opts);
    let out = render_compare(&host, &sandbox, false);
    let line = out
        .lines()
        .find(|l| l.contains("file.ssh_private_key"))
        .expect(&out);
    assert!(line.contains("HIGH") && line.contains("closed"), "{line}");
    let line = out.lines().find(|l| l.contains("env.secret")).expect(&out);
    assert!(line.contains("closed"), "{line}");
    assert!(out.contains("sandbox `test`"));
    assert!(!out.contains(PLANTED_SECRET));
    assert!(!render_compare(&host, &sandbox, true).contains(PLANTED_SECRET));
}

#[test]
fn net_targets_file_format() {
    let tmp = TempDir::new("targets");
    let f = tmp.path().join("targets");
    write(
        &f,
        "# fake hosts\nmetadata 169.254.169.254:80\ngateway default:53\ndns {random}.example.com\n",
    );
    let NetTargets::List(l) = NetTargets::from_file(&f).unwrap() else {
        panic!("expected a list")
    };
    assert_eq!(l.len(), 3);
    write(&f, "none\n");
    assert_eq!(NetTargets::from_file(&f).unwrap(), NetTargets::None);
    write(&f, "outbound example.com:443\n");
    let e = NetTargets::from_file(&f).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("IP:PORT"), "{e}");
}

/// Run `f` on a thread inside a new network namespace that has only `lo` up, with the
/// given extra addresses on `lo`. Returns `None` (test skipped) without root or `ip`.
fn in_private_netns<T: Send + 'static>(
    addrs: &'static [&'static str],
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        // Affects only this thread (and what it spawns).
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            eprintln!("skipping: cannot create a network namespace: {e}");
            return None;
        }
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ip(&["link", "set", "lo", "up"]) {
            eprintln!("skipping: `ip` unavailable");
            return None;
        }
        for a in addrs {
            assert!(ip(&["addr", "add", a, "dev", "lo"]), "ip addr add {a}");
        }
        // Nothing but lo exists: no route to anything real. (`/proc/net` would show the
        // main thread's namespace; `thread-self` shows this thread's.)
        let routes = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
        assert_eq!(routes.lines().count(), 1, "unexpected routes: {routes}");
        let links = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        let ifaces: Vec<&str> = links
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "unexpected interfaces");
        Some(f())
    })
    .join()
    .unwrap()
}

#[test]
fn net_targets_inside_private_netns() {
    let res = in_private_netns(
        &["169.254.169.254/32", "203.0.113.10/32", "198.51.100.1/32"],
        || {
            // Fake metadata server, fake public host, fake gateway (listening), inside the netns.
            let _md = TcpListener::bind("169.254.169.254:80").unwrap();
            let _pub = TcpListener::bind("203.0.113.10:443").unwrap();
            let _gw = TcpListener::bind("198.51.100.1:80").unwrap();
            let tmp = TempDir::new("netns");
            let home = tmp.path().join("home");
            std::fs::create_dir_all(&home).unwrap();
            let mut opts = options(&home, &home.join("ws"), vec![]);
            let t = |kind, a: &str| NetTarget {
                kind,
                addr: TargetAddr::Socket(a.parse().unwrap()),
            };
            opts.net_targets = NetTargets::List(vec![
                t(NetTargetKind::Metadata, "169.254.169.254:80"),
                t(NetTargetKind::Outbound, "203.0.113.10:443"),
                // Assigned but nothing listens: refused (the host answers).
                t(NetTargetKind::Outbound, "203.0.113.10:80"),
                t(NetTargetKind::Gateway, "198.51.100.1:80"),
                // Not assigned, no route: unreachable, no finding.
                t(NetTargetKind::Outbound, "198.51.100.77:443"),
                // The default route's gateway: there is none in this netns.
                NetTarget {
                    kind: NetTargetKind::Gateway,
                    addr: TargetAddr::DefaultGateway(80),
                },
            ]);
            opts.timeout = Duration::from_millis(200);
            run_probe(&opts)
        },
    );
    let Some(report) = res else { return };
    let md = find(&report, "network.metadata", "169.254.169.254:80");
    assert_eq!(md.severity, Severity::High);
    assert_eq!(
        find(&report, "network.outbound", "203.0.113.10:443").severity,
        Severity::Medium
    );
    assert_eq!(
        find(&report, "network.outbound", "203.0.113.10:80").severity,
        Severity::Medium
    );
    assert_eq!(
        find(&report, "network.gateway", "198.51.100.1:80").severity,
        Severity::Medium
    );
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.subject.contains("198.51.100.77"))
    );
    assert_eq!(report.context.net_targets, "list");
    // Exactly the listed targets beyond loopback were tried.
    let mut other: Vec<&str> = report
        .context
        .net_attempts
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("tcp 127.0.0.1:") && !a.starts_with("tcp [::1]:"))
        .collect();
    other.sort();
    assert_eq!(
        other,
        [
            "tcp 169.254.169.254:80",
            "tcp 198.51.100.1:80",
            "tcp 198.51.100.77:443",
            "tcp 203.0.113.10:443",
            "tcp 203.0.113.10:80"
        ]
    );
    assert_valid(&report.to_json());
}

#[test]
fn blocked_targets_give_an_info_finding() {
    let res = in_private_netns(&[], || {
        let tmp = TempDir::new("blocked");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut opts = options(&home, &home.join("ws"), vec![]);
        opts.net_targets = NetTargets::List(vec![NetTarget {
            kind: NetTargetKind::Metadata,
            addr: TargetAddr::Socket("169.254.169.254:80".parse().unwrap()),
        }]);
        opts.timeout = Duration::from_millis(100);
        run_probe(&opts)
    });
    let Some(report) = res else { return };
    assert!(report.with_id("network.metadata").next().is_none());
    assert_eq!(
        find(&report, "network.egress_blocked", "").severity,
        Severity::Info
    );
}
