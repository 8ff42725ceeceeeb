//! Hand-written guard filter, installed in front of the seccompiler-generated ones.
//!
//! seccompiler checks the audit architecture but not the x86_64 x32 ABI: x32
//! syscalls arrive with `AUDIT_ARCH_X86_64` and bit `0x4000_0000` set in the
//! number, so no rule keyed on a plain x86_64 number would match them. This
//! filter kills the process for those, and (optionally) answers ENOSYS for
//! numbers above the highest syscall in Airlock's table.
//!
//! ```text
//!     ld  [arch]
//!     jeq #AUDIT_ARCH, ok, 0
//!     ret #KILL_PROCESS                 ; foreign ABI (e.g. int 0x80 on x86_64)
//! ok: ld  [nr]
//!     jeq #0xffffffff, allow, 0         ; nr == -1: ptrace tracers skipping a call
//!     jset #0x40000000, 0, 1            ; x86_64 only
//!     ret #KILL_PROCESS                 ; x32 ABI
//!     jgt #MAX_KNOWN, 0, 1              ; only with unknown_syscalls = "enosys"
//!     ret #ERRNO(ENOSYS)
//! allow:
//!     ret #ALLOW
//! ```
//!
//! nr == -1 is let through because a ptrace tracer sets it to skip a syscall
//! and supplies the return value itself; an ERRNO verdict would overwrite it.
//! The kernel itself answers ENOSYS for -1.

use crate::syscalls::{Arch, X32_SYSCALL_BIT};

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

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

/// Builds the guard program. `ceiling`: deny numbers above it with ENOSYS.
pub(crate) fn build(arch: Arch, ceiling: Option<u32>) -> Vec<libc::sock_filter> {
    let mut body = Vec::new();
    if arch == Arch::X86_64 {
        body.push(jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1));
        body.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS));
    }
    if let Some(max) = ceiling {
        body.push(jump(BPF_JMP | BPF_JGT | BPF_K, max, 0, 1));
        body.push(stmt(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
        ));
    }
    // `body` is at most 4 instructions, so the skip always fits in a u8.
    let skip_to_allow = u8::try_from(body.len()).unwrap_or(u8::MAX);

    let mut prog = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, ARCH_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, arch.audit_arch(), 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, NR_OFFSET),
        jump(BPF_JMP | BPF_JEQ | BPF_K, u32::MAX, skip_to_allow, 0),
    ];
    prog.extend(body);
    prog.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    prog
}
