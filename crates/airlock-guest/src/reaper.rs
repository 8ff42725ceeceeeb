//! The one reaper: PID 1 must collect every child, its own and every orphan the kernel hands it.
//!
//! A thread blocks in `waitpid(-1)` and hands each status to whoever registered that pid; an
//! unregistered pid (an orphan, a helper) is simply collected. Registration cannot lose a race with
//! a quick exit: `fork_registered` forks while holding the table's lock and registers before
//! releasing it, so the reaper cannot look the pid up before it is there.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What to do with a child's wait status once it is collected.
pub type ExitAction = Box<dyn FnOnce(i32) + Send>;

#[derive(Default)]
struct Table {
    actions: HashMap<libc::pid_t, ExitAction>,
    /// A fork happened since the reaper last found no children.
    forked: bool,
}

struct Shared {
    table: Mutex<Table>,
    forked: Condvar,
}

/// A handle on the reaper thread.
#[derive(Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

/// Lock, surviving a poisoned lock (a panicking holder cannot leave the table inconsistent).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reaper {
    /// Start the reaper thread. The process must own its children: use it in PID 1, or in a
    /// process that has no other code waiting for children.
    pub fn start() -> io::Result<Reaper> {
        let reaper = Reaper {
            shared: Arc::new(Shared {
                table: Mutex::new(Table::default()),
                forked: Condvar::new(),
            }),
        };
        let shared = reaper.shared.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .stack_size(64 << 10)
            .spawn(move || reap_forever(&shared))?;
        Ok(reaper)
    }

    /// Fork; the child runs `child` (which should exec or exit, and may only make
    /// async-signal-safe calls); the parent registers `on_exit` for the child's pid before the reaper can see it.
    pub fn fork_registered(
        &self,
        on_exit: ExitAction,
        child: impl FnOnce(),
    ) -> io::Result<libc::pid_t> {
        let mut table = lock(&self.shared.table);
        // SAFETY: fork; the child runs `child`, whose contract is above, and never returns here.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            child();
            // SAFETY: `child` was to exec or exit; if it returned, leave without unwinding.
            unsafe { libc::_exit(127) };
        }
        table.actions.insert(pid, on_exit);
        table.forked = true;
        drop(table);
        self.shared.forked.notify_one();
        Ok(pid)
    }

    /// Forget `pid` (its status will be dropped when collected).
    pub fn forget(&self, pid: libc::pid_t) {
        lock(&self.shared.table).actions.remove(&pid);
    }
}

fn reap_forever(shared: &Shared) -> ! {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the local we pass.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        if pid > 0 {
            let action = lock(&shared.table).actions.remove(&pid);
            if let Some(action) = action {
                action(status);
            }
            continue;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::ECHILD) => {
                // No children at all: sleep until the next fork (a child's orphans are reparented
                // to us before the child itself can be collected, so only a fork makes new ones).
                let table = lock(&shared.table);
                let (mut table, _) = shared
                    .forked
                    .wait_timeout_while(table, Duration::from_secs(1), |t| !t.forked)
                    .unwrap_or_else(|e| e.into_inner());
                table.forked = false;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The shell's view of a wait status: the exit code, or 128+N for death by signal N.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        assert_eq!(exit_code(libc::SIGKILL | 0x80), 137);
    }
}
