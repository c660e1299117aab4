//! The connector: the one module that talks to the BPF program. Every map
//! access and every `unsafe` block of the scheduler lives here.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::OpenObject;
use log::info;
use scx_utils::{UserExitInfo, scx_ops_attach, scx_ops_load, scx_ops_open, uei_exited, uei_report};

use crate::bpf_skel::{BpfSkel, BpfSkelBuilder};

/// `SCX_OPS_SWITCH_PARTIAL` from the kernel's `enum scx_ops_flags`: only
/// tasks whose policy is SCHED_EXT are switched to the BPF scheduler.
const SCX_OPS_SWITCH_PARTIAL: u64 = 1 << 3;

/// What the BPF side is told before load.
#[derive(Debug, Clone)]
pub struct BpfConfig {
    pub slice_us: u64,
    pub partial: bool,
    pub exit_dump_len: u32,
    pub debug_no_dispatch: bool,
}

/// The counters the BPF program keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub nr_enqueued: u64,
    pub nr_dispatched: u64,
    pub nr_direct_dispatched: u64,
}

/// A loaded and attached BPF scheduler. Dropping it detaches the scheduler.
pub struct Scheduler<'obj> {
    skel: BpfSkel<'obj>,
    struct_ops: Option<libbpf_rs::Link>,
}

impl<'obj> Scheduler<'obj> {
    /// Opens, configures, loads and attaches the BPF program.
    pub fn init(cfg: &BpfConfig, open_object: &'obj mut MaybeUninit<OpenObject>) -> Result<Self> {
        let builder = BpfSkelBuilder::default();
        let mut skel = scx_ops_open!(builder, open_object, ballot_ops, None)
            .context("opening the BPF scheduler")?;

        let ops = skel.struct_ops.ballot_ops_mut();
        if cfg.partial {
            ops.flags |= SCX_OPS_SWITCH_PARTIAL;
        }
        ops.exit_dump_len = cfg.exit_dump_len;

        let rodata = skel.maps.rodata_data.as_mut().expect("the BPF program has rodata");
        rodata.slice_ns = cfg.slice_us * 1000;
        rodata.debug_no_dispatch = cfg.debug_no_dispatch;

        let mut skel = scx_ops_load!(skel, ballot_ops, uei).context("loading the BPF scheduler")?;
        let struct_ops =
            scx_ops_attach!(skel, ballot_ops).context("attaching the BPF scheduler")?;
        Ok(Scheduler { skel, struct_ops: Some(struct_ops) })
    }

    pub fn counters(&self) -> Counters {
        let bss = self.skel.maps.bss_data.as_ref().expect("the BPF program has bss");
        Counters {
            nr_enqueued: bss.nr_enqueued,
            nr_dispatched: bss.nr_dispatched,
            nr_direct_dispatched: bss.nr_direct_dispatched,
        }
    }

    /// True once the kernel has ejected or unloaded the BPF program.
    pub fn exited(&self) -> bool {
        uei_exited!(&self.skel, uei)
    }

    /// Waits until `shutdown` is raised or the kernel ends the scheduler,
    /// printing the counters every `stats` interval when one is given; then
    /// detaches and reports the exit info.
    pub fn run(mut self, shutdown: &Arc<AtomicBool>, stats: Option<Duration>) -> Result<UserExitInfo> {
        let mut last_stats = Instant::now();
        while !shutdown.load(Ordering::Relaxed) && !self.exited() {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(every) = stats {
                if last_stats.elapsed() >= every {
                    last_stats = Instant::now();
                    info!("{}", self.counters());
                }
            }
        }
        let last = self.counters();
        self.struct_ops.take();
        info!("{last}");
        uei_report!(&self.skel, uei)
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "enqueued {} dispatched {} direct {}",
            self.nr_enqueued, self.nr_dispatched, self.nr_direct_dispatched
        )
    }
}
