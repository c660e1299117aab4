//! The connector: the one module that talks to the BPF dispatcher. Every map
//! access and every `unsafe` block of the scheduler lives here.
//!
//! Its API is scx_rustland_core's (2.4.x): [`BpfScheduler`] with the same
//! [`init`](BpfScheduler::init) arguments,
//! [`dequeue_task`](BpfScheduler::dequeue_task),
//! [`dispatch_task`](BpfScheduler::dispatch_task),
//! [`select_cpu`](BpfScheduler::select_cpu),
//! [`notify_complete`](BpfScheduler::notify_complete),
//! [`exited`](BpfScheduler::exited),
//! [`shutdown_and_report`](BpfScheduler::shutdown_and_report) and the
//! `nr_*_mut()` counters, [`QueuedTask`], [`DispatchedTask`] and
//! [`RL_CPU_ANY`], with the same names and meanings. A scheduler written for
//! scx_rustland_core ports by changing its imports. What this module adds,
//! and the few places where it deliberately differs, are listed in
//! `docs/writing-a-policy.md` ("Porting from scx_rustland_core").

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use anyhow::Result;
use libbpf_rs::{ProgramInput, RingBuffer, UserRingBuffer};
use scx_utils::{UserExitInfo, uei_exited, uei_report};

use crate::bpf_intf;
use crate::bpf_skel::BpfSkel;

mod held;
mod init;
mod metrics;
mod process;
mod raw;
mod wait;

pub use crate::sched::task::{
    DispatchedTask, IdleDispatch, QueuedTask, RL_CPU_ANY, RL_PREEMPT_CPU, SCHED_EXT,
    TASK_COMM_LEN,
};
pub use init::InitOpts;
pub use process::{lock_memory, set_sched_ext, shutdown_requested};
pub use wait::{BUSY_WAIT, IDLE_WAIT, Waker};

use held::Held;
use raw::pod_bytes;

/// The loaded, attached dispatcher. Dropping it detaches the scheduler.
pub struct BpfScheduler<'obj> {
    skel: BpfSkel<'obj>,
    queued: RingBuffer<'static>,
    inbox: Rc<RefCell<VecDeque<QueuedTask>>>,
    dispatched: UserRingBuffer,
    struct_ops: Option<libbpf_rs::Link>,
    /// CPUs named by decisions since the last notify (-1: any CPU).
    kick_targets: Vec<i32>,
    /// Decisions for any CPU sent so far (see `backlog`).
    any_sent: u64,
    /// A decision for any CPU marked [`RL_PREEMPT_CPU`] was sent since the
    /// last notify: when no CPU is idle, one running task gives way.
    urgent: bool,
    /// Decisions sent so far (see `in_transit`).
    sent: u64,
    /// Decisions the user ring buffer had no room for.
    held: Held,
    /// Wakes `wait_for_tasks` from other threads, once asked for.
    waker: Option<Waker>,
    /// Tasks `dequeue_task` has returned so far.
    nr_dequeued: u64,
    /// What `nr_queued_mut` hands out: the backlog when last asked.
    nr_queued: u64,
}

impl<'obj> BpfScheduler<'obj> {
    /// The next runnable task, if any (never blocks).
    pub fn dequeue_task(&mut self) -> Result<Option<QueuedTask>, i32> {
        let next = self.inbox.borrow_mut().pop_front();
        let task = match next {
            Some(task) => Some(task),
            None => {
                let n = self.queued.consume_raw();
                if n < 0 {
                    return Err(n);
                }
                self.inbox.borrow_mut().pop_front()
            }
        };
        if task.is_some() {
            self.nr_dequeued += 1;
        }
        Ok(task)
    }

    /// Hands a decision to the BPF side; it is carried out at the next
    /// ops.dispatch() on any CPU. When the user ring buffer is full the
    /// decision is kept and sent again after the next drain (counted in
    /// `nr_retried_dispatches`); an error means the BPF side has stopped
    /// draining altogether.
    pub fn dispatch_task(&mut self, task: &DispatchedTask) -> Result<(), libbpf_rs::Error> {
        let mut held = std::mem::take(&mut self.held);
        let result = held.send_or_hold(task, |t| self.send_decision(t));
        self.held = held;
        result
    }

    fn send_decision(&mut self, task: &DispatchedTask) -> Result<(), libbpf_rs::Error> {
        let mut sample = self
            .dispatched
            .reserve(size_of::<bpf_intf::dispatched_task>())?;
        let raw = bpf_intf::dispatched_task {
            pid: task.pid,
            cpu: task.cpu,
            flags: task.flags,
            slice_ns: task.slice_ns,
            vtime: task.vtime,
            enq_seq: task.enq_cnt,
        };
        let bytes = sample.as_mut();
        // SAFETY: the sample was reserved with exactly
        // size_of::<dispatched_task>() bytes; the struct is plain old data and
        // write_unaligned makes no alignment assumption.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), raw) };
        self.dispatched.submit(sample)?;
        self.sent += 1;
        if task.cpu == RL_CPU_ANY {
            self.any_sent += 1;
            self.urgent |= task.flags & RL_PREEMPT_CPU != 0;
        }
        let target = if task.cpu >= 0 { task.cpu } else { -1 };
        if !self.kick_targets.contains(&target) {
            self.kick_targets.push(target);
        }
        Ok(())
    }

    /// An idle CPU that `pid` may run on, or a negative value when none is
    /// idle. The CPU is claimed: its idle state is cleared, so no other
    /// caller is given it. Chosen by the kernel's topology-aware idle
    /// selection, as for a waking task: `prev_cpu` if it is idle, else a
    /// fully idle core, then a CPU sharing its cache, then its node, then
    /// any (on kernels without `scx_bpf_select_cpu_and`: `prev_cpu`, else
    /// any). `flags` is not used (scx_rustland_core does not use it either).
    pub fn select_cpu(&mut self, pid: i32, prev_cpu: i32, flags: u64) -> i32 {
        let mut arg = bpf_intf::select_cpu_arg {
            pid,
            prev_cpu,
            flags,
        };
        let input = ProgramInput {
            context_in: Some(pod_bytes(&mut arg)),
            ..Default::default()
        };
        match self.skel.progs.ballot_pick_idle_cpu.test_run(input) {
            Ok(out) => out.return_value as i32,
            Err(_) => -1,
        }
    }

    /// Decisions for any CPU that no CPU has taken yet (waiting in the
    /// shared queue, or still in the user ring buffer), and tasks waiting in
    /// the local queue of the CPU the caller runs on (a task it preempted).
    pub fn backlog(&mut self) -> (u64, u64) {
        let input = ProgramInput::default();
        let word = match self.skel.progs.ballot_shared_depth.test_run(input) {
            Ok(out) => out.return_value,
            Err(_) => 0,
        };
        let (queued, local_here) = (u64::from(word & 0xffff), u64::from(word >> 16));
        let in_transit = self.any_sent.saturating_sub(self.bss_mut().nr_any_drained);
        (queued + in_transit, local_here)
    }

    /// Decisions sent that the BPF side has not read yet (held ones
    /// included).
    pub fn in_transit(&mut self) -> u64 {
        let drained = self.bss_mut().nr_drained;
        self.sent.saturating_sub(drained) + self.held.len() as u64
    }

    /// Ends a scheduling round: tells the BPF side how many tasks the policy
    /// still holds (`nr_scheduled`), wakes the CPUs that the decisions made
    /// since the last call name (or an idle CPU, for decisions that name
    /// none), so they are carried out at once, then sleeps until there is
    /// work: a task queued, a CPU going idle while the policy holds tasks,
    /// or a [`Waker`]; at most [`BUSY_WAIT`] while `nr_pending` > 0, else
    /// [`IDLE_WAIT`]. A loop of `dequeue_task`, `dispatch_task` and
    /// `notify_complete` thus never spins.
    pub fn notify_complete(&mut self, nr_pending: u64) {
        self.publish(nr_pending);
        self.wait_for_tasks(if nr_pending > 0 { BUSY_WAIT } else { IDLE_WAIT });
    }

    /// [`notify_complete`](Self::notify_complete) without the sleep.
    fn publish(&mut self, nr_pending: u64) {
        let mut held = std::mem::take(&mut self.held);
        if !held.flush(|t| self.send_decision(t)) && !self.kick_targets.contains(&-1) {
            // Some CPU must run ops.dispatch() and drain the ring buffer.
            self.kick_targets.push(-1);
        }
        let still_held = held.len() as u64;
        self.held = held;
        // Held decisions are tasks still waiting: a CPU going idle wakes
        // the policy, which sends them again.
        self.bss_mut().nr_scheduled = nr_pending + still_held;
        let targets = std::mem::take(&mut self.kick_targets);
        let urgent = std::mem::take(&mut self.urgent);
        for &cpu in &targets {
            self.kick(cpu, cpu < 0 && urgent);
        }
        self.kick_targets = targets;
        self.kick_targets.clear();
    }

    /// Makes `cpu` give up the task it runs now: its slice ends, so the
    /// task goes back through the policy (`SCX_KICK_PREEMPT`).
    pub fn preempt_cpu(&mut self, cpu: i32) {
        if cpu >= 0 {
            self.kick(cpu, true);
        }
    }

    fn kick(&mut self, cpu: i32, preempt: bool) {
        let mut arg = bpf_intf::kick_arg {
            cpu,
            preempt: u32::from(preempt),
        };
        let input = ProgramInput {
            context_in: Some(pod_bytes(&mut arg)),
            ..Default::default()
        };
        let _ = self.skel.progs.ballot_kick.test_run(input);
    }

    /// True once the kernel has ejected or unloaded the BPF program, or
    /// the Ctrl-C (SIGINT, SIGTERM) handler that `init` installed has fired
    /// (see [`shutdown_requested`]).
    pub fn exited(&mut self) -> bool {
        shutdown_requested() || uei_exited!(&self.skel, uei)
    }

    /// Detaches the scheduler and reports why it exited.
    pub fn shutdown_and_report(&mut self) -> Result<UserExitInfo> {
        self.struct_ops.take();
        uei_report!(&self.skel, uei)
    }

    fn bss(&self) -> &crate::bpf_skel::types::bss {
        self.skel
            .maps
            .bss_data
            .as_ref()
            .expect("the BPF program has bss")
    }

    fn bss_mut(&mut self) -> &mut crate::bpf_skel::types::bss {
        self.skel
            .maps
            .bss_data
            .as_mut()
            .expect("the BPF program has bss")
    }
}

impl Drop for BpfScheduler<'_> {
    fn drop(&mut self) {
        self.struct_ops.take();
    }
}

#[cfg(test)]
mod tests;
