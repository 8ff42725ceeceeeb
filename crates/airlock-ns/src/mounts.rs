//! The sandbox's filesystem: a fresh root on tmpfs, assembled from copy-on-write or read-only
//! views of the host's system directories, a private home, private /tmp, /run and /dev, a fresh
//! /proc, and the workspace at its host path. Sensitive host files are masked.
//!
//! [`MountPlan::for_sandbox`] runs on the host side and only looks at the host (which directories
//! and masked files exist); [`MountPlan::apply`] runs in the sandbox's new mount namespace and
//! ends with `pivot_root`, after which no host path is reachable.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use airlock_core::spec::{SandboxSpec, WorkspaceMode};

use crate::error::{NsError, Result};
use crate::layers::Layers;

/// Host system directories shown inside (copy-on-write where ids allow, otherwise read-only).
pub const SYSTEM_DIRS: &[&str] = &["usr", "etc", "opt", "var", "srv"];

/// Where `--ssh-agent` shows the caller's agent socket inside the sandbox.
pub const SSH_AGENT_SOCK: &str = "/run/airlock/ssh-agent.sock";

/// Host files replaced by an empty file inside: credentials and keys of the host.
const MASKED_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/krb5.keytab",
    "/etc/ipsec.secrets",
    "/etc/ppp/chap-secrets",
    "/etc/ppp/pap-secrets",
    "/etc/sudoers",
    "/etc/docker/key.json",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/config.gz",
];

/// Host directories replaced by an empty read-only directory inside: private keys, other
/// services' state and secrets, host logs, and Airlock's own state.
const MASKED_DIRS: &[&str] = &[
    "/etc/ssl/private",
    "/etc/sudoers.d",
    "/etc/NetworkManager/system-connections",
    "/etc/wireguard",
    "/etc/openvpn",
    "/etc/credstore",
    "/etc/credstore.encrypted",
    "/etc/containers/auth",
    "/etc/libvirt/secrets",
    "/var/lib/airlock",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/containers",
    "/var/lib/kubelet",
    "/var/lib/libvirt",
    "/var/lib/lxc",
    "/var/lib/lxd",
    "/var/lib/incus",
    "/var/lib/machines",
    "/var/lib/private",
    "/var/lib/postgresql",
    "/var/lib/mysql",
    "/var/lib/redis",
    "/var/lib/sss",
    "/var/lib/systemd",
    "/var/lib/NetworkManager",
    "/var/lib/bluetooth",
    "/var/lib/polkit-1",
    "/var/lib/AccountsService",
    "/var/lib/snapd",
    "/var/lib/cloud",
    "/var/lib/waagent",
    "/var/lib/sudo",
    "/var/backups",
    "/var/cache/private",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
    "/proc/driver",
    "/sys/firmware",
    "/sys/kernel/security",
    "/sys/kernel/debug",
    "/sys/kernel/tracing",
    "/sys/kernel/config",
    "/sys/devices/virtual/dmi",
    "/sys/class/dmi",
    "/sys/fs/bpf",
    "/sys/fs/pstore",
    "/sys/fs/cgroup",
];

/// Host directories replaced by an empty, writable, private directory inside: the host's logs,
/// spools and temporary files are not the agent's business, but tools expect to write there.
const PRIVATE_DIRS: &[&str] = &["/var/log", "/var/tmp", "/var/spool", "/var/mail"];

/// The host paths every namespace sandbox hides (whichever of them exist): what `inspect` lists
/// (as `hidden`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Masks {
    /// Replaced by an empty read-only file.
    pub files: Vec<PathBuf>,
    /// Replaced by an empty read-only directory.
    pub dirs: Vec<PathBuf>,
    /// Replaced by an empty writable directory of the sandbox's own.
    pub private_dirs: Vec<PathBuf>,
}

impl Masks {
    /// The lists above, with the host's SSH host keys (`/etc/ssh/ssh_host_*_key`).
    pub fn of_host() -> Masks {
        let all = |list: &[&str]| -> Vec<PathBuf> { list.iter().map(PathBuf::from).collect() };
        let mut files = all(MASKED_FILES);
        if let Ok(rd) = std::fs::read_dir("/etc/ssh") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("ssh_host_") && n.ends_with("_key") {
                    files.push(e.path());
                }
            }
        }
        Masks {
            files,
            dirs: all(MASKED_DIRS),
            private_dirs: all(PRIVATE_DIRS),
        }
    }

    /// Only what exists on the host: a plain file, or a directory, where each list expects it
    /// (a mask over anything else is skipped inside too).
    pub fn existing(self) -> Masks {
        let is = |p: &PathBuf, dir: bool| {
            std::fs::symlink_metadata(p).is_ok_and(|m| if dir { m.is_dir() } else { m.is_file() })
        };
        Masks {
            files: self.files.into_iter().filter(|p| is(p, false)).collect(),
            dirs: self.dirs.into_iter().filter(|p| is(p, true)).collect(),
            private_dirs: self
                .private_dirs
                .into_iter()
                .filter(|p| is(p, true))
                .collect(),
        }
    }
}

/// Parts of /proc that stay visible but read-only.
const PROC_READONLY: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// Device nodes bound from the host into the sandbox's /dev.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A host file or directory shown inside at another path (the microVM tier's kernel, disk and
/// VMM sockets, for the sandbox that hosts its VMM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraBind {
    pub host: PathBuf,
    pub inside: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone)]
pub struct MountPlan {
    /// A host directory the init covers with a tmpfs of its own, in its own mount namespace only,
    /// to build the new root and the staging area in: nothing is created on the host for them
    /// (the directory is shared by every sandbox and stays empty there), and both go with the
    /// host's root at `pivot_root`.
    pub scratch: PathBuf,
    pub system_cow: bool,
    pub system_dirs: Vec<String>,
    /// Top-level symlinks of the host (`bin -> usr/bin` on merged-/usr systems).
    pub root_symlinks: Vec<(String, PathBuf)>,
    pub layers: Layers,
    pub home: PathBuf,
    pub workspace: PathBuf,
    pub mode: WorkspaceMode,
    /// Workspace subdirectories (relative) that get a plain directory of the sandbox's own
    /// instead of the copy-on-write layer (`--cache-dir`), stored at [`Layers::cache_dir`].
    pub cache_dirs: Vec<PathBuf>,
    pub masked_files: Vec<PathBuf>,
    pub masked_dirs: Vec<PathBuf>,
    pub private_dirs: Vec<PathBuf>,
    /// Host paths that hold Airlock's own state, hidden if they fall under a visible tree.
    pub hidden_state: Vec<PathBuf>,
    pub devpts_gid5: bool,
    /// The content of the sandbox's /etc/resolv.conf (written by the init in its scratch tmpfs
    /// and shown read-only).
    pub resolv_conf: Option<String>,
    /// The caller's SSH agent socket, shown at [`SSH_AGENT_SOCK`] (`--ssh-agent`).
    pub ssh_agent: Option<PathBuf>,
    /// A host file to show as the sandbox's system trust bundle (credential injection's CA added).
    pub trust_bundle: Option<PathBuf>,
    /// Keep the sandbox's layers in memory (a tmpfs of its own) instead of on disk: for `--rm`
    /// sandboxes.
    pub volatile_layers: bool,
    /// A root invoker's sandbox: its ids are shifted (see [`crate::namespaces::IdMap`]), so the
    /// init creates everything as root inside and takes host paths from idmapped clones.
    pub shifted: bool,
    /// Host paths the supervisor clones as idmapped mounts for a shifted sandbox (see
    /// [`crate::idmapped`]), in the order of the descriptors the init receives.
    pub staged_sources: Vec<PathBuf>,
    /// A template's directory (`system/<dir>`, `home`) stacked under the sandbox's layers.
    pub template: Option<PathBuf>,
    /// Owner (uid, gid) of the home directory, for homes created in memory.
    pub home_owner: (u32, u32),
    /// Whether the init creates a TUN device for transparent capture (see `net::needs_capture`).
    pub network_capture: bool,
    /// Extra host paths shown inside (see [`ExtraBind`]).
    pub extra_binds: Vec<ExtraBind>,
    /// Extra device nodes of the host's /dev shown inside (`kvm` for a VMM).
    pub extra_devices: Vec<String>,
    /// Where to assemble a *share tree* inside (for the microVM tier's file server): a tmpfs
    /// holding only the system directories (masks included), the root symlinks, the home and
    /// the workspace — not /proc, /sys, /dev, /run or /tmp of the sandbox.
    pub share_tree: Option<PathBuf>,
}

impl MountPlan {
    pub fn for_sandbox(
        spec: &SandboxSpec,
        layers: Layers,
        scratch: PathBuf,
        system_cow: bool,
        state_dirs: &[PathBuf],
    ) -> MountPlan {
        let system_dirs = SYSTEM_DIRS
            .iter()
            .filter(|d| {
                std::fs::symlink_metadata(Path::new("/").join(d))
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
            })
            .map(|d| d.to_string())
            .collect();
        let mut root_symlinks = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/") {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_symlink()).unwrap_or(false)
                    && let Ok(target) = std::fs::read_link(e.path())
                {
                    root_symlinks.push((e.file_name().to_string_lossy().into_owned(), target));
                }
            }
        }
        // Which of these exist is checked once, inside, where the masks are mounted (a stat per
        // entry here too was ~70 system calls on the start path for nothing).
        let Masks {
            files: masked_files,
            dirs: masked_dirs,
            private_dirs,
        } = Masks::of_host();
        let hidden_state = state_dirs
            .iter()
            .filter(|d| {
                SYSTEM_DIRS
                    .iter()
                    .any(|s| d.starts_with(Path::new("/").join(s)))
            })
            .filter(|d| d.exists())
            .cloned()
            .collect();
        MountPlan {
            scratch,
            system_cow,
            system_dirs,
            root_symlinks,
            layers,
            home: spec.user.home.clone(),
            workspace: spec.workspace.clone(),
            mode: spec.mode,
            cache_dirs: spec.cache_dirs.clone(),
            masked_files,
            masked_dirs,
            private_dirs,
            hidden_state,
            devpts_gid5: system_cow,
            resolv_conf: None,
            trust_bundle: None,
            ssh_agent: None,
            volatile_layers: false,
            shifted: false,
            staged_sources: Vec::new(),
            network_capture: true,
            home_owner: (spec.user.uid, spec.user.gid),
            template: None,
            extra_binds: Vec::new(),
            extra_devices: Vec::new(),
            share_tree: None,
        }
    }

    /// Every host path [`MountPlan::apply`] shows inside (read through an idmapped clone in a
    /// shifted sandbox). Device nodes, /sys and /proc are not among them.
    pub fn host_sources(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .system_dirs
            .iter()
            .map(|d| Path::new("/").join(d))
            .collect();
        v.extend(self.template.iter().cloned());
        // In-memory layers need nothing of the sandbox's directory, except a clone to show.
        if !self.volatile_layers || self.mode == WorkspaceMode::Clone {
            v.push(self.layers.dir.clone());
        }
        v.push(self.workspace.clone());
        v.extend(self.trust_bundle.iter().cloned());
        v.extend(self.ssh_agent.iter().cloned());
        v.extend(self.extra_binds.iter().map(|b| b.host.clone()));
        let mut seen = std::collections::HashSet::new();
        v.retain(|p| p.exists() && seen.insert(p.clone()));
        v
    }

    /// Build the sandbox's filesystem and switch to it. Runs in the child, in its own mount and
    /// user namespaces, before anything of the agent runs. `staged` are the idmapped clones of
    /// [`MountPlan::staged_sources`] (empty unless shifted).
    pub fn apply(
        &self,
        staged: Vec<std::os::fd::OwnedFd>,
        enter_netns: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        // Nothing we mount propagates back to the host, and nothing of the host's propagates in.
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        )?;
        let owner = if self.shifted { ",uid=0,gid=0" } else { "" };
        // Our own tmpfs over the scratch directory holds the new root and the staging area: no
        // directory is made on the host for them (and none is left to remove), and everything
        // in it goes with the host's root at `pivot_root` (one detach for everything; each
        // separate unmount costs an RCU grace period).
        mount(
            Some("tmpfs"),
            &self.scratch,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("mode=0700,size=1m{owner}")),
        )?;
        let scratch_fd = open_path(&self.scratch)?;
        // From here on only relative paths and descriptors: in a shifted sandbox, once we act as
        // root inside (below), the host's directories above the scratch tmpfs (Airlock's 0700
        // state) are closed to us, which is the point.
        fchdir(&scratch_fd)?;
        let scratch = PathBuf::from(format!("/proc/self/fd/{}", scratch_fd.as_raw_fd()));
        if self.shifted {
            // What we create from here on belongs to root inside (a filesystem of this user
            // namespace refuses creation by an id it cannot map, like the host's root).
            // SAFETY: setfsuid/setfsgid with plain ids; the second call reads the result back.
            let ok = unsafe {
                libc::setfsgid(0);
                libc::setfsuid(0);
                libc::setfsuid(u32::MAX) == 0
            };
            if !ok {
                return Err(NsError::Setup(
                    "could not act as root inside the sandbox's user namespace".into(),
                ));
            }
            // Changing ids cleared the parent-death signal: arm it again at once (the init
            // checks afterwards that the supervisor did not die meanwhile).
            // SAFETY: prctl with integer arguments.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
        }
        if let Some(content) = &self.resolv_conf {
            write_file(Path::new("resolv.conf"), content.as_bytes(), 0o644)?;
        }
        let new_root = Path::new("root");
        mkdir(new_root, 0o755)?;
        mount(
            Some("tmpfs"),
            new_root,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("mode=0755,size=16m{owner}")),
        )?;
        // The staging area (idmapped clones, a `--rm` sandbox's in-memory layers), reached
        // through a descriptor.
        let needs_stage = !staged.is_empty() || self.volatile_layers;
        let stage_fd = if needs_stage {
            mkdir(Path::new("stage"), 0o700)?;
            Some(open_path(Path::new("stage"))?)
        } else {
            None
        };
        let stage = stage_fd
            .as_ref()
            .map(|f| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
            .unwrap_or_default();
        // Where host path `p` is read from while the filesystem is built.
        let src =
            |p: &Path| crate::idmapped::staged_path(&self.staged_sources, &stage.join("src"), p);
        // Everything below is relative to the new root.
        chdir(new_root)?;
        let r = Path::new(".");
        // Paths through /proc/self/fd cost a procfs walk each: the many look-ups in the staging
        // area (clones, masks) run with the staging area as working directory instead.
        let root_fd = open_path(r)?;
        let in_stage = |work: &mut dyn FnMut() -> Result<()>| -> Result<()> {
            let Some(fd) = &stage_fd else { return work() };
            fchdir(fd)?;
            let res = work();
            fchdir(&root_fd)?;
            res
        };
        let staged_rel = |p: &Path| {
            p.strip_prefix(&stage)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| p.to_path_buf())
        };
        if !staged.is_empty() {
            let mut staged = Some(staged);
            in_stage(&mut || {
                crate::idmapped::stage(staged.take().unwrap_or_default(), Path::new("src"))
            })?;
        }
        airlock_core::startup::trace("mounts: staged");

        // A sandbox deleted when its command exits keeps its layers in memory: nothing there
        // outlives it, and overlayfs on a fresh tmpfs mounts ~15x faster than on disk. The tmpfs
        // sits in the staging area, which goes with the host's root at `pivot_root` (overlays
        // and binds keep their own references).
        let volatile_layers = if self.volatile_layers {
            let dir = stage.join("layers");
            mkdir(&dir, 0o700)?;
            mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("mode=0700"),
            )?;
            Some(Layers::new(&dir))
        } else {
            None
        };
        let disk_layers = Layers::new(&src(&self.layers.dir));
        // SAFETY: umask only swaps the process's file mode mask; the old one is put back.
        let umask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        } as u32;
        // Host paths masked in a system directory's upper layer (see `mask_in_upper`).
        let mut masked_in_upper: std::collections::HashSet<PathBuf> = Default::default();
        for d in &self.system_dirs {
            let host = src(&Path::new("/").join(d));
            let target = r.join(d);
            mkdir(&target, 0o755)?;
            // A template's frozen layer for this directory sits between the host's and ours.
            let lower = match self
                .template
                .as_ref()
                .map(|t| src(&t.join("system").join(d)))
                .filter(|t| t.is_dir())
            {
                Some(t) => format!("{}:{}", t.display(), host.display()),
                None => host.display().to_string(),
            };
            if self.system_cow
                && let Some(layers) = &volatile_layers
                && !lower.contains(':')
                && std::fs::read_dir(&host).is_ok_and(|mut rd| rd.next().is_none())
            {
                // An empty host directory (/srv, often /opt) in a sandbox whose layers are new
                // and in memory: its upper layer alone, bound, is what an overlay would show,
                // without the overlay (~0.1 ms a mount: overlayfs probes its work directory).
                let (upper, _) = layers.system(d);
                mkdir_all(&upper)?;
                bind(&upper, &target, false)?;
            } else if self.system_cow {
                let layers = volatile_layers.as_ref().unwrap_or(&disk_layers);
                let (upper, work) = layers.system(d);
                if volatile_layers.is_some() {
                    mkdir_all(&upper)?;
                    mkdir_all(&work)?;
                }
                let lowers: Vec<PathBuf> =
                    lower.split(':').map(|l| staged_rel(Path::new(l))).collect();
                let upper_rel = staged_rel(&upper);
                in_stage(&mut || {
                    masked_in_upper.extend(self.mask_in_upper(d, &lowers, &upper_rel, umask)?);
                    Ok(())
                })?;
                overlay(Path::new(&lower), &upper, &work, &target)?;
            } else if lower.contains(':') {
                // Rootless with a template: a read-only overlay of the template over the host.
                mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY,
                    Some(&format!("lowerdir={lower},userxattr")),
                )?;
            } else {
                bind(&host, &target, true)?;
            }
        }
        for (name, target) in &self.root_symlinks {
            symlink(target, &r.join(name))?;
        }
        airlock_core::startup::trace("mounts: system dirs");

        // /dev: only harmless devices, a private devpts and shm.
        let dev = r.join("dev");
        mkdir(&dev, 0o755)?;
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("mode=0755,size=64k"),
        )?;
        for d in DEVICES
            .iter()
            .copied()
            .chain(self.extra_devices.iter().map(String::as_str))
        {
            let target = dev.join(d);
            touch(&target)?;
            bind(&Path::new("/dev").join(d), &target, false)?;
        }
        mkdir(&dev.join("pts"), 0o755)?;
        let pts_opts = if self.devpts_gid5 {
            "newinstance,ptmxmode=0666,mode=0620,gid=5"
        } else {
            "newinstance,ptmxmode=0666,mode=0620"
        };
        mount(
            Some("devpts"),
            &dev.join("pts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(pts_opts),
        )?;
        symlink(Path::new("pts/ptmx"), &dev.join("ptmx"))?;
        mkdir(&dev.join("shm"), 0o1777)?;
        mount(
            Some("tmpfs"),
            &dev.join("shm"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        )?;
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            symlink(Path::new(target), &dev.join(name))?;
        }

        // A /proc of the sandbox's own pid namespace.
        let proc_dir = r.join("proc");
        mkdir(&proc_dir, 0o555)?;
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;

        // /sys read-only: a fresh sysfs (it shows the sandbox's own network devices) where the
        // kernel allows it, else the host's, read-only.
        let sys = r.join("sys");
        mkdir(&sys, 0o555)?;
        // sysfs shows the mounting process's network namespace (and needs to own it): the
        // sandbox's, made in parallel with the work above (see the init's `NetSetup`).
        enter_netns()?;
        let ro_sys = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if mount(Some("sysfs"), &sys, Some("sysfs"), ro_sys, None).is_err() {
            bind(Path::new("/sys"), &sys, true)?;
        }

        for (path, mode) in [("tmp", "mode=1777"), ("run", "mode=0755")] {
            let target = r.join(path);
            mkdir(&target, 0o755)?;
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(mode),
            )?;
        }
        mkdir(&r.join("run/lock"), 0o1777)?;

        // The private home, at the user's home path.
        let home = under(r, &self.home);
        mkdir_all(&home)?;
        // A `--rm` sandbox's home and workspace changes live in memory too (see above).
        let layers = volatile_layers.as_ref().unwrap_or(&disk_layers);
        if volatile_layers.is_some() {
            mkdir_all(&layers.home())?;
            let (u, w) = layers.workspace();
            mkdir_all(&u)?;
            mkdir_all(&w)?;
            if let Ok(c) = cstr(&layers.home()) {
                // SAFETY: chown of a directory we just created, to the sandbox's user.
                unsafe { libc::chown(c.as_ptr(), self.home_owner.0, self.home_owner.1) };
            }
        }
        match self
            .template
            .as_ref()
            .map(|t| src(&t.join("home")))
            .filter(|t| t.is_dir())
        {
            // Warm caches from a template: its frozen home under the sandbox's own.
            Some(tpl_home) => {
                let work = layers.home_work();
                mkdir_all(&work)?;
                overlay(&tpl_home, &layers.home(), &work, &home)?;
            }
            None => bind(&layers.home(), &home, false)?,
        }

        // The workspace, at its host path.
        let ws = under(r, &self.workspace);
        mkdir_all(&ws)?;
        let host_ws = src(&self.workspace);
        match self.mode {
            WorkspaceMode::Cow => {
                let (upper, work) = layers.workspace();
                overlay(&host_ws, &upper, &work, &ws)?;
            }
            WorkspaceMode::Rw => bind(&host_ws, &ws, false)?,
            WorkspaceMode::Ro => bind(&host_ws, &ws, true)?,
            WorkspaceMode::Clone => {
                bind(&disk_layers.clone_dir(), &ws, false)?;
                let source = r.join("run/airlock/source");
                mkdir_all(&source)?;
                bind(&host_ws, &source, true)?;
            }
        }

        // Cache directories: the sandbox's own plain directories over workspace subdirectories,
        // at the file speed of the filesystem they are on (no overlay in the way).
        for (i, rel) in self.cache_dirs.iter().enumerate() {
            let store = layers.cache_dir(i);
            mkdir_all(&store)?;
            if let Ok(c) = cstr(&store) {
                // SAFETY: chown of the sandbox's own directory, to the sandbox's user (as for a
                // home made in memory; where it fails, the creator already is that user).
                unsafe { libc::chown(c.as_ptr(), self.home_owner.0, self.home_owner.1) };
            }
            // Like the workspace's own mount: no set-id programs, no device nodes. The store
            // (the sandbox's own, out of the agent's reach) becomes a mount with those flags,
            // and the bind onto the workspace path carries them: the path the agent shaped is
            // touched once, through the descriptor that was checked.
            bind(&store, &store, false)?;
            mount(
                None,
                &store,
                None,
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | locked_flags(&store),
                None,
            )?;
            // Made where missing only where that changes nothing of the host: the directory
            // itself in the copy-on-write layer (nothing else, so the layer holds nothing made
            // for it), any of the path in the sandbox's own clone; nothing in a live or
            // read-only workspace.
            let create = match self.mode {
                WorkspaceMode::Cow => CreateMissing::Last,
                WorkspaceMode::Clone => CreateMissing::All,
                WorkspaceMode::Rw | WorkspaceMode::Ro => CreateMissing::None,
            };
            let fix = |at: &Path| match self.mode {
                WorkspaceMode::Cow => format!(
                    "if the host's workspace has it so too, make it a directory there; else `airlock diff` and `airlock apply` what you want to keep, then `airlock reset SANDBOX` discards the sandbox's changes to the workspace, {} included",
                    at.display()
                ),
                WorkspaceMode::Clone => format!(
                    "it is {} in the sandbox's clone on the host: remove that entry with `rm` (not `rm -r`: a symlink there may point at your files), or recreate the sandbox",
                    self.layers.clone_dir().join(at).display()
                ),
                WorkspaceMode::Rw | WorkspaceMode::Ro => {
                    "this is the host's own workspace: make it a directory there".to_string()
                }
            };
            let target =
                open_cache_dir_path(&ws, &self.workspace, rel, create, self.home_owner, &fix)?;
            bind(
                &store,
                Path::new(&format!("/proc/self/fd/{}", target.as_raw_fd())),
                false,
            )?;
        }

        if self.resolv_conf.is_some() {
            show_file_at(
                r,
                Path::new("/etc/resolv.conf"),
                &scratch.join("resolv.conf"),
            )?;
        }
        if let Some(sock) = &self.ssh_agent {
            let target = under(r, Path::new(SSH_AGENT_SOCK));
            if let Some(parent) = target.parent() {
                mkdir_all(parent)?;
            }
            touch(&target)?;
            bind(&src(sock), &target, false)?;
        }
        if let Some(file) = &self.trust_bundle {
            show_file_at(r, Path::new(crate::net::TRUST_BUNDLE), &src(file))?;
        }
        for b in &self.extra_binds {
            let target = under(r, &b.inside);
            if let Some(parent) = target.parent() {
                mkdir_all(parent)?;
            }
            let host = src(&b.host);
            if host.is_dir() {
                mkdir_all(&target)?;
            } else {
                touch(&target)?;
            }
            bind(&host, &target, b.readonly)?;
        }

        airlock_core::startup::trace("mounts: system, dev, proc, sys, home, workspace");
        // Masks. A mask over a path the agent cannot see anyway is skipped, and so is one the
        // copy-on-write system directories already applied in their upper layer.
        // The first mask of each kind is made read-only; the others are binds of it, which keep
        // its flags (one mount each, and no new tmpfs superblock to set up and tear down). A path
        // missing inside is skipped on the mount's own answer, without a look-up first (~30
        // look-ups in /proc, /sys and the overlays fewer).
        let null = dev.join("null");
        let mut masked_file: Option<PathBuf> = None;
        for f in self
            .masked_files
            .iter()
            .filter(|p| !masked_in_upper.contains(*p))
        {
            let target = under(r, f);
            let mounted = match &masked_file {
                Some(first) => bind(first, &target, false),
                None => bind(&null, &target, true),
            };
            if present(mounted, &[libc::ENOENT])? && masked_file.is_none() {
                masked_file = Some(target);
            }
        }
        // Directories only: a mask over anything else is skipped, as it always was.
        let not_a_dir = [libc::ENOENT, libc::ENOTDIR];
        let mut masked_dir: Option<PathBuf> = None;
        for d in self
            .masked_dirs
            .iter()
            .chain(&self.hidden_state)
            .filter(|p| !masked_in_upper.contains(*p))
        {
            let target = under(r, d);
            let mounted = match &masked_dir {
                Some(first) => bind(first, &target, false),
                None => mask_dir(&target),
            };
            if present(mounted, &not_a_dir)? && masked_dir.is_none() {
                masked_dir = Some(target);
            }
        }
        for d in self
            .private_dirs
            .iter()
            .filter(|p| !masked_in_upper.contains(*p))
        {
            let mounted = mount(
                Some("tmpfs"),
                &under(r, d),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("mode=1777"),
            );
            present(mounted, &not_a_dir)?;
        }
        for p in PROC_READONLY {
            let target = under(r, Path::new(p));
            present(bind(&target, &target, true), &[libc::ENOENT])?;
        }

        if let Some(at) = &self.share_tree {
            self.build_share_tree(r, &under(r, at))?;
        }

        // Switch root: pivot_root(".", ".") stacks the old root under the new one; detaching it
        // leaves no path back to the host.
        chdir(r)?;
        let dot = c".";
        // SAFETY: both arguments are valid NUL-terminated strings.
        if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
            return Err(NsError::last("pivot_root into the sandbox's root"));
        }
        // SAFETY: as above; "." is now the stacked old root.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(NsError::last("detaching the host's root"));
        }
        chdir(Path::new("/"))?;
        drop(stage_fd);
        drop(scratch_fd);
        // The root tmpfs itself (mount points and symlinks) becomes read-only.
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )?;
        Ok(())
    }
}

impl MountPlan {
    /// Apply the masks that fall in system directory `d` in its upper layer, before the overlay
    /// is mounted: a masked file becomes an empty file there, a masked or private directory an
    /// empty *opaque* directory (overlayfs shows nothing of the layers below it), each with the
    /// host's owner and mode. This is what the agent would get by deleting the host's content
    /// itself, so the sandbox stays free to use these paths, while nothing of the host's shows.
    /// About 30 mounts fewer on a cold start (each costs a mount and its teardown). Applied at
    /// every start: a persistent upper may have gained a plain directory where the host later
    /// grew something to hide, so existing directories are made opaque too; anything else the
    /// agent left there (a file, a whiteout) hides the host's content already.
    ///
    /// Returns the paths it took care of; the others get a mount as before: paths another mount
    /// will cover (the workspace, the home, an extra bind: the upper layer would be hidden under
    /// it), and paths that are symlinks or lie under one in the host's tree (replacing a link
    /// would hide only the link, not what it points to).
    fn mask_in_upper(
        &self,
        d: &str,
        lowers: &[PathBuf],
        upper: &Path,
        umask: u32,
    ) -> Result<Vec<PathBuf>> {
        let mut layer = UpperLayer {
            dir: upper,
            creator: self.shifted.then_some((0, 0)),
            umask,
            fresh: self.volatile_layers,
            made: Default::default(),
        };
        let top = Path::new("/").join(d);
        let covered = |p: &Path| {
            p.starts_with(&self.workspace)
                || self.workspace.starts_with(p)
                || p.starts_with(&self.home)
                || self
                    .extra_binds
                    .iter()
                    .any(|b| p.starts_with(&b.inside) || b.inside.starts_with(p))
        };
        let rel_of = |p: &Path| {
            p.strip_prefix(&top)
                .ok()
                .filter(|_| !covered(p))
                .map(Path::to_path_buf)
        };
        let in_lower = |rel: &Path| -> Option<std::fs::Metadata> {
            lowers
                .iter()
                .find_map(|l| std::fs::symlink_metadata(l.join(rel)).ok())
        };
        let mut done = Vec::new();
        let files = self.masked_files.iter().map(|p| (p, false));
        let dirs = (self.masked_dirs.iter())
            .chain(&self.hidden_state)
            .chain(&self.private_dirs)
            .map(|p| (p, true));
        for (path, is_dir) in files.chain(dirs) {
            let Some(rel) = rel_of(path) else { continue };
            let Some(meta) = in_lower(&rel) else { continue };
            // Only a plain file or directory (a symlink keeps its mount mask).
            if !(if is_dir {
                meta.is_dir()
            } else {
                meta.is_file()
            }) {
                continue;
            }
            match layer.ensure_parents(lowers, &rel)? {
                Parents::Unusable => continue,
                Parents::Hidden => {}
                Parents::Ready => layer.stand_in(&upper.join(&rel), &meta)?,
            }
            done.push(path.clone());
        }
        Ok(done)
    }
}

/// Creates masks' stand-ins in one system directory's upper layer, with the host's owners and
/// modes, in as few system calls as it can: an owner or mode is only set when creation did not
/// already give it, and a fresh (in-memory) upper layer is not searched for what the agent left.
struct UpperLayer<'a> {
    dir: &'a Path,
    /// Owner (uid, gid) of what we create, if known (a shifted sandbox creates as root inside).
    creator: Option<(u32, u32)>,
    umask: u32,
    /// Nothing was in the layer before this start: only what `made` lists is there.
    fresh: bool,
    made: std::collections::HashSet<PathBuf>,
}

impl UpperLayer<'_> {
    /// What is at `at` in the layer already.
    fn existing(&self, at: &Path) -> Option<std::fs::Metadata> {
        if self.fresh && !self.made.contains(at) {
            return None;
        }
        std::fs::symlink_metadata(at).ok()
    }

    /// Create an empty directory or file at `at` with `meta`'s owner and mode.
    fn make_like(&mut self, meta: &std::fs::Metadata, at: &Path) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.mode() & 0o7777;
        let made = if meta.is_dir() {
            mkdir(at, mode & 0o1777)?;
            mode & 0o1777 & !self.umask
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode & 0o777)
                .open(at)
                .map_err(|e| NsError::path(at, e))?;
            mode & 0o777 & !self.umask
        };
        self.made.insert(at.to_path_buf());
        if self.creator != Some((meta.uid(), meta.gid())) {
            let c = cstr(at)?;
            // SAFETY: lchown of a path we just created, with ids read from the layer below.
            if unsafe { libc::lchown(c.as_ptr(), meta.uid(), meta.gid()) } != 0 {
                return Err(NsError::last(format!(
                    "setting the owner of {}",
                    at.display()
                )));
            }
        }
        // A change of owner clears set-id bits; they, and bits the umask removed, are set here.
        if made != mode || (mode & 0o6000 != 0) {
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode))
                .map_err(|e| NsError::path(at, e))?;
        }
        Ok(())
    }

    /// Put an empty stand-in for the host's `meta` at `at`: an empty file, or an empty opaque
    /// directory; a directory already there is made opaque, and anything else the agent left
    /// there (a file, a whiteout) already hides the host's entry.
    fn stand_in(&mut self, at: &Path, meta: &std::fs::Metadata) -> Result<()> {
        match self.existing(at) {
            None => {
                self.make_like(meta, at)?;
                if meta.is_dir() {
                    set_opaque(at)?;
                }
                Ok(())
            }
            Some(m) if m.is_dir() && meta.is_dir() => set_opaque(at),
            Some(_) => Ok(()),
        }
    }

    /// Create the missing parents of `rel` like the lowest layer that has them (owner and mode).
    fn ensure_parents(&mut self, lowers: &[PathBuf], rel: &Path) -> Result<Parents> {
        let mut at = self.dir.to_path_buf();
        let mut sub = PathBuf::new();
        let parents: Vec<_> = rel
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for c in parents {
            at.push(c);
            sub.push(c);
            // Made this start, after the check below found a directory there.
            if self.made.contains(&at) {
                continue;
            }
            // The layers below first: a parent that is a link there (not followed: it would
            // resolve against the host's root here) is no place for a mask in the upper layer,
            // whatever the agent left above it.
            let below = lowers
                .iter()
                .find_map(|l| std::fs::symlink_metadata(l.join(&sub)).ok());
            let Some(meta) = below.filter(|m| m.is_dir()) else {
                return Ok(Parents::Unusable);
            };
            match self.existing(&at) {
                Some(m) if m.is_dir() => continue,
                Some(_) => return Ok(Parents::Hidden),
                None => self.make_like(&meta, &at)?,
            }
        }
        Ok(Parents::Ready)
    }
}

/// What [`UpperLayer::ensure_parents`] found.
enum Parents {
    /// The parents exist in the upper layer as directories.
    Ready,
    /// Something that is not a directory in the upper layer (a whiteout, a file) already hides
    /// the path.
    Hidden,
    /// A parent is a symlink (or missing) in the layers below: not for an upper-layer mask.
    Unusable,
}

/// Mark an upper-layer directory opaque (overlayfs with `userxattr`): nothing below shows.
fn set_opaque(at: &Path) -> Result<()> {
    let c = cstr(at)?;
    // SAFETY: setxattr on a valid path with a static name and a one-byte value.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc != 0 {
        return Err(NsError::last(format!(
            "marking {} opaque in the sandbox's layer",
            at.display()
        )));
    }
    Ok(())
}

/// Hide a directory (if it exists) under an empty, read-only, tiny tmpfs.
fn mask_dir(target: &Path) -> Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0755,size=4k"),
    )
}

/// Whether a mask was mounted: `false` if its mount failed with one of `skip` (the path is not
/// there inside, or is not what the mask covers), the error otherwise.
fn present(mounted: Result<()>, skip: &[libc::c_int]) -> Result<bool> {
    match mounted {
        Ok(()) => Ok(true),
        Err(NsError::Sys { source, .. })
            if source.raw_os_error().is_some_and(|e| skip.contains(&e)) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

impl MountPlan {
    /// See [`MountPlan::share_tree`]. Runs after the masks: recursive binds carry them along.
    fn build_share_tree(&self, r: &Path, share: &Path) -> Result<()> {
        mkdir_all(share)?;
        mount(
            Some("tmpfs"),
            share,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755,size=64k"),
        )?;
        let rbind = |from: &Path, to: &Path| -> Result<()> {
            mkdir_all(to)?;
            let (f, t) = (cstr(from)?, cstr(to)?);
            // SAFETY: valid NUL-terminated paths; NULL fstype/data are allowed for MS_BIND.
            let rc = unsafe {
                libc::mount(
                    f.as_ptr(),
                    t.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(NsError::sys(
                    format!("binding {} on {}", from.display(), to.display()),
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(())
        };
        for d in &self.system_dirs {
            rbind(&r.join(d), &share.join(d))?;
        }
        // The sandbox's private /var/tmp, /var/log… are in-memory and the guest has its own (on
        // its disk): show empty read-only directories there instead, so nothing the guest writes
        // lands in the jail's memory.
        for d in &self.private_dirs {
            present(mask_dir(&under(share, d)), &[libc::ENOENT, libc::ENOTDIR])?;
        }
        for (name, target) in &self.root_symlinks {
            symlink(target, &share.join(name))?;
        }
        // The home, then the workspace, unless it is inside the home (the recursive bind of the
        // home carried the workspace's mount along).
        rbind(&under(r, &self.home), &under(share, &self.home))?;
        if !self.workspace.starts_with(&self.home) || self.workspace == self.home {
            rbind(&under(r, &self.workspace), &under(share, &self.workspace))?;
        }
        Ok(())
    }
}

/// Make `path` inside the new root `r` show the content of host file `src`: bind it over the
/// file, or, where `path` is a symlink (systemd-resolved's /etc/resolv.conf), over the target
/// when it lands in the sandbox's private /run (created there).
fn show_file_at(r: &Path, path: &Path, src: &Path) -> Result<()> {
    let mut target = under(r, path);
    if let Ok(link) = std::fs::read_link(&target) {
        let resolved = path.parent().unwrap_or(Path::new("/")).join(link);
        let mut clean = PathBuf::from("/");
        for c in resolved.components() {
            match c {
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                std::path::Component::Normal(n) => clean.push(n),
                _ => {}
            }
        }
        if !clean.starts_with("/run") {
            return Ok(());
        }
        target = under(r, &clean);
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        touch(&target)?;
    } else if !target.is_file() {
        return Ok(());
    }
    bind(src, &target, true)
}

/// Which missing components of a cache directory's path [`open_cache_dir_path`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateMissing {
    None,
    Last,
    All,
}

/// Open workspace subdirectory `rel` of `ws` (the workspace mounted inside the new root) for a
/// cache directory to be mounted on, through directories only, making the missing components
/// `create` allows (owned by `owner`). No component may be a symlink: in a kept sandbox the
/// agent chose what is there, and a cache directory must not be mounted anywhere else; the
/// caller mounts on the returned descriptor, so the path is looked up once. `host_ws` and `fix`
/// (what the user can do about a symlink or a file at the given workspace-relative path) are for
/// messages.
fn open_cache_dir_path(
    ws: &Path,
    host_ws: &Path,
    rel: &Path,
    create: CreateMissing,
    owner: (u32, u32),
    fix: &dyn Fn(&Path) -> String,
) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut dir = open_path(ws)?;
    let mut seen = PathBuf::new();
    let last = rel.components().count();
    let fail = |why: String| NsError::Setup(format!("cache directory {}: {why}", rel.display()));
    for (n, c) in rel.components().enumerate() {
        seen.push(c);
        let is_last = n + 1 == last;
        let name = cstr(Path::new(c.as_os_str()))?;
        let open = |d: &OwnedFd| {
            // SAFETY: openat on a directory descriptor we own with a valid NUL-terminated name.
            unsafe { libc::openat(d.as_raw_fd(), name.as_ptr(), flags) }
        };
        let mut fd = open(&dir);
        let missing =
            fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
        if missing && (create == CreateMissing::All || (create == CreateMissing::Last && is_last)) {
            // SAFETY: mkdirat/fchownat on a directory descriptor we own, valid name.
            let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
            if made != 0 {
                let e = std::io::Error::last_os_error();
                return Err(fail(format!(
                    "making {} in the sandbox's workspace: {e}",
                    host_ws.join(&seen).display()
                )));
            }
            // SAFETY: as above; the directory was just made by us.
            unsafe {
                libc::fchownat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    owner.0,
                    owner.1,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            fd = open(&dir);
        }
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            let shown = host_ws.join(&seen);
            return Err(fail(match e.raw_os_error() {
                Some(libc::ENOENT) if is_last => format!(
                    "{} does not exist; in a live (rw) or read-only workspace a cache directory must exist on the host: mkdir -p {}",
                    shown.display(),
                    host_ws.join(rel).display()
                ),
                Some(libc::ENOENT) => format!(
                    "{} does not exist in the sandbox's workspace; the directory a cache directory is in must exist: make it on the host",
                    shown.display()
                ),
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => format!(
                    "{} is a symlink or a file inside the sandbox, not a directory; {}",
                    shown.display(),
                    fix(&seen)
                ),
                _ => format!("{}: {e}", shown.display()),
            }));
        }
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(dir)
}

/// `root` joined with absolute `p`.
pub fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| NsError::Setup(format!("path contains a NUL byte: {}", p.display())))
}

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let c = |s: Option<&str>| s.map(|s| CString::new(s).expect("static mount strings have no NUL"));
    let (src_c, fs_c, data_c) = (c(src), c(fstype), c(data));
    let target_c = cstr(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either NULL or a valid NUL-terminated string living across the call.
    let rc = unsafe {
        libc::mount(
            ptr(&src_c),
            target_c.as_ptr(),
            ptr(&fs_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if rc != 0 {
        return Err(NsError::sys(
            format!(
                "mounting {} on {} ({})",
                src.unwrap_or("-"),
                target.display(),
                fstype.unwrap_or("remount/bind")
            ),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Bind `src` on `target` (not recursively: host submounts stay hidden), optionally read-only.
fn bind(src: &Path, target: &Path, readonly: bool) -> Result<()> {
    let src_c = cstr(src)?;
    let target_c = cstr(target)?;
    // SAFETY: valid NUL-terminated paths; NULL fstype/data are allowed for MS_BIND.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(NsError::sys(
            format!("binding {} on {}", src.display(), target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    if readonly {
        // A remount must keep the flags the kernel locked on the original mount (nosuid, nodev,
        // noexec) or it fails with EPERM inside a user namespace.
        let locked = locked_flags(target);
        mount(
            None,
            target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked,
            None,
        )?;
    }
    Ok(())
}

fn locked_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(p) else { return 0 };
    // SAFETY: statvfs fills the zeroed struct we pass for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}

/// Overlay mount option values cannot carry ',' (the kernel splits options on it) and ':' separates
/// lower layers; such paths are refused up front (see `layers::check_path`).
///
/// The features that depend on how the kernel was built are set explicitly, so every host
/// behaves alike: no inode index, no metadata-only copy-up (a copy-up is always a full copy, so
/// the upper layer never points back at host files), directory renames redirected without
/// following foreign redirects (`off` is refused with `userxattr`), no extended inode numbers.
/// None of them changes speed: measured, the file-heavy case is +78-80% over tmpfs with any of
/// them (the cost is overlayfs's own: two dentries, inodes and files per file).
fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr,index=off,metacopy=off,redirect_dir=nofollow,xino=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(Some("overlay"), target, Some("overlay"), libc::MS_NOSUID | libc::MS_NODEV, Some(&opts))
        .map_err(|e| NsError::Setup(format!("{e} (copy-on-write layer for {}; use --workspace-mode rw or ro if this filesystem cannot be an overlay layer)", lower.display())))
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(NsError::path(p, e)),
    }
}

fn mkdir_all(p: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(|e| NsError::path(p, e))
}

fn touch(p: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .map(drop)
        .map_err(|e| NsError::path(p, e))
}

/// Create `p` with `content` and exactly `mode` (whatever the umask).
fn write_file(p: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| NsError::path(p, e))?;
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(content))
        .map_err(|e| NsError::path(p, e))
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(|e| NsError::path(link, e))
}

fn open_path(p: &Path) -> Result<std::os::fd::OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(p)
        .map(std::os::fd::OwnedFd::from)
        .map_err(|e| NsError::path(p, e))
}

fn fchdir(fd: &std::os::fd::OwnedFd) -> Result<()> {
    // SAFETY: fchdir on a directory descriptor we own.
    if unsafe { libc::fchdir(fd.as_raw_fd()) } != 0 {
        return Err(NsError::last("changing directory while building the root"));
    }
    Ok(())
}

fn chdir(p: &Path) -> Result<()> {
    std::env::set_current_dir(p).map_err(|e| NsError::path(p, e))
}
