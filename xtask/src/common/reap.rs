//! Process groups the xtask started and must not leave behind: each is
//! registered while it runs, and Ctrl-C or SIGTERM kills every registered
//! group before the xtask exits (130).
//!
//! One handler serves every command (ctrlc allows only one per process), so
//! `cargo xtask test` can start the browser test's processes and then the VM
//! and still clean up whichever is running when interrupted.

use std::sync::{Mutex, OnceLock};

/// The registered process groups.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// What the first Ctrl-C does instead of killing, if anything.
type Grace = Box<dyn FnOnce() + Send>;
static GRACE: Mutex<Option<Grace>> = Mutex::new(None);

/// Makes the first Ctrl-C/SIGTERM run `ask_to_stop` (e.g. ask a VM to shut
/// its workload down cleanly) instead of killing; a second one kills every
/// registered group as usual. Undone when the guard is dropped.
pub fn stop_gently_first(ask_to_stop: impl FnOnce() + Send + 'static) -> GentleStop {
    install_handler();
    *GRACE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(ask_to_stop));
    GentleStop
}

#[must_use = "the gentle stop is forgotten as soon as this is dropped"]
pub struct GentleStop;

impl Drop for GentleStop {
    fn drop(&mut self) {
        GRACE.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// While alive, Ctrl-C/SIGTERM kills the process group `pgid`.
#[must_use = "the group is forgotten as soon as this is dropped"]
pub struct OnInterrupt {
    pgid: i32,
}

/// Registers `pgid` (a process group the xtask created, e.g. with
/// `Command::process_group(0)`) to be killed on Ctrl-C or SIGTERM, and
/// installs the handler on first use.
pub fn kill_on_interrupt(pgid: i32) -> OnInterrupt {
    install_handler();
    groups().push(pgid);
    OnInterrupt { pgid }
}

impl Drop for OnInterrupt {
    fn drop(&mut self) {
        let mut groups = groups();
        if let Some(i) = groups.iter().position(|&g| g == self.pgid) {
            groups.remove(i);
        }
    }
}

/// SIGKILL to every process of group `pgid` (nothing for 0 or less, nor for
/// a group that is already gone).
pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

fn install_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let installed = ctrlc::set_handler(|| {
            let gentle = GRACE.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(ask_to_stop) = gentle {
                eprintln!("\nstopping cleanly (Ctrl-C again to kill)");
                ask_to_stop();
                return;
            }
            for &pgid in groups().iter() {
                kill_group(pgid);
            }
            eprintln!("\ninterrupted");
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!("warning: no Ctrl-C handler ({e}); an interrupt may leave processes behind");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_registered_while_its_guard_lives() {
        let a = kill_on_interrupt(-7);
        let b = kill_on_interrupt(-8);
        assert!(groups().contains(&-7) && groups().contains(&-8));
        drop(a);
        assert!(!groups().contains(&-7));
        assert!(groups().contains(&-8));
        drop(b);
        assert!(!groups().contains(&-8));
    }
}
