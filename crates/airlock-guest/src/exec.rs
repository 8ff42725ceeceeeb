//! Starting commands: fork, set the child up (session, terminal or pipes, root, ids, directory),
//! exec. Everything the child needs is prepared before `fork`, so the child itself makes only
//! async-signal-safe calls; a close-on-exec pipe tells the parent whether `execve` happened or
//! which step failed, and with which errno.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use airlock_vm_proto::WinSize;

use crate::reaper::{ExitAction, Reaper};
use crate::sys::{self, check, cstring};
use crate::{ChildStage, Context, GuestError, Result};

/// Where a command searches for its program when its environment has no PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The ids a command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group included).
    pub groups: Vec<u32>,
}

/// The command's standard streams.
#[derive(Debug, Clone)]
pub enum Stdio {
    /// Three pipes.
    Pipes,
    /// A new terminal of this size (stdin, stdout and stderr all on it).
    Tty(WinSize),
    /// stdin from /dev/null; stdout and stderr appended to this file (a path inside the root,
    /// its directories created).
    LogFile(String),
}

/// A command to start.
#[derive(Debug, Clone)]
pub struct Command {
    pub argv: Vec<String>,
    /// The complete environment.
    pub env: Vec<(String, String)>,
    /// The working directory, inside the root.
    pub cwd: String,
    /// None: keep the agent's own ids.
    pub ids: Option<Ids>,
    pub stdio: Stdio,
    /// The root directory it sees ("/": the agent's own, no chroot).
    pub root: PathBuf,
}

/// The parent's ends of a started command's streams.
pub enum ChildIo {
    Pipes {
        stdin: File,
        stdout: File,
        stderr: File,
    },
    Tty {
        master: File,
    },
    LogFile,
}

/// A started command.
pub struct Child {
    pub pid: libc::pid_t,
    pub io: ChildIo,
}

/// The child's standard streams as descriptors to install (or a log file to open after chroot).
enum ChildStdio<'a> {
    Fds {
        fds: [RawFd; 3],
        controlling_tty: bool,
    },
    LogFile {
        dirs: &'a [CString],
        file: &'a CStr,
    },
}

/// Everything the forked child uses, prepared in the parent.
struct Plan<'a> {
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    candidates: &'a [CString],
    root: Option<&'a CStr>,
    cwd: &'a CStr,
    ids: Option<(u32, u32, &'a [libc::gid_t])>,
    stdio: ChildStdio<'a>,
    report: RawFd,
}

/// Start `cmd`; `on_exit` receives its wait status from the reaper. Fails (with the errno of the
/// step that failed) when the program could not be executed; then `on_exit` still runs.
pub fn spawn(cmd: &Command, reaper: &Reaper, on_exit: ExitAction) -> Result<Child> {
    let program = cmd
        .argv
        .first()
        .ok_or_else(|| GuestError::Refused("an empty command line".into()))?;
    let argv_c = cmd
        .argv
        .iter()
        .map(|a| cstring(a, "an argument"))
        .collect::<Result<Vec<_>>>()?;
    let env_c = cmd
        .env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(GuestError::Refused(format!(
                    "an environment variable with a bad name: {k:?}"
                )));
            }
            cstring(&format!("{k}={v}"), "an environment variable")
        })
        .collect::<Result<Vec<_>>>()?;
    let argv = null_terminated(&argv_c);
    let envp = null_terminated(&env_c);
    let search_path = cmd
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let candidates = program_candidates(program, search_path)
        .iter()
        .map(|c| cstring(c, "the program's path"))
        .collect::<Result<Vec<_>>>()?;
    let root = (cmd.root != Path::new("/"))
        .then(|| CString::new(cmd.root.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| GuestError::Refused("the root contains a NUL byte".into()))?;
    let cwd = cstring(&cmd.cwd, "the working directory")?;
    let groups: Vec<libc::gid_t> = cmd
        .ids
        .as_ref()
        .map(|i| i.groups.clone())
        .unwrap_or_default();

    // The streams: the child's ends (installed as 0, 1, 2) and ours.
    let (child_fds, ours): (Vec<OwnedFd>, ChildIo) = match &cmd.stdio {
        Stdio::Pipes => {
            let (in_r, in_w) = sys::pipe().context(|| "create a pipe".into())?;
            let (out_r, out_w) = sys::pipe().context(|| "create a pipe".into())?;
            let (err_r, err_w) = sys::pipe().context(|| "create a pipe".into())?;
            (
                vec![in_r, out_w, err_w],
                ChildIo::Pipes {
                    stdin: in_w.into(),
                    stdout: out_r.into(),
                    stderr: err_r.into(),
                },
            )
        }
        Stdio::Tty(size) => {
            let (master, slave) = open_pty(*size).context(|| "allocate a terminal".into())?;
            if let Some(ids) = &cmd.ids {
                // The terminal belongs to the user who runs on it (mode 0620 from devpts).
                // SAFETY: fchown on a descriptor we own.
                unsafe { libc::fchown(slave.as_raw_fd(), ids.uid, ids.gid) };
            }
            (vec![slave], ChildIo::Tty { master })
        }
        Stdio::LogFile(_) => (Vec::new(), ChildIo::LogFile),
    };
    let (log_dirs, log_file) = match &cmd.stdio {
        Stdio::LogFile(path) => {
            let comps = sys::components_in_root(path)?;
            let mut dirs = Vec::new();
            let mut at = String::new();
            for name in &comps[..comps.len().saturating_sub(1)] {
                at.push('/');
                at.push_str(name);
                dirs.push(cstring(&at, "the log file's path")?);
            }
            (dirs, Some(cstring(path, "the log file's path")?))
        }
        _ => (Vec::new(), None),
    };
    let stdio = match (&cmd.stdio, &log_file) {
        (Stdio::LogFile(_), Some(file)) => ChildStdio::LogFile {
            dirs: &log_dirs,
            file,
        },
        (Stdio::Tty(_), _) => {
            let slave = child_fds[0].as_raw_fd();
            ChildStdio::Fds {
                fds: [slave; 3],
                controlling_tty: true,
            }
        }
        _ => ChildStdio::Fds {
            fds: [
                child_fds[0].as_raw_fd(),
                child_fds[1].as_raw_fd(),
                child_fds[2].as_raw_fd(),
            ],
            controlling_tty: false,
        },
    };

    let (report_r, report_w) = sys::pipe().context(|| "create a pipe".into())?;
    let plan = Plan {
        argv: &argv,
        envp: &envp,
        candidates: &candidates,
        root: root.as_deref(),
        cwd: &cwd,
        ids: cmd.ids.as_ref().map(|i| (i.uid, i.gid, groups.as_slice())),
        stdio,
        report: report_w.as_raw_fd(),
    };
    let pid = reaper
        .fork_registered(on_exit, || run_child(&plan))
        .context(|| "fork".into())?;
    drop(report_w);
    drop(child_fds);

    // Empty: execve happened. Otherwise: which step failed, and its errno.
    let mut report = Vec::new();
    let _ = File::from(report_r).read_to_end(&mut report);
    if report.len() < 8 {
        return Ok(Child { pid, io: ours });
    }
    let stage = stage_from(u32::from_ne_bytes([
        report[0], report[1], report[2], report[3],
    ]));
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    let why = sys::errno_text(&io::Error::from_raw_os_error(errno));
    let message = match stage {
        ChildStage::Session => format!("cannot start a session for {program}: {why}"),
        ChildStage::Root => format!("cannot enter the root {}: {why}", cmd.root.display()),
        ChildStage::Stdio => format!("cannot set up the standard streams of {program}: {why}"),
        ChildStage::Ids => {
            let (uid, gid) = cmd.ids.as_ref().map_or((0, 0), |i| (i.uid, i.gid));
            format!("cannot switch to uid {uid} gid {gid}: {why}")
        }
        ChildStage::Cwd => format!("cannot change to directory {}: {why}", cmd.cwd),
        ChildStage::Exec => format!("cannot run {program}: {why}"),
    };
    Err(GuestError::Spawn { stage, message })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The paths `execvp` would try for `program` with this PATH.
pub fn program_candidates(program: &str, search_path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    search_path
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{program}", dir.trim_end_matches('/'))
        })
        .collect()
}

fn stage_code(stage: ChildStage) -> u32 {
    match stage {
        ChildStage::Session => 1,
        ChildStage::Root => 2,
        ChildStage::Stdio => 3,
        ChildStage::Ids => 4,
        ChildStage::Cwd => 5,
        ChildStage::Exec => 6,
    }
}

fn stage_from(code: u32) -> ChildStage {
    match code {
        1 => ChildStage::Session,
        2 => ChildStage::Root,
        3 => ChildStage::Stdio,
        4 => ChildStage::Ids,
        5 => ChildStage::Cwd,
        _ => ChildStage::Exec,
    }
}

/// In the forked child: report `stage` and the current errno to the parent, then exit 127.
fn fail(report: RawFd, stage: ChildStage) -> ! {
    // SAFETY: errno location, write and _exit are async-signal-safe; the buffer is on our stack.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&stage_code(stage).to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Put `src` on descriptor `target` for the program to inherit.
///
/// # Safety
/// Only in the forked child; `src` is an open descriptor.
unsafe fn install(src: RawFd, target: RawFd) -> bool {
    // SAFETY: dup2/fcntl on descriptors of this (single-threaded) child.
    unsafe {
        if src == target {
            // dup2 onto itself keeps close-on-exec: clear it instead.
            libc::fcntl(target, libc::F_SETFD, 0) == 0
        } else {
            libc::dup2(src, target) == target
        }
    }
}

/// The forked child: set up and exec, or report why not. Only async-signal-safe calls, on data
/// prepared before the fork.
fn run_child(plan: &Plan) -> ! {
    let report = plan.report;
    // SAFETY: we are the single-threaded child of a fork; every call below is async-signal-safe
    // and uses only memory prepared before the fork.
    unsafe {
        // The agent's signal dispositions and mask are not the program's: defaults for all.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }

        if libc::setsid() < 0 {
            fail(report, ChildStage::Session);
        }
        if let Some(root) = plan.root
            && (libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0)
        {
            fail(report, ChildStage::Root);
        }
        match &plan.stdio {
            ChildStdio::Fds {
                fds,
                controlling_tty,
            } => {
                if *controlling_tty && libc::ioctl(fds[0], libc::TIOCSCTTY, 0) != 0 {
                    fail(report, ChildStage::Stdio);
                }
                for (target, &src) in fds.iter().enumerate() {
                    if !install(src, target as RawFd) {
                        fail(report, ChildStage::Stdio);
                    }
                }
            }
            ChildStdio::LogFile { dirs, file } => {
                for dir in dirs.iter() {
                    libc::mkdir(dir.as_ptr(), 0o755);
                }
                let log = libc::open(
                    file.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_APPEND
                        | libc::O_NOCTTY
                        | libc::O_CLOEXEC,
                    0o644,
                );
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if log < 0 || null < 0 || !install(null, 0) || !install(log, 1) || !install(log, 2)
                {
                    fail(report, ChildStage::Stdio);
                }
            }
        }
        if let Some((uid, gid, groups)) = plan.ids {
            // Raw system calls: glibc's wrappers would try to reach the threads of the parent.
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                fail(report, ChildStage::Ids);
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(report, ChildStage::Cwd);
        }
        // execvp's search: go on past missing entries, remember a permission problem.
        let mut denied = false;
        for candidate in plan.candidates {
            libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(report, ChildStage::Exec),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(report, ChildStage::Exec)
    }
}

/// A new terminal: (master, slave), both close-on-exec, the slave not yet anyone's controlling
/// terminal.
fn open_pty(size: WinSize) -> io::Result<(File, OwnedFd)> {
    // SAFETY: posix_openpt returns a fresh descriptor or -1.
    let master =
        check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: a fresh descriptor we own.
    let master = unsafe { File::from_raw_fd(master) };
    let fd = master.as_raw_fd();
    // SAFETY: grantpt/unlockpt on our master.
    check(unsafe { libc::grantpt(fd) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(fd) })?;
    set_window_size(&master, size)?;
    // Open the peer through the master (no path lookup); by name on kernels before 4.13.
    // SAFETY: TIOCGPTPEER returns a fresh descriptor or -1.
    let slave = unsafe {
        libc::ioctl(
            fd,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if slave >= 0 {
        slave
    } else {
        let mut name = [0 as libc::c_char; 64];
        // SAFETY: ptsname_r writes a NUL-terminated name into the buffer of the length we pass.
        let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `name` is NUL-terminated (ptsname_r succeeded).
        check(unsafe {
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        })?
    };
    // SAFETY: a fresh descriptor we own.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Set a terminal's size (on its master).
pub fn set_window_size(master: &File, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// The groups `uid` belongs to according to the root's /etc/passwd and /etc/group (what
/// `initgroups` would find, without NSS), `gid` first.
pub fn supplementary_groups(root: &Path, uid: u32, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    let read = |path: &str| {
        sys::open_in_root(root, path, libc::O_RDONLY, 0)
            .and_then(|fd| io::read_to_string(File::from(fd)))
            .unwrap_or_default()
    };
    let passwd = read("/etc/passwd");
    let Some(user) = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[2].parse() == Ok(uid)).then(|| fields[0].to_owned())
    }) else {
        return groups;
    };
    for line in read("/etc/group").lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || !fields[3].split(',').any(|m| m.trim() == user) {
            continue;
        }
        if let Ok(g) = fields[2].parse::<u32>()
            && !groups.contains(&g)
            && groups.len() < 64
        {
            groups.push(g);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_searched_like_execvp() {
        assert_eq!(program_candidates("/bin/sh", "/x"), ["/bin/sh"]);
        assert_eq!(program_candidates("./run", "/x"), ["./run"]);
        assert_eq!(
            program_candidates("ls", "/usr/bin/:/bin::"),
            ["/usr/bin/ls", "/bin/ls", "./ls", "./ls"]
        );
    }

    #[test]
    fn groups_come_from_the_roots_files() {
        let root =
            std::env::temp_dir().join(format!("airlock-guest-groups-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\ndocker:x:998:dev\nwheel:x:10:other, dev\nnope:x:11:developer\n",
        )
        .unwrap();
        assert_eq!(supplementary_groups(&root, 1000, 1000), [1000, 998, 10]);
        assert_eq!(supplementary_groups(&root, 0, 0), [0]);
        assert_eq!(supplementary_groups(&root, 4242, 7), [7]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
