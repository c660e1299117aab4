//! The scheduler's counters as one serializable struct: printed by
//! `--stats`, and the shape every other consumer (the HTTP API, the tests)
//! reads.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// CPUs online when the scheduler started.
    pub nr_online_cpus: u64,
    /// SCHED_EXT tasks running right now (the scheduler's own threads,
    /// SCHED_EXT in full mode, not counted).
    pub nr_running: u64,
    /// Tasks queued to user space that the policy has not taken yet (the
    /// backlog: `nr_queued_mut()` of the API, as in scx_rustland_core).
    pub nr_queued: u64,
    /// Tasks queued to user space so far.
    #[serde(default)]
    pub nr_queued_total: u64,
    /// Tasks the policy holds without a decision yet.
    pub nr_scheduled: u64,
    /// Decisions of the policy carried out.
    pub nr_user_dispatches: u64,
    /// Tasks dispatched by the BPF side alone (idle CPU on wake-up, the
    /// scheduler's own threads, kernel threads, congestion, rescues).
    pub nr_kernel_dispatches: u64,
    /// Decisions dropped because the task was enqueued again, left, or was
    /// already dispatched.
    pub nr_cancel_dispatches: u64,
    /// Decisions for a CPU the task may not use, sent to its own CPU instead.
    pub nr_bounce_dispatches: u64,
    /// Decisions the kernel refused.
    pub nr_failed_dispatches: u64,
    /// Tasks dispatched by the BPF side because the queue to user space was
    /// full.
    pub nr_sched_congested: u64,
    /// Tasks dispatched by the BPF side because user space left them waiting
    /// longer than the starvation limit.
    pub nr_rescued: u64,
    /// Decisions the user ring buffer had no room for, kept and sent again
    /// after the BPF side drained it (none is lost).
    #[serde(default)]
    pub nr_retried_dispatches: u64,
    /// Turns of running tasks ended early for decisions marked
    /// [`RL_PREEMPT_CPU`](crate::sched::RL_PREEMPT_CPU) with no CPU chosen
    /// and none idle (a waking task that should not wait for a slice).
    #[serde(default)]
    pub nr_wake_preempts: u64,
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpus {} running {} queued {} backlog {} held {} | dispatches: user {} kernel {} \
             cancel {} bounce {} failed {} congested {} rescued {} retried {} wake-preempts {}",
            self.nr_online_cpus,
            self.nr_running,
            self.nr_queued_total,
            self.nr_queued,
            self.nr_scheduled,
            self.nr_user_dispatches,
            self.nr_kernel_dispatches,
            self.nr_cancel_dispatches,
            self.nr_bounce_dispatches,
            self.nr_failed_dispatches,
            self.nr_sched_congested,
            self.nr_rescued,
            self.nr_retried_dispatches,
            self.nr_wake_preempts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_round_trip_through_json() {
        let m = Metrics {
            nr_user_dispatches: 7,
            nr_rescued: 1,
            ..Default::default()
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"nr_user_dispatches\":7"), "{json}");
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
    }

    #[test]
    fn the_backlog_and_the_total_of_queued_tasks_are_both_reported() {
        let m = Metrics { nr_queued: 2, nr_queued_total: 40, ..Default::default() };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"nr_queued\":2") && json.contains("\"nr_queued_total\":40"), "{json}");
        let text = m.to_string();
        assert!(text.contains("queued 40 backlog 2"), "{text}");
        // Counters written before the total existed still read.
        let old = json.replace(",\"nr_queued_total\":40", "");
        assert_eq!(serde_json::from_str::<Metrics>(&old).unwrap().nr_queued_total, 0);
    }
}
