//! Opening, configuring, loading and attaching the BPF dispatcher: the
//! settings ([`InitOpts`]) and `BpfScheduler::init` / `init_with`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_char;
use std::mem::MaybeUninit;
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use libbpf_rs::libbpf_sys::bpf_object_open_opts;
use libbpf_rs::{OpenObject, RingBufferBuilder, UserRingBuffer};
use scx_utils::{compat, scx_ops_attach, scx_ops_load, scx_ops_open};

use super::held::Held;
use super::process::{catch_signals, lock_memory, set_sched_ext};
use super::raw::decode_queued;
use super::{BpfScheduler, IdleDispatch};
use crate::bpf_intf;
use crate::bpf_skel::BpfSkelBuilder;

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
}

/// Longest slice a decision may ask for, with [`BpfScheduler::init`].
const DEFAULT_SLICE_MAX_NS: u64 = 100_000_000;

/// Writes `name` and this crate's version suffix (what `scx_ops_open!`
/// appends to the built-in name) into the ops' name.
pub(super) fn set_ops_name(field: &mut [c_char], name: &str) -> Result<()> {
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
