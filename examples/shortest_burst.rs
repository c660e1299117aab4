//! A complete user-space scheduler in one file, built on scx_ballot's
//! framework: "shortest burst first". Tasks that ran least since they last
//! woke up (interactive ones) go first; CPU hogs wait behind them.
//!
//! Run it: `cargo build --release --example shortest_burst`, then
//! `sudo target/release/examples/shortest_burst` and, in another shell,
//! `sudo target/release/scx_ballot exec -- CMD`. Ctrl-C detaches.
//! `cargo test --example shortest_burst` runs its tests on the host.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use scx_ballot::bpf::{BpfScheduler, InitOpts};
use scx_ballot::sched::{self, Dispatcher, DispatchedTask, IdleDispatch, Policy, RL_CPU_ANY};

/// The policy: one decision per runnable task.
pub struct ShortestBurst {
    slice_ns: u64,
}

impl Policy for ShortestBurst {
    fn name(&self) -> &'static str {
        "shortest-burst"
    }

    fn schedule(&mut self, d: &mut dyn Dispatcher) -> Result<()> {
        while let Some(task) = d.dequeue_task()? {
            let mut out = DispatchedTask::new(&task);
            // The shared queue runs the lowest vtime first: use the CPU time
            // the task burnt since it last slept.
            out.vtime = task.exec_runtime;
            out.cpu = RL_CPU_ANY;
            out.slice_ns = self.slice_ns;
            d.dispatch_task(&out)?;
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    scx_ballot::logger::init(false);
    scx_ballot::preflight::check(&scx_ballot::preflight::HostFacts::read())?;

    let opts = InitOpts {
        partial: true,
        slice_ns: 5_000_000,
        slice_max_ns: 20_000_000,
        starvation_ms: 1000,
        timeout_ms: 5000,
        exit_dump_len: 0,
        idle_dispatch: IdleDispatch::Always,
        name: "shortest_burst".to_string(),
        lock_memory: false,
        sched_ext_self: false,
        debug: false,
        debug_no_dispatch: false,
    };
    let mut policy = ShortestBurst {
        slice_ns: opts.slice_ns,
    };
    let mut open_object = MaybeUninit::uninit();
    // `init_with` installs the Ctrl-C handler: `exited()`, which the loop
    // checks, turns true on Ctrl-C, so no flag of our own is needed.
    let mut bpf = BpfScheduler::init_with(&mut open_object, &opts)?;
    let never = Arc::new(AtomicBool::new(false));
    sched::run(&mut bpf, &mut policy, &never, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scx_ballot::sched::fake::{FakeDispatcher, task};

    #[test]
    fn the_shortest_burst_gets_the_lowest_vtime() {
        let mut d = FakeDispatcher::default();
        d.queue
            .extend([task(1, 100, 0, 9_000_000), task(2, 100, 0, 1_000)]);
        ShortestBurst {
            slice_ns: 5_000_000,
        }
        .schedule(&mut d)
        .unwrap();
        let first = d.dispatched.iter().min_by_key(|t| t.vtime).unwrap();
        assert_eq!(first.pid, 2);
        assert!(
            d.dispatched
                .iter()
                .all(|t| t.cpu == RL_CPU_ANY && t.slice_ns == 5_000_000)
        );
    }
}
