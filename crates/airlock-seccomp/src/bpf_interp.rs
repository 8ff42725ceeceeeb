//! Test-only classic-BPF interpreter for seccomp programs.
//!
//! Lets unit tests ask "what would the kernel decide for this syscall and these
//! arguments" for any architecture, including cases that cannot be provoked
//! safely on the test machine. The integration tests check the real kernel.

/// Input of a seccomp filter (`struct seccomp_data`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Data {
    pub(crate) nr: u32,
    pub(crate) arch: u32,
    pub(crate) args: [u64; 6],
}

impl Data {
    fn word(&self, offset: u32) -> u32 {
        match offset {
            0 => self.nr,
            4 => self.arch,
            8 | 12 => 0, // instruction pointer: unused by our filters
            16..=60 if offset & 3 == 0 => {
                let arg = self.args[((offset - 16) / 8) as usize];
                if (offset - 16) & 7 == 0 {
                    arg as u32 // little-endian: low half first
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load from invalid seccomp_data offset {offset}"),
        }
    }
}

/// Runs one program; panics on anything the kernel's checker would reject.
pub(crate) fn run(prog: &[libc::sock_filter], data: &Data) -> u32 {
    run_counted(prog, data).0
}

/// [`run`], also counting the instructions executed.
pub(crate) fn run_counted(prog: &[libc::sock_filter], data: &Data) -> (u32, usize) {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    let mut steps = 0usize;
    loop {
        steps += 1;
        let ins = prog
            .get(pc)
            .unwrap_or_else(|| panic!("fell off program at {pc}"));
        let k = ins.k;
        let next = pc + 1;
        match ins.code {
            0x20 => {
                acc = data.word(k);
                pc = next;
            }
            0x54 => {
                acc &= k;
                pc = next;
            }
            0x05 => pc = next + k as usize,
            0x15 | 0x25 | 0x35 | 0x45 => pc = next + conditional_jump(ins, acc),
            0x06 => return (k, steps),
            code => panic!("unsupported BPF opcode {code:#x} at {pc}"),
        }
    }
}

/// How far a conditional jump on a constant (jeq, jgt, jge, jset) goes past the next instruction.
fn conditional_jump(ins: &libc::sock_filter, acc: u32) -> usize {
    let taken = match ins.code {
        0x15 => acc == ins.k,
        0x25 => acc > ins.k,
        0x35 => acc >= ins.k,
        _ => acc & ins.k != 0,
    };
    usize::from(if taken { ins.jt } else { ins.jf })
}

/// Runs a stack of filters the way the kernel does (`seccomp_run_filters`):
/// newest first, keeping the verdict whose action is lowest as a signed value
/// (KILL_PROCESS < KILL_THREAD < TRAP < ERRNO < ... < ALLOW); on ties the newer
/// filter's verdict stays.
pub(crate) fn run_all(filters: &[Vec<libc::sock_filter>], data: &Data) -> u32 {
    let action = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL) as i32;
    let mut verdict = libc::SECCOMP_RET_ALLOW;
    for prog in filters.iter().rev() {
        let ret = run(prog, data);
        if action(ret) < action(verdict) {
            verdict = ret;
        }
    }
    verdict
}

/// What the kernel's seccomp action cache decides for a syscall number without arguments
/// (`seccomp_is_const_allow` in kernel/seccomp.c, followed exactly): `Some(verdict)` when the
/// program reaches a constant return from the number and the architecture alone, `None` when
/// it loads anything else (an argument) or uses an instruction the kernel's emulator gives up
/// on. The kernel caches the number as always allowed only for `Some(ALLOW)`.
pub(crate) fn const_verdict(prog: &[libc::sock_filter], nr: u32, arch: u32) -> Option<u32> {
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    while let Some(ins) = prog.get(pc) {
        let k = ins.k;
        let next = pc + 1;
        match ins.code {
            0x20 => {
                acc = match k {
                    0 => nr,
                    4 => arch,
                    _ => return None,
                };
                pc = next;
            }
            0x06 => return Some(k),
            0x05 => pc = next + k as usize,
            0x15 | 0x25 | 0x35 | 0x45 => pc = next + conditional_jump(ins, acc),
            0x54 => {
                acc &= k;
                pc = next;
            }
            _ => return None,
        }
    }
    None
}

/// The checks the kernel makes before it accepts a seccomp program (`bpf_check_classic` and
/// `seccomp_check_filter`), for the instructions Airlock's programs use: a length of 1 to 4096,
/// loads only of aligned words of `struct seccomp_data`, every jump forward and inside the
/// program, the last instruction a return. Returns what is wrong.
pub(crate) fn kernel_accepts(prog: &[libc::sock_filter]) -> Result<(), String> {
    if prog.is_empty() || prog.len() > 4096 {
        return Err(format!("length {}", prog.len()));
    }
    let in_range = |pc: usize, off: usize| pc + 1 + off < prog.len();
    for (pc, ins) in prog.iter().enumerate() {
        let ok = match ins.code {
            // ld [k]: an aligned word inside seccomp_data (64 bytes)
            0x20 => ins.k % 4 == 0 && ins.k < 64,
            0x06 | 0x16 => true,
            0x05 => in_range(pc, ins.k as usize),
            0x15 | 0x25 | 0x35 | 0x45 => {
                in_range(pc, usize::from(ins.jt)) && in_range(pc, usize::from(ins.jf))
            }
            0x54 => true,
            code => return Err(format!("opcode {code:#x} at {pc} (not used by Airlock)")),
        };
        if !ok {
            return Err(format!(
                "instruction {pc}: {:?}",
                (ins.code, ins.jt, ins.jf, ins.k)
            ));
        }
    }
    match prog.last() {
        Some(i) if i.code & 0x07 == 0x06 => Ok(()),
        _ => Err("the last instruction is not a return".into()),
    }
}
