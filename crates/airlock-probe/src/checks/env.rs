//! Secrets in environment variables, by name pattern and by value shape.

use crate::util::{entropy, redact};
use crate::{Category, Ctx, Finding, Severity};

/// Values Airlock itself puts in a sandbox's environment instead of real secrets.
pub(crate) const PLACEHOLDER_PREFIX: &str = "airlock-placeholder-";

/// Variables that are never secrets even when their values look random.
const IGNORED_NAMES: &[&str] = &[
    "PATH",
    "MANPATH",
    "INFOPATH",
    "LS_COLORS",
    "LSCOLORS",
    "PWD",
    "OLDPWD",
    "HOME",
    "SHELL",
    "TERM",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    "GPG_AGENT_INFO",
    "WINDOWID",
    "PS1",
    "PS2",
    "PROMPT_COMMAND",
    "HISTFILE",
    "_",
];

/// Name parts that mark a variable as secret (`*_TOKEN`, `*_SECRET`, …).
const SECRET_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "APIKEY",
    "CREDENTIAL",
    "CREDENTIALS",
    "PAT",
];

/// Consecutive name parts that mark a variable as secret (`*_API_KEY`, …).
const SECRET_PAIRS: &[(&str, &str)] = &[
    ("API", "KEY"),
    ("ACCESS", "KEY"),
    ("PRIVATE", "KEY"),
    ("SECRET", "KEY"),
    ("AUTH", "KEY"),
    ("CLIENT", "SECRET"),
    ("SIGNING", "KEY"),
    ("ENCRYPTION", "KEY"),
    ("MASTER", "KEY"),
];

/// Name suffixes that describe a location rather than a value.
const LOCATION_SUFFIXES: &[&str] = &["_FILE", "_PATH", "_DIR", "_CMD", "_COMMAND", "_HELPER"];

/// Whether a variable name looks like it holds a secret.
pub(crate) fn secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if LOCATION_SUFFIXES.iter().any(|s| upper.ends_with(s)) {
        return false;
    }
    let parts: Vec<&str> = upper
        .split(['_', '-', '.'])
        .filter(|p| !p.is_empty())
        .collect();
    parts.iter().any(|p| SECRET_PARTS.contains(p))
        || parts
            .windows(2)
            .any(|w| SECRET_PAIRS.contains(&(w[0], w[1])))
        || matches!(
            upper.as_str(),
            "AWS_ACCESS_KEY_ID" | "GH_TOKEN" | "HF_TOKEN"
        )
}

fn all(s: &str, f: impl Fn(char) -> bool) -> bool {
    s.chars().all(f)
}

fn b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// A known secret shape of a value, with a description.
pub(crate) fn value_shape(v: &str) -> Option<&'static str> {
    let v = v.trim();
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let upper_digit = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit();
    for prefix in ["AKIA", "ASIA"] {
        if let Some(rest) = v.strip_prefix(prefix)
            && rest.len() == 16
            && all(rest, upper_digit)
        {
            return Some("AWS access key id");
        }
    }
    for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
        if let Some(rest) = v.strip_prefix(prefix)
            && rest.len() >= 30
            && all(rest, alnum)
        {
            return Some("GitHub token");
        }
    }
    if let Some(rest) = v.strip_prefix("github_pat_")
        && rest.len() >= 30
        && all(rest, b64url)
    {
        return Some("GitHub fine-grained token");
    }
    if let Some(rest) = v.strip_prefix("glpat-")
        && rest.len() >= 20
        && all(rest, b64url)
    {
        return Some("GitLab token");
    }
    if let Some(rest) = v.strip_prefix("sk-ant-")
        && rest.len() >= 20
        && all(rest, b64url)
    {
        return Some("Anthropic API key");
    }
    if let Some(rest) = v.strip_prefix("sk-")
        && rest.len() >= 20
        && all(rest, b64url)
    {
        return Some("OpenAI-style API key");
    }
    for prefix in ["xoxb-", "xoxp-", "xoxa-", "xoxs-", "xoxe-"] {
        if let Some(rest) = v.strip_prefix(prefix)
            && rest.len() >= 10
            && all(rest, |c| b64url(c) || c == '.')
        {
            return Some("Slack token");
        }
    }
    if let Some(rest) = v.strip_prefix("npm_")
        && rest.len() >= 30
        && all(rest, alnum)
    {
        return Some("npm token");
    }
    if let Some(rest) = v.strip_prefix("hf_")
        && rest.len() >= 30
        && all(rest, alnum)
    {
        return Some("Hugging Face token");
    }
    if let Some(rest) = v.strip_prefix("AIza")
        && rest.len() == 35
        && all(rest, b64url)
    {
        return Some("Google API key");
    }
    if v.starts_with("eyJ") {
        let segs: Vec<&str> = v.split('.').collect();
        if segs.len() == 3 && segs.iter().all(|s| s.len() >= 4 && all(s, b64url)) {
            return Some("JWT");
        }
    }
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return Some("PEM private key");
    }
    if url_with_password(v) {
        return Some("URL with an embedded password");
    }
    None
}

/// `scheme://user:password@host…`
fn url_with_password(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once("://") else {
        return false;
    };
    if scheme.is_empty() || !all(scheme, |c| c.is_ascii_alphanumeric() || "+.-".contains(c)) {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo
            .split_once(':')
            .is_some_and(|(_, pw)| !pw.is_empty()),
        None => false,
    }
}

/// A long random-looking token: 32+ chars of base64/hex alphabet, high entropy.
fn high_entropy(v: &str) -> bool {
    let v = v.trim();
    if v.len() < 32 || v.len() > 4096 {
        return false;
    }
    if !all(v, |c| c.is_ascii_alphanumeric() || "+/=-_".contains(c)) || v.starts_with('/') {
        return false;
    }
    let hex = all(v, |c| c.is_ascii_hexdigit());
    let classes = [
        v.chars().any(|c| c.is_ascii_lowercase()),
        v.chars().any(|c| c.is_ascii_uppercase()),
        v.chars().any(|c| c.is_ascii_digit()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if hex {
        // Hex ids (UUIDs without dashes, hashes) are common and mostly harmless: only
        // long ones count.
        v.len() >= 40 && entropy(v) >= 3.5
    } else {
        classes == 3 && entropy(v) >= 4.2
    }
}

/// Trivial values that are not secrets even under a secret-looking name.
fn trivial(v: &str) -> bool {
    let v = v.trim();
    v.len() < 8
        || v.starts_with(PLACEHOLDER_PREFIX)
        || v.starts_with('/')
        || v.starts_with("~/")
        || matches!(
            v.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "none" | "null" | "changeme" | "password"
        )
}

/// Classify one `NAME=value`: severity and reason, or `None` when it is not a secret.
pub(crate) fn classify(name: &str, value: &str) -> Option<(Severity, String)> {
    if value.trim().starts_with(PLACEHOLDER_PREFIX) || value.trim().is_empty() {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    if IGNORED_NAMES.contains(&upper.as_str())
        || upper.starts_with("XDG_")
        || upper.starts_with("LC_")
        || upper.starts_with("AIRLOCK_")
    {
        return None;
    }
    if let Some(shape) = value_shape(value) {
        return Some((Severity::High, format!("value looks like a {shape}")));
    }
    if secret_name(name) && !trivial(value) {
        return Some((Severity::High, "name marks it as a secret".to_string()));
    }
    if high_entropy(value) {
        return Some((
            Severity::Medium,
            "value is a long high-entropy string".to_string(),
        ));
    }
    None
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let mut names: Vec<&String> = ctx.env.keys().collect();
    names.sort();
    for name in names {
        let value = &ctx.env[name];
        let Some((severity, reason)) = classify(name, value) else {
            continue;
        };
        let (id, title) = if severity == Severity::High {
            (
                "env.secret",
                format!("Secret in environment variable {name}"),
            )
        } else {
            (
                "env.high_entropy",
                format!("Possible secret in environment variable {name}"),
            )
        };
        out.push(Finding::new(
            id,
            Category::Secrets,
            severity,
            name.clone(),
            title,
            format!("{name} = {} ({reason})", redact(value)),
            "don't pass real secrets to the agent: unset it, or let airlock inject a placeholder and add the secret at the proxy",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for n in [
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY",
            "MY_SECRET",
            "DB_PASSWORD",
            "AWS_ACCESS_KEY_ID",
            "STRIPE_APIKEY",
            "AZURE_CLIENT_SECRET",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in [
            "TOKENIZERS_PARALLELISM",
            "SSH_AUTH_SOCK",
            "PASSWORD_FILE",
            "HOME",
            "KEYBOARD",
            "PATH",
        ] {
            assert!(!secret_name(n), "{n}");
        }
    }

    #[test]
    fn shapes() {
        assert!(value_shape("AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(value_shape("ghp_0123456789abcdefghijABCDEFGHIJ012345").is_some());
        assert!(value_shape("github_pat_11ABCDEFG0123456789_abcdefghijklmnop").is_some());
        assert!(value_shape("sk-ant-api03-abcdefghijklmnopqrstuvwxyz").is_some());
        assert!(value_shape("sk-proj-abcdefghijklmnopqrstuvwxyz").is_some());
        assert!(value_shape("xoxb-1234567890-abcdef").is_some());
        assert!(value_shape("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl").is_some());
        assert!(value_shape("postgres://u:hunter22@db/x").is_some());
        assert!(value_shape("https://example.com/a@b").is_none());
        assert!(value_shape("/usr/bin:/bin").is_none());
        assert!(value_shape("sk-short").is_none());
    }

    #[test]
    fn classify_rules() {
        assert_eq!(classify("X", "airlock-placeholder-abc"), None);
        assert_eq!(classify("OPENAI_API_KEY", "airlock-placeholder-1"), None);
        assert_eq!(classify("GITHUB_TOKEN", "true"), None);
        assert_eq!(
            classify("GITHUB_TOKEN", "abcdefgh12").unwrap().0,
            Severity::High
        );
        assert_eq!(
            classify("FOO", "AKIAIOSFODNN7EXAMPLE").unwrap().0,
            Severity::High
        );
        assert_eq!(
            classify("FOO", "q8Zr3LmN0pXv7TbK2sWy9AcDe4FgHj6UiOo1")
                .unwrap()
                .0,
            Severity::Medium
        );
        assert_eq!(
            classify("INVOCATION_ID", "0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(classify("FOO", "0123456789abcdef0123456789abcdef"), None);
        assert_eq!(classify("LANG", "en_US.UTF-8"), None);
    }
}
