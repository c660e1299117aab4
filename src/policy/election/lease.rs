//! Leases: how many slices in a row a task may run before it comes back
//! to the policy.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use super::{Class, Election, VSCALE};

/// The most slices a task may be given in a row when no waiting task of
/// another class would be due before it (fewer round trips to the policy;
/// a vote still preempts it at once).
const MAX_LEASE: u64 = 4;
/// The most while no task of ours has woken for [`QUIET`]: only tasks
/// that never sleep compete (burners), so no task that wakes waits behind
/// a long lease, and each round trip saved is CPU time for them.
pub(super) const MAX_LEASE_QUIET: u64 = 8;
/// Waiting tasks of its own class per CPU above which a task gets one slice,
/// not a lease (see [`Election::lease`]).
const LEASE_CROWD: u64 = 4;
/// See [`MAX_LEASE_QUIET`].
const QUIET: Duration = Duration::from_secs(1);

impl Election {
    /// The finish tag a task of `class` would get if it came back now.
    pub(super) fn next_tag(&self, class: &Class) -> u64 {
        class.vclock.max(self.vnow) + self.slice_ns * VSCALE / class.weight.max(1)
    }

    /// How many slices in a row a task of `class`, whose slice ends at
    /// tag `finish`, may run: as long as no held task of another class is
    /// due before its next slice would end (at most [`MAX_LEASE`], or
    /// [`MAX_LEASE_QUIET`] while no task wakes). The class pays for all of
    /// them now. Capped classes get one.
    ///
    /// A class with more than [`LEASE_CROWD`] tasks per CPU waiting gets one
    /// slice per task: in full mode every task of the system that belongs
    /// to no candidate is in one class, and under a fork storm hundreds of
    /// them each ran a whole lease while a shell among them waited 20 s.
    /// (Below that, leases stay: a candidate's few burners per CPU keep
    /// their CPUs between slices, which is what keeps a loser at its
    /// minimum when the leader's tasks outnumber the CPUs. Ending a lease
    /// whenever a task of its own class waited made a loser's share flaky
    /// in the scenarios, 10% instead of its 5% in one run of five.)
    pub(super) fn lease(&mut self, class: &Arc<str>, finish: u64, cpus: u64) -> u64 {
        let Some(c) = self.classes.get(class) else {
            return 1;
        };
        if c.capped {
            return 1;
        }
        let step = self.slice_ns * VSCALE / c.weight.max(1);
        // Held tasks of its class, each once (`held` may still have older
        // entries of a task queued again).
        let crowd = self.tasks.values().filter(|(_, k)| k == class).count() as u64;
        if crowd > LEASE_CROWD * cpus.max(1) {
            return 1;
        }
        // When the next slice of any other class with a task waiting or on
        // a CPU would end: held tasks by their tags, running ones by their
        // class's next tag (they come back at their slice's end).
        let held = self
            .held
            .iter()
            .filter(|Reverse((_, _, pid, _))| self.tasks.get(pid).is_some_and(|(_, k)| k != class))
            .map(|Reverse((f, ..))| *f);
        let running = self
            .slots
            .iter()
            .filter_map(|s| s.running.as_ref())
            .filter(|(_, k)| k != class)
            .filter_map(|(_, k)| self.classes.get(k))
            .map(|k| self.next_tag(k));
        let due = held.chain(running).min().unwrap_or(u64::MAX);
        let mut slices = 1;
        let quiet = self.last_wakeup.is_none_or(|t| t.elapsed() >= QUIET);
        let most = if quiet { MAX_LEASE_QUIET } else { MAX_LEASE };
        while slices < most && finish.saturating_add(slices * step) < due {
            slices += 1;
        }
        if let Some(c) = self.classes.get_mut(class) {
            c.vclock = c.vclock.max(finish) + (slices - 1) * step;
        }
        slices
    }
}
