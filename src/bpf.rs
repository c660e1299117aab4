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
use std::ffi::c_char;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use libbpf_rs::libbpf_sys::bpf_object_open_opts;
use libbpf_rs::{OpenObject, ProgramInput, RingBuffer, RingBufferBuilder, UserRingBuffer};
use scx_utils::{
    UserExitInfo, compat, scx_ops_attach, scx_ops_load, scx_ops_open, uei_exited, uei_report,
};

use crate::bpf_intf;
use crate::bpf_skel::{BpfSkel, BpfSkelBuilder};
use crate::stats::Metrics;

pub use crate::sched::task::{
    DispatchedTask, IdleDispatch, QueuedTask, RL_CPU_ANY, RL_PREEMPT_CPU, SCHED_EXT,
    TASK_COMM_LEN,
};

/// Everything [`BpfScheduler::init_with`] sets up: the arguments of
/// [`BpfScheduler::init`] and this framework's additions.
#[derive(Debug, Clone)]
pub struct InitOpts {
    /// Only SCHED_EXT tasks (true) or every task (false).
    pub partial: bool,
    /// Default time slice (ns): for decisions with `slice_ns` 0 and the
    /// tasks the BPF side dispatches itself.
    pub slice_ns: u64,
    /// Longest slice a decision may ask for (ns). Addition.
    pub slice_max_ns: u64,
    /// How long a task may wait for user space before the BPF side runs it
    /// (ms). Addition.
    pub starvation_ms: u64,
    /// Kernel watchdog timeout (0: this scheduler's default, 5000 ms).
    /// Addition.
    pub timeout_ms: u32,
    /// Bytes of the kernel's debug dump kept on an error exit (0: default).
    pub exit_dump_len: u32,
    /// When the BPF side puts waking tasks on idle CPUs by itself
    /// (`builtin_idle` of [`BpfScheduler::init`]: true is
    /// [`IdleDispatch::WhenClear`], false [`IdleDispatch::Never`]).
    pub idle_dispatch: IdleDispatch,
    /// The scheduler's name in `/sys/kernel/sched_ext/root/ops` (this
    /// crate's version and the architecture are appended).
    pub name: String,
    /// Lock the process's memory ([`lock_memory`]) before loading; a
    /// failure is logged, not fatal.
    pub lock_memory: bool,
    /// Switch the calling thread, the scheduling loop, to SCHED_EXT once
    /// attached (what [`BpfScheduler::init`] does in partial mode).
    pub sched_ext_self: bool,
    /// libbpf debug output.
    pub debug: bool,
    /// Testing aid: never dispatch (see `--debug-no-dispatch`). Addition.
    pub debug_no_dispatch: bool,
}

/// Set by the SIGINT/SIGTERM handler that `init` installs; read by
/// [`BpfScheduler::exited`].
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Whether the handler is ours (true) or the program had its own (false).
static SIGNAL_HANDLER: OnceLock<bool> = OnceLock::new();

/// Installs, once per process, a Ctrl-C (SIGINT, SIGTERM, SIGHUP) handler
/// after which [`BpfScheduler::exited`] is true. A program that installed
/// its own handler first keeps it (only one is allowed): it then stops its
/// loop itself, as [`crate::sched::run`] does with its `shutdown` flag.
fn catch_signals() -> Result<()> {
    if SIGNAL_HANDLER.get().is_some() {
        return Ok(());
    }
    match ctrlc::set_handler(|| SHUTDOWN.store(true, Ordering::Relaxed)) {
        Ok(()) => {
            let _ = SIGNAL_HANDLER.set(true);
            Ok(())
        }
        Err(ctrlc::Error::MultipleHandlers) => {
            let _ = SIGNAL_HANDLER.set(false);
            Ok(())
        }
        Err(e) => Err(e).context("installing the SIGINT/SIGTERM handler"),
    }
}

/// Whether the Ctrl-C handler that `init` installed has fired.
pub fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

/// How long [`BpfScheduler::notify_complete`] sleeps at most when the
/// policy holds no task (a queued task wakes it at once).
pub const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long it sleeps at most while the policy still holds tasks (a CPU
/// going idle wakes it at once).
pub const BUSY_WAIT: Duration = Duration::from_millis(5);

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

/// Cuts the scheduling loop's wait short from another thread: an eventfd in
/// the same epoll set as the queued-task ring buffer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Waker(Arc<OwnedFd>);

impl Waker {
    fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Waker(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn fd(&self) -> i32 {
        self.0.as_raw_fd()
    }

    /// Wakes the loop (or makes its next wait return at once).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd; a full
        // counter (EAGAIN) already means "woken".
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the eventfd so the next wait sleeps again.
    fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the fd is
        // non-blocking, so an unwoken eventfd returns EAGAIN at once.
        unsafe { libc::read(self.fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

/// Decisions that did not fit in the user ring buffer (the BPF side had not
/// drained it yet), oldest first: sent again before any newer one, after
/// the next drain. A full ring buffer thus delays decisions, never drops
/// them or stops the scheduler.
#[derive(Debug, Default)]
pub(crate) struct Held {
    queue: VecDeque<DispatchedTask>,
    /// Decisions held so far.
    pub(crate) total: u64,
}

impl Held {
    /// More than this many held decisions means the BPF side is not draining
    /// at all: the error is then returned.
    pub(crate) const MAX: usize = 1 << 16;

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Sends what is held, oldest first, until one does not fit; whether
    /// nothing is held any more.
    pub(crate) fn flush<E>(&mut self, mut send: impl FnMut(&DispatchedTask) -> Result<(), E>) -> bool {
        while let Some(task) = self.queue.front() {
            if send(task).is_err() {
                return false;
            }
            self.queue.pop_front();
        }
        true
    }

    /// Keeps `task` for later; `false` (not kept) past [`Held::MAX`].
    pub(crate) fn hold(&mut self, task: DispatchedTask) -> bool {
        if self.queue.len() >= Self::MAX {
            return false;
        }
        self.queue.push_back(task);
        self.total += 1;
        true
    }

    /// Sends `task` after what is held, or holds it if it does not fit.
    pub(crate) fn send_or_hold<E>(
        &mut self,
        task: &DispatchedTask,
        mut send: impl FnMut(&DispatchedTask) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.flush(&mut send) {
            match send(task) {
                Ok(()) => return Ok(()),
                Err(e) if self.queue.len() >= Self::MAX => return Err(e),
                Err(_) => {}
            }
        }
        match self.hold(*task) {
            true => Ok(()),
            false => send(task),
        }
    }
}

/// An argument struct of a syscall program, passed to it as bytes.
///
/// # Safety
///
/// Implement it only for structs of integer fields with no padding: every
/// byte is initialized, and any bytes the program writes back are a valid
/// value (the test `syscall_args_have_no_padding` checks the sizes).
unsafe trait SyscallArg: Copy {}

// SAFETY: s32 pid, s32 prev_cpu, u64 flags: 16 bytes, no padding.
unsafe impl SyscallArg for bpf_intf::select_cpu_arg {}
// SAFETY: s32 cpu, u32 preempt: 8 bytes, no padding.
unsafe impl SyscallArg for bpf_intf::kick_arg {}

/// The bytes of a syscall program's argument struct.
fn pod_bytes<T: SyscallArg>(value: &mut T) -> &mut [u8] {
    // SAFETY: `value` is a live, exclusively borrowed `T`; the slice covers
    // exactly its size_of::<T>() bytes and borrows it for as long; by
    // `SyscallArg`, each of them is initialized and any bytes are a valid T.
    unsafe { std::slice::from_raw_parts_mut((value as *mut T).cast::<u8>(), size_of::<T>()) }
}

/// Decodes one record of the `queued` ring buffer.
fn decode_queued(data: &[u8]) -> Option<QueuedTask> {
    if data.len() < size_of::<bpf_intf::queued_task>() {
        return None;
    }
    // SAFETY: `data` holds at least size_of::<queued_task>() bytes written by
    // the BPF program as a `struct queued_task`; the struct is plain old data
    // (integers and a byte array), so any bit pattern is valid, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    let raw: bpf_intf::queued_task = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    let mut comm: [c_char; TASK_COMM_LEN] = [0; TASK_COMM_LEN];
    for (dst, src) in comm.iter_mut().zip(raw.comm.iter()) {
        *dst = *src as c_char;
    }
    Some(QueuedTask {
        pid: raw.pid,
        tgid: raw.tgid,
        cpu: raw.cpu,
        wakeup: raw.wakeup != 0,
        sched_ext: raw.sched_ext != 0,
        nr_cpus_allowed: raw.nr_cpus_allowed,
        flags: raw.flags,
        start_ts: raw.start_ts,
        stop_ts: raw.stop_ts,
        exec_runtime: raw.exec_runtime,
        free_runtime: raw.free_runtime,
        weight: raw.weight,
        vtime: raw.vtime,
        enq_cnt: raw.enq_seq,
        comm,
    })
}

impl<'obj> BpfScheduler<'obj> {
    /// Opens, configures, loads and attaches the BPF dispatcher, with
    /// scx_rustland_core's arguments and what its `init` does besides:
    /// installs a Ctrl-C handler ([`exited`](Self::exited) sees it), locks
    /// the process's memory and, in partial mode, switches the calling
    /// thread to SCHED_EXT.
    ///
    /// `builtin_idle`: the BPF side may put a waking task on an idle CPU by
    /// itself while nothing waits for the policy ([`IdleDispatch::WhenClear`];
    /// false: [`IdleDispatch::Never`]). `slice_ns`: the default slice.
    /// `numa_local` is not supported: true is an error. The rest of this
    /// framework's settings take their defaults (see [`init_with`]).
    ///
    /// [`init_with`]: Self::init_with
    #[allow(clippy::too_many_arguments)]
    pub fn init(
        open_object: &'obj mut MaybeUninit<OpenObject>,
        open_opts: Option<bpf_object_open_opts>,
        exit_dump_len: u32,
        partial: bool,
        debug: bool,
        builtin_idle: bool,
        numa_local: bool,
        slice_ns: u64,
        name: &str,
    ) -> Result<Self> {
        if numa_local {
            bail!(
                "numa_local is not supported by scx_ballot's BPF side: pass false \
                 (idle CPUs are chosen by the kernel's topology-aware selection)"
            );
        }
        let opts = InitOpts {
            partial,
            slice_ns,
            slice_max_ns: slice_ns.max(DEFAULT_SLICE_MAX_NS),
            starvation_ms: 1000,
            timeout_ms: 0,
            exit_dump_len,
            idle_dispatch: if builtin_idle {
                IdleDispatch::WhenClear
            } else {
                IdleDispatch::Never
            },
            name: name.to_string(),
            lock_memory: true,
            sched_ext_self: partial,
            debug,
            debug_no_dispatch: false,
        };
        Self::open_and_attach(open_object, open_opts, &opts)
    }

    /// [`init`](Self::init) with every setting of this framework spelled
    /// out (the `scx_ballot` binary's way in).
    pub fn init_with(open_object: &'obj mut MaybeUninit<OpenObject>, opts: &InitOpts) -> Result<Self> {
        Self::open_and_attach(open_object, None, opts)
    }

    fn open_and_attach(
        open_object: &'obj mut MaybeUninit<OpenObject>,
        open_opts: Option<bpf_object_open_opts>,
        opts: &InitOpts,
    ) -> Result<Self> {
        catch_signals()?;
        if opts.lock_memory
            && let Err(e) = lock_memory()
        {
            log::warn!("could not lock the scheduler's memory ({e}); a page fault may stall it");
        }
        let mut builder = BpfSkelBuilder::default();
        builder.obj_builder.debug(opts.debug);
        let mut skel = scx_ops_open!(builder, open_object, ballot_ops, open_opts)
            .context("opening the BPF scheduler")?;

        let ops = skel.struct_ops.ballot_ops_mut();
        // ENQ_LAST: a task whose slice ends with nothing else to run comes
        // back through ops.enqueue(), so a policy holding tasks gets to decide.
        ops.flags |= *compat::SCX_OPS_ENQ_LAST;
        if opts.partial {
            // Only tasks whose policy is SCHED_EXT are ours.
            ops.flags |= *compat::SCX_OPS_SWITCH_PARTIAL;
        }
        ops.exit_dump_len = opts.exit_dump_len;
        if opts.timeout_ms > 0 {
            ops.timeout_ms = opts.timeout_ms;
        }
        set_ops_name(&mut ops.name, &opts.name)?;

        let rodata = skel
            .maps
            .rodata_data
            .as_mut()
            .expect("the BPF program has rodata");
        rodata.slice_ns = opts.slice_ns;
        rodata.slice_max_ns = opts.slice_max_ns;
        rodata.starvation_ns = opts.starvation_ms * 1_000_000;
        // The thread that runs the scheduling loop: the one that attaches.
        // SAFETY: gettid has no arguments and cannot fail.
        rodata.usersched_pid = unsafe { libc::gettid() };
        rodata.khugepaged_pid = khugepaged_pid();
        rodata.idle_dispatch = opts.idle_dispatch.raw();
        rodata.debug_no_dispatch = opts.debug_no_dispatch;

        let mut skel = scx_ops_load!(skel, ballot_ops, uei).context("loading the BPF scheduler")?;

        let inbox = Rc::new(RefCell::new(VecDeque::with_capacity(
            bpf_intf::BALLOT_MAX_QUEUED as usize,
        )));
        let sink = inbox.clone();
        let mut rbb = RingBufferBuilder::new();
        rbb.add(&skel.maps.queued, move |data: &[u8]| {
            // pid 0: a CPU went idle while the policy holds tasks; the
            // wakeup is the message.
            if let Some(task) = decode_queued(data).filter(|t| t.pid != 0) {
                sink.borrow_mut().push_back(task);
            }
            0
        })
        .context("setting up the queued-task ring buffer")?;
        let queued = rbb
            .build()
            .context("setting up the queued-task ring buffer")?;
        let dispatched = UserRingBuffer::new(&skel.maps.dispatched)
            .context("setting up the dispatched-task ring buffer")?;

        let struct_ops =
            scx_ops_attach!(skel, ballot_ops).context("attaching the BPF scheduler")?;
        let sched = BpfScheduler {
            skel,
            queued,
            inbox,
            dispatched,
            struct_ops: Some(struct_ops),
            kick_targets: Vec::with_capacity(64),
            any_sent: 0,
            urgent: false,
            sent: 0,
            held: Held::default(),
            waker: None,
            nr_dequeued: 0,
            nr_queued: 0,
        };
        if opts.sched_ext_self {
            set_sched_ext().context("switching the scheduler's thread to SCHED_EXT")?;
        }
        Ok(sched)
    }

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

    /// Tasks queued to user space that `dequeue_task` has not returned yet.
    fn queued_backlog(&self) -> u64 {
        self.bss().nr_queued_total.saturating_sub(self.nr_dequeued)
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

    /// Sleeps until a task is queued, a [`Waker`] of this scheduler is
    /// woken, or `timeout` passes.
    pub fn wait_for_tasks(&mut self, timeout: Duration) {
        if self.inbox.borrow().is_empty() {
            self.queued.poll_raw(timeout);
        }
        if let Some(waker) = &self.waker {
            waker.clear();
        }
    }

    /// A handle another thread can use to cut [`wait_for_tasks`]'s sleep
    /// short (for example when the votes change).
    ///
    /// [`wait_for_tasks`]: BpfScheduler::wait_for_tasks
    pub fn waker(&mut self) -> Result<Waker> {
        if let Some(waker) = &self.waker {
            return Ok(waker.clone());
        }
        let waker = Waker::new().context("creating the scheduler's wake-up eventfd")?;
        // libbpf's poll reads the event's data as the index of the ring that
        // is ready: 0 names the one ring there is, which it then consumes
        // (harmlessly, when empty).
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open for the duration of the call and
        // `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.queued.epoll_fd(),
                libc::EPOLL_CTL_ADD,
                waker.fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("adding the wake-up eventfd to the ring buffer's epoll");
        }
        self.waker = Some(waker.clone());
        Ok(waker)
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

    /// Every counter at once.
    pub fn metrics(&self) -> Metrics {
        let bss = self.bss();
        Metrics {
            nr_online_cpus: bss.nr_online_cpus,
            nr_running: bss.nr_running,
            nr_queued: self.queued_backlog(),
            nr_queued_total: bss.nr_queued_total,
            nr_scheduled: bss.nr_scheduled,
            nr_user_dispatches: bss.nr_user_dispatches,
            nr_kernel_dispatches: bss.nr_kernel_dispatches,
            nr_cancel_dispatches: bss.nr_cancel_dispatches,
            nr_bounce_dispatches: bss.nr_bounce_dispatches,
            nr_failed_dispatches: bss.nr_failed_dispatches,
            nr_sched_congested: bss.nr_sched_congested,
            nr_rescued: bss.nr_rescued,
            nr_retried_dispatches: self.held.total,
            nr_wake_preempts: bss.nr_wake_preempts,
        }
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

    /// CPUs online.
    pub fn nr_online_cpus_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_online_cpus
    }

    /// Tasks running now (the scheduling loop's thread not counted).
    pub fn nr_running_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_running
    }

    /// Tasks queued to user space that `dequeue_task` has not returned yet:
    /// the backlog, as in scx_rustland_core (it falls as tasks are
    /// dequeued). Read it before the dequeue loop. A write is ignored (the
    /// next call counts again); the total so far is
    /// [`Metrics::nr_queued_total`].
    pub fn nr_queued_mut(&mut self) -> &mut u64 {
        self.nr_queued = self.queued_backlog();
        &mut self.nr_queued
    }

    /// Tasks the policy holds without a decision; `notify_complete` sets it.
    /// The BPF side reads it: while it is not 0, a CPU going idle wakes the
    /// policy and a task whose slice ends goes back to it.
    pub fn nr_scheduled_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_scheduled
    }

    /// Decisions of the policy carried out so far (for a CPU or for any).
    pub fn nr_user_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_user_dispatches
    }

    /// Tasks the BPF side dispatched by itself so far.
    pub fn nr_kernel_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_kernel_dispatches
    }

    /// Decisions dropped so far: the task was enqueued again, left, or was
    /// already dispatched.
    pub fn nr_cancel_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_cancel_dispatches
    }

    /// Decisions for a CPU the task may not use, sent to its previous CPU.
    pub fn nr_bounce_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_bounce_dispatches
    }

    /// Decisions the kernel refused.
    pub fn nr_failed_dispatches_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_failed_dispatches
    }

    /// Tasks the BPF side dispatched itself because the queue to user space
    /// was full.
    pub fn nr_sched_congested_mut(&mut self) -> &mut u64 {
        &mut self.bss_mut().nr_sched_congested
    }
}

/// Longest slice a decision may ask for, with [`BpfScheduler::init`].
const DEFAULT_SLICE_MAX_NS: u64 = 100_000_000;

/// Writes `name` and this crate's version suffix (what `scx_ops_open!`
/// appends to the built-in name) into the ops' name.
fn set_ops_name(field: &mut [c_char], name: &str) -> Result<()> {
    if !name.is_ascii() || name.is_empty() || name.contains('\0') {
        bail!("the scheduler's name must be non-empty ASCII: {name:?}");
    }
    let full = format!(
        "{name}{}",
        scx_utils::build_id::ops_version_suffix(env!("CARGO_PKG_VERSION"))
    );
    let n = full.len().min(field.len().saturating_sub(1));
    field.fill(0);
    for (dst, src) in field.iter_mut().zip(full.bytes().take(n)) {
        *dst = src as c_char;
    }
    Ok(())
}

impl Drop for BpfScheduler<'_> {
    fn drop(&mut self) {
        self.struct_ops.take();
    }
}

/// khugepaged's pid, or 0 when it is not running.
fn khugepaged_pid() -> i32 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
            && comm.trim() == "khugepaged"
        {
            return pid;
        }
    }
    0
}


/// Switches the calling thread to SCHED_EXT; the raw OS error on refusal.
pub fn set_sched_ext() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, SCHED_EXT, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Size of the heap kept faulted in and never returned to the kernel, so
/// that the scheduler's allocations in full mode do not page-fault.
const HEAP_RESERVE: usize = 16 << 20;

/// Keeps the scheduler's memory resident, for full mode: there every task,
/// kswapd aside, waits for this process, so a page fault that needs reclaim
/// or I/O to be served could stall the whole machine.
///
/// glibc is told to use one arena, never to give heap back and never to
/// serve allocations with fresh mmaps; a heap reserve is faulted in once;
/// then every current and future page is locked as it is touched.
pub fn lock_memory() -> std::io::Result<()> {
    // SAFETY: mallopt only changes glibc's allocator tunables; these values
    // are documented as valid for these parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let mut reserve = vec![0u8; HEAP_RESERVE];
    for page in reserve.chunks_mut(4096) {
        // Touch every page so that it is really backed, then give the block
        // back to the allocator (which keeps it: trimming is off).
        page[0] = 1;
    }
    std::hint::black_box(&reserve);
    drop(reserve);
    // SAFETY: mlockall takes only flags and has no memory-safety effects.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
