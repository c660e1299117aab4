//! The task types a policy sees: [`QueuedTask`] (a runnable task the BPF
//! side hands over) and [`DispatchedTask`] (a decision handed back), with
//! the constants their fields use. Their names, fields and meanings are
//! scx_rustland_core's; `crate::bpf` re-exports them, where a port of a
//! scx_rustland_core scheduler looks for them. The constants come from the
//! BPF side's interface (`bpf/intf.h`, through the generated bindings).

use std::ffi::c_char;

use crate::bpf_intf;

/// `DispatchedTask::cpu` value meaning "no CPU chosen": the task goes to the
/// shared queue, ordered by vtime, and the first free CPU runs it.
pub const RL_CPU_ANY: i32 = bpf_intf::ballot_consts_BALLOT_CPU_ANY;
/// [`DispatchedTask::flags`]: the task goes to the head of its CPU's local
/// queue and that CPU gives up the task it runs at once (the kernel's
/// `SCX_ENQ_PREEMPT`). With [`RL_CPU_ANY`], the task does not wait for a
/// busy CPU's slice to end: when no CPU is idle, the task of ours that has
/// run longest (at least 1 ms) gives way. For a task that should run before
/// what runs now, such as a waking task behind burners.
pub const RL_PREEMPT_CPU: u64 = bpf_intf::BALLOT_ENQ_PREEMPT;

/// When the BPF side may put a waking task on an idle CPU without asking
/// the policy (a round trip to user space saved per wake-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleDispatch {
    /// Never: the policy decides every dispatch.
    Never,
    /// Only while nothing waits: the policy holds no task, none is on its
    /// way to it, and no decision waits in the shared queue. The policy
    /// would have given the idle CPU to that task anyway.
    WhenClear,
    /// Always (cheapest; the policy sees fewer decisions).
    Always,
}

impl IdleDispatch {
    pub(crate) fn raw(self) -> u32 {
        match self {
            IdleDispatch::Never => bpf_intf::ballot_idle_BALLOT_IDLE_NEVER,
            IdleDispatch::WhenClear => bpf_intf::ballot_idle_BALLOT_IDLE_WHEN_CLEAR,
            IdleDispatch::Always => bpf_intf::ballot_idle_BALLOT_IDLE_ALWAYS,
        }
    }
}

/// The scheduling policy number of sched_ext (`SCHED_EXT` in the kernel's
/// uapi; not yet in libc).
pub const SCHED_EXT: libc::c_int = bpf_intf::BALLOT_SCHED_EXT as libc::c_int;

/// The length of a task's command name (`comm`), NUL included.
pub const TASK_COMM_LEN: usize = bpf_intf::TASK_COMM_LEN as usize;

/// A runnable task that the BPF side hands to the policy: scx_rustland_core's
/// `QueuedTask`, plus `tgid`, `wakeup`, `sched_ext` and `free_runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
pub struct QueuedTask {
    /// The thread.
    pub pid: i32,
    /// Its process (thread group). Addition.
    pub tgid: i32,
    /// The CPU it last ran on.
    pub cpu: i32,
    /// It woke up (true), or it left `cpu`, which now needs another task.
    /// Addition.
    pub wakeup: bool,
    /// Its policy is SCHED_EXT (always so in partial mode). Addition.
    pub sched_ext: bool,
    /// How many CPUs its affinity allows.
    pub nr_cpus_allowed: u64,
    /// The kernel's enqueue flags (`SCX_ENQ_*`).
    pub flags: u64,
    /// When it last started running (ns, the scheduler clock).
    pub start_ts: u64,
    /// When it last stopped running (ns).
    pub stop_ts: u64,
    /// CPU time since it last became runnable (ns), as the kernel counts it
    /// (`sum_exec_runtime`; scx_rustland_core adds up start-to-stop clock
    /// time, which on an overcommitted virtual machine can be half of it).
    pub exec_runtime: u64,
    /// The part of `exec_runtime` it ran on past a slice by itself, while
    /// the policy held nothing (the BPF side let it, so no decision of the
    /// policy's is to pay for it). Addition.
    pub free_runtime: u64,
    /// 1..=10000, 100 for nice 0.
    pub weight: u64,
    /// Its current vtime (`dsq_vtime`: the one it was last dispatched with).
    pub vtime: u64,
    /// Which enqueue of this task this is (it grows with every one); a
    /// decision for an older one is cancelled.
    pub enq_cnt: u64,
    /// Command name, NUL-padded.
    pub comm: [c_char; TASK_COMM_LEN],
}

impl QueuedTask {
    /// The command name as text (up to the first NUL; invalid UTF-8
    /// replaced).
    pub fn comm_str(&self) -> String {
        let bytes: Vec<u8> = self
            .comm
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A decision of the policy: where, for how long and in which order a task
/// runs. The fields of scx_rustland_core's `DispatchedTask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd)]
pub struct DispatchedTask {
    /// The task.
    pub pid: i32,
    /// Target CPU, or [`RL_CPU_ANY`] (the shared queue: the first CPU that
    /// frees up runs it). A CPU the task may not use is replaced by its
    /// previous CPU (`nr_bounce_dispatches`).
    pub cpu: i32,
    /// Enqueue flags passed to the kernel with the dispatch; with a CPU,
    /// [`RL_PREEMPT_CPU`] makes that CPU give up the task it runs.
    pub flags: u64,
    /// Time slice in ns; 0 for the default slice.
    pub slice_ns: u64,
    /// Order in the shared queue: lower runs first.
    pub vtime: u64,
    /// The enqueue this decision answers ([`QueuedTask::enq_cnt`]); a
    /// decision for an older one is cancelled (`nr_cancel_dispatches`).
    pub enq_cnt: u64,
}

impl DispatchedTask {
    /// A decision for `task`, as scx_rustland_core makes it: its previous
    /// CPU (`task.cpu`), its enqueue flags, the default slice (0) and vtime
    /// 0. Set `cpu`, `slice_ns` and `vtime` to decide.
    pub fn new(task: &QueuedTask) -> Self {
        DispatchedTask {
            pid: task.pid,
            cpu: task.cpu,
            flags: task.flags,
            slice_ns: 0,
            vtime: 0,
            enq_cnt: task.enq_cnt,
        }
    }
}

