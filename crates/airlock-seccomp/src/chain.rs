//! Chaining filters into one program.
//!
//! Every filter attached costs the kernel a fixed price at each sandbox start
//! (checking, converting and JIT-compiling it into executable memory, then
//! preparing its cache). The filters Airlock builds deny disjoint sets of
//! syscalls and each ends every path in a `ret`, so they can run as one
//! program: each `ret ALLOW` of a program but the last becomes a jump to the
//! first instruction of the next one. An instruction is replaced by exactly one
//! instruction, so the jumps inside each program keep their targets.
//!
//! Verdicts are unchanged. As separate filters, the kernel keeps the most
//! severe verdict of all; chained, the first verdict other than ALLOW is the
//! answer. The two agree because:
//! - programs are only chained when every `ret` in them returns a constant
//!   ALLOW, ERRNO or KILL_PROCESS (never the accumulator, never TRAP, LOG,
//!   TRACE or a user notification, whose order of severity chaining would not
//!   keep): anything else is left as a filter of its own;
//! - the guard comes first, and its KILL_PROCESS (foreign ABI) is the most
//!   severe of those verdicts; the KILL_PROCESS of seccompiler's programs is
//!   their own architecture check, which the guard's makes unreachable;
//! - no syscall number is denied by two programs (`compile` refuses it), so
//!   two errnos never compete.

use crate::guard::{BPF_JA, BPF_JMP, BPF_K, BPF_RET};

/// The kernel's limit on one program (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

/// The instruction class bits of a classic BPF opcode.
const CLASS: u16 = 0x07;

fn action(k: u32) -> u32 {
    k & libc::SECCOMP_RET_ACTION_FULL
}

/// Every return of `prog` is a constant ALLOW, ERRNO or KILL_PROCESS.
fn chainable(prog: &[libc::sock_filter]) -> bool {
    prog.iter().filter(|i| i.code & CLASS == BPF_RET).all(|i| {
        i.code == BPF_RET | BPF_K
            && matches!(
                action(i.k),
                libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_ERRNO | libc::SECCOMP_RET_KILL_PROCESS
            )
    })
}

/// Chains `programs` in order into as few programs as the kernel's size limit
/// and [`chainable`] allow (one, for Airlock's policy).
pub(crate) fn chain(programs: Vec<Vec<libc::sock_filter>>) -> Vec<Vec<libc::sock_filter>> {
    let mut out: Vec<Vec<libc::sock_filter>> = Vec::new();
    for prog in programs {
        match out.last_mut() {
            Some(cur)
                if cur.len() + prog.len() <= MAX_INSNS && chainable(cur) && chainable(&prog) =>
            {
                let len = cur.len();
                for (i, ins) in cur.iter_mut().enumerate() {
                    if ins.code == BPF_RET | BPF_K && action(ins.k) == libc::SECCOMP_RET_ALLOW {
                        // Jump to `len`, the first instruction of `prog`.
                        *ins = libc::sock_filter {
                            code: BPF_JMP | BPF_JA,
                            jt: 0,
                            jf: 0,
                            k: u32::try_from(len - i - 1).expect("at most 4096 instructions"),
                        };
                    }
                }
                cur.extend(prog);
            }
            _ => out.push(prog),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: &libc::sock_filter) -> (u16, u8, u8, u32) {
        (i.code, i.jt, i.jf, i.k)
    }

    fn ret(k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code: BPF_RET | BPF_K,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// Programs are merged while they fit in the kernel's limit, and a new one starts where
    /// the next would not fit; every former ALLOW of a merged program jumps to the next part.
    #[test]
    fn chains_up_to_the_size_limit() {
        let allow = ret(libc::SECCOMP_RET_ALLOW);
        let sizes = [3000, 1096, 2000, 1];
        let progs: Vec<_> = sizes.iter().map(|&n| vec![allow; n]).collect();
        let out = chain(progs);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [4096, 2001]);
        // In the first: the first 3000 jump to 3000, the next 1096 are the second program's,
        // whose last one stays a return (the last part of that chain).
        assert_eq!(out[0][0].code, BPF_JMP | BPF_JA);
        assert_eq!(out[0][0].k, 2999);
        assert_eq!(out[0][2999].k, 0);
        assert_eq!(t(&out[0][4095]), t(&allow));
        assert_eq!(out[1][1999].k, 0);
        assert_eq!(t(&out[1][2000]), t(&allow));
    }

    /// A program with a verdict whose severity chaining would not keep (here TRAP, or an ALLOW
    /// with data bits, or a return of the accumulator) stays a filter of its own.
    #[test]
    fn other_verdicts_are_not_chained() {
        let allow = ret(libc::SECCOMP_RET_ALLOW);
        let errno = ret(libc::SECCOMP_RET_ERRNO | 1);
        for odd in [
            ret(libc::SECCOMP_RET_TRAP),
            ret(libc::SECCOMP_RET_LOG),
            ret(libc::SECCOMP_RET_USER_NOTIF),
            libc::sock_filter {
                code: BPF_RET | 0x10, // BPF_A
                jt: 0,
                jf: 0,
                k: 0,
            },
        ] {
            let out = chain(vec![
                vec![errno, allow],
                vec![odd, allow],
                vec![errno, allow],
            ]);
            assert_eq!(out.len(), 3, "{odd:?}");
            let first: Vec<_> = out[0].iter().map(t).collect();
            assert_eq!(first, [t(&errno), t(&allow)], "left as it was");
        }
        // ALLOW with data bits set is ALLOW to the kernel: rewritten like any other.
        let out = chain(vec![vec![ret(libc::SECCOMP_RET_ALLOW | 7)], vec![errno]]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0][0].code, BPF_JMP | BPF_JA);
    }
}
