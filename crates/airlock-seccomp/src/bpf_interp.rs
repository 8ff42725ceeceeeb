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
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match ins.code {
                    0x15 => acc == k,
                    0x25 => acc > k,
                    0x35 => acc >= k,
                    _ => acc & k != 0,
                };
                pc = next + usize::from(if taken { ins.jt } else { ins.jf });
            }
            0x06 => return (k, steps),
            code => panic!("unsupported BPF opcode {code:#x} at {pc}"),
        }
    }
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
