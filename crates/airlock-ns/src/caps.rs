//! Capabilities. Inside its user namespace a sandbox's root holds capabilities over the
//! sandbox's own objects only; even so we keep just what package managers and ordinary tools need
//! (Docker's default set without CAP_NET_RAW and CAP_MKNOD). A non-root sandbox user ends with
//! none at all: changing to a non-zero uid clears them.

/// Capabilities kept in the bounding set.
const KEEP: &[u32] = &[
    0,  // CAP_CHOWN: chown files in the sandbox (apt, dpkg, npm as root)
    1,  // CAP_DAC_OVERRIDE: root inside reads/writes its own files regardless of mode
    3,  // CAP_FOWNER: chmod/utime on files it does not own (package managers)
    4,  // CAP_FSETID: keep setgid bits when installing files
    5,  // CAP_KILL: signal the sandbox's other users' processes
    6,  // CAP_SETGID: drop to service users (apt's _apt)
    7,  // CAP_SETUID: idem
    8,  // CAP_SETPCAP: drop capabilities further
    10, // CAP_NET_BIND_SERVICE: dev servers on ports < 1024
    18, // CAP_SYS_CHROOT: chroot-based build tools
    29, // CAP_AUDIT_WRITE: login-style tools that write audit records
    31, // CAP_SETFCAP: dpkg sets file capabilities on installed binaries
];

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drop every capability not in [`KEEP`] from the bounding set and clear the ambient set.
/// Must run while the process still has CAP_SETPCAP in its user namespace.
pub fn restrict_bounding_set() -> std::io::Result<()> {
    for cap in 0..=last_cap() {
        if KEEP.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let err = std::io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Ok(())
}

/// Read the effective capability mask of the calling process.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub const CAP_KILL: u32 = 5;

/// Reduce the calling process's permitted, effective and inheritable sets (and its bounding set)
/// to `keep`.
pub fn keep_only(keep: &[u32]) -> std::io::Result<()> {
    for cap in 0..=last_cap() {
        if !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    let mut mask = [0u32; 2];
    for &c in keep {
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        Data {
            effective: mask[0],
            permitted: mask[0],
            inheritable: 0,
        },
        Data {
            effective: mask[1],
            permitted: mask[1],
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, which live across the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
