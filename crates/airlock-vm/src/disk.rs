//! The sandbox's disk: a sparse raw image formatted ext4, which the guest mounts for its
//! writable layer. It takes host space only as the guest writes to it.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Result, VmError};
use crate::initramfs::temporary_sibling;
use crate::qemu::find_program;

/// The file system label the guest can find the disk by.
pub const LABEL: &str = "airlock";

/// The smallest disk worth formatting (ext4 with a journal needs a few MiB).
pub const MIN_SIZE: u64 = 8 << 20;

/// Create `path`: a sparse file of `size_bytes` (rounded up to 4 KiB) formatted ext4, labelled
/// [`LABEL`], its root directory owned by the calling user. The image is made under a temporary
/// name and renamed into place, so `path` is either absent or complete; an existing `path` is
/// never overwritten.
pub fn create_disk(path: &Path, size_bytes: u64) -> Result<()> {
    let mkfs = find_program("mkfs.ext4", &[Path::new("/usr/sbin"), Path::new("/sbin")]).ok_or(
        VmError::MissingProgram {
            program: "mkfs.ext4",
            searched: "PATH, /usr/sbin, /sbin".into(),
            install: "`sudo apt-get install e2fsprogs` (Debian, Ubuntu) or `sudo dnf install \
                      e2fsprogs` (Fedora)",
        },
    )?;
    create_disk_with(&mkfs, path, size_bytes)
}

fn create_disk_with(mkfs: &Path, path: &Path, size_bytes: u64) -> Result<()> {
    if size_bytes < MIN_SIZE {
        return Err(VmError::Setup(format!(
            "a sandbox disk of {} is too small: give it at least {}",
            airlock_core::units::format_size(size_bytes),
            airlock_core::units::format_size(MIN_SIZE)
        )));
    }
    if path.exists() {
        return Err(VmError::Setup(format!(
            "{} already exists; remove it first if it is no longer needed",
            path.display()
        )));
    }
    let tmp = temporary_sibling(path);
    let result = format_image(mkfs, &tmp, size_bytes.next_multiple_of(4096))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(VmError::io_path(path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn format_image(mkfs: &Path, image: &Path, size: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(VmError::io_path(image))?;
    // set_len on a new file allocates nothing: the image is sparse.
    file.set_len(size).map_err(VmError::io_path(image))?;
    drop(file);
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // -m 0: no blocks reserved for root (the sandbox is disposable and its processes all
    // share the space). lazy_*_init: the fresh file is all zeros already, so mkfs need not
    // write the inode tables and journal, which keeps the image sparse.
    let output = Command::new(mkfs)
        .args(["-q", "-F", "-m", "0", "-L", LABEL, "-E"])
        .arg(format!(
            "root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1"
        ))
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| VmError::Io {
            what: format!("running {}", mkfs.display()),
            source: e,
        })?;
    if !output.status.success() {
        return Err(VmError::Program {
            what: format!(
                "formatting the sandbox disk {} with mkfs.ext4",
                image.display()
            ),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The host space `path` takes (allocated blocks, not its apparent size).
pub fn disk_usage(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(VmError::io_path(path))?;
    Ok(meta.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_a_sparse_ext4_image() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        create_disk(&disk, 256 << 20).unwrap();
        assert_eq!(names_in(dir.path()), ["disk.img"]);
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 256 << 20);

        let mut f = std::fs::File::open(&disk).unwrap();
        let mut superblock = [0u8; 1024];
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut superblock).unwrap();
        // s_magic at 0x38 (byte 1080 of the image), s_volume_name at 0x78.
        assert_eq!(
            u16::from_le_bytes([superblock[0x38], superblock[0x39]]),
            0xEF53
        );
        assert_eq!(&superblock[0x78..0x78 + LABEL.len() + 1], b"airlock\0");
        // s_r_blocks_count_lo at 0x08: nothing reserved.
        assert_eq!(&superblock[0x08..0x0c], &[0, 0, 0, 0]);

        let used = disk_usage(&disk).unwrap();
        eprintln!("a 256 MiB disk takes {used} bytes");
        assert!(used > 0 && used < 32 << 20, "{used}");
    }

    #[test]
    fn never_overwrites_and_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"precious").unwrap();
        let msg = create_disk(&disk, 64 << 20).unwrap_err().to_string();
        assert!(msg.contains("already exists"), "{msg}");
        assert_eq!(std::fs::read(&disk).unwrap(), b"precious");

        let other = dir.path().join("other.img");
        let msg = create_disk_with(Path::new("/bin/false"), &other, 64 << 20)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("with mkfs.ext4 failed"), "{msg}");
        assert_eq!(names_in(dir.path()), ["disk.img"]);

        let msg = create_disk(&other, 1 << 20).unwrap_err().to_string();
        assert!(msg.contains("too small"), "{msg}");
        assert_eq!(names_in(dir.path()), ["disk.img"]);
    }
}
