//! Readable credential files under the home directory and a few system places.
//! Shallow and bounded: a fixed list of paths, directory listings capped, at most a few
//! KiB read from the start of each file, contents never copied into the report.

use std::path::{Path, PathBuf};

use crate::checks::env::classify;
use crate::util::{list_dir, read_head, readable_file, tilde};
use crate::{Category, Ctx, Finding, Severity};

const HEAD: usize = 16 * 1024;
const MAX_LIST: usize = 64;

struct Out<'a, 'b> {
    ctx: &'a Ctx<'b>,
    out: &'a mut Vec<Finding>,
}

impl Out<'_, '_> {
    fn push(
        &mut self,
        id: &str,
        sev: Severity,
        path: &Path,
        title: &str,
        detail: String,
        fix: &str,
    ) {
        let shown = tilde(path, &self.ctx.home);
        self.out.push(Finding::new(
            id,
            Category::Credentials,
            sev,
            shown,
            title,
            detail,
            fix,
        ));
    }
}

fn contains_ci(hay: &[u8], needle: &str) -> bool {
    let hay = String::from_utf8_lossy(hay).to_ascii_lowercase();
    hay.contains(&needle.to_ascii_lowercase())
}

fn size_note(bytes: &[u8]) -> String {
    if bytes.len() >= HEAD {
        format!("readable, {}+ KiB", HEAD / 1024)
    } else {
        format!("readable, {} bytes", bytes.len())
    }
}

/// What kind of private key a file holds, from its header. `(kind, encrypted)`.
pub(crate) fn private_key_kind(head: &[u8]) -> Option<(&'static str, bool)> {
    let text = String::from_utf8_lossy(&head[..head.len().min(8192)]);
    let t = text.trim_start();
    if t.starts_with("PuTTY-User-Key-File") {
        let encrypted = !text.contains("Encryption: none");
        return Some(("PuTTY", encrypted));
    }
    let first = t.lines().next().unwrap_or("");
    if !(first.starts_with("-----BEGIN ") && first.contains("PRIVATE KEY-----")) {
        return None;
    }
    if first.contains("OPENSSH PRIVATE KEY") {
        let body: String = t
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .take(3)
            .collect();
        let encrypted = match base64_decode(&body) {
            // "openssh-key-v1\0" then a length-prefixed cipher name.
            Some(bin) if bin.len() > 19 && bin.starts_with(b"openssh-key-v1\0") => {
                let n = u32::from_be_bytes([bin[15], bin[16], bin[17], bin[18]]) as usize;
                bin.get(19..19 + n).is_some_and(|c| c != b"none")
            }
            _ => false,
        };
        return Some(("OpenSSH", encrypted));
    }
    let encrypted = first.contains("ENCRYPTED") || text.contains("Proc-Type: 4,ENCRYPTED");
    let kind = if first.contains("RSA") {
        "RSA"
    } else if first.contains("EC ") {
        "EC"
    } else if first.contains("DSA") {
        "DSA"
    } else {
        "PKCS#8"
    };
    Some((kind, encrypted))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

const FIX_KEY: &str = "keep private keys out of the agent's reach: don't mount ~/.ssh; use a scoped deploy key or an agent with confirmation";
const FIX_CLOUD: &str = "don't expose cloud credentials to the agent: hide the directory or use short-lived, scoped credentials";
const FIX_TOKEN: &str = "hide this file from the agent (airlock does by default) or move the token to a credential helper";

pub(crate) fn check(ctx: &Ctx, findings: &mut Vec<Finding>) {
    let home = ctx.home.clone();
    let h = |rel: &str| home.join(rel);
    let mut o = Out { ctx, out: findings };

    ssh_keys(&mut o, &h(".ssh"));

    // AWS
    if let Some(b) = read_head(&h(".aws/credentials"), HEAD) {
        let secret =
            contains_ci(&b, "aws_secret_access_key") || contains_ci(&b, "aws_session_token");
        o.push(
            "file.aws_credentials",
            if secret {
                Severity::High
            } else {
                Severity::Medium
            },
            &h(".aws/credentials"),
            "AWS credentials file is readable",
            format!(
                "{}{}",
                size_note(&b),
                if secret {
                    ", holds secret access keys"
                } else {
                    ""
                }
            ),
            FIX_CLOUD,
        );
    }
    if let Some(b) = read_head(&h(".aws/config"), HEAD) {
        let sso = contains_ci(&b, "sso_")
            || contains_ci(&b, "credential_process")
            || contains_ci(&b, "role_arn");
        o.push(
            "file.aws_config",
            if sso { Severity::Medium } else { Severity::Low },
            &h(".aws/config"),
            "AWS config is readable",
            format!(
                "{}{}",
                size_note(&b),
                if sso {
                    ", names SSO sessions, roles or credential processes"
                } else {
                    ""
                }
            ),
            FIX_CLOUD,
        );
    }
    let sso_cache = h(".aws/sso/cache");
    if let Some(entries) = list_dir(&sso_cache, MAX_LIST) {
        let n = entries.iter().filter(|p| readable_file(p)).count();
        if n > 0 {
            o.push(
                "file.aws_credentials",
                Severity::High,
                &sso_cache,
                "AWS SSO token cache is readable",
                format!("{n} readable cached token file(s)"),
                FIX_CLOUD,
            );
        }
    }

    // Google Cloud
    let gcloud = h(".config/gcloud");
    let gcloud_files = [
        "credentials.db",
        "access_tokens.db",
        "application_default_credentials.json",
        "legacy_credentials",
    ];
    let readable: Vec<&str> = gcloud_files
        .iter()
        .copied()
        .filter(|f| {
            let p = gcloud.join(f);
            readable_file(&p) || list_dir(&p, 1).is_some_and(|l| !l.is_empty())
        })
        .collect();
    if !readable.is_empty() {
        o.push(
            "file.gcloud",
            Severity::High,
            &gcloud,
            "Google Cloud credentials are readable",
            format!("readable: {}", readable.join(", ")),
            FIX_CLOUD,
        );
    } else if list_dir(&gcloud, 1).is_some() {
        o.push(
            "file.gcloud",
            Severity::Low,
            &gcloud,
            "Google Cloud configuration directory is readable",
            "no credential files found in it".into(),
            FIX_CLOUD,
        );
    }
    if let Some(p) = ctx.var("GOOGLE_APPLICATION_CREDENTIALS").map(PathBuf::from)
        && readable_file(&p)
    {
        o.push(
            "file.gcloud",
            Severity::High,
            &p,
            "Service account key named by GOOGLE_APPLICATION_CREDENTIALS is readable",
            "readable".into(),
            FIX_CLOUD,
        );
    }

    // Azure
    let azure = h(".azure");
    let az_tokens: Vec<&str> = [
        "msal_token_cache.json",
        "msal_token_cache.bin",
        "accessTokens.json",
        "service_principal_entries.json",
        "service_principal_entries.bin",
    ]
    .into_iter()
    .filter(|f| readable_file(&azure.join(f)))
    .collect();
    if !az_tokens.is_empty() {
        o.push(
            "file.azure",
            Severity::High,
            &azure,
            "Azure CLI token cache is readable",
            format!("readable: {}", az_tokens.join(", ")),
            FIX_CLOUD,
        );
    } else if list_dir(&azure, 1).is_some() {
        o.push(
            "file.azure",
            Severity::Low,
            &azure,
            "Azure CLI directory is readable",
            "no token cache found in it".into(),
            FIX_CLOUD,
        );
    }

    // Kubernetes
    let mut kubeconfigs = vec![h(".kube/config")];
    if let Some(v) = ctx.var("KUBECONFIG") {
        kubeconfigs.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    kubeconfigs.dedup();
    for p in kubeconfigs {
        if let Some(b) = read_head(&p, HEAD) {
            let creds = [
                "token:",
                "client-key-data",
                "client-key:",
                "password:",
                "auth-provider",
                "exec:",
            ]
            .iter()
            .any(|k| contains_ci(&b, k));
            o.push(
                "file.kube_config",
                if creds { Severity::High } else { Severity::Medium },
                &p,
                "Kubernetes config is readable",
                format!(
                    "{}{}",
                    size_note(&b),
                    if creds { ", holds cluster credentials" } else { ", names clusters" }
                ),
                "don't give the agent cluster access: hide ~/.kube or use a namespaced, read-only context",
            );
        }
    }

    // Docker
    let docker_cfg = ctx
        .var("DOCKER_CONFIG")
        .map(|d| PathBuf::from(d).join("config.json"))
        .unwrap_or_else(|| h(".docker/config.json"));
    if let Some(b) = read_head(&docker_cfg, HEAD) {
        let auths = contains_ci(&b, "\"auth\"") || contains_ci(&b, "identitytoken");
        let helper = contains_ci(&b, "credsStore") || contains_ci(&b, "credHelpers");
        if auths || helper {
            o.push(
                "file.docker_config",
                if auths {
                    Severity::High
                } else {
                    Severity::Medium
                },
                &docker_cfg,
                "Docker registry credentials are readable",
                if auths {
                    "auths hold registry credentials".to_string()
                } else {
                    "names a credential helper that hands out registry credentials".to_string()
                },
                FIX_TOKEN,
            );
        }
    }

    // Simple token files: (id, path, needles (any; empty = any content), title)
    let simple: [(&str, PathBuf, &[&str], &str); 7] = [
        (
            "file.netrc",
            h(".netrc"),
            &["password"],
            ".netrc with passwords is readable",
        ),
        (
            "file.git_credentials",
            h(".git-credentials"),
            &[],
            "Stored git credentials are readable",
        ),
        (
            "file.git_credentials",
            h(".config/git/credentials"),
            &[],
            "Stored git credentials are readable",
        ),
        (
            "file.npmrc_token",
            h(".npmrc"),
            &["_authtoken", "_auth", "_password"],
            "npm registry token is readable",
        ),
        (
            "file.pypirc_password",
            h(".pypirc"),
            &["password"],
            "PyPI password is readable",
        ),
        (
            "file.cargo_credentials",
            cargo_home(ctx).join("credentials.toml"),
            &["token"],
            "Cargo registry token is readable",
        ),
        (
            "file.cargo_credentials",
            cargo_home(ctx).join("credentials"),
            &["token"],
            "Cargo registry token is readable",
        ),
    ];
    for (id, path, needles, title) in simple {
        if let Some(b) = read_head(&path, HEAD)
            && !b.iter().all(u8::is_ascii_whitespace)
            && (needles.is_empty() || needles.iter().any(|n| contains_ci(&b, n)))
        {
            o.push(id, Severity::High, &path, title, size_note(&b), FIX_TOKEN);
        }
    }
    // GitHub CLI
    let gh = h(".config/gh/hosts.yml");
    if let Some(b) = read_head(&gh, HEAD)
        && contains_ci(&b, "oauth_token")
    {
        o.push(
            "file.gh_token",
            Severity::High,
            &gh,
            "GitHub CLI token is readable",
            size_note(&b),
            FIX_TOKEN,
        );
    }

    browsers(&mut o, &home);
    keyrings(&mut o, &home);
    history(&mut o, &home);
    dotenv(&mut o, ctx);
    system(&mut o, ctx);
}

fn cargo_home(ctx: &Ctx) -> PathBuf {
    ctx.var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.home.join(".cargo"))
}

fn ssh_keys(o: &mut Out, dir: &Path) {
    let Some(entries) = list_dir(dir, MAX_LIST) else {
        return;
    };
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(".pub")
            || name == "known_hosts"
            || name == "config"
            || name == "authorized_keys"
        {
            continue;
        }
        let Some(b) = read_head(&p, 8192) else {
            continue;
        };
        if let Some((kind, encrypted)) = private_key_kind(&b) {
            o.push(
                "file.ssh_private_key",
                if encrypted {
                    Severity::Medium
                } else {
                    Severity::High
                },
                &p,
                if encrypted {
                    "Passphrase-protected SSH private key is readable"
                } else {
                    "SSH private key is readable"
                },
                format!(
                    "{kind} private key{}",
                    if encrypted {
                        ", encrypted (open to offline guessing)"
                    } else {
                        ", not encrypted"
                    }
                ),
                FIX_KEY,
            );
        }
    }
}

fn browsers(o: &mut Out, home: &Path) {
    // Firefox: ~/.mozilla/firefox/<profile>/{logins.json,key4.db,cookies.sqlite}
    let mut profiles: Vec<PathBuf> = list_dir(&home.join(".mozilla/firefox"), MAX_LIST)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    let mut logins = vec![];
    let mut cookies = vec![];
    for p in profiles.drain(..) {
        for f in ["logins.json", "key4.db"] {
            if readable_file(&p.join(f)) {
                logins.push(p.join(f));
            }
        }
        if readable_file(&p.join("cookies.sqlite")) {
            cookies.push(p.join("cookies.sqlite"));
        }
    }
    // Chromium family: ~/.config/<browser>/<profile>/{Login Data,Cookies,Network/Cookies}
    for b in [
        "google-chrome",
        "chromium",
        "BraveSoftware/Brave-Browser",
        "microsoft-edge",
        "vivaldi",
    ] {
        for p in list_dir(&home.join(".config").join(b), MAX_LIST).unwrap_or_default() {
            if readable_file(&p.join("Login Data")) {
                logins.push(p.join("Login Data"));
            }
            for c in ["Cookies", "Network/Cookies"] {
                if readable_file(&p.join(c)) {
                    cookies.push(p.join(c));
                }
            }
        }
    }
    let list = |v: &[PathBuf]| {
        let mut s: Vec<String> = v.iter().take(4).map(|p| tilde(p, home)).collect();
        if v.len() > 4 {
            s.push(format!("and {} more", v.len() - 4));
        }
        s.join(", ")
    };
    if !logins.is_empty() {
        o.push(
            "file.browser_logins",
            Severity::High,
            &logins[0],
            "Browser saved-password stores are readable",
            list(&logins),
            "hide browser profiles (~/.mozilla, ~/.config/<browser>) from the agent",
        );
    }
    if !cookies.is_empty() {
        o.push(
            "file.browser_cookies",
            Severity::Medium,
            &cookies[0],
            "Browser cookie stores are readable",
            list(&cookies),
            "hide browser profiles (~/.mozilla, ~/.config/<browser>) from the agent",
        );
    }
}

fn keyrings(o: &mut Out, home: &Path) {
    let dir = home.join(".local/share/keyrings");
    let n = list_dir(&dir, MAX_LIST)
        .unwrap_or_default()
        .iter()
        .filter(|p| readable_file(p))
        .count();
    if n > 0 {
        o.push(
            "file.keyring",
            Severity::Medium,
            &dir,
            "Desktop keyring files are readable",
            format!("{n} readable file(s), encrypted with the login password"),
            "hide ~/.local/share/keyrings from the agent",
        );
    }
    let gpg = home.join(".gnupg/private-keys-v1.d");
    let n = list_dir(&gpg, MAX_LIST)
        .unwrap_or_default()
        .iter()
        .filter(|p| readable_file(p))
        .count();
    if n > 0 {
        o.push(
            "file.gpg_private_key",
            Severity::Medium,
            &gpg,
            "GnuPG private keys are readable",
            format!("{n} readable key file(s)"),
            "hide ~/.gnupg from the agent",
        );
    }
}

fn history(o: &mut Out, home: &Path) {
    let files = [
        ".bash_history",
        ".zsh_history",
        ".zhistory",
        ".history",
        ".sh_history",
        ".local/share/fish/fish_history",
        ".python_history",
        ".psql_history",
        ".mysql_history",
        ".node_repl_history",
        ".sqlite_history",
        ".rediscli_history",
    ];
    for f in files {
        let p = home.join(f);
        if let Some(b) = read_head(&p, 1)
            && !b.is_empty()
        {
            o.push(
                "file.shell_history",
                Severity::Medium,
                &p,
                "Shell or REPL history is readable",
                "history often holds tokens and passwords typed on command lines".into(),
                "hide history files from the agent, or clear secrets from them",
            );
        }
    }
}

/// `.env`-style files in the home directory and in the parents of the workspace and of
/// home (never inside the workspace, never deeper than these directories).
fn dotenv(o: &mut Out, ctx: &Ctx) {
    let mut dirs: Vec<PathBuf> = vec![];
    dirs.extend(ctx.home.ancestors().map(Path::to_path_buf));
    if let Some(ws) = &ctx.workspace {
        dirs.extend(ws.ancestors().skip(1).map(Path::to_path_buf));
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        for name in [".env", ".env.local", ".env.production", ".envrc"] {
            let p = dir.join(name);
            if ctx.in_workspace(&p) {
                continue;
            }
            let Some(b) = read_head(&p, HEAD) else {
                continue;
            };
            let text = String::from_utf8_lossy(&b);
            let mut secrets = vec![];
            for line in text.lines() {
                let line = line.trim().trim_start_matches("export ").trim();
                if let Some((k, v)) = line.split_once('=') {
                    let v = v.trim().trim_matches(['"', '\'']);
                    if let Some((Severity::High, _)) = classify(k.trim(), v) {
                        secrets.push(k.trim().to_string());
                    }
                }
            }
            let (sev, detail) = if secrets.is_empty() {
                (Severity::Medium, size_note(&b))
            } else {
                secrets.truncate(8);
                (
                    Severity::High,
                    format!(
                        "{}, secret-looking keys: {}",
                        size_note(&b),
                        secrets.join(", ")
                    ),
                )
            };
            o.push(
                "file.dotenv",
                sev,
                &p,
                "Environment file outside the workspace is readable",
                detail,
                "move secrets out of .env files above the workspace, or hide them from the agent",
            );
        }
    }
}

/// Whether a shadow(5) file holds at least one password hash (a second field that is neither
/// empty nor `*`/`!` alone; a locked `!$6$...` still holds one). A sandbox's /etc/shadow is an empty stand-in: readable, but nothing in it.
/// Only the verdict leaves this function, never the content.
fn has_password_hash(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.lines().any(|l| {
        // A `!` in front only locks the password: the hash after it can still be cracked.
        let hash = l.split(':').nth(1).unwrap_or("").trim_start_matches('!');
        !hash.is_empty() && !hash.starts_with('*')
    })
}

fn system(o: &mut Out, ctx: &Ctx) {
    if readable_file(Path::new("/etc/shadow")) && has_password_hash(Path::new("/etc/shadow")) {
        o.push(
            "file.shadow",
            Severity::High,
            Path::new("/etc/shadow"),
            "/etc/shadow is readable",
            "password hashes of local users can be read".into(),
            "run the agent as an unprivileged user in a sandbox",
        );
    }
    let root = Path::new("/root");
    if !ctx.home.starts_with(root) && list_dir(root, 1).is_some() {
        o.push(
            "file.root_home",
            Severity::Medium,
            root,
            "/root is listable",
            "the administrator's home directory can be read".into(),
            "run the agent as an unprivileged user in a sandbox",
        );
    }
    let mut others = vec![];
    for p in list_dir(Path::new("/home"), MAX_LIST).unwrap_or_default() {
        let canon = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if canon == ctx.home || ctx.home.starts_with(&canon) {
            continue;
        }
        if p.is_dir() && list_dir(&p, 1).is_some() {
            others.push(
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    if !others.is_empty() {
        others.truncate(8);
        o.push(
            "file.other_homes",
            Severity::Medium,
            Path::new("/home"),
            "Other users' home directories are listable",
            format!("listable: {}", others.join(", ")),
            "make home directories mode 0700, or run the agent in a sandbox that hides /home",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_counts_only_real_password_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("shadow");
        std::fs::write(&f, "").unwrap();
        assert!(!has_password_hash(&f), "an empty stand-in holds nothing");
        std::fs::write(
            &f,
            "root:*:19000:0:99999:7:::\nbin:!:19000::::::\nnobody:!*:1::::::\n",
        )
        .unwrap();
        assert!(!has_password_hash(&f), "disabled accounts hold no hash");
        std::fs::write(&f, "x:!$6$salt$lockedbutcrackable:1::::::\n").unwrap();
        assert!(
            has_password_hash(&f),
            "a locked account still holds its hash"
        );
        std::fs::write(
            &f,
            "root:*:1::::::\nme:$y$j9T$salt$hash:19000:0:99999:7:::\n",
        )
        .unwrap();
        assert!(has_password_hash(&f));
    }

    #[test]
    fn key_headers() {
        // "openssh-key-v1\0" + len 4 + "none"
        let mut bin = b"openssh-key-v1\0".to_vec();
        bin.extend_from_slice(&[0, 0, 0, 4]);
        bin.extend_from_slice(b"none");
        bin.extend_from_slice(&[0, 0, 0, 4]);
        bin.extend_from_slice(b"none");
        let enc_none = b64(&bin);
        let pem = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{enc_none}\n-----END OPENSSH PRIVATE KEY-----\n"
        );
        assert_eq!(private_key_kind(pem.as_bytes()), Some(("OpenSSH", false)));
        let mut enc = b"openssh-key-v1\0".to_vec();
        enc.extend_from_slice(&[0, 0, 0, 10]);
        enc.extend_from_slice(b"aes256-ctr");
        let pem = format!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
            b64(&enc)
        );
        assert_eq!(private_key_kind(pem.as_bytes()), Some(("OpenSSH", true)));
        assert_eq!(
            private_key_kind(b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"),
            Some(("RSA", true))
        );
        assert_eq!(private_key_kind(b"ssh-ed25519 AAAA... me@host"), None);
        assert_eq!(private_key_kind(b"-----BEGIN CERTIFICATE-----\n"), None);
    }

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn base64_roundtrip() {
        let data = b"openssh-key-v1\0\0\0\0\x04none";
        assert_eq!(base64_decode(&b64(data)).unwrap(), data);
    }
}
