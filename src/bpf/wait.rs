//! Sleeping until there is work: the wait limits, [`Waker`] and
//! `BpfScheduler::wait_for_tasks` / `waker`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::BpfScheduler;

/// How long [`BpfScheduler::notify_complete`] sleeps at most when the
/// policy holds no task (a queued task wakes it at once).
pub const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long it sleeps at most while the policy still holds tasks (a CPU
/// going idle wakes it at once).
pub const BUSY_WAIT: Duration = Duration::from_millis(5);

/// Cuts the scheduling loop's wait short from another thread: an eventfd in
/// the same epoll set as the queued-task ring buffer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    /// Wakes the loop (or makes its next wait return at once).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd; a full
        // counter (EAGAIN) already means "woken".
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the eventfd so the next wait sleeps again.
    fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the fd is
        // non-blocking, so an unwoken eventfd returns EAGAIN at once.
        unsafe { libc::read(self.fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

impl BpfScheduler<'_> {
    /// Sleeps until a task is queued, a [`Waker`] of this scheduler is
    /// woken, or `timeout` passes.
    pub fn wait_for_tasks(&mut self, timeout: Duration) {
        if self.inbox.borrow().is_empty() {
            self.queued.poll_raw(timeout);
        }
        if let Some(waker) = &self.waker {
            waker.clear();
        }
    }

    /// A handle another thread can use to cut [`wait_for_tasks`]'s sleep
    /// short (for example when the votes change).
    ///
    /// [`wait_for_tasks`]: BpfScheduler::wait_for_tasks
    pub fn waker(&mut self) -> Result<Waker> {
        if let Some(waker) = &self.waker {
            return Ok(waker.clone());
        }
        let waker = Waker::new().context("creating the scheduler's wake-up eventfd")?;
        // libbpf's poll reads the event's data as the index of the ring that
        // is ready: 0 names the one ring there is, which it then consumes
        // (harmlessly, when empty).
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open for the duration of the call and
        // `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.queued.epoll_fd(),
                libc::EPOLL_CTL_ADD,
                waker.fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("adding the wake-up eventfd to the ring buffer's epoll");
        }
        self.waker = Some(waker.clone());
        Ok(waker)
    }

}
