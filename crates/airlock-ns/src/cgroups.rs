//! Resource limits through cgroups, v2 (unified) or v1 (per-controller hierarchies).
//!
//! A sandbox's cgroup is created under the cgroup Airlock itself runs in (`<own>/airlock/<name>`),
//! never elsewhere: the host's other cgroups are not ours to touch. Where no cgroup can be
//! created (rootless on v1, or v2 without delegation), limits fall back to rlimits and the reason
//! is recorded for `airlock inspect`.

use std::io::Write;
use std::path::{Path, PathBuf};

use airlock_core::spec::Limits;

use crate::error::{NsError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Pure cgroup v2 at /sys/fs/cgroup.
    V2 {
        mount: PathBuf,
        own: String,
    },
    /// v1 controllers (possibly with an empty v2 hierarchy beside them: "hybrid").
    V1 {
        controllers: Vec<(String, PathBuf, String)>,
    },
    None,
}

/// The v1 controllers Airlock uses: (name, whether needed only when its limit is set).
const V1_CONTROLLERS: &[&str] = &["pids", "memory", "cpu"];

/// Find the host's cgroup layout and our own place in it.
pub fn detect() -> Hierarchy {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    parse(&mountinfo, &own, unified)
}

/// The layout described by /proc/self/mountinfo and /proc/self/cgroup; `unified` says whether
/// /sys/fs/cgroup itself is a cgroup v2 hierarchy.
pub fn parse(mountinfo: &str, own: &str, unified: bool) -> Hierarchy {
    if unified {
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .to_string();
        return Hierarchy::V2 {
            mount: PathBuf::from("/sys/fs/cgroup"),
            own: path,
        };
    }
    let mut controllers = Vec::new();
    for line in mountinfo.lines() {
        // ... mountpoint ... - cgroup cgroup rw,memory
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let opts = r.nth(1).unwrap_or("");
        let mountpoint = left.split_whitespace().nth(4).unwrap_or("");
        for c in V1_CONTROLLERS {
            if opts.split(',').any(|o| o == *c)
                && !controllers
                    .iter()
                    .any(|(n, _, _): &(String, PathBuf, String)| n == c)
            {
                let own_path = own
                    .lines()
                    .find_map(|l| {
                        let mut parts = l.splitn(3, ':');
                        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                        ctrls.split(',').any(|x| x == *c).then(|| path.to_string())
                    })
                    .unwrap_or_else(|| "/".into());
                controllers.push((c.to_string(), PathBuf::from(mountpoint), own_path));
            }
        }
    }
    if controllers.is_empty() {
        Hierarchy::None
    } else {
        Hierarchy::V1 { controllers }
    }
}

/// A sandbox's cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub dirs: Vec<PathBuf>,
    pub version: u8,
}

/// The outcome of trying to give a sandbox a cgroup.
pub enum Placement {
    Cgroup(Cgroup),
    /// No cgroup: why, for `inspect`.
    Unavailable(String),
}

fn write(path: &Path, value: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| NsError::path(path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| NsError::path(path, e))
}

fn join_own(mount: &Path, own: &str) -> PathBuf {
    mount.join(own.trim_start_matches('/'))
}

/// The cgroup subtree of one Airlock store (`airlock/<hash of its state directory>`): stores of
/// different users or `AIRLOCK_HOME`s never see, reap or kill each other's sandboxes.
pub fn scope_for(state_dir: &Path) -> PathBuf {
    let h = airlock_core::units::fnv1a(state_dir.as_os_str().as_encoded_bytes().iter().copied());
    PathBuf::from("airlock").join(format!("{h:016x}"))
}

/// Create the cgroup of sandbox `name` (under `scope`, see [`scope_for`]) and apply `limits`.
pub fn create(h: &Hierarchy, scope: &Path, name: &str, limits: &Limits) -> Placement {
    match h {
        Hierarchy::None => {
            Placement::Unavailable("no cgroup hierarchy is mounted; limits use rlimits".into())
        }
        Hierarchy::V1 { controllers } => {
            let mut dirs = Vec::new();
            for (ctrl, mount, own) in controllers {
                // Only the controllers a limit needs: each attach to a v1 hierarchy costs an RCU
                // grace period (~8 ms here) on the start path.
                let needed = match ctrl.as_str() {
                    "cpu" => limits.cpus.is_some(),
                    "memory" => limits.memory_bytes.is_some(),
                    "pids" => limits.pids.is_some(),
                    _ => false,
                };
                if !needed {
                    continue;
                }
                let dir = join_own(mount, own).join(scope).join(name);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    remove(&Cgroup { dirs, version: 1 });
                    return Placement::Unavailable(
                        if e.kind() == std::io::ErrorKind::PermissionDenied {
                            "cgroup v1 needs root to create cgroups (rootless): limits use rlimits; --cpus is not enforced".into()
                        } else {
                            format!("cannot create {}: {e}; limits use rlimits", dir.display())
                        },
                    );
                }
                let res = match ctrl.as_str() {
                    "pids" => limits
                        .pids
                        .map(|p| write(&dir.join("pids.max"), &p.to_string()))
                        .unwrap_or(Ok(())),
                    "memory" => limits
                        .memory_bytes
                        .map(|m| {
                            write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                            let memsw = dir.join("memory.memsw.limit_in_bytes");
                            if memsw.exists() {
                                write(&memsw, &m.to_string())?;
                            }
                            Ok(())
                        })
                        .unwrap_or(Ok(())),
                    "cpu" => limits
                        .cpus
                        .map(|c| {
                            write(&dir.join("cpu.cfs_period_us"), "100000")?;
                            write(
                                &dir.join("cpu.cfs_quota_us"),
                                &((c * 100_000.0) as u64).max(1000).to_string(),
                            )
                        })
                        .unwrap_or(Ok(())),
                    _ => Ok(()),
                };
                dirs.push(dir);
                if let Err(e) = res {
                    remove(&Cgroup { dirs, version: 1 });
                    return Placement::Unavailable(format!(
                        "setting cgroup v1 limits failed: {e}; limits use rlimits"
                    ));
                }
            }
            Placement::Cgroup(Cgroup { dirs, version: 1 })
        }
        Hierarchy::V2 { mount, own } => {
            let parent = join_own(mount, own);
            let dir = parent.join(scope).join(name);
            let setup = || -> Result<()> {
                std::fs::create_dir_all(&dir).map_err(|e| NsError::path(&dir, e))?;
                // Controllers must be enabled on the way down; this fails (EBUSY) when our own
                // cgroup holds processes and is not the root, i.e. when it was not delegated.
                let mut levels = vec![parent.clone()];
                for c in scope.components() {
                    let next = levels[levels.len() - 1].join(c);
                    levels.push(next);
                }
                for p in &levels {
                    let avail =
                        std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
                    let want: Vec<String> = ["cpu", "memory", "pids"]
                        .iter()
                        .filter(|c| avail.split_whitespace().any(|a| a == **c))
                        .map(|c| format!("+{c}"))
                        .collect();
                    if !want.is_empty() {
                        write(&p.join("cgroup.subtree_control"), &want.join(" "))?;
                    }
                }
                if let Some(p) = limits.pids {
                    write(&dir.join("pids.max"), &p.to_string())?;
                }
                if let Some(m) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &m.to_string())?;
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                if let Some(c) = limits.cpus {
                    write(
                        &dir.join("cpu.max"),
                        &format!("{} 100000", ((c * 100_000.0) as u64).max(1000)),
                    )?;
                }
                Ok(())
            };
            match setup() {
                Ok(()) => Placement::Cgroup(Cgroup {
                    dirs: vec![dir],
                    version: 2,
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    Placement::Unavailable(format!(
                        "cgroup v2: cannot create a cgroup under {} ({e}); run airlock in a delegated cgroup (e.g. `systemd-run --user --scope -p Delegate=yes airlock ...`); limits use rlimits",
                        parent.display()
                    ))
                }
            }
        }
    }
}

/// Open the `cgroup.procs` files of a sandbox's cgroup `dirs` for [`join_self`], before the
/// process that joins exists: the kernel checks the permission to migrate with the credentials of
/// the opener (the supervisor), so the child may use them from inside its new user namespace.
pub fn open_procs(dirs: &[PathBuf]) -> Result<Vec<std::fs::File>> {
    dirs.iter()
        .map(|d| {
            // v1: `tasks`, where writing "0" moves the calling thread without the cgroup
            // thread-group lock (see `join_self`); v2 (it has `cgroup.controllers`) refuses to
            // move a single thread across domains: `cgroup.procs` there.
            let p = if d.join("cgroup.controllers").exists() {
                d.join("cgroup.procs")
            } else {
                d.join("tasks")
            };
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| NsError::path(&p, e))
        })
        .collect()
}

impl Cgroup {
    /// Peak or current memory use, for `inspect`.
    pub fn memory_current(&self) -> Option<u64> {
        self.dirs.iter().find_map(|d| {
            ["memory.current", "memory.usage_in_bytes"]
                .iter()
                .find_map(|f| std::fs::read_to_string(d.join(f)).ok()?.trim().parse().ok())
        })
    }
}

/// Move the calling process (single-threaded, just cloned) into the cgroups whose files are
/// open on `fds` (from [`open_procs`]). Moving a whole process takes the kernel's cgroup
/// thread-group lock for writing, which waits for an RCU grace period: 6-24 ms measured here
/// after an idle moment, the largest single cost of a cold start, whether the process moves
/// itself or is moved. On v1 the process writes "0" to `tasks` instead: moving the calling
/// thread needs no such lock (the kernel's `cgroup_procs_write_start`), and a single-threaded
/// process is wholly moved with its thread: 0.27 ms measured (Python, same machine).
pub fn join_self(fds: &[std::os::fd::RawFd]) -> std::result::Result<(), String> {
    for &fd in fds {
        // SAFETY: writing one byte from a static buffer to a descriptor we own.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(format!(
                "joining the sandbox's cgroup: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Kill what is left in the sandbox's cgroups (only processes inside them, by pid) and remove them.
/// Returns what was removed.
pub fn remove(cg: &Cgroup) -> Vec<String> {
    remove_dirs(&cg.dirs)
}

pub fn remove_dirs(dirs: &[PathBuf]) -> Vec<String> {
    let mut removed = Vec::new();
    for d in dirs {
        if !d.exists() {
            continue;
        }
        for _ in 0..50 {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill on a pid listed in a cgroup that Airlock created for this sandbox.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if std::fs::remove_dir(d).is_ok() {
            removed.push(format!("cgroup {}", d.display()));
            // The store's scope (`airlock/<hash>`) and `airlock/` itself go once empty; rmdir of a
            // cgroup with children or processes fails, so this never touches another sandbox's.
            if let Some(scope) = d.parent() {
                let _ = std::fs::remove_dir(scope);
                if let Some(base) = scope
                    .parent()
                    .filter(|b| b.file_name().is_some_and(|n| n == "airlock"))
                {
                    let _ = std::fs::remove_dir(base);
                }
            }
        }
    }
    removed
}

/// Every sandbox cgroup directory that exists under our `airlock/` cgroups, by sandbox name.
pub fn existing(h: &Hierarchy, scope: &Path) -> Vec<(String, PathBuf)> {
    let bases: Vec<PathBuf> = match h {
        Hierarchy::V1 { controllers } => controllers
            .iter()
            .map(|(_, m, o)| join_own(m, o).join(scope))
            .collect(),
        Hierarchy::V2 { mount, own } => vec![join_own(mount, own).join(scope)],
        Hierarchy::None => vec![],
    };
    let mut out = Vec::new();
    for b in bases {
        if let Ok(rd) = std::fs::read_dir(&b) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
        }
    }
    out
}

/// The cgroup directories a sandbox named `name` would have (to find leftovers after a crash).
pub fn dirs_for(h: &Hierarchy, scope: &Path, name: &str) -> Vec<PathBuf> {
    existing(h, scope)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, p)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
36 30 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
";
    const HYBRID_SELF: &str =
        "9:name=systemd:/\n8:pids:/user.slice\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn hybrid_hosts_use_the_v1_controllers_at_our_own_place() {
        let Hierarchy::V1 { controllers } = parse(HYBRID_MOUNTINFO, HYBRID_SELF, false) else {
            panic!("expected v1");
        };
        let find = |c: &str| {
            controllers
                .iter()
                .find(|(n, _, _)| n == c)
                .cloned()
                .unwrap()
        };
        assert_eq!(find("memory").1, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(find("memory").2, "/process_api/abc");
        assert_eq!(find("pids").2, "/user.slice");
        assert_eq!(find("cpu").1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn unified_hosts_use_v2_at_our_own_cgroup() {
        let h = parse("", "0::/user.slice/user-1000.slice/session-2.scope\n", true);
        assert_eq!(
            h,
            Hierarchy::V2 {
                mount: PathBuf::from("/sys/fs/cgroup"),
                own: "/user.slice/user-1000.slice/session-2.scope".into()
            }
        );
        assert_eq!(parse("", "", false), Hierarchy::None);
    }

    #[test]
    fn scopes_differ_per_store() {
        assert_ne!(scope_for(Path::new("/a")), scope_for(Path::new("/b")));
        assert!(scope_for(Path::new("/a")).starts_with("airlock"));
    }
}
