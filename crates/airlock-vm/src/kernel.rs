//! The guest kernel: a host kernel image (`/boot/vmlinuz-<version>`) whose modules are installed
//! (`/lib/modules/<version>`), so the initramfs can carry the few modules the guest needs.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::error::{Result, VmError};

const BOOT_DIR: &str = "/boot";
const MODULES_ROOT: &str = "/lib/modules";

/// What to install when there is no kernel, per distribution family.
const INSTALL_HINT: &str = "install a kernel for the guest: `sudo apt-get install linux-image-cloud-amd64` \
     (Debian), `sudo apt-get install linux-image-virtual` (Ubuntu) or `sudo dnf install kernel-core \
     kernel-modules` (Fedora); or set vm.kernel (or AIRLOCK_VM_KERNEL) to a vmlinuz-<version> whose \
     modules are in /lib/modules/<version>";

/// A kernel image the guest boots, and where its modules are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The bzImage (`vmlinuz-<version>`).
    pub image: PathBuf,
    /// The kernel release, as in `uname -r` and `/lib/modules/<version>`.
    pub version: String,
    /// `/lib/modules/<version>`.
    pub modules_dir: PathBuf,
}

impl GuestKernel {
    /// The kernel to boot: `explicit` (from `vm.kernel` or `AIRLOCK_VM_KERNEL`, which the caller
    /// reads), whose version comes from its file name `vmlinuz-<version>`; otherwise the newest
    /// `/boot/vmlinuz-*` whose modules are installed. Either way the image must be readable by
    /// the current user and look like a bzImage.
    pub fn find(explicit: Option<&Path>) -> Result<GuestKernel> {
        find_in(Path::new(BOOT_DIR), Path::new(MODULES_ROOT), explicit)
    }
}

fn find_in(boot: &Path, modules_root: &Path, explicit: Option<&Path>) -> Result<GuestKernel> {
    let kernel = match explicit {
        Some(image) => explicit_kernel(image, modules_root)?,
        None => newest_kernel(boot, modules_root)?,
    };
    check_image(&kernel.image)?;
    Ok(kernel)
}

/// `vmlinuz-6.1.0-48-cloud-amd64` → `6.1.0-48-cloud-amd64`.
fn version_of(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    let version = name.strip_prefix("vmlinuz-")?;
    (!version.is_empty() && !version.contains('/')).then(|| version.to_string())
}

fn explicit_kernel(image: &Path, modules_root: &Path) -> Result<GuestKernel> {
    if !image.exists() {
        return Err(VmError::Kernel(format!(
            "{} does not exist: check vm.kernel (or AIRLOCK_VM_KERNEL)",
            image.display()
        )));
    }
    // A link such as /vmlinuz → boot/vmlinuz-<version> names the version in its target.
    let version = version_of(image)
        .or_else(|| {
            std::fs::canonicalize(image)
                .ok()
                .as_deref()
                .and_then(version_of)
        })
        .ok_or_else(|| {
            VmError::Kernel(format!(
                "cannot tell the kernel version of {}: its file name must be vmlinuz-<version> as \
                 in /boot (e.g. vmlinuz-6.1.0-48-cloud-amd64); keep the original name when you \
                 copy a kernel",
                image.display()
            ))
        })?;
    let modules_dir = modules_root.join(&version);
    if !modules_dir.is_dir() {
        return Err(VmError::Kernel(format!(
            "{} is kernel {version}, but {} does not exist: the guest needs that kernel's \
             modules; install the package that ships them, or use a kernel from /boot whose \
             modules are installed",
            image.display(),
            modules_dir.display()
        )));
    }
    Ok(GuestKernel {
        image: image.to_path_buf(),
        version,
        modules_dir,
    })
}

fn newest_kernel(boot: &Path, modules_root: &Path) -> Result<GuestKernel> {
    let entries = std::fs::read_dir(boot).map_err(|e| {
        VmError::Kernel(format!(
            "cannot list {}: {e}; {INSTALL_HINT}",
            boot.display()
        ))
    })?;
    let mut with_modules = Vec::new();
    let mut without_modules = Vec::new();
    for entry in entries.flatten() {
        let image = entry.path();
        let Some(version) = version_of(&image) else {
            continue;
        };
        if !image.is_file() {
            continue;
        }
        if modules_root.join(&version).is_dir() {
            with_modules.push((version, image));
        } else {
            without_modules.push(image);
        }
    }
    let Some((version, image)) = with_modules
        .into_iter()
        .max_by(|a, b| compare_versions(&a.0, &b.0))
    else {
        let found = if without_modules.is_empty() {
            format!("no vmlinuz-* in {}", boot.display())
        } else {
            without_modules.sort();
            let names: Vec<String> = without_modules
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            format!(
                "{} has no modules in {}",
                names.join(", "),
                modules_root.display()
            )
        };
        return Err(VmError::Kernel(format!("{found}; {INSTALL_HINT}")));
    };
    Ok(GuestKernel {
        modules_dir: modules_root.join(&version),
        image,
        version,
    })
}

/// Compare kernel releases piecewise, numbers as numbers: `6.1.0-48` > `6.1.0-9`,
/// `6.10.0` > `6.9.12`.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Piece<'a> {
        // Declaration order ranks text below numbers: `6.1.0-rc1` < `6.1.0-1`.
        Text(&'a str),
        Number(u64),
    }
    fn pieces(s: &str) -> impl Iterator<Item = Piece<'_>> {
        let mut rest = s;
        std::iter::from_fn(move || {
            rest = rest.trim_start_matches(['.', '-', '_', '+', '~']);
            let first = rest.chars().next()?;
            let len = if first.is_ascii_digit() {
                rest.find(|c: char| !c.is_ascii_digit())
            } else {
                rest.find(|c: char| c.is_ascii_digit() || ".-_+~".contains(c))
            }
            .unwrap_or(rest.len());
            let (piece, tail) = rest.split_at(len);
            rest = tail;
            Some(if first.is_ascii_digit() {
                Piece::Number(piece.parse().unwrap_or(u64::MAX))
            } else {
                Piece::Text(piece)
            })
        })
    }
    pieces(a).cmp(pieces(b))
}

/// The image must be readable by us (Ubuntu installs kernels 0600) and be a bzImage.
fn check_image(image: &Path) -> Result<()> {
    let mut file = File::open(image).map_err(|e| {
        if e.kind() == ErrorKind::PermissionDenied {
            unreadable(image)
        } else {
            VmError::Kernel(format!("cannot open {}: {e}", image.display()))
        }
    })?;
    // The x86 boot protocol puts "HdrS" at 0x202 of every bzImage.
    let mut head = [0u8; 0x206];
    let is_bzimage = file.read_exact(&mut head).is_ok() && &head[0x202..0x206] == b"HdrS";
    if !is_bzimage {
        return Err(VmError::Kernel(format!(
            "{} is not an x86 kernel image (bzImage); point vm.kernel (or AIRLOCK_VM_KERNEL) at \
             a /boot/vmlinuz-<version>",
            image.display()
        )));
    }
    Ok(())
}

fn unreadable(image: &Path) -> VmError {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    VmError::Kernel(format!(
        "{image} is not readable by you (Ubuntu installs kernels with mode 0600). Either make it \
         readable: `sudo chmod 0644 {image}` (kernel updates install new images 0600 again; \
         `sudo dpkg-statoverride --update --add root root 0644 {image}` keeps this one \
         readable), or copy it, keeping its name, to a place you can read: `mkdir -p \
         ~/.local/share/airlock && sudo install -m 0644 {image} ~/.local/share/airlock/` and set \
         vm.kernel (or AIRLOCK_VM_KERNEL) to ~/.local/share/airlock/{name}",
        image = image.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A file that passes the bzImage check.
    fn fake_image(path: &Path) {
        let mut bytes = vec![0u8; 0x400];
        bytes[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn versions_compare_numerically() {
        use Ordering::*;
        assert_eq!(
            compare_versions("6.1.0-48-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Greater
        );
        assert_eq!(
            compare_versions("6.10.0-1-amd64", "6.9.12-1-amd64"),
            Greater
        );
        assert_eq!(
            compare_versions("6.8.0-45-generic", "6.8.0-45-generic"),
            Equal
        );
        assert_eq!(
            compare_versions("5.15.0-100-generic", "6.2.0-1-generic"),
            Less
        );
        assert_eq!(compare_versions("6.1.0-rc1", "6.1.0-1"), Less);
        assert_eq!(compare_versions("6.1", "6.1.0"), Less);
    }

    #[test]
    fn finds_this_machines_kernel() {
        // This machine has linux-image-cloud-amd64 installed (the VM tier's tests need it).
        let k = GuestKernel::find(None).expect("a guest kernel on this machine");
        assert!(k.image.starts_with("/boot"), "{k:?}");
        assert_eq!(
            k.image.file_name().unwrap(),
            &*format!("vmlinuz-{}", k.version)
        );
        assert!(k.modules_dir.join("modules.dep").is_file(), "{k:?}");
        let again = GuestKernel::find(Some(&k.image)).unwrap();
        assert_eq!(again, k);
    }

    #[test]
    fn picks_the_newest_kernel_that_has_modules() {
        let dir = tempfile::tempdir().unwrap();
        let (boot, mods) = (dir.path().join("boot"), dir.path().join("modules"));
        std::fs::create_dir_all(&boot).unwrap();
        for v in ["6.1.0-9-amd64", "6.1.0-48-amd64", "6.1.0-50-amd64"] {
            fake_image(&boot.join(format!("vmlinuz-{v}")));
        }
        fake_image(&boot.join("vmlinuz")); // a link-like name without a version: ignored
        for v in ["6.1.0-9-amd64", "6.1.0-48-amd64"] {
            std::fs::create_dir_all(mods.join(v)).unwrap();
        }
        // 6.1.0-50 is newer but has no modules.
        let k = find_in(&boot, &mods, None).unwrap();
        assert_eq!(k.version, "6.1.0-48-amd64");
        assert_eq!(k.image, boot.join("vmlinuz-6.1.0-48-amd64"));
        assert_eq!(k.modules_dir, mods.join("6.1.0-48-amd64"));
    }

    #[test]
    fn says_what_to_install_when_there_is_no_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let (boot, mods) = (dir.path().join("boot"), dir.path().join("modules"));
        std::fs::create_dir_all(&boot).unwrap();
        let msg = find_in(&boot, &mods, None).unwrap_err().to_string();
        assert!(
            msg.contains("apt-get install linux-image-cloud-amd64"),
            "{msg}"
        );
        fake_image(&boot.join("vmlinuz-6.1.0-1-amd64"));
        let msg = find_in(&boot, &mods, None).unwrap_err().to_string();
        assert!(
            msg.contains("vmlinuz-6.1.0-1-amd64 has no modules"),
            "{msg}"
        );
    }

    #[test]
    fn explicit_kernel_needs_a_versioned_name_and_its_modules() {
        let dir = tempfile::tempdir().unwrap();
        let mods = dir.path().join("modules");
        std::fs::create_dir_all(mods.join("6.1.0-48-amd64")).unwrap();

        let bad_name = dir.path().join("bzImage");
        fake_image(&bad_name);
        let msg = find_in(dir.path(), &mods, Some(&bad_name))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("must be vmlinuz-<version>"), "{msg}");

        // A link named otherwise takes the version from its target.
        let good = dir.path().join("vmlinuz-6.1.0-48-amd64");
        fake_image(&good);
        let link = dir.path().join("kernel");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let k = find_in(dir.path(), &mods, Some(&link)).unwrap();
        assert_eq!(k.version, "6.1.0-48-amd64");
        assert_eq!(k.image, link);

        let no_modules = dir.path().join("vmlinuz-6.2.0-1-amd64");
        fake_image(&no_modules);
        let msg = find_in(dir.path(), &mods, Some(&no_modules))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("6.2.0-1-amd64 does not exist"), "{msg}");

        let missing = dir.path().join("vmlinuz-9.9.9");
        let msg = find_in(dir.path(), &mods, Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not exist"), "{msg}");
    }

    #[test]
    fn rejects_a_file_that_is_not_a_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let mods = dir.path().join("modules");
        std::fs::create_dir_all(mods.join("6.1.0-48-amd64")).unwrap();
        let initrd = dir.path().join("vmlinuz-6.1.0-48-amd64");
        std::fs::write(&initrd, b"070701 not a kernel").unwrap();
        let msg = find_in(dir.path(), &mods, Some(&initrd))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not an x86 kernel image"), "{msg}");
    }

    /// An unreadable image (Ubuntu's 0600) gives the exact fix. The check really opens the file
    /// as another user: the test thread switches its filesystem uid (per thread on Linux), which
    /// also drops root's permission-override capabilities for that thread.
    #[test]
    fn unreadable_kernel_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vmlinuz-6.8.0-45-generic");
        fake_image(&image);
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let other_uid = if euid == 0 { 65534 } else { euid };
        let result = std::thread::spawn({
            let image = image.clone();
            move || {
                if euid == 0 {
                    // SAFETY: setfsuid only changes this thread's filesystem uid; the thread
                    // ends right after the check.
                    unsafe { libc::setfsuid(other_uid) };
                } else {
                    // Not root: our own 0000 file is unreadable to us.
                    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o000))
                        .unwrap();
                }
                check_image(&image)
            }
        })
        .join()
        .unwrap();
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains("is not readable by you"), "{msg}");
        assert!(
            msg.contains(&format!("sudo chmod 0644 {}", image.display())),
            "{msg}"
        );
        assert!(msg.contains("AIRLOCK_VM_KERNEL"), "{msg}");
    }
}
