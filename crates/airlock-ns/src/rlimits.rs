//! Resource limits through rlimits: the fallback where no cgroup is available, and limits that
//! hold per process regardless.

use airlock_core::spec::Limits;

/// The rlimits a sandboxed process gets. Computed before fork, applied after (no allocation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rlimits {
    /// RLIMIT_NPROC: since Linux 5.14 counted per user namespace, so it bounds the sandbox's own
    /// processes and threads, not the user's processes on the host.
    pub nproc: Option<u64>,
    /// RLIMIT_AS: a per-process address-space cap; weaker than a memory cgroup.
    pub address_space: Option<u64>,
}

impl Rlimits {
    /// Rlimits standing in for the cgroup limits we could not get.
    pub fn fallback(limits: &Limits, have_cgroup: bool) -> Rlimits {
        if have_cgroup {
            return Rlimits::default();
        }
        Rlimits {
            nproc: limits.pids,
            address_space: limits.memory_bytes,
        }
    }

    /// Apply to the calling process (inherited by everything it starts).
    pub fn apply(&self) -> std::io::Result<()> {
        for (res, v) in [
            (libc::RLIMIT_NPROC, self.nproc),
            (libc::RLIMIT_AS, self.address_space),
        ] {
            if let Some(v) = v {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                // SAFETY: setrlimit reads the struct we pass.
                if unsafe { libc::setrlimit(res, &lim) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}
