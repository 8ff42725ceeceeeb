//! The report model: what the probe found, serialisable to the versioned JSON schema.

use serde::{Deserialize, Serialize};

use crate::ProbeError;

/// Version of the JSON report format (`schema/report.v1.json`).
pub const SCHEMA_VERSION: u32 = 1;

/// How serious a finding is. Ordered: `Info < Low < Medium < High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    /// All severities, most serious first.
    pub const ALL_DESC: [Severity; 4] = [
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    /// Lowercase name, as in JSON (`high`, `medium`, `low`, `info`).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }

    /// Parse `high|medium|low|info` (case-insensitive), e.g. for `--fail-on`.
    pub fn parse(s: &str) -> Result<Severity, ProbeError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Severity::High),
            "medium" => Ok(Severity::Medium),
            "low" => Ok(Severity::Low),
            "info" => Ok(Severity::Info),
            _ => Err(ProbeError::BadSeverity(s.to_string())),
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = ProbeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::parse(s)
    }
}

/// What kind of exposure a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Secrets,
    Credentials,
    Sockets,
    Network,
    Process,
    Persistence,
}

impl Category {
    /// All categories in report order.
    pub const ALL: [Category; 6] = [
        Category::Secrets,
        Category::Credentials,
        Category::Sockets,
        Category::Network,
        Category::Process,
        Category::Persistence,
    ];

    /// Lowercase name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Secrets => "secrets",
            Category::Credentials => "credentials",
            Category::Sockets => "sockets",
            Category::Network => "network",
            Category::Process => "process",
            Category::Persistence => "persistence",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the probe ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContextKind {
    #[default]
    Host,
    Sandbox,
}

impl ContextKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextKind::Host => "host",
            ContextKind::Sandbox => "sandbox",
        }
    }
}

/// Facts about the place the probe ran in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// `host` or `sandbox` (set by the caller through [`crate::ProbeOptions::context`]).
    pub kind: ContextKind,
    /// Sandbox name, when the caller knows it.
    pub sandbox: Option<String>,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// When the probe ran, RFC 3339 UTC (`2025-01-31T12:00:00Z`).
    pub time: String,
    /// Version of the probe that wrote the report.
    pub probe_version: String,
    /// True when the probe runs in the initial user namespace (not in a user-namespaced sandbox).
    pub initial_user_namespace: bool,
    /// `none`, `builtin` or `list`.
    pub net_targets: String,
    /// Every network attempt made, as `tcp ADDR:PORT` or `dns NAME`, so a reader can
    /// check what the audit touched.
    pub net_attempts: Vec<String>,
    /// How long the probe took, in milliseconds.
    pub duration_ms: u64,
}

/// One thing the probe found. `detail` never holds a secret value: only names,
/// paths and redacted hints such as `sk-a…(51 chars)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable identifier of the check, e.g. `env.secret`, `file.ssh_private_key`.
    /// Several findings may share an id (one per variable, file, port…).
    pub id: String,
    pub category: Category,
    pub severity: Severity,
    /// What the finding is about: a variable name, a path, an address. Never a secret.
    pub subject: String,
    pub title: String,
    pub detail: String,
    /// One line: what to do about it.
    pub fix: String,
}

impl Finding {
    pub(crate) fn new(
        id: &str,
        category: Category,
        severity: Severity,
        subject: impl Into<String>,
        title: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            id: id.to_string(),
            category,
            severity,
            subject: subject.into(),
            title: title.into(),
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// The probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA_VERSION`] for reports written by this crate.
    pub schema_version: u32,
    pub context: Context,
    /// Sorted by category, then severity (most serious first), then id and subject.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Pretty-printed JSON, valid against [`crate::JSON_SCHEMA`].
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise report: {e}\"}}"))
    }

    /// Parse a report written by [`Report::to_json`] (e.g. `airlock __probe --json` inside a sandbox).
    pub fn from_json(s: &str) -> Result<Report, ProbeError> {
        let v: serde_json::Value = serde_json::from_str(s).map_err(ProbeError::Json)?;
        let found = v.get("schema_version").and_then(|x| x.as_u64());
        if found != Some(u64::from(SCHEMA_VERSION)) {
            return Err(ProbeError::SchemaVersion {
                found: found
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "none".into()),
                supported: SCHEMA_VERSION,
            });
        }
        serde_json::from_value(v).map_err(ProbeError::Json)
    }

    /// The most serious severity among the findings, if any.
    pub fn max_severity(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// Number of findings at `min` or above (for `--fail-on`).
    pub fn count(&self, min: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity >= min).count()
    }

    /// Findings with the given id.
    pub fn with_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.id == id)
    }

    pub(crate) fn sort(&mut self) {
        self.findings.sort_by(|a, b| {
            a.category
                .cmp(&b.category)
                .then(b.severity.cmp(&a.severity))
                .then(a.id.cmp(&b.id))
                .then(a.subject.cmp(&b.subject))
        });
    }
}
