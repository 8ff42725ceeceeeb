//! The policy file format (`policy/seccomp.toml`): parsing and validation.
//!
//! Validation here is architecture-independent; `compile` maps names to numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::SeccompError;
use crate::syscalls::known_name;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    unknown_syscalls: UnknownSyscalls,
    #[serde(default)]
    deny: Vec<RawDeny>,
    #[serde(default)]
    allow: Vec<RawAllow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    syscall: String,
    why: String,
    #[serde(default)]
    errno: Option<Errno>,
    #[serde(default)]
    when: Option<Vec<Vec<RawCondition>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    syscall: String,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    arg: u8,
    width: u8,
    op: RawOp,
    value: u64,
    #[serde(default)]
    mask: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
    HasBits,
}

/// What happens to syscall numbers above the highest one Airlock knows.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UnknownSyscalls {
    Enosys,
    Allow,
}

/// The errno values a deny rule may return.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[allow(clippy::upper_case_acronyms)]
pub(crate) enum Errno {
    EPERM,
    ENOSYS,
    EACCES,
    EINVAL,
    EAFNOSUPPORT,
    EOPNOTSUPP,
}

impl Errno {
    pub(crate) fn value(self) -> i32 {
        match self {
            Errno::EPERM => libc::EPERM,
            Errno::ENOSYS => libc::ENOSYS,
            Errno::EACCES => libc::EACCES,
            Errno::EINVAL => libc::EINVAL,
            Errno::EAFNOSUPPORT => libc::EAFNOSUPPORT,
            Errno::EOPNOTSUPP => libc::EOPNOTSUPP,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOSYS => "ENOSYS",
            Errno::EACCES => "EACCES",
            Errno::EINVAL => "EINVAL",
            Errno::EAFNOSUPPORT => "EAFNOSUPPORT",
            Errno::EOPNOTSUPP => "EOPNOTSUPP",
        }
    }
}

/// How many low bits of the argument register a condition compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    W32,
    W64,
}

/// A comparison operator; `MaskedEq(mask)` is `(arg & mask) == value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(u64),
}

/// One validated argument condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) arg: u8,
    pub(crate) width: Width,
    pub(crate) op: CmpOp,
    pub(crate) value: u64,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = match self.width {
            Width::W32 => format!("(u32)arg{}", self.arg),
            Width::W64 => format!("arg{}", self.arg),
        };
        let (op, lhs) = match self.op {
            CmpOp::Eq => ("==", arg),
            CmpOp::Ne => ("!=", arg),
            CmpOp::Lt => ("<", arg),
            CmpOp::Le => ("<=", arg),
            CmpOp::Gt => (">", arg),
            CmpOp::Ge => (">=", arg),
            CmpOp::MaskedEq(mask) => ("==", format!("({arg} & {mask:#x})")),
        };
        write!(f, "{lhs} {op} {:#x}", self.value)
    }
}

/// A validated `[[deny]]` entry.
#[derive(Clone, Debug)]
pub(crate) struct DenyEntry {
    /// Canonical (table) spelling of the syscall name.
    pub(crate) syscall: &'static str,
    pub(crate) errno: Errno,
    pub(crate) why: String,
    /// OR of AND-ed conditions; empty = always denied.
    pub(crate) rules: Vec<Vec<Condition>>,
}

impl DenyEntry {
    /// Human-readable condition, `None` when unconditional.
    pub(crate) fn describe_when(&self) -> Option<String> {
        if self.rules.is_empty() {
            return None;
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|rule| {
                let conds: Vec<String> = rule.iter().map(ToString::to_string).collect();
                conds.join(" && ")
            })
            .collect();
        if rules.len() == 1 {
            Some(rules.into_iter().next().unwrap_or_default())
        } else {
            Some(
                rules
                    .iter()
                    .map(|r| format!("({r})"))
                    .collect::<Vec<_>>()
                    .join(" || "),
            )
        }
    }
}

/// A validated `[[allow]]` entry (a recorded decision; compiles to nothing).
#[derive(Clone, Debug)]
pub(crate) struct AllowEntry {
    pub(crate) syscall: &'static str,
    pub(crate) why: String,
}

/// A parsed and validated policy.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) unknown_syscalls: UnknownSyscalls,
    pub(crate) deny: Vec<DenyEntry>,
    pub(crate) allow: Vec<AllowEntry>,
}

impl Policy {
    pub(crate) fn parse(text: &str) -> Result<Policy, SeccompError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| SeccompError::Parse {
            message: e.to_string(),
        })?;

        let mut deny = Vec::with_capacity(raw.deny.len());
        for (i, entry) in raw.deny.into_iter().enumerate() {
            deny.push(validate_deny(i + 1, entry)?);
        }
        let mut allow = Vec::with_capacity(raw.allow.len());
        for (i, entry) in raw.allow.into_iter().enumerate() {
            let index = i + 1;
            let syscall = resolve_name("allow", index, &entry.syscall)?;
            check_why("allow", index, syscall, &entry.why)?;
            allow.push(AllowEntry {
                syscall,
                why: entry.why.trim().to_owned(),
            });
        }

        check_consistency(&deny, &allow)?;
        Ok(Policy {
            unknown_syscalls: raw.unknown_syscalls,
            deny,
            allow,
        })
    }
}

fn resolve_name(
    section: &'static str,
    index: usize,
    name: &str,
) -> Result<&'static str, SeccompError> {
    known_name(name).ok_or_else(|| SeccompError::UnknownSyscall {
        section,
        index,
        name: name.to_owned(),
    })
}

fn check_why(
    section: &'static str,
    index: usize,
    syscall: &str,
    why: &str,
) -> Result<(), SeccompError> {
    if why.trim().is_empty() {
        return Err(invalid(
            section,
            index,
            syscall,
            "`why` is empty: every entry must say why it exists",
        ));
    }
    Ok(())
}

fn invalid(
    section: &'static str,
    index: usize,
    syscall: &str,
    problem: impl Into<String>,
) -> SeccompError {
    SeccompError::InvalidEntry {
        section,
        index,
        syscall: syscall.to_owned(),
        problem: problem.into(),
    }
}

fn validate_deny(index: usize, raw: RawDeny) -> Result<DenyEntry, SeccompError> {
    let syscall = resolve_name("deny", index, &raw.syscall)?;
    check_why("deny", index, syscall, &raw.why)?;
    let rules = match raw.when {
        None => Vec::new(),
        Some(rules) if rules.is_empty() => {
            return Err(invalid(
                "deny",
                index,
                syscall,
                "`when` is an empty list; omit `when` to deny the syscall unconditionally",
            ));
        }
        Some(rules) => {
            let mut out = Vec::with_capacity(rules.len());
            for (r, rule) in rules.into_iter().enumerate() {
                if rule.is_empty() {
                    return Err(invalid(
                        "deny",
                        index,
                        syscall,
                        format!("rule {} in `when` has no conditions", r + 1),
                    ));
                }
                let mut conds = Vec::with_capacity(rule.len());
                for cond in rule {
                    conds.push(validate_condition(cond).map_err(|problem| {
                        invalid(
                            "deny",
                            index,
                            syscall,
                            format!("rule {} in `when`: {problem}", r + 1),
                        )
                    })?);
                }
                out.push(conds);
            }
            out
        }
    };
    Ok(DenyEntry {
        syscall,
        errno: raw.errno.unwrap_or(Errno::EPERM),
        why: raw.why.trim().to_owned(),
        rules,
    })
}

fn validate_condition(raw: RawCondition) -> Result<Condition, String> {
    if raw.arg > 5 {
        return Err(format!(
            "arg = {} is out of range (syscalls have arguments 0..=5)",
            raw.arg
        ));
    }
    let width = match raw.width {
        32 => Width::W32,
        64 => Width::W64,
        w => return Err(format!("width = {w} is invalid (use 32 or 64)")),
    };
    let (op, value) = match (raw.op, raw.mask) {
        (RawOp::MaskedEq, Some(mask)) => {
            if raw.value & !mask != 0 {
                return Err(format!(
                    "masked_eq value {:#x} has bits outside mask {mask:#x}, so it could never match",
                    raw.value
                ));
            }
            (CmpOp::MaskedEq(mask), raw.value)
        }
        (RawOp::MaskedEq, None) => return Err("op = \"masked_eq\" needs a `mask`".to_owned()),
        (_, Some(_)) => {
            return Err("`mask` is only allowed with op = \"masked_eq\"".to_owned());
        }
        (RawOp::HasBits, None) => {
            if raw.value == 0 {
                return Err("op = \"has_bits\" with value 0 would match every call".to_owned());
            }
            (CmpOp::MaskedEq(raw.value), raw.value)
        }
        (RawOp::Eq, None) => (CmpOp::Eq, raw.value),
        (RawOp::Ne, None) => (CmpOp::Ne, raw.value),
        (RawOp::Lt, None) => (CmpOp::Lt, raw.value),
        (RawOp::Le, None) => (CmpOp::Le, raw.value),
        (RawOp::Gt, None) => (CmpOp::Gt, raw.value),
        (RawOp::Ge, None) => (CmpOp::Ge, raw.value),
    };
    if width == Width::W32 {
        let mask_too_big = matches!(op, CmpOp::MaskedEq(m) if m > u64::from(u32::MAX));
        if value > u64::from(u32::MAX) || mask_too_big {
            return Err(format!(
                "width = 32 but value/mask {value:#x} does not fit in 32 bits (use width = 64)"
            ));
        }
    }
    Ok(Condition {
        arg: raw.arg,
        width,
        op,
        value,
    })
}

fn check_consistency(deny: &[DenyEntry], allow: &[AllowEntry]) -> Result<(), SeccompError> {
    let mut by_name: BTreeMap<&'static str, Vec<&DenyEntry>> = BTreeMap::new();
    for entry in deny {
        by_name.entry(entry.syscall).or_default().push(entry);
    }
    for (name, entries) in &by_name {
        if entries.len() > 1 && entries.iter().any(|e| e.rules.is_empty()) {
            return Err(SeccompError::Conflict {
                syscall: name,
                problem: format!(
                    "has {} [[deny]] entries and at least one denies it unconditionally \
                     (the conditional ones would be dead); keep a single entry",
                    entries.len()
                ),
            });
        }
        let errnos: BTreeSet<Errno> = entries.iter().map(|e| e.errno).collect();
        if errnos.len() > 1 {
            let names: Vec<&str> = errnos.iter().map(|e| e.name()).collect();
            return Err(SeccompError::Conflict {
                syscall: name,
                problem: format!(
                    "is denied with different errnos ({}) in different entries; use one errno",
                    names.join(", ")
                ),
            });
        }
    }
    let mut allowed = BTreeSet::new();
    for entry in allow {
        if !allowed.insert(entry.syscall) {
            return Err(SeccompError::Conflict {
                syscall: entry.syscall,
                problem: "appears in more than one [[allow]] entry".to_owned(),
            });
        }
        if by_name.contains_key(entry.syscall) {
            return Err(SeccompError::Conflict {
                syscall: entry.syscall,
                problem: "is both in [[allow]] and [[deny]]; decide on one".to_owned(),
            });
        }
    }
    Ok(())
}
