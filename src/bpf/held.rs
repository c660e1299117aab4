//! The decisions the user ring buffer had no room for, kept in order and
//! sent again after the next drain.

use std::collections::VecDeque;

use super::DispatchedTask;

/// Decisions that did not fit in the user ring buffer (the BPF side had not
/// drained it yet), oldest first: sent again before any newer one, after
/// the next drain. A full ring buffer thus delays decisions, never drops
/// them or stops the scheduler.
#[derive(Debug, Default)]
pub(crate) struct Held {
    queue: VecDeque<DispatchedTask>,
    /// Decisions held so far.
    pub(crate) total: u64,
}

impl Held {
    /// More than this many held decisions means the BPF side is not draining
    /// at all: the error is then returned.
    pub(crate) const MAX: usize = 1 << 16;

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Sends what is held, oldest first, until one does not fit; whether
    /// nothing is held any more.
    pub(crate) fn flush<E>(&mut self, mut send: impl FnMut(&DispatchedTask) -> Result<(), E>) -> bool {
        while let Some(task) = self.queue.front() {
            if send(task).is_err() {
                return false;
            }
            self.queue.pop_front();
        }
        true
    }

    /// Keeps `task` for later; `false` (not kept) past [`Held::MAX`].
    pub(crate) fn hold(&mut self, task: DispatchedTask) -> bool {
        if self.queue.len() >= Self::MAX {
            return false;
        }
        self.queue.push_back(task);
        self.total += 1;
        true
    }

    /// Sends `task` after what is held, or holds it if it does not fit.
    pub(crate) fn send_or_hold<E>(
        &mut self,
        task: &DispatchedTask,
        mut send: impl FnMut(&DispatchedTask) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.flush(&mut send) {
            match send(task) {
                Ok(()) => return Ok(()),
                Err(e) if self.queue.len() >= Self::MAX => return Err(e),
                Err(_) => {}
            }
        }
        match self.hold(*task) {
            true => Ok(()),
            false => send(task),
        }
    }
}
