//! `airlock audit`: the host probe finds planted secrets; a default sandbox closes every one.

mod common;

use std::os::unix::net::UnixListener;

use common::*;

const SECRET: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";

fn ids(report: &serde_json::Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn audit_finds_planted_secrets_on_the_host_and_none_in_a_default_sandbox() {
    // A listening loopback service on one of the probe's fixed ports.
    let listener = [27017u16, 11211, 9200, 6379, 5900]
        .iter()
        .find_map(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).ok())
        .expect("a free loopback port from the probe's list");
    let port = listener.local_addr().unwrap().port();
    for who in everyone() {
        let mut env = Env::new(&who);
        std::fs::create_dir_all(env.home.join(".ssh")).unwrap();
        std::fs::write(env.home.join(".ssh/id_ed25519"), "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n").unwrap();
        std::fs::create_dir_all(env.home.join(".aws")).unwrap();
        std::fs::write(env.home.join(".aws/credentials"), format!("[default]\naws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key={SECRET}\n")).unwrap();
        std::fs::create_dir_all(env.home.join(".docker/run")).unwrap();
        env.chown_all();
        let sock_path = env.home.join(".docker/run/docker.sock");
        let _docker = UnixListener::bind(&sock_path).unwrap();
        if let Who::User { uid, gid, .. } = who {
            std::os::unix::fs::chown(&sock_path, Some(uid), Some(gid)).unwrap();
        }
        env.extra_env
            .push(("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()));
        env.extra_env.push((
            "DOCKER_HOST".into(),
            format!("unix://{}", sock_path.display()),
        ));

        let out = env.airlock(&["audit", "--json", "--net-targets", "none"]);
        assert!(out.status.success());
        let host: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(host["schema_version"], 1);
        let found = ids(&host);
        for id in [
            "env.secret",
            "file.ssh_private_key",
            "file.aws_credentials",
            "socket.docker",
            "network.loopback_port",
        ] {
            assert!(
                found.contains(&id.to_string()),
                "[{}] host audit must find {id}: {found:?}",
                who.label()
            );
        }
        assert!(host["findings"].to_string().contains(&port.to_string()));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(SECRET),
            "the probe never prints secret values"
        );
        // --fail-on turns findings into an exit status.
        assert_eq!(
            env.airlock(&["audit", "--net-targets", "none", "--fail-on", "high"])
                .status
                .code(),
            Some(1)
        );

        let out = env.airlock(&["audit", "--compare", "--json", "--net-targets", "none"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let both: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sandbox = &both["sandbox"];
        assert_eq!(sandbox["context"]["kind"], "sandbox");
        let inside = ids(sandbox);
        for id in [
            "env.secret",
            "file.ssh_private_key",
            "file.aws_credentials",
            "socket.docker",
            "network.loopback_port",
        ] {
            assert!(
                !inside.contains(&id.to_string()),
                "[{}] {id} must be closed in the sandbox: {inside:?}",
                who.label()
            );
        }
        let highs: Vec<&serde_json::Value> = sandbox["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["severity"] == "high")
            .collect();
        assert!(
            highs.is_empty(),
            "a default sandbox has no high finding: {highs:?}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));
        // The temporary sandbox is gone.
        assert_eq!(stdout(&env.airlock(&["ls", "--json"])).trim(), "[]");
    }
    drop(listener);
}
