//! What a class pays for its tasks' CPU time: charges settled when a task
//! comes back, and `--cap`'s allowance for capped classes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Budget, Election, VSCALE};
use crate::sched::QueuedTask;

/// The most a capped class may save up: it runs in bursts of a slice at
/// most.
const BURST_SLICES: i64 = 1;
/// A capped class's tasks each run at least this often (the slice shrinks
/// to make it so), far from the starvation limit.
const CAPPED_TURN: Duration = Duration::from_millis(200);
/// The shortest slice a capped class is given.
const MIN_CAPPED_SLICE_NS: u64 = 200_000;

impl Election {
    /// A task is back: its class pays for what it really ran, not for the
    /// slice it was given.
    pub(super) fn settle(&mut self, task: &QueuedTask) {
        let Some(c) = self.charges.remove(&task.pid) else {
            return;
        };
        let ran = if !task.wakeup && task.exec_runtime >= c.exec_runtime {
            // Not what it ran on past a slice by itself, while the policy
            // held nothing (the BPF side let it, on a CPU nobody else
            // wanted): no decision of the policy's, so no class pays.
            let free = task.free_runtime.saturating_sub(c.free_runtime);
            (task.exec_runtime - c.exec_runtime).saturating_sub(free)
        } else if task.stop_ts > c.stop_ts {
            task.stop_ts.saturating_sub(task.start_ts)
        } else {
            0
        };
        // Everything else it ran was this decision's, however late the
        // tick that ended its slice (a vCPU the host did not run for a
        // while sees time jump).
        if let Some(b) = self.budgets.get_mut(&c.class) {
            b.ns += c.ns as i64 - ran as i64;
        }
        // The class's clock moves by what really ran: a slice ends at a
        // tick, so a short one runs longer than given and a long one about
        // as given (and a task that sleeps early runs less).
        if let Some(k) = self.classes.get_mut(&c.class) {
            let w = k.weight.max(1);
            if ran >= c.ns {
                k.vclock = k.vclock.saturating_add((ran - c.ns) * VSCALE / w);
            } else {
                k.vclock = k.vclock.saturating_sub((c.ns - ran) * VSCALE / w);
            }
        }
    }

    /// `--cap`: every capped class earns its minimum share of the machine
    /// for the time gone by.
    pub(super) fn refill(&mut self, cpus: u64) {
        let now = Instant::now();
        let elapsed = self.last_refill.map(|t| now - t).unwrap_or_default();
        self.last_refill = Some(now);
        let earned = (elapsed.as_nanos() as f64 * self.min_share * cpus as f64) as i64;
        let burst = self.slice_ns as i64 * BURST_SLICES;
        for (name, class) in &self.classes {
            if !class.capped {
                continue;
            }
            let b = self.budgets.entry(name.clone()).or_insert(Budget { ns: burst, held: 0 });
            b.ns = b.ns.saturating_add(earned).min(burst);
        }
        // How many tasks of each class wait, as of this round.
        for b in self.budgets.values_mut() {
            b.held = 0;
        }
        for (_, class) in self.tasks.values() {
            if let Some(b) = self.budgets.get_mut(class) {
                b.held += 1;
            }
        }

    }

    /// The slice for a task of `class`, and whether it may run now.
    pub(super) fn allowance(&self, class: &Arc<str>, cpus: u64) -> (u64, bool) {
        let capped = self.classes.get(class).is_some_and(|c| c.capped);
        if !capped {
            return (self.slice_ns, true);
        }
        let Some(b) = self.budgets.get(class) else {
            return (self.slice_ns, true);
        };
        // Every task of the class gets its turn within CAPPED_TURN: the
        // class earns min_share of every CPU, shared by its tasks.
        let earned = CAPPED_TURN.as_nanos() as f64 * self.min_share * cpus as f64;
        let slice = (earned / b.held.max(1) as f64) as u64;
        (slice.max(MIN_CAPPED_SLICE_NS).min(self.slice_ns), b.ns > 0)
    }
}
