//! Airlock's guest agent. As PID 1 of the VM it boots the initramfs and serves the host; as an
//! ordinary process, `airlock-guest --serve-stdio [--root DIR]` serves the protocol on its
//! standard input (a socket) for tests and development.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use airlock_guest::agent::{self, Mode};
use airlock_guest::reaper::Reaper;
use airlock_guest::{boot, sys};

const USAGE: &str = "\
airlock-guest: the guest agent of Airlock's microVM sandboxes; it runs as PID 1 of the VM.
usage: airlock-guest --serve-stdio [--root DIR]
  serve the protocol on standard input (a socket), running commands under DIR (default /)";

fn main() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        boot::run_as_init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--serve-stdio"] => PathBuf::from("/"),
        ["--serve-stdio", "--root", dir] => PathBuf::from(dir),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    std::process::exit(serve_stdio(root));
}

/// Serve the protocol on standard input, as the VM's agent would on its port.
fn serve_stdio(root: PathBuf) -> i32 {
    // The stream moves off descriptors 0 and 1, which become /dev/null, so that commands never
    // inherit it.
    // SAFETY: F_DUPFD_CLOEXEC returns a fresh descriptor or -1.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        eprintln!(
            "airlock-guest: no stream on standard input: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    // SAFETY: a fresh descriptor we own.
    let stream = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: closing our own standard descriptors; ensure_std_fds_open reopens them.
    unsafe {
        libc::close(0);
        libc::close(1);
    }
    sys::ensure_std_fds_open();
    // Orphans of the commands come to us, as they would to PID 1.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("airlock-guest: {e}");
            return 1;
        }
    };
    let reaper = match Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("airlock-guest: cannot start the reaper: {e}");
            return 1;
        }
    };
    agent::serve(
        std::io::BufReader::new(stream),
        writer,
        Mode::Process { root },
        reaper,
    );
    0
}
