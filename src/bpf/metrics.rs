//! The counters: [`Metrics`] all at once and scx_rustland_core's
//! `nr_*_mut()` accessors.

use super::BpfScheduler;
use crate::stats::Metrics;

impl BpfScheduler<'_> {
    /// Tasks queued to user space that `dequeue_task` has not returned yet.
    fn queued_backlog(&self) -> u64 {
        self.bss().nr_queued_total.saturating_sub(self.nr_dequeued)
    }

    /// Every counter at once.
    pub fn metrics(&self) -> Metrics {
        let bss = self.bss();
        Metrics {
            nr_online_cpus: bss.nr_online_cpus,
            nr_running: bss.nr_running,
            nr_queued: self.queued_backlog(),
            nr_queued_total: bss.nr_queued_total,
            nr_scheduled: bss.nr_scheduled,
            nr_user_dispatches: bss.nr_user_dispatches,
            nr_kernel_dispatches: bss.nr_kernel_dispatches,
            nr_cancel_dispatches: bss.nr_cancel_dispatches,
            nr_bounce_dispatches: bss.nr_bounce_dispatches,
            nr_failed_dispatches: bss.nr_failed_dispatches,
            nr_sched_congested: bss.nr_sched_congested,
            nr_rescued: bss.nr_rescued,
            nr_retried_dispatches: self.held.total,
            nr_wake_preempts: bss.nr_wake_preempts,
        }
    }


    /// CPUs online.
    pub fn nr_online_cpus_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_online_cpus
    }

    /// Tasks running now (the scheduling loop's thread not counted).
    pub fn nr_running_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_running
    }

    /// Tasks queued to user space that `dequeue_task` has not returned yet:
    /// the backlog, as in scx_rustland_core (it falls as tasks are
    /// dequeued). Read it before the dequeue loop. A write is ignored (the
    /// next call counts again); the total so far is
    /// [`Metrics::nr_queued_total`].
    pub fn nr_queued_mut(&mut self) -> &mut u64 {
        self.nr_queued = self.queued_backlog();
        &mut self.nr_queued
    }

    /// Tasks the policy holds without a decision; `notify_complete` sets it.
    /// The BPF side reads it: while it is not 0, a CPU going idle wakes the
    /// policy and a task whose slice ends goes back to it.
    pub fn nr_scheduled_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_scheduled
    }

    /// Decisions of the policy carried out so far (for a CPU or for any).
    pub fn nr_user_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_user_dispatches
    }

    /// Tasks the BPF side dispatched by itself so far.
    pub fn nr_kernel_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_kernel_dispatches
    }

    /// Decisions dropped so far: the task was enqueued again, left, or was
    /// already dispatched.
    pub fn nr_cancel_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_cancel_dispatches
    }

    /// Decisions for a CPU the task may not use, sent to its previous CPU.
    pub fn nr_bounce_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_bounce_dispatches
    }

    /// Decisions the kernel refused.
    pub fn nr_failed_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_failed_dispatches
    }

    /// Tasks the BPF side dispatched itself because the queue to user space
    /// was full.
    pub fn nr_sched_congested_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_sched_congested
    }
}
