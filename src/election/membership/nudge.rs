//! How the policy asks the membership tracker for a scan sooner than
//! planned, without a lock on the scheduling path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How the policy asks the tracker for a scan sooner than planned.
///
/// No lock is taken on the policy's side: `ask` sets a flag and unparks
/// the tracker thread. (With a mutex, a tracker preempted while holding it
/// would stall the scheduling loop in full mode, where the tracker waits
/// for the loop to be scheduled at all.)
#[derive(Debug, Default)]
pub struct Nudge {
    asked: AtomicBool,
    /// The thread that waits: the first to call [`Nudge::wait`].
    waiter: std::sync::OnceLock<std::thread::Thread>,
}

impl Nudge {
    /// Asks for a scan; cheap when one is already asked for.
    pub fn ask(&self) {
        if !self.asked.swap(true, Ordering::AcqRel)
            && let Some(waiter) = self.waiter.get()
        {
            waiter.unpark();
        }
    }

    /// Waits up to `timeout` for a request (it stays pending until
    /// [`Nudge::take`]). An `ask` between the check and the park still
    /// ends the park at once (an unpark before a park is kept).
    pub(super) fn wait(&self, timeout: Duration) {
        self.waiter.get_or_init(std::thread::current);
        if !self.pending() {
            std::thread::park_timeout(timeout);
        }
    }

    pub(crate) fn pending(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    pub(super) fn take(&self) {
        self.asked.store(false, Ordering::Release);
    }
}
