//! Which kernel modules the guest loads, in which order.
//!
//! The host kernel's `modules.dep` (written by depmod) lists, for every module, the modules it
//! needs. [`load_plan`] takes the dependency closure of the wanted names, dependencies first,
//! each module once, and leaves out what is built into the kernel (`modules.builtin`). Module
//! names are compared with `-` and `_` as the same character, as the kernel does.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Result, VmError};

/// What every guest needs: PCI transport, the sandbox disk (virtio-blk, ext4), the agent's
/// channel (virtio-console), the network, the host share (virtiofs, which brings fuse) and the
/// copy-on-write layer (overlay). A kernel lacking any of these cannot run a sandbox.
pub const BASE_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtiofs",
    "overlay",
    "ext4",
];

/// What a Docker daemon inside the guest needs: bridge networking, veth pairs, and NAT/filter
/// tables (legacy `ip_tables` as well as the nf_tables back end Debian's iptables uses).
/// `xt_nat` carries the DNAT target of published ports. Modules a kernel lacks are left out:
/// Docker reports what it then cannot do.
pub const DOCKER_MODULES: &[&str] = &[
    "bridge",
    "veth",
    "br_netfilter",
    "overlay",
    "nf_nat",
    "nf_conntrack",
    "xt_MASQUERADE",
    "xt_conntrack",
    "xt_addrtype",
    "xt_nat",
    "iptable_nat",
    "iptable_filter",
    "ip_tables",
    "x_tables",
    "nft_compat",
    "nf_tables",
    "nft_chain_nat",
];

/// How a module file is compressed on the host (the guest always gets a plain `.ko`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

/// One module file of the host's kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module's name, normalised (`_`, never `-`).
    pub name: String,
    /// Its file on the host.
    pub path: PathBuf,
    pub compression: Compression,
}

impl Module {
    /// The name of the uncompressed file in the guest: `<name>.ko`.
    pub fn file_name(&self) -> String {
        format!("{}.ko", self.name)
    }

    /// The module's uncompressed contents.
    pub fn read(&self) -> Result<Vec<u8>> {
        if self.compression == Compression::Gzip {
            return Err(VmError::Modules(format!(
                "{} is gzip-compressed, which Airlock does not unpack (it reads plain, .xz and \
                 .zst modules); use a kernel whose modules are not gzip-compressed, or \
                 decompress this kernel's modules and run `sudo depmod`",
                self.path.display()
            )));
        }
        let file = std::fs::File::open(&self.path).map_err(VmError::io_path(&self.path))?;
        let mut reader = BufReader::new(file);
        let mut out = Vec::new();
        let failed = |e: String| {
            VmError::Modules(format!(
                "cannot decompress {}: {e}; the file may be damaged (reinstall the kernel's \
                 modules package)",
                self.path.display()
            ))
        };
        match self.compression {
            Compression::None => {
                reader
                    .read_to_end(&mut out)
                    .map_err(VmError::io_path(&self.path))?;
            }
            Compression::Xz => {
                lzma_rs::xz_decompress(&mut reader, &mut out).map_err(|e| failed(e.to_string()))?
            }
            Compression::Zstd => {
                let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut reader)
                    .map_err(|e| failed(e.to_string()))?;
                decoder
                    .read_to_end(&mut out)
                    .map_err(|e| failed(e.to_string()))?;
            }
            Compression::Gzip => unreachable!("refused above"),
        }
        Ok(out)
    }
}

/// The modules to load, in order, and what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadPlan {
    /// Dependencies first; every module once.
    pub modules: Vec<Module>,
    /// Wanted names that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Optional names this kernel has neither as a module nor built in.
    pub missing_optional: Vec<String>,
}

impl LoadPlan {
    /// The modules' names in load order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|m| m.name.as_str()).collect()
    }
}

/// `virtio-pci` and `virtio_pci` name the same module.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/fuse/fuse.ko.zst` → (`fuse`, zstd).
fn name_of(path: &str) -> Option<(String, Compression)> {
    let file = path.rsplit('/').next()?;
    let (stem, compression) = if let Some(s) = file.strip_suffix(".ko") {
        (s, Compression::None)
    } else if let Some(s) = file.strip_suffix(".ko.xz") {
        (s, Compression::Xz)
    } else if let Some(s) = file.strip_suffix(".ko.zst") {
        (s, Compression::Zstd)
    } else if let Some(s) = file.strip_suffix(".ko.gz") {
        (s, Compression::Gzip)
    } else {
        return None;
    };
    (!stem.is_empty()).then(|| (normalize(stem), compression))
}

/// One line of `modules.dep`: the module's file and the files it depends on.
struct DepEntry {
    path: PathBuf,
    compression: Compression,
    deps: Vec<String>,
}

/// The dependency closure of `wanted` (each must exist, as a module or built in) and of
/// `optional` (left out where missing), from `<modules_dir>/modules.dep`.
pub fn load_plan(modules_dir: &Path, wanted: &[&str], optional: &[&str]) -> Result<LoadPlan> {
    let dep_file = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file).map_err(|e| {
        VmError::Modules(format!(
            "cannot read {}: {e}; the kernel's module index is missing: run `sudo depmod {}`",
            dep_file.display(),
            modules_dir
                .file_name()
                .map(|v| v.to_string_lossy())
                .unwrap_or_default()
        ))
    })?;
    let mut entries: HashMap<String, DepEntry> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || {
            VmError::Modules(format!(
                "{} line {}: expected `<module file>: <dependencies>`, found {line:?}; \
                 regenerate it with `sudo depmod`",
                dep_file.display(),
                n + 1
            ))
        };
        let (file, deps) = line.split_once(':').ok_or_else(malformed)?;
        let (name, compression) = name_of(file.trim()).ok_or_else(malformed)?;
        let deps = deps
            .split_whitespace()
            .map(|d| name_of(d).map(|(name, _)| name).ok_or_else(malformed))
            .collect::<Result<Vec<_>>>()?;
        entries.entry(name).or_insert(DepEntry {
            path: modules_dir.join(file.trim()),
            compression,
            deps,
        });
    }
    // modules.builtin is absent on some kernels with no built-in modules worth listing.
    let builtin: HashSet<String> = std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| name_of(l.trim()).map(|(name, _)| name))
        .collect();

    let mut resolver = Resolver {
        dep_file: &dep_file,
        entries: &entries,
        builtin: &builtin,
        done: HashSet::new(),
        plan: LoadPlan::default(),
    };
    for (names, required) in [(wanted, true), (optional, false)] {
        for raw in names {
            let name = normalize(raw);
            if builtin.contains(&name) {
                if !resolver.plan.builtin.contains(&name) {
                    resolver.plan.builtin.push(name);
                }
            } else if entries.contains_key(&name) {
                resolver.visit(&name, &mut Vec::new())?;
            } else if required {
                return Err(VmError::Modules(format!(
                    "the kernel in {} has no module {name:?} and does not have it built in; the \
                     guest needs it: use a kernel that has it (Debian: linux-image-cloud-amd64)",
                    modules_dir.display()
                )));
            } else if !resolver.plan.missing_optional.contains(&name) {
                resolver.plan.missing_optional.push(name);
            }
        }
    }
    Ok(resolver.plan)
}

struct Resolver<'a> {
    dep_file: &'a Path,
    entries: &'a HashMap<String, DepEntry>,
    builtin: &'a HashSet<String>,
    done: HashSet<String>,
    plan: LoadPlan,
}

impl Resolver<'_> {
    /// Depth first: a module's dependencies, then the module. `path` is the chain being
    /// resolved, to report a cycle instead of recursing forever.
    fn visit(&mut self, name: &str, path: &mut Vec<String>) -> Result<()> {
        if self.done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(VmError::Modules(format!(
                "{} has a dependency cycle ({} -> {name}); regenerate it with `sudo depmod`",
                self.dep_file.display(),
                path.join(" -> ")
            )));
        }
        let entry = self.entries.get(name).ok_or_else(|| {
            VmError::Modules(format!(
                "{} names {name:?} as a dependency of {:?} but has no entry for it; regenerate \
                 it with `sudo depmod`",
                self.dep_file.display(),
                path.last().map(String::as_str).unwrap_or("?")
            ))
        })?;
        path.push(name.to_string());
        // depmod lists the deepest dependencies last; modprobe loads them first.
        for dep in entry.deps.iter().rev() {
            self.visit(dep, path)?;
        }
        path.pop();
        self.done.insert(name.to_string());
        self.plan.modules.push(Module {
            name: name.to_string(),
            path: entry.path.clone(),
            compression: entry.compression,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::GuestKernel;
    use std::process::Command;

    fn position(plan: &LoadPlan, name: &str) -> usize {
        plan.names()
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} not in {:?}", plan.names()))
    }

    #[test]
    fn this_kernels_base_and_docker_modules_load_dependencies_first() {
        let kernel = GuestKernel::find(None).unwrap();
        let plan = load_plan(&kernel.modules_dir, BASE_MODULES, DOCKER_MODULES).unwrap();
        let names = plan.names();
        let unique: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "duplicates in {names:?}");
        assert!(position(&plan, "virtio_ring") < position(&plan, "virtio_pci"));
        assert!(position(&plan, "virtio") < position(&plan, "virtio_pci"));
        assert!(position(&plan, "fuse") < position(&plan, "virtiofs"));
        assert!(position(&plan, "failover") < position(&plan, "net_failover"));
        assert!(position(&plan, "net_failover") < position(&plan, "virtio_net"));
        assert!(position(&plan, "x_tables") < position(&plan, "ip_tables"));
        assert!(position(&plan, "nf_conntrack") < position(&plan, "nf_nat"));
        assert!(position(&plan, "bridge") < position(&plan, "br_netfilter"));
        // Debian's cloud kernel builds ext4 in.
        assert!(plan.builtin.contains(&"ext4".to_string()), "{plan:?}");
        // Case matters: xt_MASQUERADE is a different module from xt_masquerade.
        assert!(names.contains(&"xt_MASQUERADE"));
        for m in &plan.modules {
            assert!(m.path.is_file(), "{m:?}");
            assert_eq!(m.compression, Compression::None, "{m:?}");
        }
        let virtio_ring = plan.modules.iter().find(|m| m.name == "virtio_ring");
        let bytes = virtio_ring.unwrap().read().unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
    }

    /// A made-up kernel: compressed modules, `-`/`_` spellings, builtins, missing names.
    fn fake_modules_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("kernel/a")).unwrap();
        std::fs::write(
            d.join("modules.dep"),
            "kernel/a/top.ko: kernel/a/mid-dash.ko.zst kernel/a/base.ko.xz\n\
             kernel/a/mid-dash.ko.zst: kernel/a/base.ko.xz\n\
             kernel/a/base.ko.xz:\n\
             kernel/a/other.ko: kernel/a/base.ko.xz\n\
             kernel/a/gz.ko.gz:\n",
        )
        .unwrap();
        std::fs::write(d.join("modules.builtin"), "kernel/fs/built-in.ko\n").unwrap();
        for (name, body) in [
            ("base.ko", "BASE"),
            ("mid-dash.ko", "MID"),
            ("top.ko", "TOP"),
        ] {
            std::fs::write(d.join("kernel/a").join(name), body.repeat(1000)).unwrap();
        }
        std::fs::write(d.join("kernel/a/other.ko"), b"OTHER").unwrap();
        // Compressed as the kernel's build compresses modules.
        let xz = Command::new("xz")
            .args(["--check=crc32", "--lzma2=dict=1MiB"])
            .arg(d.join("kernel/a/base.ko"))
            .status()
            .expect("xz (xz-utils) to make a test module");
        assert!(xz.success());
        let zstd = Command::new("zstd")
            .args(["-q", "-T0", "--rm", "-19"])
            .arg(d.join("kernel/a/mid-dash.ko"))
            .status()
            .expect("zstd to make a test module");
        assert!(zstd.success());
        dir
    }

    #[test]
    fn closure_order_builtins_and_compressed_modules() {
        let dir = fake_modules_dir();
        let plan = load_plan(
            dir.path(),
            &["top", "built_in", "mid_dash"],
            &["other", "absent", "base"],
        )
        .unwrap();
        assert_eq!(plan.names(), ["base", "mid_dash", "top", "other"]);
        assert_eq!(plan.builtin, ["built_in"]);
        assert_eq!(plan.missing_optional, ["absent"]);
        let read = |name: &str| {
            plan.modules
                .iter()
                .find(|m| m.name == name)
                .unwrap()
                .read()
                .unwrap()
        };
        assert_eq!(plan.modules[0].compression, Compression::Xz);
        assert_eq!(read("base"), "BASE".repeat(1000).as_bytes());
        assert_eq!(plan.modules[1].compression, Compression::Zstd);
        assert_eq!(plan.modules[1].file_name(), "mid_dash.ko");
        assert_eq!(read("mid_dash"), "MID".repeat(1000).as_bytes());
        assert_eq!(read("top"), "TOP".repeat(1000).as_bytes());
    }

    #[test]
    fn missing_required_module_is_an_error_and_gzip_is_refused_clearly() {
        let dir = fake_modules_dir();
        let msg = load_plan(dir.path(), &["top", "absent"], &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no module \"absent\""), "{msg}");
        assert!(msg.contains("linux-image-cloud-amd64"), "{msg}");

        let plan = load_plan(dir.path(), &["gz"], &[]).unwrap();
        let msg = plan.modules[0].read().unwrap_err().to_string();
        assert!(msg.contains("gzip-compressed"), "{msg}");
    }

    #[test]
    fn cycles_and_missing_index_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let msg = load_plan(dir.path(), &["x"], &[]).unwrap_err().to_string();
        assert!(msg.contains("depmod"), "{msg}");
        std::fs::write(dir.path().join("modules.dep"), "a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        let msg = load_plan(dir.path(), &["a"], &[]).unwrap_err().to_string();
        assert!(msg.contains("cycle (a -> b -> a)"), "{msg}");
    }
}
