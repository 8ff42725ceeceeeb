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
//! Verdicts are unchanged: the kernel keeps the most severe verdict of all the
//! filters; chained, the first verdict other than ALLOW is the answer. The
//! guard comes first (KILL for a foreign ABI, the only verdict more severe than
//! an errno; ENOSYS above the highest known number, which no rule names), and
//! no syscall is denied by two programs (the policy refuses one syscall with
//! two errnos), so the first answer is the most severe one.

const BPF_RET_K: u16 = 0x06;
const BPF_JMP_JA: u16 = 0x05;

/// The kernel's limit on one program (`BPF_MAXINSNS`).
const MAX_INSNS: usize = 4096;

/// Chains `programs` in order into as few programs as the kernel's size limit
/// allows (one, for any policy of a sane size).
pub(crate) fn chain(programs: Vec<Vec<libc::sock_filter>>) -> Vec<Vec<libc::sock_filter>> {
    let mut out: Vec<Vec<libc::sock_filter>> = Vec::new();
    for prog in programs {
        match out.last_mut() {
            Some(cur) if cur.len() + prog.len() <= MAX_INSNS => {
                let len = cur.len();
                for (i, ins) in cur.iter_mut().enumerate() {
                    if ins.code == BPF_RET_K && ins.k == libc::SECCOMP_RET_ALLOW {
                        // Jump to `len`, the first instruction of `prog`.
                        *ins = libc::sock_filter {
                            code: BPF_JMP_JA,
                            jt: 0,
                            jf: 0,
                            k: (len - i - 1) as u32,
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
