//! End to end: the host's kernel boots an initramfs made by `airlock_vm::initramfs` under
//! QEMU's TCG (no KVM needed), its `/init` loads every module in the order we computed, prints
//! a marker on the serial console and powers off. This proves the kernel lookup, the module
//! order, the cpio format and the console device node together, on this machine.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_vm::initramfs;
use airlock_vm::kernel::GuestKernel;
use airlock_vm::modules::{BASE_MODULES, load_plan};
use airlock_vm::qemu::find_qemu;

const MARKER: &str = "AIRLOCK-SMOKE-OK";
const TIMEOUT: Duration = Duration::from_secs(60);

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn the_guest_kernel_boots_our_initramfs_under_tcg() {
    let kernel =
        GuestKernel::find(None).expect("a guest kernel (apt-get install linux-image-cloud-amd64)");
    let qemu = find_qemu().expect("QEMU (apt-get install qemu-system-x86)");
    let dir = tempfile::tempdir().unwrap();

    // The stand-in agent: a static binary, so the initramfs needs no libraries.
    let init = dir.path().join("init");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smoke_init.rs");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&init)
        .arg(&fixture)
        .output()
        .expect("rustc to build the test's /init");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let image = dir.path().join("initramfs.cpio");
    initramfs::build(&init, &kernel, BASE_MODULES, &[], &image).unwrap();
    let modules = load_plan(&kernel.modules_dir, BASE_MODULES, &[])
        .unwrap()
        .modules
        .len();

    let console = dir.path().join("console.log");
    let qemu_log = dir.path().join("qemu.log");
    let log = File::create(&qemu_log).unwrap();
    let started = Instant::now();
    let mut child = Command::new(&qemu)
        .args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "256"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill(); // SIGKILL to this child's pid
            let _ = child.wait();
            panic!(
                "QEMU did not finish within {TIMEOUT:?}\n--- console:\n{}\n--- qemu:\n{}",
                tail(&console),
                tail(&qemu_log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = started.elapsed();
    eprintln!("TCG boot to power-off took {took:?} ({modules} modules)");

    let text = std::fs::read_to_string(&console).unwrap_or_default();
    for line in text.lines().filter(|l| l.contains("AIRLOCK-SMOKE")) {
        eprintln!("guest: {line}");
    }
    let report = format!(
        "--- console:\n{}\n--- qemu:\n{}",
        tail(&console),
        tail(&qemu_log)
    );
    assert!(status.success(), "QEMU exited with {status}\n{report}");
    assert!(text.contains(MARKER), "no marker\n{report}");
    assert!(
        text.contains(&format!("AIRLOCK-SMOKE loaded={modules} failed=0")),
        "not every module loaded\n{report}"
    );
}
