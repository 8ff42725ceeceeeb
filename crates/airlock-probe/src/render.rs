//! Human-readable rendering of reports: one report grouped by category, or host and
//! sandbox side by side.

use std::fmt::Write;

use crate::{Category, Finding, Report, Severity};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";

fn sev_color(s: Severity) -> &'static str {
    match s {
        Severity::High => "\x1b[1;31m",
        Severity::Medium => "\x1b[33m",
        Severity::Low => "\x1b[36m",
        Severity::Info => "\x1b[2m",
    }
}

fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

fn sev_tag(s: Severity, color: bool, width: usize) -> String {
    let t = format!("{:<width$}", s.as_str().to_ascii_uppercase());
    paint(color, sev_color(s), &t)
}

fn summary(r: &Report) -> String {
    Severity::ALL_DESC
        .iter()
        .map(|s| {
            let n = r.findings.iter().filter(|f| f.severity == *s).count();
            format!("{n} {s}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn where_(r: &Report) -> String {
    let c = &r.context;
    let name = match &c.sandbox {
        Some(n) => format!("{} `{n}`", c.kind.as_str()),
        None => format!("{} `{}`", c.kind.as_str(), c.hostname),
    };
    format!("{name} (uid {}, kernel {}, {})", c.uid, c.kernel, c.time)
}

impl Report {
    /// A report for people: grouped by category, most serious first, each finding with
    /// what was found and a one-line fix. `color` adds ANSI colours.
    pub fn render_human(&self, color: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}",
            paint(color, BOLD, &format!("Airlock audit: {}", where_(self)))
        );
        let _ = writeln!(s, "Findings: {}", summary(self));
        if self.context.net_targets == "none" {
            let _ = writeln!(s, "Network: loopback only (net targets: none)");
        }
        for cat in Category::ALL {
            let fs: Vec<&Finding> = self.findings.iter().filter(|f| f.category == cat).collect();
            if fs.is_empty() {
                continue;
            }
            let _ = writeln!(s);
            let _ = writeln!(s, "{}", paint(color, BOLD, &capitalise(cat.as_str())));
            for f in fs {
                let _ = writeln!(
                    s,
                    "  {} {}  {}",
                    sev_tag(f.severity, color, 6),
                    f.title,
                    paint(color, DIM, &format!("[{}]", f.id))
                );
                let _ = writeln!(s, "         {}", f.detail);
                if f.severity > Severity::Info {
                    let _ = writeln!(s, "         fix: {}", f.fix);
                }
            }
        }
        if self.findings.is_empty() {
            let _ = writeln!(s, "\nNothing found.");
        }
        s
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// `HIGH ×2`, `info`, or `—` for a set of findings with one id.
fn cell(fs: &[&Finding]) -> (Option<Severity>, String) {
    match fs.iter().map(|f| f.severity).max() {
        None => (None, "—".to_string()),
        Some(max) => {
            let name = max.as_str().to_ascii_uppercase();
            if fs.len() > 1 {
                (Some(max), format!("{name} ×{}", fs.len()))
            } else {
                (Some(max), name)
            }
        }
    }
}

/// Host and sandbox side by side: one row per finding id, with the most serious severity
/// (and count) on each side, and whether the sandbox closed, kept or added the exposure.
pub fn render_compare(host: &Report, sandbox: &Report, color: bool) -> String {
    let mut ids: Vec<(Category, String)> = host
        .findings
        .iter()
        .chain(&sandbox.findings)
        .map(|f| (f.category, f.id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    let idw = ids
        .iter()
        .map(|(_, id)| id.chars().count())
        .max()
        .unwrap_or(10)
        .max(10);
    let cw = 12;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        paint(color, BOLD, "Airlock audit: host vs sandbox")
    );
    let _ = writeln!(s, "  host:    {}", where_(host));
    let _ = writeln!(s, "  sandbox: {}", where_(sandbox));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{}",
        paint(
            color,
            BOLD,
            &format!(
                "  {:<idw$}  {:<cw$}  {:<cw$}  STATUS",
                "CHECK", "HOST", "SANDBOX"
            )
        )
    );
    let mut cur: Option<Category> = None;
    for (cat, id) in &ids {
        if cur != Some(*cat) {
            let _ = writeln!(s, "{}", paint(color, BOLD, &capitalise(cat.as_str())));
            cur = Some(*cat);
        }
        let h: Vec<&Finding> = host.findings.iter().filter(|f| &f.id == id).collect();
        let b: Vec<&Finding> = sandbox.findings.iter().filter(|f| &f.id == id).collect();
        let (hs, ht) = cell(&h);
        let (bs, bt) = cell(&b);
        let colored = |sev: Option<Severity>, t: &str| {
            let padded = format!("{t:<cw$}");
            match sev {
                Some(sv) => paint(color, sev_color(sv), &padded),
                None => paint(color, DIM, &padded),
            }
        };
        let exposed = |s: Option<Severity>| s.is_some_and(|s| s > Severity::Info);
        let status = match (exposed(hs), exposed(bs)) {
            (true, false) => paint(color, "\x1b[32m", "closed"),
            (true, true) => paint(color, "\x1b[1;31m", "still open"),
            (false, true) => paint(color, "\x1b[1;31m", "sandbox only"),
            (false, false) => String::new(),
        };
        let _ = writeln!(
            s,
            "  {:<idw$}  {}  {}  {}",
            id,
            colored(hs, &ht),
            colored(bs, &bt),
            status
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "host:    {}", summary(host));
    let _ = writeln!(s, "sandbox: {}", summary(sandbox));
    s
}
