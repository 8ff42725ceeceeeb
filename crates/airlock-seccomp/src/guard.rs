//! Hand-written guard filter, chained in front of the seccompiler-generated ones.
//!
//! seccompiler checks the audit architecture but not the x86_64 x32 ABI: x32
//! syscalls arrive with `AUDIT_ARCH_X86_64` and bit `0x4000_0000` set in the
//! number, so no rule keyed on a plain x86_64 number would match them. This
//! filter kills the process for those, answers ENOSYS (optionally) for numbers
//! above the highest syscall in Airlock's table, and answers every syscall the
//! policy denies *unconditionally* (most of them) from a binary search tree:
//!
//! ```text
//!     ld  [arch]
//!     jeq #AUDIT_ARCH, ok, 0
//!     ret #KILL_PROCESS                 ; foreign ABI (e.g. int 0x80 on x86_64)
//! ok: ld  [nr]
//!     jeq #0xffffffff, 0, 1             ; nr == -1: ptrace tracers skipping a call
//!     ret #ALLOW
//!     jset #0x40000000, 0, 1            ; x86_64 only
//!     ret #KILL_PROCESS                 ; x32 ABI
//!     jgt #MAX_KNOWN, 0, 1              ; only with unknown_syscalls = "enosys"
//!     ret #ERRNO(ENOSYS)
//!     <tree>                            ; see `tree`
//! ```
//!
//! nr == -1 is let through because a ptrace tracer sets it to skip a syscall
//! and supplies the return value itself; an ERRNO verdict would overwrite it.
//! The kernel itself answers ENOSYS for -1.
//!
//! Why the tree is hand-written: seccompiler compiles a filter to a linear
//! chain of comparisons, one per syscall. The kernel walks that chain for every
//! syscall it cannot answer from its per-filter cache, and fills that cache,
//! at every attach, by emulating the whole program once per syscall number
//! (~450 numbers times a chain of ~120 instructions: ~0.2 ms of every sandbox's
//! start). A tree needs ~2 log2(n) comparisons per number. The conditional
//! rules (arguments compared) stay with seccompiler, in a short chain of their
//! own. The tree is small enough to review by its unit tests, which run every
//! syscall number through it with the test interpreter.

use std::collections::BTreeMap;

use crate::syscalls::{Arch, X32_SYSCALL_BIT};

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
pub(crate) const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
pub(crate) const BPF_JA: u16 = 0x00;
pub(crate) const BPF_K: u16 = 0x00;
pub(crate) const BPF_RET: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Syscalls per leaf of the tree: a leaf compares the number with each of
/// them in turn (two instructions each), where a split costs two as well.
const LEAF: usize = 4;

fn errno_ret(errno: u32) -> libc::sock_filter {
    stmt(
        BPF_RET | BPF_K,
        libc::SECCOMP_RET_ERRNO | (errno & libc::SECCOMP_RET_DATA),
    )
}

/// Builds the guard program. `ceiling`: deny numbers above it with ENOSYS.
/// `denied`: syscall numbers denied whatever their arguments, each with its
/// errno.
pub(crate) fn build(
    arch: Arch,
    ceiling: Option<u32>,
    denied: &BTreeMap<u32, u32>,
) -> Vec<libc::sock_filter> {
    let mut prog = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, ARCH_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, arch.audit_arch(), 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, NR_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, u32::MAX, 0, 1),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    if arch == Arch::X86_64 {
        prog.push(jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS));
    }
    if let Some(max) = ceiling {
        prog.push(jump(BPF_JMP | BPF_JGT | BPF_K, max, 0, 1));
        prog.push(errno_ret(libc::ENOSYS as u32));
    }
    // Sorted by number, without duplicates: what a search tree needs.
    let denied: Vec<(u32, u32)> = denied.iter().map(|(&nr, &errno)| (nr, errno)).collect();
    tree(&denied, &mut prog);
    prog
}

/// Appends code that returns the errno of `denied`'s entry for the number in
/// the accumulator, and ALLOW for any other number. Every path ends in its own
/// `ret`, and every jump is forward: a split is `jge pivot` falling through to
/// a `ja` over the lower half (its 32-bit offset fits any size) when true,
/// skipping the `ja` into the lower half when false.
fn tree(denied: &[(u32, u32)], out: &mut Vec<libc::sock_filter>) {
    if denied.len() <= LEAF {
        for &(nr, errno) in denied {
            out.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1));
            out.push(errno_ret(errno));
        }
        out.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
        return;
    }
    let (lower, upper) = denied.split_at(denied.len() / 2);
    let mut low = Vec::new();
    tree(lower, &mut low);
    out.push(jump(BPF_JMP | BPF_JGE | BPF_K, upper[0].0, 0, 1));
    out.push(stmt(
        BPF_JMP | BPF_JA,
        u32::try_from(low.len()).expect("a filter is at most 4096 instructions"),
    ));
    out.extend(low);
    tree(upper, out);
}
