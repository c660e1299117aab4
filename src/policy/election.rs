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
//! Tasks are not sent to the kernel all at once: the policy keeps them and
//! puts the best one on each idle CPU, by number. A CPU goes idle only after
//! the task that ran there was queued to the policy, so once it has claimed
//! an idle CPU the policy reads what was queued meanwhile and decides with
//! that task in view: a leader's task whose slice just ended competes for
//! its own CPU, and no waiting loser takes it first. The CPU the policy runs
//! on looks busy only because it does: when no task of ours waits there,
//! the best task is given that CPU for when the policy sleeps. Decisions
//! never go to a shared queue that any CPU could take from. A vote
//! acknowledged now decides the very next dispatch: the voting server wakes
//! the scheduling loop, and the CPUs running tasks of the classes that lost
//! weight give them up at once (`SCX_KICK_PREEMPT`), as many as there are
//! tasks of other classes waiting.
//!
//! `--cap` (winner mode, once someone leads): every class but the leader's
//! is held to `min_share` of the machine even when a CPU would otherwise
//! idle. Each capped class earns `min_share` of every CPU's time and pays
//! for what its tasks really ran; its tasks wait while it is in debt, and
//! share shorter slices when there are many, so each still runs every
//! 200 ms or sooner.
//!
//! A task that wakes while nothing waits (no task held, none on its way to
//! the policy, the shared queue empty) goes on an idle CPU straight from
//! the BPF side: the policy would have put it there too, and the round trip
//! is saved. The BPF side still runs any task left waiting longer than
//! `--starvation-ms`.


use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arc_swap::ArcSwap;

use crate::sched::{IdleDispatch, QueuedTask};
use crate::election::membership::{Membership, Nudge};
use crate::election::view::{Board, Mode};
use crate::sched::{CpuUse, Dispatcher, Policy};

mod budget;
mod lease;
mod placement;
mod standing;

pub use standing::weights;

/// The class of SCHED_EXT tasks that belong to no candidate.
pub const UNAFFILIATED: &str = "";

/// Virtual time per nanosecond of slice at weight 1.
const VSCALE: u64 = 1000;

#[derive(Debug, Default, Clone, Copy)]
struct Class {
    weight: u64,
    vclock: u64,
    /// `--cap`: held to its minimum share of the machine even when a CPU
    /// would otherwise idle.
    capped: bool,
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
    /// In winner mode, hold every class but the leader's to `min_share` of
    /// the machine, even when that leaves a CPU idle (`--cap`).
    pub cap: bool,
    /// Testing aid (`--debug-mutant ignore-votes`): weigh every class as if
    /// nobody had voted.
    pub ignore_votes: bool,
}

/// A capped class's CPU allowance: it may run while `ns` is positive; it
/// earns `min_share` of every CPU's time and pays for what its tasks run.
#[derive(Debug, Clone, Copy)]
struct Budget {
    ns: i64,
    /// Tasks of the class the policy holds.
    held: usize,
}

/// A task the policy put on a CPU: its pid and class.
type OnCpu = Option<(i32, Arc<str>)>;

/// What the policy knows of one CPU: the task of ours it runs.
#[derive(Debug, Clone, Default)]
struct Slot {
    running: OnCpu,
    /// Its start tag.
    running_start: u64,
    /// When `running` was put there (or taken from the shared queue).
    since: Option<Instant>,
}

/// A task on a CPU for longer than this is not taken as the system's
/// virtual time (it may have exited without the policy hearing of it).
const SLOT_STALE: Duration = Duration::from_secs(1);

/// What a class was charged for a task on a CPU, to settle when the task
/// comes back with what it really ran.
#[derive(Debug, Clone)]
struct Charge {
    class: Arc<str>,
    ns: u64,
    exec_runtime: u64,
    free_runtime: u64,
    stop_ts: u64,
}

/// Charges kept at most for tasks on a CPU (one that exits never comes
/// back to settle).
const MAX_CHARGES: usize = 1 << 16;

pub struct Election {
    board: Arc<Board>,
    membership: Arc<ArcSwap<Membership>>,
    nudge: Arc<Nudge>,
    mode: Mode,
    min_share: f64,
    cap: bool,
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
    /// What the policy put on each CPU (by CPU number): the task running
    /// there and the one queued behind it.
    slots: Vec<Slot>,
    /// Decisions put in the shared queue, oldest first, with their start
    /// tags: the next CPU a task of ours leaves takes the first.
    ahead: VecDeque<(OnCpu, u64)>,
    /// `--cap`: the allowance of every class that has been capped (and how
    /// many of its tasks wait, counted once per round).
    budgets: HashMap<Arc<str>, Budget>,
    /// Tasks on a CPU, by pid, with what their class was charged.
    charges: HashMap<i32, Charge>,
    last_refill: Option<Instant>,
    /// When a task of ours last woke up (see
    /// [`MAX_LEASE_QUIET`](lease::MAX_LEASE_QUIET)).
    last_wakeup: Option<Instant>,
}

impl Election {
    pub fn new(inputs: Inputs, slice_ns: u64) -> Self {
        let Inputs {
            board,
            membership,
            nudge,
            mode,
            min_share,
            cap,
            ignore_votes,
        } = inputs;
        Election {
            board,
            membership,
            nudge,
            mode,
            min_share,
            cap,
            ignore_votes,
            slice_ns,
            generation: None,
            classes: HashMap::new(),
            vnow: 0,
            held: BinaryHeap::new(),
            tasks: HashMap::new(),
            arrivals: 0,
            unaffiliated: Arc::from(UNAFFILIATED),
            slots: Vec::new(),
            ahead: VecDeque::new(),
            budgets: HashMap::new(),
            charges: HashMap::new(),
            last_refill: None,
            last_wakeup: None,
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
            capped: false,
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

    /// Takes every task queued so far into the policy's hands.
    fn take_queued(&mut self, d: &mut dyn Dispatcher) -> Result<()> {
        // One snapshot of the membership per call, not one per task.
        let membership = self.membership.load_full();
        let mut stale = false;
        while let Some(task) = d.dequeue_task()? {
            if task.wakeup {
                self.last_wakeup = Some(Instant::now());
            }
            let (class, stale_here) = self.class_of(&membership, &task);
            stale |= stale_here;
            self.settle(&task);
            self.left_cpu(task.pid);
            self.hold(task.pid, &class);
            // A newer enqueue of the same task replaces the older one.
            self.tasks.insert(task.pid, (task, class));
        }
        if stale {
            self.nudge.ask();
        }
        // Tasks that never came back (they exited) are forgotten.
        if self.charges.len() > MAX_CHARGES {
            self.charges.clear();
        }
        Ok(())
    }
}

impl Policy for Election {
    fn name(&self) -> &'static str {
        "election"
    }

    fn schedule(&mut self, d: &mut dyn Dispatcher) -> Result<()> {
        let shrunk = self.refresh();
        let cpus = d.nr_online_cpus();
        if self.cap {
            self.refill(cpus);
        }
        self.take_queued(d)?;
        if !shrunk.is_empty() {
            self.preempt(d, &shrunk)?;
        }
        // Every idle CPU takes the best waiting task. A CPU goes idle only
        // after the task that ran there was queued to the policy (the kernel
        // enqueues it before the CPU looks for work), so once a CPU is
        // claimed the policy takes what was queued meanwhile and decides
        // with it in view: a task whose slice just ended competes for its
        // own CPU. Claiming an idle CPU clears its idle state until it idles
        // again, so no CPU is given two tasks.
        while let Some((pid, prev_cpu, _)) = self.best(cpus) {
            let cpu = d.select_cpu(pid, prev_cpu, 0);
            if cpu < 0 {
                break;
            }
            self.take_queued(d)?;
            self.place(d, cpu, 0)?;
        }
        // No CPU is idle, as far as the kernel's idle tracking tells; but
        // the CPU this policy runs on looks busy only because it does. When
        // no task of ours waits there and no decision is still on its way,
        // the best waiting task gets that CPU, for when the policy sleeps.
        // No other CPU can take it (decisions never go to a shared queue),
        // so a CPU whose slice just ended waits for the policy's decision,
        // made with its own task back in view.
        if self.tasks.is_empty() {
            return Ok(());
        }
        // A task of ours that was on this CPU and has not come back yet (it
        // waits there, preempted by the policy, or its slice just ended and
        // its record is on the way) keeps the CPU for its own decision.
        self.take_queued(d)?;
        let CpuUse { local_here, in_transit, .. } = d.cpu_use();
        let cpu = d.this_cpu();
        let now = Instant::now();
        let ours_here = usize::try_from(cpu)
            .ok()
            .and_then(|i| self.slots.get(i))
            .is_some_and(|s| s.running.is_some() && s.since.is_some_and(|t| now - t < SLOT_STALE));
        if local_here == 0 && in_transit == 0 && cpu >= 0 && !ours_here && !self.tasks.is_empty() {
            self.place(d, cpu, 0)?;
        }
        self.queue_ahead(d, cpus)
    }

    /// Under `--cap` with a leader, one more than held: the BPF side then
    /// never lets a task run on past its slice without asking (it does so
    /// only while the policy holds nothing), so a capped class cannot run
    /// beyond its allowance on a CPU nobody else wants.
    fn nr_pending(&self) -> u64 {
        let capping = self.classes.values().any(|c| c.capped);
        self.tasks.len() as u64 + u64::from(capping)
    }

    /// The order of every contested dispatch is the election's; a task
    /// that wakes while nothing waits would get the idle CPU from the
    /// policy too, so the BPF side gives it.
    fn idle_dispatch(&self) -> IdleDispatch {
        IdleDispatch::WhenClear
    }
}

#[cfg(test)]
mod tests;
