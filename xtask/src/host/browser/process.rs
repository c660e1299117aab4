//! [`Started`]: a process the browser test started, in a process group of
//! its own, killed with its group when dropped.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::common::reap;

/// A process the test started, in a process group of its own. Dropping it
/// kills the whole group and reaps the process.
pub(super) struct Started {
    what: &'static str,
    pub(super) child: Child,
    _interrupt: reap::OnInterrupt,
}

impl Started {
    pub(super) fn spawn(what: &'static str, mut command: Command) -> Result<Started> {
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pgid = i32::try_from(child.id()).expect("pids fit in i32");
        Ok(Started {
            what,
            child,
            _interrupt: reap::kill_on_interrupt(pgid),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then its exit status once it exits; an error if it does not
    /// within `grace` (it is killed then).
    pub(super) fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for a child")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                reap::kill_group(self.pid() as i32);
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM (killed)",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        reap::kill_group(self.pid() as i32);
        let _ = self.child.wait();
    }
}
