//! The host programs that run a sandbox VM, and their command lines: QEMU
//! (`qemu-system-x86_64`) and `virtiofsd`, which serves the host directory to the guest.
//!
//! The argument lists are argv vectors, not shell lines: nothing is quoted. QEMU's own
//! `key=value,...` syntax still needs commas in values doubled, which [`qemu_args`] does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use airlock_vm_proto::{PORT_NAME, SHARE_TAG};

use crate::error::{Result, VmError};
use crate::kvm::Accel;

/// The machine QEMU emulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `microvm`: no firmware, no PCI, virtio-mmio devices described in ACPI. Boots fastest.
    Microvm,
    /// `pc`: the classic PC with PCI (SeaBIOS), for QEMUs without `microvm`.
    Pc,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Pc => "pc",
        }
    }
}

/// The machine to use with `qemu` on `accel`: `AIRLOCK_VM_MACHINE` (`microvm` or `pc`) if set;
/// else `microvm` with KVM when this QEMU has it (asked once per QEMU binary and size, cached in
/// `runtime_dir`); else `pc`.
///
/// Not microvm under TCG: it has no HPET and no ACPI PM timer, so without kvmclock a
/// distribution kernel must calibrate its TSC against the PIT, which under TCG fails about one
/// boot in six and then hangs in early boot (measured here: 4 hangs in 24 boots, with and without
/// `pit=on`). The pc machine's HPET gives it a reference and boots every time.
pub fn machine(qemu: &Path, accel: &Accel, runtime_dir: &Path) -> Machine {
    match std::env::var("AIRLOCK_VM_MACHINE").as_deref() {
        Ok("pc") => return Machine::Pc,
        Ok("microvm") => return Machine::Microvm,
        _ => {}
    }
    if !matches!(accel, Accel::Kvm) {
        return Machine::Pc;
    }
    let size = std::fs::metadata(qemu).map(|m| m.len()).unwrap_or(0);
    let key = format!("{}:{size}", qemu.display());
    let cache = runtime_dir.join("qemu-machine");
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((k, m)) = text.trim().rsplit_once(' ')
        && k == key
    {
        return if m == "microvm" {
            Machine::Microvm
        } else {
            Machine::Pc
        };
    }
    let has_microvm = std::process::Command::new(qemu)
        .args(["-machine", "help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some("microvm"))
        })
        .unwrap_or(false);
    let m = if has_microvm {
        Machine::Microvm
    } else {
        Machine::Pc
    };
    let _ = std::fs::write(&cache, format!("{key} {}\n", m.as_str()));
    m
}

/// How to start one sandbox VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub machine: Machine,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The guest kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs ([`crate::initramfs::cached`]).
    pub initramfs: PathBuf,
    /// The sandbox's raw ext4 disk ([`crate::disk::create_disk`]).
    pub disk: PathBuf,
    /// virtiofsd's vhost-user socket (virtiofsd creates it and must be listening first).
    pub fs_socket: PathBuf,
    /// The agent channel's socket; QEMU creates it and the host connects.
    pub agent_socket: PathBuf,
    /// The guest's serial console: the base path of a FIFO pair (`PATH.in`, `PATH.out`) that
    /// the jail drains into a capped log, so a guest cannot fill the host's runtime directory.
    pub console_pipe: PathBuf,
    /// Published ports: (port on the host's 127.0.0.1, port in the guest), TCP.
    pub forwards: Vec<(u16, u16)>,
    /// Appended to the kernel command line.
    pub cmdline_extra: String,
}

/// The kernel command line: serial console, reboot (which `-no-reboot` turns into QEMU's exit)
/// at once on panic, quiet boot, the agent as init.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet rdinit=/init";

/// QEMU's arguments (without the program name) for `config`.
///
/// - `-M microvm` (virtio-mmio devices, no firmware: the fastest boot) with KVM, or `-M pc` (PCI,
///   SeaBIOS) under TCG and for QEMUs without it (see [`machine`]); the initramfs carries both
///   transports' modules. KVM uses
///   `-cpu host`; TCG `-cpu max` (every feature QEMU can emulate).
/// - Guest memory is a shared memfd (virtiofsd maps it): microvm takes it as its
///   `memory-backend`, pc as a NUMA node.
/// - `-nodefaults -no-user-config -nographic`: no default devices, no configuration from the
///   host's files, no display; nothing on QEMU's stdio.
/// - `-no-reboot`: a guest reboot, power-off or panic ends QEMU.
/// - Devices: the host share (vhost-user-fs, tag [`SHARE_TAG`]), the disk (virtio-blk,
///   writeback cache; `discard=unmap` lets the guest's trims punch holes back into the sparse
///   image), the agent's port (virtio-serial, name [`PORT_NAME`]; QEMU listens, does not wait),
///   user-mode networking, and the serial console into a FIFO pair that the jail drains into a
///   capped log.
pub fn qemu_args(config: &VmConfig) -> Vec<String> {
    let (accel, cpu) = match config.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg { .. } => ("tcg", "max"),
    };
    let cmdline = if config.cmdline_extra.trim().is_empty() {
        CMDLINE.to_string()
    } else {
        format!("{CMDLINE} {}", config.cmdline_extra.trim())
    };
    let mut netdev = "user,id=net0".to_string();
    for (host, guest) in &config.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    let mem = config.memory_mib;
    let microvm = config.machine == Machine::Microvm;
    let (machine, bus) = if microvm {
        (
            format!("microvm,accel={accel},memory-backend=mem"),
            "device",
        )
    } else {
        (format!("pc,accel={accel}"), "pci")
    };
    let mut args = vec![
        "-M".to_string(),
        machine,
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        config.cpus.to_string(),
        "-m".into(),
        mem.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        path_arg(&config.kernel),
        "-initrd".into(),
        path_arg(&config.initramfs),
        "-append".into(),
        cmdline,
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-chardev".into(),
        format!("socket,id=fs,path={}", option_value(&config.fs_socket)),
        "-device".into(),
        format!("vhost-user-fs-{bus},chardev=fs,tag={SHARE_TAG}"),
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=disk,cache=writeback,discard=unmap",
            option_value(&config.disk)
        ),
        "-device".into(),
        format!("virtio-blk-{bus},drive=disk"),
        "-device".into(),
        format!("virtio-serial-{bus}"),
        "-chardev".into(),
        format!(
            "socket,id=agent,path={},server=on,wait=off",
            option_value(&config.agent_socket)
        ),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={PORT_NAME}"),
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-{bus},netdev=net0"),
        "-chardev".into(),
        format!("pipe,id=con,path={}", option_value(&config.console_pipe)),
        "-serial".into(),
        "chardev:con".into(),
    ];
    if !microvm {
        args.extend(["-numa".into(), "node,memdev=mem".into()]);
    }
    args
}

/// A path as a whole argument (`-kernel`, `-initrd` take the rest of the argument verbatim).
fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A path inside QEMU's `key=value,...` syntax, where `,,` stands for a comma.
fn option_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// virtiofsd's arguments (without the program name) to serve `shared_dir` on `socket`.
///
/// - `--sandbox none`: virtiofsd's own namespace sandbox needs root or subordinate id maps;
///   Airlock confines the process itself, and this works unprivileged.
/// - `--cache auto`: the guest caches metadata and data for a short while and revalidates,
///   which suits a directory the host may change under it.
/// - `--no-announce-submounts`: the guest stacks an overlayfs root on the share, and overlayfs
///   refuses automount points (announced submounts) in a lower layer (EREMOTE), so the jail's
///   mounts are served as plain directories. The cost: one device number for the whole share.
/// - `--inode-file-handles=never`: file handles need open_by_handle_at, which the jail's seccomp
///   refuses (by design: it is the classic container escape).
/// - `--modcaps=-mknod:-setfcap`: when virtiofsd runs as (namespaced) root it would claim these,
///   and the jail's bounding set lacks them.
/// - `--rlimit-nofile=0`: keep the jail's own file limit.
/// - No `--xattr`: without it the guest learns once that the share has no extended attributes;
///   with it, every `write` would first ask virtiofsd for `security.capability` (the kernel's
///   privilege-dropping check), one more round trip per write, and an unprivileged virtiofsd
///   could not set `trusted.*`/`security.*` attributes anyway.
pub fn virtiofsd_args(socket: &Path, shared_dir: &Path) -> Vec<String> {
    vec![
        "--socket-path".into(),
        path_arg(socket),
        "--shared-dir".into(),
        path_arg(shared_dir),
        "--sandbox".into(),
        "none".into(),
        "--cache".into(),
        "auto".into(),
        "--no-announce-submounts".into(),
        "--inode-file-handles=never".into(),
        "--modcaps=-mknod:-setfcap".into(),
        "--rlimit-nofile=0".into(),
    ]
}

const QEMU: &str = "qemu-system-x86_64";
const QEMU_INSTALL: &str = "`sudo apt-get install qemu-system-x86` (Debian, Ubuntu) or `sudo dnf \
                            install qemu-system-x86-core` (Fedora)";
const VIRTIOFSD_INSTALL: &str = "`sudo apt-get install virtiofsd` (Debian ≥ 13, Ubuntu ≥ 24.04), \
                                 `sudo dnf install virtiofsd` (Fedora), or `cargo install \
                                 virtiofsd` (Debian 12, which has no package; it needs \
                                 libseccomp-dev and libcap-ng-dev)";

/// The QEMU binary: `qemu-system-x86_64` on `PATH`.
pub fn find_qemu() -> Result<PathBuf> {
    find_program(QEMU, &[]).ok_or(VmError::MissingProgram {
        program: QEMU,
        searched: "PATH".into(),
        install: QEMU_INSTALL,
    })
}

/// A QEMU binary the user configured: it must be an executable file.
pub fn check_qemu(path: &Path) -> Result<PathBuf> {
    check_configured(path, QEMU, QEMU_INSTALL)
}

/// `virtiofsd`: on `PATH`, in `~/.cargo/bin` (`cargo install`), `/usr/libexec` (Debian's,
/// Ubuntu's and Fedora's package) or `/usr/lib/qemu`. Only the Rust virtiofsd is taken: QEMU
/// packages up to 7.2 (Debian 12) put their legacy C daemon at `/usr/lib/qemu/virtiofsd`,
/// which has other options and needs root.
pub fn find_virtiofsd() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    let mut dirs: Vec<&Path> = Vec::new();
    if let Some(dir) = &cargo_bin {
        dirs.push(dir);
    }
    dirs.extend([Path::new("/usr/libexec"), Path::new("/usr/lib/qemu")]);
    let mut legacy = Vec::new();
    for candidate in program_candidates("virtiofsd", &dirs) {
        if is_rust_virtiofsd(&candidate) {
            return Ok(candidate);
        }
        legacy.push(candidate.display().to_string());
    }
    let searched = "PATH, ~/.cargo/bin, /usr/libexec, /usr/lib/qemu";
    Err(VmError::MissingProgram {
        program: "virtiofsd",
        searched: if legacy.is_empty() {
            searched.into()
        } else {
            format!(
                "{searched}; only QEMU's legacy virtiofsd ({}), which Airlock cannot use",
                legacy.join(", ")
            )
        },
        install: VIRTIOFSD_INSTALL,
    })
}

/// The Rust virtiofsd prints `virtiofsd 1.14.0`; QEMU's legacy one `virtiofsd version 7.2.22`.
fn is_rust_virtiofsd(path: &Path) -> bool {
    std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("virtiofsd "))
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// A virtiofsd binary the user configured: it must be an executable file.
pub fn check_virtiofsd(path: &Path) -> Result<PathBuf> {
    check_configured(path, "virtiofsd", VIRTIOFSD_INSTALL)
}

fn check_configured(path: &Path, program: &'static str, install: &'static str) -> Result<PathBuf> {
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else {
        Err(VmError::MissingProgram {
            program,
            searched: format!(
                "configured as {}, which is not an executable file",
                path.display()
            ),
            install,
        })
    }
}

/// The first executable `name` in the directories of `PATH`, then in `extra_dirs`.
pub(crate) fn find_program(name: &str, extra_dirs: &[&Path]) -> Option<PathBuf> {
    program_candidates(name, extra_dirs).next()
}

/// Every executable `name` in the directories of `PATH`, then in `extra_dirs`.
fn program_candidates<'a>(
    name: &'a str,
    extra_dirs: &'a [&Path],
) -> impl Iterator<Item = PathBuf> + 'a {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .collect::<Vec<_>>()
        .into_iter()
        .chain(extra_dirs.iter().map(|d| d.to_path_buf()))
        .map(move |d| d.join(name))
        .filter(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn config(accel: Accel) -> VmConfig {
        VmConfig {
            machine: Machine::Pc,
            accel,
            cpus: 2,
            memory_mib: 1024,
            kernel: "/boot/vmlinuz-6.1.0-48-cloud-amd64".into(),
            initramfs: "/cache/initramfs.cpio".into(),
            disk: "/data/sb/disk,1.img".into(),
            fs_socket: "/run/sb/fs.sock".into(),
            agent_socket: "/run/sb/agent.sock".into(),
            console_pipe: "/run/sb/console".into(),
            forwards: vec![(8080, 5173), (5432, 5432)],
            cmdline_extra: "airlock.debug=1".into(),
        }
    }

    /// The value after each occurrence of `flag`.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line() {
        let args = qemu_args(&config(Accel::Tcg { why: "test".into() }));
        assert_eq!(values(&args, "-M"), ["pc,accel=tcg"]);
        assert_eq!(values(&args, "-cpu"), ["max"]);
        assert_eq!(values(&args, "-smp"), ["2"]);
        assert_eq!(values(&args, "-m"), ["1024"]);
        for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag}");
        }
        assert_eq!(
            values(&args, "-kernel"),
            ["/boot/vmlinuz-6.1.0-48-cloud-amd64"]
        );
        assert_eq!(values(&args, "-initrd"), ["/cache/initramfs.cpio"]);
        assert_eq!(
            values(&args, "-append"),
            ["console=ttyS0 panic=-1 quiet rdinit=/init airlock.debug=1"]
        );
        assert_eq!(
            values(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=1024M,share=on"]
        );
        assert_eq!(values(&args, "-numa"), ["node,memdev=mem"]);
        assert_eq!(
            values(&args, "-chardev"),
            [
                "socket,id=fs,path=/run/sb/fs.sock",
                "socket,id=agent,path=/run/sb/agent.sock,server=on,wait=off",
                "pipe,id=con,path=/run/sb/console",
            ]
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "vhost-user-fs-pci,chardev=fs,tag=airlock",
                "virtio-blk-pci,drive=disk",
                "virtio-serial-pci",
                "virtserialport,chardev=agent,name=airlock.agent",
                "virtio-net-pci,netdev=net0",
            ]
        );
        // The comma in the disk's name is doubled for QEMU's option parser.
        assert_eq!(
            values(&args, "-drive"),
            ["file=/data/sb/disk,,1.img,format=raw,if=none,id=disk,cache=writeback,discard=unmap"]
        );
        assert_eq!(
            values(&args, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:8080-:5173,hostfwd=tcp:127.0.0.1:5432-:5432"]
        );
        assert_eq!(values(&args, "-serial"), ["chardev:con"]);
    }

    #[test]
    fn kvm_command_line_and_no_extra_cmdline() {
        let mut c = config(Accel::Kvm);
        c.cmdline_extra = " ".into();
        c.forwards.clear();
        let args = qemu_args(&c);
        assert_eq!(values(&args, "-M"), ["pc,accel=kvm"]);
        assert_eq!(values(&args, "-cpu"), ["host"]);
        assert_eq!(values(&args, "-append"), [CMDLINE]);
        assert_eq!(values(&args, "-netdev"), ["user,id=net0"]);
    }

    /// QEMU itself accepts every option and device we pass (it checks them before it needs the
    /// kernel: `-S` and a monitor command would go further than needed, so we ask it to list
    /// the devices by name instead).
    #[test]
    fn this_qemu_has_every_device_we_use() {
        let qemu = find_qemu().expect("qemu-system-x86_64 on this machine");
        let out = Command::new(&qemu)
            .args(["-M", "pc", "-device", "help"])
            .output()
            .unwrap();
        let devices = String::from_utf8_lossy(&out.stdout);
        for d in [
            "vhost-user-fs-pci",
            "virtio-blk-pci",
            "virtio-serial-pci",
            "virtserialport",
            "virtio-net-pci",
        ] {
            assert!(
                devices.contains(&format!("name \"{d}\"")),
                "{d} missing from {qemu:?}"
            );
        }
    }

    #[test]
    fn microvm_uses_mmio_devices_and_its_memory_backend() {
        let mut c = config(Accel::Tcg { why: "test".into() });
        c.machine = Machine::Microvm;
        let args = qemu_args(&c);
        assert_eq!(
            values(&args, "-M"),
            ["microvm,accel=tcg,memory-backend=mem"]
        );
        assert!(values(&args, "-numa").is_empty());
        let devices = values(&args, "-device");
        assert!(devices.iter().all(|d| !d.contains("-pci")), "{devices:?}");
        assert!(devices.contains(&"virtio-blk-device,drive=disk"));
        // This QEMU has the machine and every device used on it.
        let qemu = find_qemu().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(machine(&qemu, &Accel::Kvm, dir.path()), Machine::Microvm);
        assert!(dir.path().join("qemu-machine").exists(), "cached");
        assert_eq!(machine(&qemu, &Accel::Kvm, dir.path()), Machine::Microvm);
        let tcg = Accel::Tcg { why: "test".into() };
        assert_eq!(machine(&qemu, &tcg, dir.path()), Machine::Pc);
        let help = Command::new(&qemu)
            .args(["-device", "help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for d in &devices {
            let name = d.split(',').next().unwrap();
            if name != "virtserialport" {
                assert!(
                    help.contains(&format!("\"{name}\"")),
                    "{name} unknown to {qemu:?}"
                );
            }
        }
    }

    #[test]
    fn finds_this_machines_programs_and_says_what_to_install() {
        assert!(find_qemu().unwrap().ends_with(QEMU));
        let virtiofsd = find_virtiofsd().expect("virtiofsd on this machine");
        assert!(virtiofsd.ends_with("virtiofsd"));
        // The flags we pass exist in this virtiofsd.
        let help = Command::new(&virtiofsd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let args = virtiofsd_args(Path::new("/s"), Path::new("/d"));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap_or(flag);
            assert!(help.contains(name), "{name} unknown to {virtiofsd:?}");
        }

        let msg = check_qemu(Path::new("/nonexistent/qemu"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("apt-get install qemu-system-x86"), "{msg}");
        assert!(msg.contains("/nonexistent/qemu"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("virtiofsd");
        std::fs::write(&not_executable, b"#!/bin/sh\n").unwrap();
        let msg = check_virtiofsd(&not_executable).unwrap_err().to_string();
        assert!(msg.contains("cargo install virtiofsd"), "{msg}");
        assert!(find_program("no-such-program-airlock", &[Path::new("/usr/sbin")]).is_none());
        // Debian 12's QEMU ships the legacy C daemon here; it must not be taken.
        let legacy = Path::new("/usr/lib/qemu/virtiofsd");
        if legacy.exists() {
            assert!(!is_rust_virtiofsd(legacy));
        }
        assert!(is_rust_virtiofsd(&virtiofsd));
    }
}
