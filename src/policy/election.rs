//! `election`: the CPU follows the votes.
//!
//! Every task belongs to a class: the candidate its process is a member of,
//! or the unaffiliated class for SCHED_EXT tasks of no candidate. Classes
//! share the CPU by weight (weighted fair queueing): each runnable task is
//! tagged with the virtual time at which its class would finish one more
//! slice (the class's clock advances by slice / weight per slice), and the
//! task with the lowest tag runs next; equal tags go in arrival order. Weights come from the standing:
//!
//! - `winner` (default): the leader weighs enough that every other class
//!   keeps at least `min_share` of the CPU while it has runnable tasks, and
//!   no more; with no leader (no votes), every class weighs the same;
//! - `proportional`: a candidate weighs its votes + 1.
//!
//! The unaffiliated class weighs like a candidate with no votes. When the
//! standing changes, every class restarts from the current virtual time, so a
//! new leader runs at the next free CPU instead of paying for its past.
//!
//! Tasks are not sent to the shared queue all at once: the policy keeps
//! them and puts the best one on any idle CPU. Only when fewer of its tasks
//! run than there are CPUs (the CPU the policy itself runs on looks busy
//! while it decides) does it leave the best ones in the shared queue
//! (ordered by tag) for the next CPU that frees up. A vote acknowledged now
//! decides the very next dispatch. A task that wakes while nothing waits
//! (no task held, none on its way to the policy, the shared queue empty)
//! goes on an idle CPU straight from the BPF side: the policy would have put
//! it there too, and the round trip is saved. The BPF side still runs any
//! task left waiting longer than `--starvation-ms`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;

use anyhow::Result;
use arc_swap::ArcSwap;

use crate::ballot::standing_leader;
use crate::bpf::{DispatchedTask, IdleDispatch, QueuedTask, RL_CPU_ANY};
use crate::election::membership::{Membership, Nudge};
use crate::election::view::{Board, Mode, Standing};
use crate::sched::{CpuUse, Dispatcher, Policy};

/// The class of SCHED_EXT tasks that belong to no candidate.
pub const UNAFFILIATED: &str = "";

/// Virtual time per nanosecond of slice at weight 1.
const VSCALE: u64 = 1000;

/// The weights of the classes under `standing`: one per candidate, plus
/// [`UNAFFILIATED`].
pub fn weights(standing: &Standing, mode: Mode, min_share: f64) -> BTreeMap<String, u64> {
    let mut w: BTreeMap<String, u64> = standing
        .candidates
        .iter()
        .map(|c| (c.name.clone(), 1))
        .collect();
    w.insert(UNAFFILIATED.to_string(), 1);
    match mode {
        Mode::Proportional => {
            for c in &standing.candidates {
                w.insert(c.name.clone(), c.votes.saturating_add(1));
            }
        }
        Mode::Winner => {
            if let Some(leader) = standing_leader(standing) {
                // Each of the k other classes weighs 1 and must keep
                // min_share: leader / (leader + k) <= 1 - k * min_share.
                let k = (w.len() - 1) as f64;
                let m = min_share.clamp(0.001, 1.0 / (k + 1.0));
                let lead = ((1.0 - k * m) / m).floor().max(1.0) as u64;
                w.insert(leader.to_string(), lead);
            }
        }
    }
    w
}

#[derive(Debug, Default, Clone, Copy)]
struct Class {
    weight: u64,
    vclock: u64,
}

/// What the election policy reads: the standing (votes), the membership of
/// processes, and its settings.
#[derive(Clone)]
pub struct Inputs {
    pub board: Arc<Board>,
    pub membership: Arc<ArcSwap<Membership>>,
    /// Asks the membership tracker for a scan when a task's process is not
    /// as the last scan saw it.
    pub nudge: Arc<Nudge>,
    pub mode: Mode,
    /// In winner mode, the share each other class keeps (0..0.5).
    pub min_share: f64,
    /// Testing aid (`--debug-mutant ignore-votes`): weigh every class as if
    /// nobody had voted.
    pub ignore_votes: bool,
}

pub struct Election {
    board: Arc<Board>,
    membership: Arc<ArcSwap<Membership>>,
    nudge: Arc<Nudge>,
    mode: Mode,
    min_share: f64,
    ignore_votes: bool,
    slice_ns: u64,
    generation: Option<u64>,
    classes: HashMap<Arc<str>, Class>,
    /// Virtual time: the tag of the last task put on a CPU.
    vnow: u64,
    /// Tasks waiting, lowest (finish tag, arrival) first, with their start tag.
    held: BinaryHeap<Reverse<(u64, u64, i32, u64)>>,
    tasks: HashMap<i32, (QueuedTask, Arc<str>)>,
    arrivals: u64,
    unaffiliated: Arc<str>,
}

impl Election {
    pub fn new(inputs: Inputs, slice_ns: u64) -> Self {
        let Inputs {
            board,
            membership,
            nudge,
            mode,
            min_share,
            ignore_votes,
        } = inputs;
        Election {
            board,
            membership,
            nudge,
            mode,
            min_share,
            ignore_votes,
            slice_ns,
            generation: None,
            classes: HashMap::new(),
            vnow: 0,
            held: BinaryHeap::new(),
            tasks: HashMap::new(),
            arrivals: 0,
            unaffiliated: Arc::from(UNAFFILIATED),
        }
    }

    /// Follows the standing: new weights, and every class restarts from the
    /// current virtual time (held tasks are tagged again, in their order).
    fn refresh(&mut self) {
        let standing = self.board.standing.load();
        if self.generation == Some(standing.generation) {
            return;
        }
        self.generation = Some(standing.generation);
        let weights = if self.ignore_votes {
            let mut blind = Standing::clone(&standing);
            blind.candidates.iter_mut().for_each(|c| c.votes = 0);
            weights(&blind, self.mode, self.min_share)
        } else {
            weights(&standing, self.mode, self.min_share)
        };
        self.classes.clear();
        for (name, weight) in weights {
            self.classes.insert(
                Arc::from(name.as_str()),
                Class {
                    weight,
                    vclock: self.vnow,
                },
            );
        }
        let mut order: Vec<(u64, u64, i32, u64)> = self.held.drain().map(|Reverse(k)| k).collect();
        order.sort_unstable();
        for (_, _, pid, _) in order {
            if let Some((_, class)) = self.tasks.get(&pid) {
                let class = class.clone();
                self.hold(pid, &class);
            }
        }
    }

    /// Queues `pid` of `class` with the tags of its class's next slice.
    fn hold(&mut self, pid: i32, class: &Arc<str>) {
        let (start, finish) = self.tag(class);
        self.arrivals += 1;
        self.held.push(Reverse((finish, self.arrivals, pid, start)));
    }

    /// The (start, finish) tags of the next slice of `class`, advancing its
    /// clock.
    fn tag(&mut self, class: &Arc<str>) -> (u64, u64) {
        let vnow = self.vnow;
        let slice = self.slice_ns;
        let c = self.classes.entry(class.clone()).or_insert(Class {
            weight: 1,
            vclock: vnow,
        });
        let start = c.vclock.max(vnow);
        c.vclock = start + slice * VSCALE / c.weight.max(1);
        (start, c.vclock)
    }

    /// The class of `task`, and whether the scan it was classified by may
    /// have its process wrong.
    fn class_of(&self, membership: &Membership, task: &QueuedTask) -> (Arc<str>, bool) {
        let (candidate, stale) = membership.lookup(task);
        // A candidate deleted since the last scan schedules as unaffiliated.
        let class = match candidate {
            Some(name) if self.classes.contains_key(name) => name.clone(),
            _ => self.unaffiliated.clone(),
        };
        (class, stale)
    }

    /// Puts the best held task on `cpu`, an idle CPU the policy claimed.
    fn place(&mut self, d: &mut dyn Dispatcher, cpu: i32) -> Result<bool> {
        while let Some(Reverse((finish, _, pid, start))) = self.held.pop() {
            let Some((task, _)) = self.tasks.remove(&pid) else {
                continue;
            };
            self.vnow = self.vnow.max(start);
            let mut out = DispatchedTask::new(&task);
            out.cpu = cpu;
            out.vtime = finish;
            out.slice_ns = self.slice_ns;
            d.dispatch_task(&out)?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Policy for Election {
    fn name(&self) -> &'static str {
        "election"
    }

    fn schedule(&mut self, d: &mut dyn Dispatcher) -> Result<()> {
        self.refresh();
        // One snapshot of the membership per round, not one per task.
        let membership = self.membership.load_full();
        let mut stale = false;
        while let Some(task) = d.dequeue_task()? {
            let (class, stale_here) = self.class_of(&membership, &task);
            stale |= stale_here;
            self.hold(task.pid, &class);
            // A newer enqueue of the same task replaces the older one.
            self.tasks.insert(task.pid, (task, class));
        }
        if stale {
            self.nudge.ask();
        }
        // Every idle CPU takes the best waiting task. A task whose slice
        // ended came back here with its CPU left idle, so the decision for
        // that CPU is made with every waiting task in view, itself included.
        // Claiming an idle CPU clears its idle state until it idles again, so
        // no CPU is given two tasks.
        while let Some(&Reverse((_, _, pid, _))) = self.held.peek() {
            let Some((task, _)) = self.tasks.get(&pid) else {
                self.held.pop();
                continue;
            };
            let cpu = d.select_cpu(task.pid, task.cpu, 0);
            if cpu < 0 {
                break;
            }
            self.place(d, cpu)?;
        }
        // No CPU is idle, as far as the kernel's idle tracking tells. But
        // the CPU this policy runs on counts as busy while it runs, and a
        // CPU may be taken by a fair-class task: when fewer of our tasks run
        // than there are CPUs, leave the best waiting tasks in the shared
        // queue (ordered by finish tag) for a CPU that frees up to take.
        // Only then: a decision waiting there would take a CPU whose slice
        // just ended before the task that ran there is back for its turn.
        if self.tasks.is_empty() {
            return Ok(());
        }
        let cap = d.nr_online_cpus();
        let CpuUse {
            running,
            mut backlog,
        } = d.cpu_use();
        while running + backlog < cap && self.place(d, RL_CPU_ANY)? {
            backlog += 1;
        }
        Ok(())
    }

    fn nr_pending(&self) -> u64 {
        self.tasks.len() as u64
    }

    /// The order of every contested dispatch is the election's; a task
    /// that wakes while nothing waits would get the idle CPU from the
    /// policy too, so the BPF side gives it.
    fn idle_dispatch(&self) -> IdleDispatch {
        IdleDispatch::WhenClear
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::membership::Seen;
    use crate::election::view::CandidateStanding;
    use crate::sched::fake::{FakeDispatcher, task};

    /// Records `tgid` as a scan sees the process of a fake task (comm
    /// "burn", SCHED_EXT), a member of `candidate`.
    fn seen(m: &mut Membership, tgid: i32, candidate: Option<&str>) {
        let seen = Seen { candidate: candidate.map(Arc::from), comm: "burn".into(), sched_ext: true };
        m.seen.insert(tgid, seen);
    }

    /// Inputs in winner mode with a 5 % minimum, votes counted.
    fn inputs(board: Arc<Board>, membership: Membership) -> Inputs {
        Inputs {
            board,
            membership: Arc::new(ArcSwap::from_pointee(membership)),
            nudge: Arc::default(),
            mode: Mode::Winner,
            min_share: 0.05,
            ignore_votes: false,
        }
    }

    fn standing(generation: u64, votes: &[(&str, u64)]) -> Standing {
        Standing {
            generation,
            candidates: votes
                .iter()
                .map(|(n, v)| CandidateStanding {
                    name: n.to_string(),
                    votes: *v,
                    members: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn winner_weights_leave_every_loser_its_minimum() {
        let w = weights(&standing(1, &[("blue", 5), ("red", 2)]), Mode::Winner, 0.05);
        // red and the unaffiliated class weigh 1 each: 1 / (18 + 2) = 5%.
        assert_eq!(w["blue"], 18);
        assert_eq!(w["red"], 1);
        assert_eq!(w[UNAFFILIATED], 1);
        let total: u64 = w.values().sum();
        assert!(1.0 / total as f64 >= 0.05);
    }

    #[test]
    fn a_task_of_a_process_the_last_scan_missed_asks_for_a_scan() {
        let board = Board::new();
        board.standing.store(Arc::new(standing(1, &[("blue", 0)])));
        let mut m = Membership::default();
        seen(&mut m, 1, None);
        let nudge: Arc<Nudge> = Arc::default();
        let inputs = Inputs { nudge: nudge.clone(), ..inputs(board, m) };
        let mut p = Election::new(inputs, 1000);
        let mut d = FakeDispatcher {
            cpus: 2,
            ..Default::default()
        };
        d.queue.push_back(task(1, 100, 0, 1));
        p.schedule(&mut d).expect("schedule");
        assert!(!nudge.pending(), "its process is as the scan saw it");
        d.queue.push_back(task(2, 100, 0, 1));
        p.schedule(&mut d).expect("schedule");
        assert!(nudge.pending(), "pid 2 is new to the scan");
    }

    #[test]
    fn the_ignore_votes_mutant_weighs_everyone_the_same() {
        let board = Board::new();
        board
            .standing
            .store(Arc::new(standing(1, &[("blue", 9), ("red", 1)])));
        let inputs = Inputs { ignore_votes: true, ..inputs(board, Membership::default()) };
        let mut p = Election::new(inputs, 1000);
        p.refresh();
        assert_eq!(p.classes.len(), 3);
        assert!(p.classes.values().all(|c| c.weight == 1));
    }

    #[test]
    fn no_votes_means_equal_weights() {
        let w = weights(&standing(1, &[("blue", 0), ("red", 0)]), Mode::Winner, 0.05);
        assert!(w.values().all(|&x| x == 1));
    }

    #[test]
    fn proportional_weights_are_votes_plus_one() {
        let w = weights(
            &standing(1, &[("blue", 3), ("red", 1)]),
            Mode::Proportional,
            0.05,
        );
        assert_eq!((w["blue"], w["red"], w[UNAFFILIATED]), (4, 2, 1));
    }

    /// Two CPUs, burners of blue (pids 1, 2) and red (pids 3, 4) that never
    /// sleep: each dispatched task runs one slice and comes back. Returns
    /// slices per candidate over `rounds` slices.
    fn run(votes: &[(&str, u64)], mode: Mode, rounds: usize) -> (u64, u64) {
        let board = Board::new();
        board.standing.store(Arc::new(standing(1, votes)));
        let mut m = Membership::default();
        for pid in [1, 2] {
            seen(&mut m, pid, Some("blue"));
        }
        for pid in [3, 4] {
            seen(&mut m, pid, Some("red"));
        }
        let mut p = Election::new(Inputs { mode, ..inputs(board, m) }, 1000);
        let mut d = FakeDispatcher {
            cpus: 2,
            ..Default::default()
        };
        // All four wake up; CPUs 0 and 1 are idle.
        d.idle_cpus.extend([0, 1]);
        for pid in 1..=4 {
            let mut t = task(pid, 100, 0, 0);
            t.wakeup = true;
            d.queue.push_back(t);
        }
        let (mut blue, mut red) = (0, 0);
        for _ in 0..rounds {
            p.schedule(&mut d).unwrap();
            // The earliest decision runs its slice and comes back, freeing
            // its CPU.
            let ran = d.dispatched.remove(0);
            if ran.pid <= 2 {
                blue += 1
            } else {
                red += 1
            }
            // Its CPU is idle until the policy gives it the next task.
            d.idle_cpus.push_back(ran.cpu);
            let mut back = task(ran.pid, 100, 0, 1);
            back.cpu = ran.cpu;
            back.enq_seq = ran.enq_seq() + 1;
            d.queue.push_back(back);
        }
        (blue, red)
    }

    #[test]
    fn the_leader_gets_most_and_the_loser_its_minimum() {
        let (blue, red) = run(&[("blue", 3), ("red", 1)], Mode::Winner, 400);
        assert!(blue > 10 * red, "blue {blue} red {red}");
        assert!(red as f64 >= 0.04 * 400.0, "red {red} starved");
    }

    #[test]
    fn proportional_three_to_one() {
        let (blue, red) = run(&[("blue", 2), ("red", 0)], Mode::Proportional, 400);
        let ratio = blue as f64 / red as f64;
        assert!((2.5..=3.5).contains(&ratio), "blue {blue} red {red}");
    }

    #[test]
    fn no_votes_is_fair() {
        let (blue, red) = run(&[("blue", 0), ("red", 0)], Mode::Winner, 400);
        assert!(blue.abs_diff(red) <= 4, "blue {blue} red {red}");
    }

    #[test]
    fn a_vote_takes_effect_at_the_next_dispatch() {
        let board = Board::new();
        board
            .standing
            .store(Arc::new(standing(1, &[("blue", 1), ("red", 0)])));
        let mut m = Membership::default();
        seen(&mut m, 1, Some("blue"));
        seen(&mut m, 3, Some("red"));
        let inputs = inputs(board.clone(), m);
        let mut p = Election::new(inputs, 1000);
        let mut d = FakeDispatcher::default();
        d.idle_cpus.push_back(0);
        // Blue has run a lot, both wait; one CPU frees up.
        for _ in 0..50 {
            let _ = p.tag(&Arc::from("blue"));
        }
        p.refresh();
        d.queue.extend([task(1, 100, 0, 1), task(3, 100, 0, 1)]);
        // Red takes the lead before the next schedule.
        board
            .standing
            .store(Arc::new(standing(2, &[("blue", 1), ("red", 2)])));
        p.schedule(&mut d).unwrap();
        assert_eq!(d.dispatched[0].pid, 3, "{:?}", d.dispatched);
    }

    #[test]
    fn tasks_wait_for_a_free_cpu() {
        let board = Board::new();
        board.standing.store(Arc::new(standing(1, &[])));
        let inputs = inputs(board, Membership::default());
        let mut p = Election::new(inputs, 1000);
        // One CPU, busy, and one decision already ready in the shared queue.
        let mut d = FakeDispatcher {
            cpus: 1,
            backlog: 1,
            ..Default::default()
        };
        let mut t = task(9, 100, 0, 0);
        t.wakeup = true;
        d.queue.push_back(t);
        p.schedule(&mut d).unwrap();
        assert!(d.dispatched.is_empty());
        assert_eq!(p.nr_pending(), 1);
        d.idle_cpus.push_back(1);
        p.schedule(&mut d).unwrap();
        assert_eq!(d.dispatched[0].cpu, 1);
        assert_eq!(p.nr_pending(), 0);
    }

    #[test]
    fn the_shared_queue_is_used_only_while_a_cpu_is_free_best_first() {
        let board = Board::new();
        board
            .standing
            .store(Arc::new(standing(1, &[("blue", 1), ("red", 0)])));
        let mut m = Membership::default();
        seen(&mut m, 1, Some("red"));
        seen(&mut m, 2, Some("red"));
        seen(&mut m, 3, Some("blue"));
        let inputs = inputs(board, m);
        let mut p = Election::new(inputs, 1000);
        // Two CPUs, none idle (one runs this policy), nothing ready.
        let mut d = FakeDispatcher {
            cpus: 2,
            ..Default::default()
        };
        d.queue
            .extend([task(1, 100, 0, 1), task(2, 100, 0, 1), task(3, 100, 0, 1)]);
        // Both CPUs run our tasks: nothing is left in the shared queue, so a
        // CPU whose slice ends waits for the policy's decision.
        d.running = 2;
        p.schedule(&mut d).unwrap();
        assert!(d.dispatched.is_empty());
        d.running = 0;
        p.schedule(&mut d).unwrap();
        let pids: Vec<i32> = d.dispatched.iter().map(|t| t.pid).collect();
        assert_eq!(pids, [3, 1], "the leader's task first, then red's oldest");
        assert!(d.dispatched.iter().all(|t| t.cpu == RL_CPU_ANY));
        assert!(d.dispatched[0].vtime < d.dispatched[1].vtime);
        assert_eq!(p.nr_pending(), 1);
        // Nothing changes until a CPU takes one.
        p.schedule(&mut d).unwrap();
        assert_eq!(d.dispatched.len(), 2);
        d.backlog = 1;
        p.schedule(&mut d).unwrap();
        assert_eq!(d.dispatched[2].pid, 2);
        assert_eq!(p.nr_pending(), 0);
    }
}
