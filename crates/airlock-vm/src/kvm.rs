//! Whether KVM can really run a guest here, or why the VM has to use TCG (QEMU's emulator).
//!
//! `/dev/kvm` existing proves little: in a cloud VM without nested virtualization the device
//! may be there (a paravirtual KVM, or one that fails at the first guest entry) and QEMU would
//! then fail or hang at boot. [`probe`] runs a one-instruction guest (`hlt` in real mode) and
//! accepts KVM only if it comes back with `KVM_EXIT_HLT` within [`PROBE_TIMEOUT`]. The answer is
//! a property of the host until it reboots, so it is cached per boot in the runtime directory.
//!
//! The KVM ioctls are defined here rather than taken from `kvm-ioctls`: the probe needs ten
//! ioctl numbers and three plain structs of the stable KVM ABI, which is less code to review
//! than the three crates (kvm-ioctls, kvm-bindings, vmm-sys-util) it would pull in.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How QEMU runs the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "accel", rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation; `why` says why KVM is not used.
    Tcg { why: String },
}

/// How long the test guest may take; the caller of [`probe`] never waits longer (plus the
/// time to read and write the small cache file).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The cache file in the runtime directory.
pub const CACHE_FILE: &str = "kvm-probe.json";

const KVM_DEVICE: &str = "/dev/kvm";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What the cache holds: the answer for one boot of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub boot_id: String,
    pub result: Accel,
}

/// A one-line description for `airlock inspect` and start-up messages.
pub fn describe(accel: &Accel) -> String {
    match accel {
        Accel::Kvm => "KVM (hardware virtualization)".to_string(),
        Accel::Tcg { why } => format!("TCG (software emulation, several times slower): {why}"),
    }
}

/// Can KVM run a guest on this host? Never blocks longer than [`PROBE_TIMEOUT`].
///
/// Whether `/dev/kvm` exists and opens is checked on every call (that changes without a reboot:
/// a module gets loaded, the user joins the kvm group); the test guest's result is cached in
/// `<runtime_dir>/kvm-probe.json` and reused while `/proc/sys/kernel/random/boot_id` is the same.
pub fn probe(runtime_dir: &Path) -> Accel {
    probe_device(Path::new(KVM_DEVICE), runtime_dir, PROBE_TIMEOUT)
}

fn probe_device(device: &Path, runtime_dir: &Path, timeout: Duration) -> Accel {
    let kvm = match open_device(device) {
        Ok(kvm) => kvm,
        Err(why) => return Accel::Tcg { why },
    };
    let boot_id = std::fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let cache = runtime_dir.join(CACHE_FILE);
    if let Some(id) = &boot_id
        && let Some(record) = read_cache(&cache)
        && record.boot_id == *id
    {
        return record.result;
    }
    let result = match cpu_virtualization_flag() {
        Ok(()) => run_test_guest(kvm, device, timeout),
        Err(why) => Accel::Tcg {
            why: format!("{} is present but {why}", device.display()),
        },
    };
    if let Some(boot_id) = boot_id {
        // Best effort: without a cache the next start probes again.
        let _ = write_cache(
            runtime_dir,
            &cache,
            &ProbeRecord {
                boot_id,
                result: result.clone(),
            },
        );
    }
    result
}

fn open_device(device: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(device)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => format!(
                "there is no {}: this host offers no hardware virtualization (enable VT-x/AMD-V \
                 in the firmware and load kvm_intel or kvm_amd; in a cloud VM, nested \
                 virtualization must be enabled)",
                device.display()
            ),
            ErrorKind::PermissionDenied => format!(
                "{} is not accessible to you: join its group (`sudo usermod -aG kvm $USER`, then \
                 log in again)",
                device.display()
            ),
            _ => format!("{} cannot be opened: {e}", device.display()),
        })
}

/// KVM proper (kvm_intel, kvm_amd) needs VT-x or AMD-V, which the kernel shows as the `vmx` or
/// `svm` CPU flag. A `/dev/kvm` without either is a paravirtual KVM (such as PVM in some cloud
/// VMs) that can run our one-instruction guest but not a normal kernel: QEMU fails setting
/// MSRs or the guest hangs early in boot.
fn cpu_virtualization_flag() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("/proc/cpuinfo cannot be read: {e}"))?;
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_flag {
        Ok(())
    } else {
        Err(
            "the CPU offers no hardware virtualization (no vmx or svm flag in /proc/cpuinfo), so \
             it cannot run a normal guest (nested virtualization unavailable?)"
                .to_string(),
        )
    }
}

pub fn read_cache(path: &Path) -> Option<ProbeRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_cache(runtime_dir: &Path, cache: &Path, record: &ProbeRecord) -> Option<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(runtime_dir)
        .ok()?;
    let json = serde_json::to_vec_pretty(record).ok()?;
    airlock_core::store::write_atomic(cache, &json).ok()
}

/// Run the test guest on a thread of its own and wait at most `timeout`. A guest entry that
/// hangs leaves that thread behind, detached: it holds only its own descriptors and mappings,
/// and the process can still exit.
fn run_test_guest(kvm: File, device: &Path, timeout: Duration) -> Accel {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(test_guest(&kvm));
        });
    if let Err(e) = spawned {
        return Accel::Tcg {
            why: format!("could not start the KVM probe: {e}"),
        };
    }
    let unusable = format!(
        "{} is present but could not run a test guest (nested virtualization unavailable?)",
        device.display()
    );
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Accel::Kvm,
        Ok(Err(e)) => Accel::Tcg {
            why: format!("{unusable}: {e}"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => Accel::Tcg {
            why: format!(
                "{unusable}: it did not finish within {} ms",
                timeout.as_millis()
            ),
        },
        Err(mpsc::RecvTimeoutError::Disconnected) => Accel::Tcg {
            why: format!("{unusable}: the probe ended without an answer"),
        },
    }
}

// The KVM ABI (include/uapi/linux/kvm.h, x86_64). Ioctl numbers are
// _IO/_IOR/_IOW(KVMIO = 0xAE, nr, size): dir << 30 | size << 16 | 0xAE << 8 | nr, with
// dir 1 = write (to the kernel), 2 = read.
const KVM_GET_API_VERSION: u64 = 0xAE00; // _IO(KVMIO, 0x00)
const KVM_CREATE_VM: u64 = 0xAE01; // _IO(KVMIO, 0x01)
const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xAE04; // _IO(KVMIO, 0x04)
const KVM_CREATE_VCPU: u64 = 0xAE41; // _IO(KVMIO, 0x41)
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_AE46; // _IOW(KVMIO, 0x46, 32 bytes)
const KVM_RUN: u64 = 0xAE80; // _IO(KVMIO, 0x80)
const KVM_SET_REGS: u64 = 0x4090_AE82; // _IOW(KVMIO, 0x82, struct kvm_regs: 144 bytes)
const KVM_GET_SREGS: u64 = 0x8138_AE83; // _IOR(KVMIO, 0x83, struct kvm_sregs: 312 bytes)
const KVM_SET_SREGS: u64 = 0x4138_AE84; // _IOW(KVMIO, 0x84, struct kvm_sregs: 312 bytes)

/// The API version every KVM since Linux 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;
/// `kvm_run.exit_reason` after the guest executed `hlt` (no in-kernel irqchip).
const KVM_EXIT_HLT: u32 = 5;
/// Offset of `exit_reason` in `struct kvm_run` (after u8, u8, u8[6]).
const KVM_RUN_EXIT_REASON: usize = 8;

#[repr(C)]
struct KvmUserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct KvmRegs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rsp: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rip: u64,
    rflags: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct KvmSegment {
    base: u64,
    limit: u32,
    selector: u16,
    type_: u8,
    present: u8,
    dpl: u8,
    db: u8,
    s: u8,
    l: u8,
    g: u8,
    avl: u8,
    unusable: u8,
    padding: u8,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct KvmDtable {
    base: u64,
    limit: u16,
    padding: [u16; 3],
}

#[repr(C)]
#[derive(Default)]
struct KvmSregs {
    cs: KvmSegment,
    ds: KvmSegment,
    es: KvmSegment,
    fs: KvmSegment,
    gs: KvmSegment,
    ss: KvmSegment,
    tr: KvmSegment,
    ldt: KvmSegment,
    gdt: KvmDtable,
    idt: KvmDtable,
    cr0: u64,
    cr2: u64,
    cr3: u64,
    cr4: u64,
    cr8: u64,
    efer: u64,
    apic_base: u64,
    interrupt_bitmap: [u64; 4],
}

const _: () = assert!(size_of::<KvmUserspaceMemoryRegion>() == 32);
const _: () = assert!(size_of::<KvmRegs>() == 144);
const _: () = assert!(size_of::<KvmSregs>() == 312);

/// `ioctl(fd, request, arg)`, its result or errno described with `what`.
fn kvm_ioctl(fd: RawFd, request: u64, arg: usize, what: &str) -> Result<i32, String> {
    loop {
        // SAFETY: every request above is paired by its caller with the argument the kernel
        // expects: an integer, or a pointer to a live struct of the exact size in the number.
        let rc = unsafe { libc::ioctl(fd, request as _, arg) };
        if rc >= 0 {
            return Ok(rc);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(format!("{what}: {e}"));
        }
    }
}

/// A descriptor a KVM ioctl returned.
fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An mmap'd region, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, prot: i32, flags: i32, fd: RawFd, what: &str) -> Result<Mapping, String> {
        // SAFETY: a fresh mapping chosen by the kernel (no address hint); nothing aliases it.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no reference into it remains.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One page of guest memory holding `hlt`, one vCPU in real mode at 0:0, one `KVM_RUN`.
fn test_guest(kvm: &File) -> Result<(), String> {
    let kvm_fd = kvm.as_raw_fd();
    let version = kvm_ioctl(kvm_fd, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")?;
    if version != KVM_API_VERSION {
        return Err(format!(
            "KVM API version {version}, expected {KVM_API_VERSION}"
        ));
    }
    let vm = owned(kvm_ioctl(kvm_fd, KVM_CREATE_VM, 0, "KVM_CREATE_VM")?);

    const PAGE: usize = 4096;
    let memory = Mapping::new(
        PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        "guest memory",
    )?;
    // SAFETY: the mapping is PAGE bytes, writable, and only this thread uses it.
    unsafe { memory.ptr.write(0xf4) }; // hlt
    let region = KvmUserspaceMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: PAGE as u64,
        userspace_addr: memory.ptr as u64,
    };
    kvm_ioctl(
        vm.as_raw_fd(),
        KVM_SET_USER_MEMORY_REGION,
        &region as *const _ as usize,
        "KVM_SET_USER_MEMORY_REGION",
    )?;
    let vcpu = owned(kvm_ioctl(
        vm.as_raw_fd(),
        KVM_CREATE_VCPU,
        0,
        "KVM_CREATE_VCPU",
    )?);
    let run_size = kvm_ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")?;
    let run_size = usize::try_from(run_size)
        .ok()
        .filter(|n| *n > KVM_RUN_EXIT_REASON + 4)
        .ok_or_else(|| format!("KVM_GET_VCPU_MMAP_SIZE returned {run_size}"))?;
    let run = Mapping::new(
        run_size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        vcpu.as_raw_fd(),
        "mapping the vCPU's kvm_run",
    )?;

    let mut sregs = KvmSregs::default();
    kvm_ioctl(
        vcpu.as_raw_fd(),
        KVM_GET_SREGS,
        &mut sregs as *mut _ as usize,
        "KVM_GET_SREGS",
    )?;
    // Real mode after reset, but with CS at 0 so execution starts at physical address 0.
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    kvm_ioctl(
        vcpu.as_raw_fd(),
        KVM_SET_SREGS,
        &sregs as *const _ as usize,
        "KVM_SET_SREGS",
    )?;
    let regs = KvmRegs {
        rip: 0,
        rflags: 2, // bit 1 is reserved and always set
        ..KvmRegs::default()
    };
    kvm_ioctl(
        vcpu.as_raw_fd(),
        KVM_SET_REGS,
        &regs as *const _ as usize,
        "KVM_SET_REGS",
    )?;

    kvm_ioctl(vcpu.as_raw_fd(), KVM_RUN, 0, "KVM_RUN")?;
    // SAFETY: the kvm_run mapping is larger than the offset (checked above) and aligned; the
    // kernel wrote it before KVM_RUN returned.
    let exit_reason =
        unsafe { std::ptr::read_volatile(run.ptr.add(KVM_RUN_EXIT_REASON).cast::<u32>()) };
    if exit_reason != KVM_EXIT_HLT {
        return Err(format!(
            "the test guest stopped with KVM exit reason {exit_reason} instead of {KVM_EXIT_HLT} \
             (HLT)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Whether the probe gets as far as the (cached) test guest for this user.
    fn kvm_opens() -> bool {
        open_device(Path::new(KVM_DEVICE)).is_ok()
    }

    /// Bounded, and cached per boot. On this development machine /dev/kvm exists but cannot
    /// run a normal guest (no vmx/svm for nested virtualization), so the answer is TCG.
    #[test]
    fn probe_is_bounded_and_cached_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run/airlock");
        let started = Instant::now();
        let first = probe(&runtime);
        // Bounded: it returned (a hung probe would hang this test). Timing is printed, not asserted.
        eprintln!("probe: {} in {:?}", describe(&first), started.elapsed());

        if !kvm_opens() || cpu_virtualization_flag().is_err() {
            assert!(matches!(first, Accel::Tcg { .. }), "{first:?}");
        }
        if kvm_opens() && cpu_virtualization_flag().is_err() {
            // This machine: a paravirtual /dev/kvm, on which QEMU cannot boot a kernel.
            let Accel::Tcg { why } = &first else {
                panic!("{first:?}")
            };
            assert!(why.contains("no vmx or svm flag"), "{why}");
        }

        if kvm_opens() {
            let record = read_cache(&runtime.join(CACHE_FILE)).expect("a cache record");
            let boot_id = std::fs::read_to_string(BOOT_ID).unwrap();
            assert_eq!(record.boot_id, boot_id.trim());
            assert_eq!(record.result, first);
            assert_eq!(probe(&runtime), first);
        }
    }

    /// The test guest itself (the ioctl sequence), past the CPU-flag gate, wherever /dev/kvm
    /// opens. This machine's paravirtual KVM does run it: one `hlt` is not a kernel boot, which is
    /// why the flag check comes first.
    #[test]
    fn the_one_instruction_guest_runs_within_the_bound() {
        let Ok(kvm) = open_device(Path::new(KVM_DEVICE)) else {
            eprintln!("no usable {KVM_DEVICE}: nothing to run");
            return;
        };
        let started = Instant::now();
        let accel = run_test_guest(kvm, Path::new(KVM_DEVICE), PROBE_TIMEOUT);
        eprintln!(
            "test guest: {} in {:?}",
            describe(&accel),
            started.elapsed()
        );
        if let Accel::Tcg { why } = &accel {
            assert!(why.starts_with("/dev/kvm is present but"), "{why}");
        }
    }

    #[test]
    fn a_record_from_another_boot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let stale = ProbeRecord {
            boot_id: "another boot".into(),
            result: Accel::Tcg {
                why: "stale".into(),
            },
        };
        std::fs::write(
            dir.path().join(CACHE_FILE),
            serde_json::to_vec(&stale).unwrap(),
        )
        .unwrap();
        let accel = probe(dir.path());
        assert_ne!(accel, stale.result);
        if kvm_opens() {
            let record = read_cache(&dir.path().join(CACHE_FILE)).unwrap();
            assert_ne!(record.boot_id, "another boot");
        }
    }

    #[test]
    fn a_missing_device_means_tcg_at_once_and_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let accel = probe_device(&dir.path().join("kvm"), dir.path(), PROBE_TIMEOUT);
        let Accel::Tcg { why } = &accel else {
            panic!("{accel:?}")
        };
        assert!(why.contains("no hardware virtualization"), "{why}");
        assert!(!dir.path().join(CACHE_FILE).exists());
        assert!(describe(&accel).starts_with("TCG (software emulation"));
        assert_eq!(describe(&Accel::Kvm), "KVM (hardware virtualization)");
    }

    #[test]
    fn the_cache_format_is_stable() {
        let record = ProbeRecord {
            boot_id: "b".into(),
            result: Accel::Tcg { why: "w".into() },
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"boot_id":"b","result":{"accel":"tcg","why":"w"}}"#
        );
        let kvm: ProbeRecord =
            serde_json::from_str(r#"{"boot_id":"b","result":{"accel":"kvm"}}"#).unwrap();
        assert_eq!(kvm.result, Accel::Kvm);
    }
}
