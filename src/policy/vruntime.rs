//! `vruntime`: weighted fair share. Each task accumulates virtual runtime,
//! its CPU time scaled by 100 / weight (the kernel's weight: 100 at nice 0,
//! more for negative nice, less for positive), and the task with the least
//! runs first, for a slice scaled by its weight (so a nice 10 task also gets
//! shorter turns when it does run). A task that slept is placed no further back than one slice
//! behind the current minimum, so sleeping earns a bounded head start; one
//! that wakes behind every running task takes a CPU at once
//! ([`RL_PREEMPT_CPU`]) rather than waiting for a slice to end.

use std::collections::{BinaryHeap, HashMap};
use std::cmp::Reverse;

use anyhow::Result;

use crate::sched::{DispatchedTask, QueuedTask, RL_CPU_ANY, RL_PREEMPT_CPU};
use crate::sched::{Dispatcher, Policy};

/// Drop what we remember of a task not seen for this long (ns).
const FORGET_AFTER_NS: u64 = 30_000_000_000;
/// Look for forgotten tasks every this many new entries.
const PRUNE_EVERY: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Account {
    vruntime: u64,
    /// stop_ts of the last run already charged (a task queued again without
    /// running is not charged twice).
    charged_stop: u64,
}

pub struct Vruntime {
    slice_ns: u64,
    min_vruntime: u64,
    accounts: HashMap<i32, Account>,
    inserted_since_prune: usize,
    ready: BinaryHeap<Reverse<(u64, i32, u64)>>,
    tasks: HashMap<i32, QueuedTask>,
}

impl Vruntime {
    pub fn new(slice_ns: u64) -> Self {
        Vruntime {
            slice_ns,
            min_vruntime: 0,
            accounts: HashMap::new(),
            inserted_since_prune: 0,
            ready: BinaryHeap::new(),
            tasks: HashMap::new(),
        }
    }

    /// The virtual runtime `task` runs with, after charging its last run.
    fn charge(&mut self, task: &QueuedTask) -> u64 {
        let new = !self.accounts.contains_key(&task.pid);
        let floor = self.min_vruntime.saturating_sub(self.slice_ns);
        let acct = self
            .accounts
            .entry(task.pid)
            .or_insert(Account { vruntime: floor, charged_stop: task.stop_ts });
        if task.stop_ts > acct.charged_stop && task.stop_ts >= task.start_ts {
            // It ran with this vruntime: the least among the runnable tasks
            // then, so the clock that sleepers are measured against.
            self.min_vruntime = self.min_vruntime.max(acct.vruntime);
            let ran = task.stop_ts - task.start_ts;
            acct.vruntime += ran * 100 / task.weight.max(1);
            acct.charged_stop = task.stop_ts;
        }
        acct.vruntime = acct.vruntime.max(floor);
        let v = acct.vruntime;
        if new {
            self.inserted_since_prune += 1;
            if self.inserted_since_prune >= PRUNE_EVERY {
                self.inserted_since_prune = 0;
                let now = task.stop_ts.max(task.start_ts);
                self.accounts
                    .retain(|_, a| now.saturating_sub(a.charged_stop) < FORGET_AFTER_NS);
            }
        }
        v
    }
}

impl Policy for Vruntime {
    fn name(&self) -> &'static str {
        "vruntime"
    }

    fn schedule(&mut self, d: &mut dyn Dispatcher) -> Result<()> {
        while let Some(task) = d.dequeue_task()? {
            let v = self.charge(&task);
            self.ready.push(Reverse((v, task.pid, task.enq_cnt)));
            self.tasks.insert(task.pid, task);
        }
        while let Some(Reverse((v, pid, seq))) = self.ready.pop() {
            let Some(task) = self.tasks.remove(&pid) else { continue };
            if task.enq_cnt != seq {
                // A newer enqueue of the same task is in the heap too.
                self.tasks.insert(pid, task);
                continue;
            }
            let mut out = DispatchedTask::new(&task);
            out.cpu = RL_CPU_ANY;
            out.vtime = v;
            out.slice_ns = weighted_slice(self.slice_ns, task.weight);
            // The task's enqueue flags (`new` copies them) are not passed on.
            // A task waking behind every running one (it slept while they
            // ran) does not wait for a slice to end: it is owed the CPU now.
            out.flags = if task.wakeup && v < self.min_vruntime {
                RL_PREEMPT_CPU
            } else {
                0
            };
            d.dispatch_task(&out)?;
        }
        Ok(())
    }
}

/// The slice of a task of `weight`: `base` at nice 0, in proportion to the
/// weight, from base/20 up to 4 x base.
pub fn weighted_slice(base: u64, weight: u64) -> u64 {
    (base * weight / 100).clamp(base / 20, base * 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::fake::{FakeDispatcher, task};

    /// Simulates one CPU: the dispatched task with the lowest vtime runs one
    /// slice, then comes back. Returns the CPU time each pid got.
    fn simulate(weights: &[u64], rounds: usize) -> Vec<u64> {
        let slice = 1_000_000;
        let mut p = Vruntime::new(slice);
        let mut d = FakeDispatcher::default();
        let mut now = 0;
        let mut got = vec![0; weights.len()];
        let mut waiting: Vec<DispatchedTask> = Vec::new();
        d.queue.extend(weights.iter().enumerate().map(|(i, &w)| task(i as i32, w, 0, 0)));
        for _ in 0..rounds {
            p.schedule(&mut d).unwrap();
            waiting.append(&mut d.dispatched);
            waiting.sort_by_key(|t| t.vtime);
            let next = waiting.remove(0);
            let pid = next.pid as usize;
            got[pid] += slice;
            let start = now;
            now += slice;
            let mut t = task(next.pid, weights[pid], start, now);
            t.enq_cnt = next.enq_cnt + 1;
            d.queue.push_back(t);
        }
        got
    }

    #[test]
    fn nice_0_gets_far_more_than_nice_10() {
        // Kernel weights: nice 0 -> 100, nice 10 -> about 10.
        let got = simulate(&[100, 10], 1100);
        assert!(got[0] > 5 * got[1], "{got:?}");
    }

    #[test]
    fn equal_weights_share_equally() {
        let got = simulate(&[100, 100, 100], 300);
        let (min, max) = (got.iter().min().unwrap(), got.iter().max().unwrap());
        assert!(max - min <= 1_000_000, "{got:?}");
    }

    #[test]
    fn slices_follow_weight_within_bounds() {
        assert_eq!(weighted_slice(5_000_000, 100), 5_000_000);
        assert_eq!(weighted_slice(5_000_000, 10), 500_000);
        assert_eq!(weighted_slice(5_000_000, 1), 250_000);
        assert_eq!(weighted_slice(5_000_000, 10_000), 20_000_000);
    }

    #[test]
    fn a_sleeper_gets_a_bounded_head_start() {
        let mut p = Vruntime::new(1_000);
        p.min_vruntime = 1_000_000;
        let v = p.charge(&task(42, 100, 0, 0));
        assert_eq!(v, 1_000_000 - 1_000);
    }

    #[test]
    fn a_run_is_charged_once() {
        let mut p = Vruntime::new(1_000);
        let t = task(7, 100, 0, 500);
        let first = p.charge(&task(7, 100, 0, 0));
        let a = p.charge(&t);
        let b = p.charge(&t);
        assert_eq!(a, first + 500);
        assert_eq!(a, b);
    }

    #[test]
    fn only_a_sleeper_waking_behind_the_runners_takes_a_cpu_at_once() {
        let mut p = Vruntime::new(1_000);
        let mut d = FakeDispatcher::default();
        // Two burners run for a while: the clock moves on.
        for round in 0..10u64 {
            for pid in [1, 2] {
                let start = round * 2_000;
                d.queue.push_back(task(pid, 100, start, start + 1_000));
            }
            p.schedule(&mut d).unwrap();
        }
        assert!(d.dispatched.iter().all(|t| t.flags & RL_PREEMPT_CPU == 0));
        d.dispatched.clear();
        // A task that slept all along wakes; so does a burner (a wake-up
        // after running its share is no reason to cut anyone short).
        let mut sleeper = task(3, 100, 0, 0);
        sleeper.wakeup = true;
        let mut burner = task(1, 100, 20_000, 21_000);
        burner.wakeup = true;
        d.queue.extend([sleeper, burner]);
        p.schedule(&mut d).unwrap();
        let flags: Vec<(i32, bool)> = d
            .dispatched
            .iter()
            .map(|t| (t.pid, t.flags & RL_PREEMPT_CPU != 0))
            .collect();
        assert_eq!(flags, [(3, true), (1, false)]);
    }
}
