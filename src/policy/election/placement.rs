//! Placement: which held task goes on which CPU, the decisions kept ready
//! in the shared queue, and the CPUs preempted when the standing moves.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::{Charge, Election, SLOT_STALE, Slot};
use crate::sched::{DispatchedTask, Dispatcher, RL_CPU_ANY, RL_PREEMPT_CPU};

impl Election {
    /// Puts the best held task that may run now on `cpu` (or in the
    /// shared queue, [`RL_CPU_ANY`]), with the dispatch `flags`; false when
    /// there is none.
    pub(super) fn place(&mut self, d: &mut dyn Dispatcher, cpu: i32, flags: u64) -> Result<bool> {
        let cpus = d.nr_online_cpus();
        let mut waiting = Vec::new();
        let mut placed = false;
        while let Some(Reverse(key)) = self.held.pop() {
            let (finish, _, pid, start) = key;
            let Some((_, class)) = self.tasks.get(&pid) else {
                continue;
            };
            let (slice, may_run) = self.allowance(class, cpus);
            if !may_run {
                waiting.push(Reverse(key));
                continue;
            }
            let Some((task, class)) = self.tasks.remove(&pid) else {
                continue;
            };
            let slices = self.lease(&class, finish, cpus);
            let mut out = DispatchedTask::new(&task);
            out.cpu = cpu;
            out.vtime = finish;
            out.slice_ns = slice * slices;
            out.flags = flags;
            d.dispatch_task(&out)?;
            if let Some(b) = self.budgets.get_mut(&class)
                && self.classes.get(&class).is_some_and(|c| c.capped)
            {
                b.ns -= slice as i64;
            }
            let charge = Charge {
                class: class.clone(),
                ns: out.slice_ns,
                exec_runtime: task.exec_runtime,
                free_runtime: task.free_runtime,
                stop_ts: task.stop_ts,
            };
            self.charges.insert(pid, charge);
            if cpu == RL_CPU_ANY {
                self.ahead.push_back((Some((pid, class)), start));
            } else if let Ok(i) = usize::try_from(cpu) {
                if self.slots.len() <= i {
                    self.slots.resize(i + 1, Slot::default());
                }
                self.slots[i] = Slot {
                    running: Some((pid, class)),
                    running_start: start,
                    since: Some(Instant::now()),
                };
            }
            self.advance_vnow(start);
            placed = true;
            break;
        }
        self.held.extend(waiting);
        Ok(placed)
    }

    /// The best held task that may run now: its pid, last CPU and finish
    /// tag.
    pub(super) fn best(&mut self, cpus: u64) -> Option<(i32, i32, u64)> {
        // Entries of tasks placed since (by an older entry) go first.
        while let Some(Reverse((_, _, pid, _))) = self.held.peek() {
            if self.tasks.contains_key(pid) {
                break;
            }
            self.held.pop();
        }
        let runs_now = |Reverse((finish, _, pid, _)): &Reverse<(u64, u64, i32, u64)>| {
            let (task, class) = self.tasks.get(pid)?;
            self.allowance(class, cpus).1.then_some((*pid, task.cpu, *finish))
        };
        if self.budgets.is_empty() {
            return self.held.peek().and_then(runs_now);
        }
        // With capped classes, the best may be one that must wait.
        let mut order: Vec<&Reverse<(u64, u64, i32, u64)>> = self.held.iter().collect();
        order.sort_unstable();
        order.into_iter().find_map(runs_now)
    }

    /// The system's virtual time moves to the least start tag of the tasks
    /// on CPUs (SFQ's "start tag of the task in service", over several
    /// CPUs), never back. Not to the start of the task just placed: a light
    /// class's far-ahead tag would push it forward, and every other class
    /// restarting there would forfeit what it is owed.
    fn advance_vnow(&mut self, placed_start: u64) {
        let now = Instant::now();
        let least = self
            .slots
            .iter()
            .filter(|s| s.running.is_some() && s.since.is_some_and(|t| now - t < SLOT_STALE))
            .map(|s| s.running_start)
            .min()
            .unwrap_or(placed_start);
        self.vnow = self.vnow.max(least);
    }

    /// A task is back from a CPU: what was queued behind it there runs now.
    pub(super) fn left_cpu(&mut self, pid: i32) {
        for slot in &mut self.slots {
            if slot.running.as_ref().is_some_and(|(p, _)| *p == pid) {
                // The CPU it leaves takes the oldest decision in the shared
                // queue, if one waits there.
                let (next, start) = self.ahead.pop_front().unwrap_or((None, 0));
                slot.running = next;
                slot.running_start = start;
                slot.since = Some(Instant::now());
            }
        }
        self.ahead.retain(|(on, _)| on.as_ref().is_none_or(|(p, _)| *p != pid));
    }

    /// Keeps the next decisions ready in the shared queue, so a CPU whose
    /// slice ends goes on at once instead of idling while the policy
    /// decides, but only decisions that are sure: a waiting task is queued
    /// there only when it would win against every task that can come back
    /// from a CPU before it is taken (its finish tag is below the next tag
    /// of every class on a CPU). A leader's task whose slice ends is thus
    /// never beaten to its CPU by a waiting loser; it comes back and
    /// competes, in view. At most one decision per CPU of ours waits there.
    pub(super) fn queue_ahead(&mut self, d: &mut dyn Dispatcher, cpus: u64) -> Result<()> {
        let on_cpus = self.slots.iter().filter(|s| s.running.is_some()).count() as u64;
        let mut ready = d.cpu_use().backlog;
        while ready < on_cpus {
            let returns_at = self
                .slots
                .iter()
                .filter_map(|s| s.running.as_ref())
                .filter_map(|(_, k)| self.classes.get(k))
                .map(|k| self.next_tag(k))
                .min()
                .unwrap_or(u64::MAX);
            let Some((_, _, finish)) = self.best(cpus) else {
                return Ok(());
            };
            if finish >= returns_at || !self.place(d, RL_CPU_ANY, 0)? {
                return Ok(());
            }
            ready += 1;
        }
        Ok(())
    }

    /// The standing moved CPU away from `shrunk`: CPUs running their tasks
    /// give them up now, as many as there are tasks of other classes
    /// waiting, so a new leader runs at once instead of after a slice. The
    /// best waiting task is put on each such CPU before it is preempted, so
    /// the CPU takes it straight away instead of going idle until the
    /// preempted task has been to the policy and back.
    pub(super) fn preempt(&mut self, d: &mut dyn Dispatcher, shrunk: &[Arc<str>]) -> Result<()> {
        let cpus = d.nr_online_cpus();
        let victims: Vec<i32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.running.as_ref().is_some_and(|(_, c)| shrunk.contains(c)))
            .map(|(cpu, _)| cpu as i32)
            .collect();
        // Decisions of other classes already in the shared queue: a CPU
        // that gives up its task takes one of them. The policy's own record
        // of them is a guess (it assumes the next CPU a task of ours leaves
        // took the oldest), so the BPF side's count of what waits there
        // counts too: a decision wrongly taken as gone would otherwise wait
        // for the end of a lease that the vote should have cut. (Those
        // counts do not tell classes apart: a CPU preempted for a decision
        // of the shrunk class only takes it a little sooner.)
        let recorded = self
            .ahead
            .iter()
            .filter(|(on, _)| on.as_ref().is_some_and(|(_, c)| !shrunk.contains(c)))
            .count();
        let mut queued = recorded.max(d.cpu_use().backlog as usize);
        for cpu in victims {
            let held = self
                .best(cpus)
                .is_some_and(|(pid, ..)| self.tasks.get(&pid).is_some_and(|(_, c)| !shrunk.contains(c)));
            if held {
                // At the head of the CPU's local queue, ahead of a task of
                // the shrunk class that waits there (one preempted by a
                // fair-class task such as this policy's own thread).
                self.place(d, cpu, RL_PREEMPT_CPU)?;
            } else if queued > 0 {
                queued -= 1;
            } else {
                break;
            }
            d.preempt_cpu(cpu);
        }
        Ok(())
    }
}
