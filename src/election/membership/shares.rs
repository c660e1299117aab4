//! The CPU each candidate and each watched process got, measured once per
//! [`SHARE_WINDOW`] from the processes' `schedstat`, as fractions of the
//! whole machine.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::election::procfs::{ProcInfo, process_cpu_ns};
use crate::election::view::{Share, Standing};

/// The window CPU shares are measured over.
pub const SHARE_WINDOW: Duration = Duration::from_secs(1);

/// Shares of CPU time over a window: `delta_ns / (window_ns * cpus)`.
pub fn share_of(delta_ns: u64, window: Duration, cpus: u64) -> Share {
    let total = window.as_nanos() as f64 * cpus.max(1) as f64;
    Share {
        share: if total > 0.0 {
            delta_ns as f64 / total
        } else {
            0.0
        },
        cpu_ns: delta_ns,
    }
}

/// CPU shares per candidate and per process over the last window.
pub(super) struct Window {
    pub candidates: BTreeMap<String, Share>,
    pub pids: BTreeMap<i32, Share>,
    pub length: Duration,
}

/// The CPU time each watched process had at the start of the window.
pub(super) struct Shares {
    /// By (pid, start time).
    last_cpu: HashMap<(i32, u64), u64>,
    last_at: Instant,
    cpus: u64,
}

impl Shares {
    pub(super) fn new() -> Shares {
        Shares {
            last_cpu: HashMap::new(),
            last_at: Instant::now(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        }
    }

    /// Once the window is over: what each of `standing`'s candidates and
    /// each process of `watched` (with its candidate) got in it; a new
    /// window starts. `None` while the window lasts.
    pub(super) fn measure(
        &mut self,
        standing: &Standing,
        watched: &[(ProcInfo, Option<Arc<str>>)],
    ) -> Option<Window> {
        let elapsed = self.last_at.elapsed();
        if elapsed < SHARE_WINDOW {
            return None;
        }
        self.last_at = Instant::now();
        let mut candidate_shares: BTreeMap<String, Share> = standing
            .candidates
            .iter()
            .map(|c| (c.name.clone(), Share::default()))
            .collect();
        let mut pid_shares = BTreeMap::new();
        let mut now_cpu = HashMap::new();
        for (info, name) in watched {
            let key = (info.pid, info.start_time);
            let cpu = process_cpu_ns(&Path::new("/proc").join(info.pid.to_string()));
            now_cpu.insert(key, cpu);
            let delta = self
                .last_cpu
                .get(&key)
                .map_or(0, |&before| cpu.saturating_sub(before));
            pid_shares.insert(info.pid, share_of(delta, elapsed, self.cpus));
            if let Some(name) = name {
                let entry = candidate_shares.entry(name.to_string()).or_default();
                entry.cpu_ns += delta;
            }
        }
        for share in candidate_shares.values_mut() {
            *share = share_of(share.cpu_ns, elapsed, self.cpus);
        }
        self.last_cpu = now_cpu;
        Some(Window { candidates: candidate_shares, pids: pid_shares, length: elapsed })
    }
}
