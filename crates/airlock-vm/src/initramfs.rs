//! The guest's initramfs: the agent as `/init`, the kernel modules it loads, and the few
//! directories and the device node it needs before it can mount anything.
//!
//! Layout (uncompressed cpio, "newc" format):
//!
//! ```text
//! /init                    the guest agent (0755)
//! /modules.order           one file name per line, in load order (files in /lib/modules)
//! /lib/modules/<name>.ko   each module, uncompressed, named by its normalised module name
//! /dev/console             character device 5:1, so the kernel gives /init a console
//! /dev /proc /sys /run /host /disk /newroot /tmp /lib /lib/modules
//! ```
//!
//! The archive is left uncompressed: the kernel unpacks it without a decompressor, and it is
//! built once per agent, kernel and module list ([`cached`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, VmError};
use crate::kernel::GuestKernel;
use crate::modules::{self, BASE_MODULES, DOCKER_MODULES, LoadPlan};

/// The directories the agent expects to exist (mount points and module store), parents first.
pub const DIRECTORIES: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "host",
    "disk",
    "newroot",
    "tmp",
    "lib",
    "lib/modules",
];

/// Where the modules are in the guest.
pub const MODULES_DIR: &str = "lib/modules";
/// The list of module files in load order.
pub const MODULES_ORDER: &str = "modules.order";

/// Bumped whenever the archive's layout changes, so cached images are rebuilt.
const LAYOUT_VERSION: u32 = 1;

/// Build the initramfs at `out` (written to a temporary file, then renamed into place): `agent`
/// as `/init`, and the modules `wanted` (all must exist in `kernel`) and `optional` (those that
/// exist) with their dependencies.
pub fn build(
    agent: &Path,
    kernel: &GuestKernel,
    wanted: &[&str],
    optional: &[&str],
    out: &Path,
) -> Result<()> {
    let agent_bytes = read_agent(agent)?;
    let plan = modules::load_plan(&kernel.modules_dir, wanted, optional)?;
    write_atomically(out, |w| write_archive(w, &agent_bytes, &plan))
}

/// The initramfs for this agent and kernel in `cache_dir`, built if it is not there yet: the
/// base modules, plus Docker's if `docker`. The file is named by a hash of the agent's bytes,
/// the kernel version and the modules (names, files, sizes and times), so any change yields a
/// new image and an existing one never needs checking.
pub fn cached(
    cache_dir: &Path,
    agent: &Path,
    kernel: &GuestKernel,
    docker: bool,
) -> Result<PathBuf> {
    let agent_bytes = read_agent(agent)?;
    let optional = if docker { DOCKER_MODULES } else { &[] };
    let plan = modules::load_plan(&kernel.modules_dir, BASE_MODULES, optional)?;

    // Every field is length-prefixed, so no two different inputs hash the same bytes.
    let mut key = Vec::with_capacity(agent_bytes.len() + 4096);
    let mut field = |bytes: &[u8]| {
        key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        key.extend_from_slice(bytes);
    };
    field(&LAYOUT_VERSION.to_le_bytes());
    field(&agent_bytes);
    field(kernel.version.as_bytes());
    for m in &plan.modules {
        let meta = std::fs::metadata(&m.path).map_err(VmError::io_path(&m.path))?;
        field(m.name.as_bytes());
        field(m.path.as_os_str().as_encoded_bytes());
        field(&meta.len().to_le_bytes());
        field(&meta.mtime().to_le_bytes());
        field(&meta.mtime_nsec().to_le_bytes());
    }
    let hash = airlock_core::units::fnv1a(key);
    let path = cache_dir.join(format!("initramfs-{}-{hash:016x}.cpio", kernel.version));
    if path.is_file() {
        // Mark it used, for `prune`.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir).map_err(VmError::io_path(cache_dir))?;
    write_atomically(&path, |w| write_archive(w, &agent_bytes, &plan))?;
    Ok(path)
}

/// Delete cached images but the `keep` most recently used (a new agent or kernel makes new ones;
/// `airlock gc` calls this). A running VM keeps its image through its bind mount. Returns what
/// was removed.
pub fn prune(cache_dir: &Path, keep: usize) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("initramfs-") && n.ends_with(".cpio")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    images.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    images
        .into_iter()
        .skip(keep)
        .filter(|(_, p)| std::fs::remove_file(p).is_ok())
        .map(|(_, p)| p)
        .collect()
}

fn read_agent(agent: &Path) -> Result<Vec<u8>> {
    std::fs::read(agent).map_err(|e| {
        VmError::Setup(format!(
            "cannot read the guest agent {}: {e}; it is built with Airlock (the airlock-guest \
             binary); reinstall Airlock or point to the agent's actual location",
            agent.display()
        ))
    })
}

fn write_archive(out: &mut dyn Write, agent: &[u8], plan: &LoadPlan) -> Result<()> {
    let io = |e| VmError::Io {
        what: "writing the initramfs".into(),
        source: e,
    };
    let mut cpio = NewcWriter::new(out);
    for dir in DIRECTORIES {
        let perm = if *dir == "tmp" { 0o1777 } else { 0o755 };
        cpio.directory(dir, perm).map_err(io)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
    cpio.file("init", 0o755, agent).map_err(io)?;
    let mut order = String::new();
    for m in &plan.modules {
        order.push_str(&m.file_name());
        order.push('\n');
    }
    cpio.file(MODULES_ORDER, 0o644, order.as_bytes())
        .map_err(io)?;
    for m in &plan.modules {
        let bytes = m.read()?;
        cpio.file(&format!("{MODULES_DIR}/{}", m.file_name()), 0o644, &bytes)
            .map_err(io)?;
    }
    cpio.finish().map_err(io)
}

/// Write `path` through a temporary file in the same directory, synced and renamed into place:
/// a reader sees no file or the whole file, never a partial one (the cache trusts its names).
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(VmError::io_path(&tmp))?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file: File = w
            .into_inner()
            .map_err(|e| VmError::io_path(&tmp)(e.into_error()))?;
        file.sync_all().map_err(VmError::io_path(&tmp))?;
        std::fs::rename(&tmp, path).map_err(VmError::io_path(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.tmp-<pid>-<n>`: unique within this process and among processes.
pub(crate) fn temporary_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// A writer of cpio "newc" archives, the format the kernel unpacks as initramfs
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
///
/// Hand-written because the format is trivial: per entry a 110-byte ASCII header ("070701" and
/// thirteen 8-digit hex fields), the NUL-terminated name and the data, each padded to 4 bytes,
/// then a "TRAILER!!!" entry. Writing it here keeps full control of what the kernel checks
/// (modes, device numbers, padding) with no dependency for some sixty lines.
struct NewcWriter<'a> {
    out: &'a mut dyn Write,
    next_inode: u32,
}

impl<'a> NewcWriter<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        NewcWriter { out, next_inode: 1 }
    }

    fn directory(&mut self, name: &str, perm: u32) -> std::io::Result<()> {
        self.entry(name, libc::S_IFDIR | perm, 2, (0, 0), &[])
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, libc::S_IFREG | perm, 1, (0, 0), data)
    }

    fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        self.entry(name, libc::S_IFCHR | perm, 1, (major, minor), &[])
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.next_inode = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush()
    }

    /// Owner root, time 0 (reproducible), file system device 0.
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{name} is larger than a cpio entry can hold (4 GiB)"),
            )
        })?;
        let name_size = name.len() as u32 + 1;
        let inode = self.next_inode;
        self.next_inode += 1;
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {devmajor:08x}{devminor:08x}{rmajor:08x}{rminor:08x}{name_size:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            devmajor = 0,
            devminor = 0,
            rmajor = rdev.0,
            rminor = rdev.1,
            check = 0,
        );
        debug_assert_eq!(header.len(), 110);
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name_size as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// One entry read back from an archive.
    #[derive(Debug)]
    pub(crate) struct Entry {
        pub name: String,
        pub mode: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// An independent reader of newc archives, strict about the format.
    pub(crate) fn parse(archive: &[u8]) -> Vec<Entry> {
        let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        let align = |n: usize| n.div_ceil(4) * 4;
        let mut entries = Vec::new();
        let mut pos = 0;
        loop {
            let h = &archive[pos..pos + 110];
            assert_eq!(&h[..6], b"070701", "bad magic at {pos}");
            let field = |i: usize| hex(&h[6 + 8 * i..14 + 8 * i]);
            let (mode, size, rdev, name_size) =
                (field(1), field(6), (field(9), field(10)), field(11));
            let name_start = pos + 110;
            let name = &archive[name_start..name_start + name_size as usize - 1];
            assert_eq!(archive[name_start + name_size as usize - 1], 0);
            let data_start = align(name_start + name_size as usize);
            let data = archive[data_start..data_start + size as usize].to_vec();
            pos = align(data_start + size as usize);
            let name = String::from_utf8(name.to_vec()).unwrap();
            if name == "TRAILER!!!" {
                assert_eq!(pos, archive.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
        }
    }

    #[test]
    fn builds_a_bootable_layout_with_modules_in_load_order() {
        let kernel = GuestKernel::find(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"\x7fELF dummy agent").unwrap();
        let out = dir.path().join("initramfs.cpio");
        build(
            &agent,
            &kernel,
            BASE_MODULES,
            &["bridge", "no_such_module"],
            &out,
        )
        .unwrap();

        // Nothing but the result is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");

        let archive = std::fs::read(&out).unwrap();
        let entries = parse(&archive);
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} not in the archive"))
        };
        let init = find("init");
        assert_eq!(init.mode, libc::S_IFREG | 0o755);
        assert_eq!(init.data, b"\x7fELF dummy agent");
        let console = find("dev/console");
        assert_eq!(console.mode, libc::S_IFCHR | 0o600);
        assert_eq!(console.rdev, (5, 1));
        for d in DIRECTORIES {
            let perm = if *d == "tmp" { 0o1777 } else { 0o755 };
            assert_eq!(find(d).mode, libc::S_IFDIR | perm, "{d}");
        }
        // Every directory comes before what is in it.
        let index = |name: &str| entries.iter().position(|e| e.name == name).unwrap();
        assert!(index("lib") < index("lib/modules"));
        assert!(index("dev") < index("dev/console"));

        let order = String::from_utf8(find(MODULES_ORDER).data.clone()).unwrap();
        let order: Vec<&str> = order.lines().collect();
        let at = |name: &str| {
            order
                .iter()
                .position(|l| *l == name)
                .unwrap_or_else(|| panic!("{name} not in {order:?}"))
        };
        assert!(at("virtio_ring.ko") < at("virtio_pci.ko"));
        assert!(at("virtio.ko") < at("virtio_pci.ko"));
        assert!(at("fuse.ko") < at("virtiofs.ko"));
        assert!(at("llc.ko") < at("bridge.ko"));
        assert!(!order.contains(&"ext4.ko"), "built in: {order:?}");
        for line in &order {
            let e = find(&format!("lib/modules/{line}"));
            assert_eq!(e.mode, libc::S_IFREG | 0o644);
            assert_eq!(&e.data[..4], b"\x7fELF", "{line}");
        }
        let module_files = entries
            .iter()
            .filter(|e| e.name.starts_with("lib/modules/"))
            .count();
        assert_eq!(module_files, order.len());

        // An independent reader agrees, where the cpio tool is installed.
        if let Ok(listing) = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(File::open(&out).unwrap())
            .output()
        {
            assert!(listing.status.success(), "{listing:?}");
            let listing = String::from_utf8(listing.stdout).unwrap();
            let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(listing.lines().collect::<Vec<_>>(), names);
        }
    }

    /// Put the v1 agent back at `path` (the cache key is the content).
    fn agent_v1(path: &Path) -> PathBuf {
        std::fs::write(path, b"agent v1").unwrap();
        path.to_path_buf()
    }

    #[test]
    fn cached_builds_once_per_agent_and_module_set() {
        let kernel = GuestKernel::find(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent v1").unwrap();

        let first = cached(&cache, &agent, &kernel, false).unwrap();
        assert!(first.starts_with(&cache));
        assert!(
            first
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("initramfs-{}-", kernel.version))
        );
        let inode = std::fs::metadata(&first).unwrap().ino();
        let again = cached(&cache, &agent, &kernel, false).unwrap();
        assert_eq!(again, first);
        assert_eq!(std::fs::metadata(&again).unwrap().ino(), inode, "rebuilt");

        let docker = cached(&cache, &agent, &kernel, true).unwrap();
        assert_ne!(docker, first);
        let docker_entries = parse(&std::fs::read(&docker).unwrap());
        assert!(
            docker_entries
                .iter()
                .any(|e| e.name == "lib/modules/br_netfilter.ko")
        );
        let base_entries = parse(&std::fs::read(&first).unwrap());
        assert!(
            !base_entries
                .iter()
                .any(|e| e.name == "lib/modules/bridge.ko")
        );

        std::fs::write(&agent, b"agent v2").unwrap();
        let new_agent = cached(&cache, &agent, &kernel, false).unwrap();
        assert_ne!(new_agent, first);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);

        // Using the first image again makes it recent: pruning to two keeps it and the newest,
        // and removes the docker image, the least recently used.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            cached(&cache, &agent_v1(&agent), &kernel, false).unwrap(),
            first
        );
        std::fs::write(&agent, b"agent v2").unwrap();
        let removed = prune(&cache, 2);
        assert_eq!(removed, vec![docker.clone()]);
        assert!(first.exists() && new_agent.exists() && !docker.exists());

        let msg = cached(&cache, &dir.path().join("missing"), &kernel, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot read the guest agent"), "{msg}");
    }
}
