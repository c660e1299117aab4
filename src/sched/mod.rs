//! The scheduling loop and the `Policy` trait: a policy is one small file
//! under `src/policy/` that implements [`Policy`]; the driver loop feeds it
//! runnable tasks and carries out its decisions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use log::info;
use scx_utils::UserExitInfo;

use crate::bpf::BpfScheduler;
use crate::stats::Metrics;

pub mod task;

pub use task::{
    DispatchedTask, IdleDispatch, QueuedTask, RL_CPU_ANY, RL_PREEMPT_CPU, SCHED_EXT,
    TASK_COMM_LEN,
};

/// What a policy may do: the [`BpfScheduler`] calls it is handed in
/// `schedule`. The driver passes the real dispatcher; tests pass a fake.
pub trait Dispatcher {
    /// The next runnable task, if any.
    fn dequeue_task(&mut self) -> Result<Option<QueuedTask>>;
    /// Hand a decision to the BPF side.
    fn dispatch_task(&mut self, task: &DispatchedTask) -> Result<()>;
    /// An idle CPU for `pid` (preferring `prev_cpu`), or a negative value.
    fn select_cpu(&mut self, pid: i32, prev_cpu: i32, flags: u64) -> i32;
    /// CPUs online.
    fn nr_online_cpus(&mut self) -> u64;
    /// How busy the CPUs are right now, for a policy that holds tasks and
    /// wants a CPU that frees up to always find work (one BPF call).
    fn cpu_use(&mut self) -> CpuUse;
    /// The CPU the policy runs on right now.
    fn this_cpu(&mut self) -> i32;
    /// Makes `cpu` give up the task it runs: its slice ends at once and the
    /// task comes back through the policy.
    fn preempt_cpu(&mut self, cpu: i32);
}

/// See [`Dispatcher::cpu_use`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUse {
    /// SCHED_EXT tasks running on a CPU, plus those waiting in the local
    /// queue of the CPU the policy runs on (a task the policy preempted by
    /// running is not running, but that CPU is not free).
    pub running: u64,
    /// Decisions for any CPU ([`RL_CPU_ANY`]) that no CPU has
    /// taken yet.
    pub backlog: u64,
    /// SCHED_EXT tasks waiting in the local queue of the CPU the policy
    /// runs on (a task it preempted by running there, or one already given
    /// that CPU).
    pub local_here: u64,
    /// Decisions sent that the BPF side has not carried out yet.
    pub in_transit: u64,
}

/// A scheduling policy.
pub trait Policy {
    /// Its name, as `--policy` spells it.
    fn name(&self) -> &'static str;

    /// Called whenever tasks may be waiting: take them with
    /// `dequeue_task`, decide, and `dispatch_task` them. Tasks the policy
    /// keeps for later count in `nr_pending`.
    fn schedule(&mut self, dispatcher: &mut dyn Dispatcher) -> Result<()>;

    /// How many tasks the policy holds without a decision.
    fn nr_pending(&self) -> u64 {
        0
    }

    /// When the BPF side may put a waking task on an idle CPU without
    /// asking the policy.
    fn idle_dispatch(&self) -> IdleDispatch {
        IdleDispatch::Always
    }
}

impl Dispatcher for BpfScheduler<'_> {
    fn dequeue_task(&mut self) -> Result<Option<QueuedTask>> {
        match BpfScheduler::dequeue_task(self) {
            Ok(task) => Ok(task),
            Err(code) => bail!("reading the queued-task ring buffer failed ({code})"),
        }
    }

    fn dispatch_task(&mut self, task: &DispatchedTask) -> Result<()> {
        Ok(BpfScheduler::dispatch_task(self, task)?)
    }

    fn select_cpu(&mut self, pid: i32, prev_cpu: i32, flags: u64) -> i32 {
        BpfScheduler::select_cpu(self, pid, prev_cpu, flags)
    }

    fn nr_online_cpus(&mut self) -> u64 {
        *self.nr_online_cpus_mut()
    }

    fn cpu_use(&mut self) -> CpuUse {
        let (backlog, local_here) = BpfScheduler::backlog(self);
        CpuUse {
            running: *self.nr_running_mut() + local_here,
            backlog,
            local_here,
            in_transit: self.in_transit(),
        }
    }

    fn this_cpu(&mut self) -> i32 {
        // SAFETY: sched_getcpu takes no arguments; -1 on failure.
        unsafe { libc::sched_getcpu() }
    }

    fn preempt_cpu(&mut self, cpu: i32) {
        BpfScheduler::preempt_cpu(self, cpu)
    }
}

/// How often the counters are handed to the `on_metrics` callback.
const METRICS_EVERY: Duration = Duration::from_millis(250);

/// Runs `policy` until `shutdown` is raised, the kernel ends the scheduler
/// or the Ctrl-C handler of `init` fires (see [`BpfScheduler::exited`]);
/// prints the counters every `stats` interval when given. Returns
/// the exit info.
pub fn run(
    bpf: &mut BpfScheduler<'_>,
    policy: &mut dyn Policy,
    shutdown: &Arc<AtomicBool>,
    stats: Option<Duration>,
) -> Result<UserExitInfo> {
    run_with_metrics(bpf, policy, shutdown, stats, &mut |_| {})
}

/// [`run`], also handing the counters to `on_metrics` four times a second
/// (it must be quick: it runs in the scheduling loop).
pub fn run_with_metrics(
    bpf: &mut BpfScheduler<'_>,
    policy: &mut dyn Policy,
    shutdown: &Arc<AtomicBool>,
    stats: Option<Duration>,
    on_metrics: &mut dyn FnMut(Metrics),
) -> Result<UserExitInfo> {
    // The loop never waits for its own log output (see `logger`).
    let _deferred = crate::logger::defer_writes();
    let mut last_stats = Instant::now();
    let mut last_metrics = Instant::now();
    while !shutdown.load(Ordering::Relaxed) && !bpf.exited() {
        policy.schedule(bpf)?;
        // Publishes what the policy holds, wakes the CPUs its decisions
        // name, and sleeps until there is work (see `notify_complete`).
        bpf.notify_complete(policy.nr_pending());
        if last_metrics.elapsed() >= METRICS_EVERY {
            last_metrics = Instant::now();
            on_metrics(bpf.metrics());
        }
        if let Some(every) = stats
            && last_stats.elapsed() >= every
        {
            last_stats = Instant::now();
            info!("{}", bpf.metrics());
        }
    }
    info!("{}", bpf.metrics());
    bpf.shutdown_and_report()
}

pub mod fake {
    //! A stand-in for the BPF side, for testing policies on the host: a
    //! scripted stream of tasks in, the decisions out.

    use std::collections::VecDeque;

    use super::*;
    use super::TASK_COMM_LEN;
    use std::ffi::c_char;

    #[derive(Default)]
    pub struct FakeDispatcher {
        pub queue: VecDeque<QueuedTask>,
        pub dispatched: Vec<DispatchedTask>,
        /// Answers of `select_cpu`, in order; -1 once used up.
        pub idle_cpus: VecDeque<i32>,
        pub cpus: u64,
        /// Decisions for any CPU not taken yet: each such decision adds
        /// one; a test empties it to play CPUs taking them.
        pub backlog: u64,
        /// SCHED_EXT tasks running.
        pub running: u64,
        /// The CPU the policy runs on.
        pub this_cpu: i32,
        /// Tasks waiting in that CPU's local queue.
        pub local_here: u64,
        /// Decisions not carried out yet: each decision adds one; a test
        /// empties it to play the BPF side reading them.
        pub in_transit: u64,
        /// Tasks whose slice ends on the CPU `select_cpu` claims: each
        /// claim moves the first one into `queue`, as a task queued just
        /// before its CPU went idle.
        pub late: VecDeque<QueuedTask>,
        /// CPUs preempted, in order.
        pub preempted: Vec<i32>,
    }

    impl Dispatcher for FakeDispatcher {
        fn dequeue_task(&mut self) -> Result<Option<QueuedTask>> {
            Ok(self.queue.pop_front())
        }
        fn dispatch_task(&mut self, task: &DispatchedTask) -> Result<()> {
            if task.cpu == RL_CPU_ANY {
                self.backlog += 1;
            }
            self.in_transit += 1;
            self.dispatched.push(*task);
            Ok(())
        }
        fn select_cpu(&mut self, _pid: i32, _prev_cpu: i32, _flags: u64) -> i32 {
            let cpu = self.idle_cpus.pop_front().unwrap_or(-1);
            if cpu >= 0
                && let Some(t) = self.late.pop_front()
            {
                self.queue.push_back(t);
            }
            cpu
        }
        fn nr_online_cpus(&mut self) -> u64 {
            self.cpus.max(1)
        }
        fn cpu_use(&mut self) -> CpuUse {
            CpuUse {
                running: self.running + self.local_here,
                backlog: self.backlog,
                local_here: self.local_here,
                in_transit: self.in_transit,
            }
        }
        fn this_cpu(&mut self) -> i32 {
            self.this_cpu
        }
        fn preempt_cpu(&mut self, cpu: i32) {
            self.preempted.push(cpu);
        }
    }

    /// A runnable task with the given pid and weight, that last ran from
    /// `start` to `stop` (ns).
    pub fn task(pid: i32, weight: u64, start: u64, stop: u64) -> QueuedTask {
        let mut comm: [c_char; TASK_COMM_LEN] = [0; TASK_COMM_LEN];
        for (dst, src) in comm.iter_mut().zip(b"burn") {
            *dst = *src as c_char;
        }
        QueuedTask {
            pid,
            tgid: pid,
            cpu: 0,
            wakeup: false,
            sched_ext: true,
            nr_cpus_allowed: 2,
            flags: 0,
            start_ts: start,
            stop_ts: stop,
            exec_runtime: stop - start,
            free_runtime: 0,
            weight,
            vtime: 0,
            enq_cnt: 1,
            comm,
        }
    }
}
