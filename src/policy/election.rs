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
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use arc_swap::ArcSwap;

use crate::ballot::standing_leader;
use crate::sched::{DispatchedTask, IdleDispatch, QueuedTask, RL_CPU_ANY, RL_PREEMPT_CPU};
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
                // (1 - 2 * 0.2) / 0.2 is 2.9999999999999996 in floating
                // point: round away the error before taking the floor, or
                // the leader weighs one less and losers get more.
                let lead = ((1.0 - k * m) / m + 1e-9).floor().max(1.0) as u64;
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

/// The most slices a task may be given in a row when no waiting task of
/// another class would be due before it (fewer round trips to the policy;
/// a vote still preempts it at once).
const MAX_LEASE: u64 = 4;
/// The most while no task of ours has woken for [`QUIET`]: only tasks
/// that never sleep compete (burners), so no task that wakes waits behind
/// a long lease, and each round trip saved is CPU time for them.
const MAX_LEASE_QUIET: u64 = 8;
/// Waiting tasks of its own class per CPU above which a task gets one slice,
/// not a lease (see [`Election::lease`]).
const LEASE_CROWD: u64 = 4;
/// See [`MAX_LEASE_QUIET`].
const QUIET: Duration = Duration::from_secs(1);

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

/// The most a capped class may save up: it runs in bursts of a slice at
/// most.
const BURST_SLICES: i64 = 1;
/// A capped class's tasks each run at least this often (the slice shrinks
/// to make it so), far from the starvation limit.
const CAPPED_TURN: Duration = Duration::from_millis(200);
/// The shortest slice a capped class is given.
const MIN_CAPPED_SLICE_NS: u64 = 200_000;

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
    /// When a task of ours last woke up (see [`MAX_LEASE_QUIET`]).
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

    /// Follows the standing: new weights, and every class restarts from the
    /// current virtual time (held tasks are tagged again, in their order).
    /// Returns the classes whose part of the CPU shrank, when some did.
    fn refresh(&mut self) -> Vec<Arc<str>> {
        let standing = self.board.standing.load();
        if self.generation == Some(standing.generation) {
            return Vec::new();
        }
        let first = self.generation.is_none();
        self.generation = Some(standing.generation);
        let standing = if self.ignore_votes {
            let mut blind = Standing::clone(&standing);
            blind.candidates.iter_mut().for_each(|c| c.votes = 0);
            Arc::new(blind)
        } else {
            Arc::clone(&standing)
        };
        let weights = weights(&standing, self.mode, self.min_share);
        let leader = match self.mode {
            Mode::Winner => standing_leader(&standing).map(str::to_string),
            Mode::Proportional => None,
        };
        let part = |w: &BTreeMap<String, u64>, name: &str| {
            let total: u64 = w.values().sum();
            w.get(name).copied().unwrap_or(1) as f64 / total.max(1) as f64
        };
        let before: BTreeMap<String, u64> =
            self.classes.iter().map(|(n, c)| (n.to_string(), c.weight)).collect();
        let shrunk: Vec<Arc<str>> = if first {
            Vec::new()
        } else {
            self.classes
                .keys()
                .filter(|n| part(&weights, n) < part(&before, n) - 1e-9)
                .cloned()
                .collect()
        };
        self.classes.clear();
        for (name, weight) in weights {
            let capped = self.cap && leader.as_ref().is_some_and(|l| *l != name);
            self.classes.insert(
                Arc::from(name.as_str()),
                Class {
                    weight,
                    vclock: self.vnow,
                    capped,
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
        shrunk
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

    /// A task is back: its class pays for what it really ran, not for the
    /// slice it was given.
    fn settle(&mut self, task: &QueuedTask) {
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
    fn refill(&mut self, cpus: u64) {
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
    fn allowance(&self, class: &Arc<str>, cpus: u64) -> (u64, bool) {
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

    /// Puts the best held task that may run now on `cpu` (or in the
    /// shared queue, [`RL_CPU_ANY`]), with the dispatch `flags`; false when
    /// there is none.
    fn place(&mut self, d: &mut dyn Dispatcher, cpu: i32, flags: u64) -> Result<bool> {
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
    fn best(&mut self, cpus: u64) -> Option<(i32, i32, u64)> {
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

    /// The finish tag a task of `class` would get if it came back now.
    fn next_tag(&self, class: &Class) -> u64 {
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
    fn lease(&mut self, class: &Arc<str>, finish: u64, cpus: u64) -> u64 {
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
    fn left_cpu(&mut self, pid: i32) {
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
    fn queue_ahead(&mut self, d: &mut dyn Dispatcher, cpus: u64) -> Result<()> {
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
    fn preempt(&mut self, d: &mut dyn Dispatcher, shrunk: &[Arc<str>]) -> Result<()> {
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
