//! airlock-seccomp: the syscall filter applied to the sandboxed agent.
//!
//! The rules are data: `policy/seccomp.toml` at the repository root, embedded at
//! build time. [`SeccompProgram::compile_default`] parses and validates it and
//! compiles it to classic BPF for the build architecture (x86_64 or aarch64);
//! [`SeccompProgram::apply`] installs it on the calling thread right before
//! `execve`.
//!
//! What gets installed, chained into one program (see the `chain` module; as
//! separate filters, the kernel would run each and keep the most severe
//! verdict, KILL > ERRNO > ALLOW, which chaining preserves):
//!
//! 1. a hand-written guard: kills the process on an architecture mismatch or
//!    an x32-ABI syscall (x86_64), answers ENOSYS for syscall numbers above the
//!    highest one Airlock knows (`unknown_syscalls = "enosys"`), and answers
//!    every syscall denied whatever its arguments (most of the policy) with its
//!    errno, from a binary search tree (see the `guard` module for why);
//! 2. one seccompiler-generated filter per distinct errno among the rules with
//!    conditions on arguments (EPERM in the default policy), each default-allow.

mod chain;
mod guard;
mod policy;
mod syscall_table;
mod syscalls;

#[cfg(test)]
mod bpf_interp;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn compiled_filters_round_trip_through_bytes() {
        let p = SeccompProgram::compile_default().unwrap();
        let q = SeccompProgram::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(p.to_bytes(), q.to_bytes());
        assert_eq!(p.filters.len(), q.filters.len());
        assert!(SeccompProgram::from_bytes(&p.to_bytes()[..10]).is_err());
        assert!(SeccompProgram::from_bytes(b"").is_err());
    }
}

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use policy::{CmpOp, Condition, Errno, Policy, UnknownSyscalls, Width};
use syscalls::Arch;

/// The reviewed default policy (repository file `policy/seccomp.toml`).
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../../policy/seccomp.toml");

/// Which compiler made a filter: part of the key of a compiled filter cached on disk, with the
/// policy and the architecture, so a filter compiled by another build is not reused in place
/// of this one's (which files are read back at all: `airlock_ns::supervisor::seccomp_program`).
/// The crate's version and a hash of its sources and of the lock file (`build.rs`).
pub const COMPILER_ID: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "+",
    env!("AIRLOCK_SECCOMP_COMPILER_HASH")
);

/// Everything that can go wrong while building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The policy text is not valid TOML or does not have the expected shape.
    #[error(
        "cannot parse the seccomp policy: {message}\n\
         Fix the policy file (policy/seccomp.toml documents the format in its header)."
    )]
    Parse {
        /// The TOML parser's message, with line and column.
        message: String,
    },

    /// A syscall name that no supported architecture knows (likely a typo).
    #[error(
        "seccomp policy [[{section}]] entry {index}: unknown syscall `{name}`: no supported \
         architecture (x86_64, aarch64, i386) has a syscall of that name. Check the spelling \
         against the kernel's syscall table."
    )]
    UnknownSyscall {
        /// `deny` or `allow`.
        section: &'static str,
        /// 1-based position of the entry within its section.
        index: usize,
        /// The name as written.
        name: String,
    },

    /// One entry is malformed (empty `why`, bad condition, ...).
    #[error(
        "seccomp policy [[{section}]] entry {index} (syscall `{syscall}`): {problem}. \
         Fix that entry (the format is documented at the top of policy/seccomp.toml)."
    )]
    InvalidEntry {
        /// `deny` or `allow`.
        section: &'static str,
        /// 1-based position of the entry within its section.
        index: usize,
        /// The syscall the entry is about.
        syscall: String,
        /// What is wrong.
        problem: String,
    },

    /// Entries contradict each other.
    #[error(
        "seccomp policy: syscall `{syscall}` {problem}. Fix those entries in policy/seccomp.toml."
    )]
    Conflict {
        /// The syscall concerned.
        syscall: &'static str,
        /// What contradicts what.
        problem: String,
    },

    /// The build target has no syscall table / seccomp support in Airlock.
    #[error(
        "the seccomp filter cannot be built for this CPU architecture ({arch}): Airlock \
         supports x86_64 and aarch64 only"
    )]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },

    /// seccompiler refused the rules (should not happen for a validated policy).
    #[error(
        "compiling the seccomp policy to BPF failed: {error}. This is a bug in airlock-seccomp, \
         or the policy grew past the kernel's limit of 4096 instructions per filter."
    )]
    Compile {
        /// seccompiler's error.
        error: seccompiler::BackendError,
    },

    /// A compiled filter saved with [`SeccompProgram::to_bytes`] could not be read back.
    #[error(
        "the cached seccomp filter is malformed ({0}); delete it and Airlock compiles the policy again"
    )]
    Cache(&'static str),

    /// The kernel refused to install the filter.
    #[error(
        "installing the seccomp filter failed at {step}: {error}. The kernel must support \
         seccomp filters (CONFIG_SECCOMP_FILTER); EINVAL/EFAULT here is a bug in Airlock, \
         ENOMEM means too many filters are already stacked on this process."
    )]
    Apply {
        /// Which call failed.
        step: &'static str,
        /// The OS error.
        error: io::Error,
    },
}

/// One `[[deny]]` entry as compiled, for `airlock inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedRule {
    /// Syscall name.
    pub syscall: &'static str,
    /// Errno returned when the rule matches (e.g. `"EPERM"`).
    pub errno: &'static str,
    /// Argument condition, e.g. `(u32)arg0 == 0x11`; `None` = always denied.
    pub when: Option<String>,
    /// The reviewed reason from the policy file.
    pub why: String,
}

/// A syscall deliberately left allowed (`[[allow]]` entry), for `airlock inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedDecision {
    /// Syscall name.
    pub syscall: &'static str,
    /// The reviewed reason from the policy file.
    pub why: String,
}

/// A compiled seccomp policy, ready to install with [`SeccompProgram::apply`].
pub struct SeccompProgram {
    arch: Arch,
    /// Installed in order; each is a complete, self-contained BPF program.
    filters: Vec<Vec<libc::sock_filter>>,
    rules: Vec<DeniedRule>,
    allowed: Vec<AllowedDecision>,
    denied: Vec<&'static str>,
    skipped: Vec<&'static str>,
    ceiling: Option<u32>,
}

impl fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens: Vec<usize> = self.filters.iter().map(Vec::len).collect();
        f.debug_struct("SeccompProgram")
            .field("arch", &self.arch.name())
            .field("filter_instructions", &lens)
            .field("denied", &self.denied)
            .field("skipped_not_on_arch", &self.skipped)
            .field("unknown_syscall_ceiling", &self.ceiling)
            .finish()
    }
}

impl SeccompProgram {
    /// The compiled filters as bytes (a count, then per filter its length and its `sock_filter`
    /// instructions), so a process can install the filter without compiling the policy again.
    /// The inspection metadata (rules, reasons) is not included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.filters.len() as u32).to_le_bytes());
        for f in &self.filters {
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            for i in f {
                out.extend_from_slice(&i.code.to_le_bytes());
                out.push(i.jt);
                out.push(i.jf);
                out.extend_from_slice(&i.k.to_le_bytes());
            }
        }
        out
    }

    /// Read back what [`SeccompProgram::to_bytes`] wrote, for this CPU architecture.
    pub fn from_bytes(bytes: &[u8]) -> Result<SeccompProgram, SeccompError> {
        let arch = Arch::current().ok_or(SeccompError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        })?;
        let mut rest = bytes;
        let u32_at = |rest: &mut &[u8]| -> Result<u32, SeccompError> {
            let (h, t) = rest
                .split_at_checked(4)
                .ok_or(SeccompError::Cache("truncated"))?;
            *rest = t;
            Ok(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
        };
        let n = u32_at(&mut rest)? as usize;
        if n == 0 || n > 16 {
            return Err(SeccompError::Cache("filter count"));
        }
        let mut filters = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u32_at(&mut rest)? as usize;
            if len == 0 || len > 4096 {
                return Err(SeccompError::Cache("filter length"));
            }
            let (body, t) = rest
                .split_at_checked(len * 8)
                .ok_or(SeccompError::Cache("truncated"))?;
            rest = t;
            filters.push(
                body.chunks_exact(8)
                    .map(|c| libc::sock_filter {
                        code: u16::from_le_bytes([c[0], c[1]]),
                        jt: c[2],
                        jf: c[3],
                        k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                    })
                    .collect(),
            );
        }
        if !rest.is_empty() {
            return Err(SeccompError::Cache("trailing bytes"));
        }
        Ok(SeccompProgram {
            arch,
            filters,
            rules: vec![],
            allowed: vec![],
            denied: vec![],
            skipped: vec![],
            ceiling: None,
        })
    }

    /// Parse the embedded `policy/seccomp.toml` and compile it for the running arch.
    pub fn compile_default() -> Result<SeccompProgram, SeccompError> {
        Self::compile_from_toml(DEFAULT_POLICY_TOML)
    }

    /// Parse and compile a policy from TOML text (used by tests and by `compile_default`).
    pub fn compile_from_toml(text: &str) -> Result<SeccompProgram, SeccompError> {
        let arch = Arch::current().ok_or(SeccompError::UnsupportedArch {
            arch: std::env::consts::ARCH,
        })?;
        compile(&Policy::parse(text)?, arch)
    }

    /// Install the filter on the calling thread.
    ///
    /// Meant to run after `fork` in a single-threaded child, right before
    /// `execve`: it does not allocate, and only calls `prctl(PR_SET_NO_NEW_PRIVS)`
    /// (idempotent) and `seccomp(SECCOMP_SET_MODE_FILTER)` once per filter.
    /// Filters are inherited by children and kept across `execve`.
    ///
    /// If it fails part-way, some filters may already be installed; the caller
    /// should not exec the agent in that case.
    pub fn apply(&self) -> Result<(), SeccompError> {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes only integer
        // arguments and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(SeccompError::Apply {
                step: "prctl(PR_SET_NO_NEW_PRIVS)",
                error: io::Error::last_os_error(),
            });
        }
        // No SECCOMP_FILTER_FLAG_TSYNC: the caller is single-threaded.
        const NO_FLAGS: libc::c_ulong = 0;
        for filter in &self.filters {
            let prog = libc::sock_fprog {
                // Every filter is at most 4096 instructions (checked in `compile`).
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr().cast_mut(),
            };
            // SAFETY: `prog` points at `filter.len()` initialised `sock_filter`s
            // owned by `self`, which outlives the call; the kernel only reads the
            // program (it copies it) and does not keep the pointer.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
                    NO_FLAGS,
                    &prog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(SeccompError::Apply {
                    step: "seccomp(SECCOMP_SET_MODE_FILTER)",
                    error: io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// Names of the syscalls this program denies (always or under a condition),
    /// sorted. Syscalls the policy names that do not exist on this architecture
    /// are not included (see [`SeccompProgram::skipped_syscalls`]).
    pub fn denied_syscalls(&self) -> Vec<&'static str> {
        self.denied.clone()
    }

    /// Every compiled `[[deny]]` entry with its condition and reason, in policy order.
    pub fn rules(&self) -> &[DeniedRule] {
        &self.rules
    }

    /// `[[allow]]` decisions recorded in the policy (e.g. `ptrace`), in policy order.
    pub fn allowed_decisions(&self) -> &[AllowedDecision] {
        &self.allowed
    }

    /// Policy syscalls that do not exist on this architecture (e.g. `vm86`).
    pub fn skipped_syscalls(&self) -> &[&'static str] {
        &self.skipped
    }

    /// Architecture the program was compiled for (`"x86_64"` or `"aarch64"`).
    pub fn arch(&self) -> &'static str {
        self.arch.name()
    }

    /// Syscall numbers above this get ENOSYS (`unknown_syscalls = "enosys"`).
    pub fn unknown_syscall_ceiling(&self) -> Option<u32> {
        self.ceiling
    }

    /// Total BPF instructions over all filters (one program for the default policy).
    pub fn instruction_count(&self) -> usize {
        self.filters.iter().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub(crate) fn filters(&self) -> &[Vec<libc::sock_filter>] {
        &self.filters
    }
}

/// The number of syscall `name` on the architecture this crate was built for
/// (from Airlock's syscall table), e.g. for tests and diagnostics.
pub fn syscall_number(name: &str) -> Option<i64> {
    Arch::current()?.lookup(name).map(|(_, nr)| nr)
}

fn to_seccompiler(cond: &Condition) -> Result<SeccompCondition, SeccompError> {
    let len = match cond.width {
        Width::W32 => SeccompCmpArgLen::Dword,
        Width::W64 => SeccompCmpArgLen::Qword,
    };
    let op = match cond.op {
        CmpOp::Eq => SeccompCmpOp::Eq,
        CmpOp::Ne => SeccompCmpOp::Ne,
        CmpOp::Lt => SeccompCmpOp::Lt,
        CmpOp::Le => SeccompCmpOp::Le,
        CmpOp::Gt => SeccompCmpOp::Gt,
        CmpOp::Ge => SeccompCmpOp::Ge,
        CmpOp::MaskedEq(mask) => SeccompCmpOp::MaskedEq(mask),
    };
    SeccompCondition::new(cond.arg, len, op, cond.value)
        .map_err(|error| SeccompError::Compile { error })
}

fn compile(policy: &Policy, arch: Arch) -> Result<SeccompProgram, SeccompError> {
    compile_with(policy, arch, true)
}

/// [`compile`]; `chained = false` keeps one program per filter (tests compare the two).
fn compile_with(
    policy: &Policy,
    arch: Arch,
    chained: bool,
) -> Result<SeccompProgram, SeccompError> {
    // Denied whatever the arguments: syscall number -> errno (the guard's tree).
    let mut unconditional: BTreeMap<u32, u32> = BTreeMap::new();
    // Denied on conditions: errno -> syscall number -> rules (seccompiler's filters).
    let mut groups: BTreeMap<Errno, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    let mut rules = Vec::new();
    let mut denied = Vec::new();
    let mut skipped = Vec::new();

    for entry in &policy.deny {
        let Some((name, nr)) = arch.lookup(entry.syscall) else {
            skipped.push(entry.syscall);
            continue;
        };
        denied.push(name);
        rules.push(DeniedRule {
            syscall: name,
            errno: entry.errno.name(),
            when: entry.describe_when(),
            why: entry.why.clone(),
        });
        if entry.rules.is_empty() {
            // The policy's check refuses an entry with conditions, or another errno, for the
            // same name; checked here again by number (below), which is what the programs see.
            let nr = u32::try_from(nr).expect("syscall numbers are small and positive");
            let errno = entry.errno.value() as u32;
            if unconditional.insert(nr, errno).is_some_and(|e| e != errno) {
                return Err(SeccompError::Conflict {
                    syscall: name,
                    problem: format!("is denied with two errnos (number {nr} on {arch:?})"),
                });
            }
            continue;
        }
        let chain = groups
            .entry(entry.errno)
            .or_default()
            .entry(nr)
            .or_default();
        for rule in &entry.rules {
            let conds = rule
                .iter()
                .map(to_seccompiler)
                .collect::<Result<Vec<_>, _>>()?;
            chain.push(SeccompRule::new(conds).map_err(|error| SeccompError::Compile { error })?);
        }
    }
    denied.sort_unstable();
    denied.dedup();
    skipped.sort_unstable();
    skipped.dedup();

    let ceiling = match policy.unknown_syscalls {
        UnknownSyscalls::Enosys => u32::try_from(arch.max_nr()).ok(),
        UnknownSyscalls::Allow => None,
    };

    // One syscall number in the tree and in a conditional filter, or in two conditional filters,
    // would have two programs answer it: chaining keeps the first answer only.
    let mut conditional = BTreeMap::new();
    for (errno, map) in &groups {
        for &nr in map.keys() {
            let clash = u32::try_from(nr)
                .ok()
                .is_some_and(|n| unconditional.contains_key(&n))
                || conditional.insert(nr, *errno).is_some();
            if clash {
                return Err(SeccompError::Conflict {
                    syscall: arch.name_of(nr).unwrap_or("?"),
                    problem: format!(
                        "is denied by two entries of different kinds (number {nr} on {arch:?})"
                    ),
                });
            }
        }
    }
    let mut filters = vec![guard::build(arch, ceiling, &unconditional)];
    for (errno, map) in groups {
        let filter = SeccompFilter::new(
            map,
            SeccompAction::Allow,
            SeccompAction::Errno(errno.value() as u32),
            arch.seccompiler(),
        )
        .map_err(|error| SeccompError::Compile { error })?;
        let bpf: BpfProgram = filter
            .try_into()
            .map_err(|error| SeccompError::Compile { error })?;
        filters.push(
            bpf.into_iter()
                .map(|i| libc::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect(),
        );
    }
    // One program where the size limit allows (see `chain`): one attach per start.
    let filters = if chained {
        chain::chain(filters)
    } else {
        filters
    };
    // The kernel's limit is BPF_MAXINSNS = 4096 per program (seccompiler checks
    // its own output; this also covers the guard and keeps `apply`'s cast exact).
    if let Some(len) = filters.iter().map(Vec::len).find(|&n| n > 4096) {
        return Err(SeccompError::Compile {
            error: seccompiler::BackendError::FilterTooLarge(len),
        });
    }

    Ok(SeccompProgram {
        arch,
        filters,
        rules,
        allowed: policy
            .allow
            .iter()
            .map(|a| AllowedDecision {
                syscall: a.syscall,
                why: a.why.clone(),
            })
            .collect(),
        denied,
        skipped,
        ceiling,
    })
}
