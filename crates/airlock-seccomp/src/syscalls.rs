//! Syscall name tables and the architectures a policy can be compiled for.

use crate::syscall_table;

/// `AUDIT_ARCH_X86_64`: EM_X86_64 (62) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64`: EM_AARCH64 (183) | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
pub(crate) const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// Bit that marks an x32-ABI syscall number on x86_64 (`__X32_SYSCALL_BIT`).
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// An architecture Airlock can compile a filter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture this crate was compiled for, if supported.
    pub(crate) fn current() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    pub(crate) fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            Arch::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    pub(crate) fn seccompiler(self) -> seccompiler::TargetArch {
        match self {
            Arch::X86_64 => seccompiler::TargetArch::x86_64,
            Arch::Aarch64 => seccompiler::TargetArch::aarch64,
        }
    }

    fn table(self) -> &'static [(&'static str, i64)] {
        match self {
            Arch::X86_64 => syscall_table::X86_64,
            Arch::Aarch64 => syscall_table::AARCH64,
        }
    }

    /// Looks a syscall up by name; returns the table's `'static` name and number.
    pub(crate) fn lookup(self, name: &str) -> Option<(&'static str, i64)> {
        let table = self.table();
        table
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| table[i])
    }

    /// The table's name for syscall number `nr`, if it has one.
    pub(crate) fn name_of(self, nr: i64) -> Option<&'static str> {
        self.table()
            .iter()
            .find(|&&(_, n)| n == nr)
            .map(|&(n, _)| n)
    }

    /// Highest syscall number in the table (used for the unknown-syscall ceiling).
    pub(crate) fn max_nr(self) -> i64 {
        self.table().iter().map(|&(_, nr)| nr).max().unwrap_or(0)
    }
}

/// All architectures a policy can be compiled for.
pub(crate) const ARCHES: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

/// Returns the canonical `'static` spelling of `name` if any architecture Airlock
/// knows (x86_64, aarch64, or i386 for legacy-only names such as `vm86`) has it.
pub(crate) fn known_name(name: &str) -> Option<&'static str> {
    ARCHES
        .iter()
        .find_map(|arch| arch.lookup(name).map(|(n, _)| n))
        .or_else(|| {
            syscall_table::I386_NAMES
                .binary_search(&name)
                .ok()
                .map(|i| syscall_table::I386_NAMES[i])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        for arch in ARCHES {
            let t = arch.table();
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "{arch:?} not sorted");
            let mut nrs: Vec<i64> = t.iter().map(|&(_, nr)| nr).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), t.len(), "{arch:?} has duplicate numbers");
        }
        let n = syscall_table::I386_NAMES;
        assert!(n.windows(2).all(|w| w[0] < w[1]));
    }

    /// The generated table must agree with the `libc` crate for the build target.
    #[test]
    fn table_matches_libc_for_target() {
        let arch = Arch::current().expect("supported arch");
        // Takes libc's `SYS_*` constant names; the `SYS_` prefix is stripped for lookup.
        macro_rules! sys {
            ($($name:ident),* $(,)?) => {$(
                assert_eq!(
                    arch.lookup(&stringify!($name)[4..]).map(|(_, nr)| nr),
                    Some(libc::$name as i64),
                    "{}", stringify!($name)
                );
            )*};
        }
        sys!(
            SYS_read,
            SYS_write,
            SYS_mount,
            SYS_umount2,
            SYS_unshare,
            SYS_setns,
            SYS_clone,
            SYS_clone3,
            SYS_bpf,
            SYS_keyctl,
            SYS_add_key,
            SYS_request_key,
            SYS_io_uring_setup,
            SYS_io_uring_enter,
            SYS_io_uring_register,
            SYS_open_by_handle_at,
            SYS_name_to_handle_at,
            SYS_personality,
            SYS_ioctl,
            SYS_socket,
            SYS_ptrace,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
            SYS_kcmp,
            SYS_kexec_load,
            SYS_kexec_file_load,
            SYS_init_module,
            SYS_finit_module,
            SYS_delete_module,
            SYS_perf_event_open,
            SYS_userfaultfd,
            SYS_pivot_root,
            SYS_move_mount,
            SYS_open_tree,
            SYS_fsopen,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fspick,
            SYS_mount_setattr,
            SYS_reboot,
            SYS_swapon,
            SYS_swapoff,
            SYS_acct,
            SYS_quotactl,
            SYS_quotactl_fd,
            SYS_settimeofday,
            SYS_clock_settime,
            SYS_clock_adjtime,
            SYS_syslog,
            SYS_lookup_dcookie,
            SYS_getpid,
            SYS_execve,
            SYS_pidfd_getfd,
        );
        #[cfg(target_arch = "x86_64")]
        sys!(
            SYS_iopl,
            SYS_ioperm,
            SYS_uselib,
            SYS_ustat,
            SYS_sysfs,
            SYS__sysctl,
            SYS_nfsservctl,
            SYS_adjtimex,
            SYS_fork,
        );
    }

    #[test]
    fn known_names() {
        assert_eq!(known_name("vm86"), Some("vm86"));
        assert_eq!(known_name("mount"), Some("mount"));
        assert_eq!(known_name("mountt"), None);
        assert_eq!(Arch::X86_64.lookup("vm86"), None);
        assert_eq!(
            Arch::X86_64.lookup("open_tree_attr"),
            Some(("open_tree_attr", 467))
        );
        assert_eq!(
            Arch::Aarch64.lookup("open_tree_attr"),
            Some(("open_tree_attr", 467))
        );
        assert_eq!(Arch::Aarch64.lookup("mount"), Some(("mount", 40)));
        assert_eq!(Arch::X86_64.lookup("mount"), Some(("mount", 165)));
    }
}
