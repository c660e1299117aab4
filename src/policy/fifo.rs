//! `fifo`: round-robin. Tasks run in the order they became runnable, each
//! for one default slice; a task goes to an idle CPU when there is one, to
//! the shared queue otherwise.

use anyhow::Result;

use crate::sched::{DispatchedTask, RL_CPU_ANY};
use crate::sched::{Dispatcher, Policy};

pub struct Fifo {
    slice_ns: u64,
    /// Arrival counter: the vtime that keeps the shared queue in FIFO order.
    seq: u64,
}

impl Fifo {
    pub fn new(slice_ns: u64) -> Self {
        Fifo { slice_ns, seq: 0 }
    }
}

impl Policy for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn schedule(&mut self, d: &mut dyn Dispatcher) -> Result<()> {
        while let Some(task) = d.dequeue_task()? {
            let mut out = DispatchedTask::new(&task);
            let cpu = d.select_cpu(task.pid, task.cpu, 0);
            out.cpu = if cpu >= 0 { cpu } else { RL_CPU_ANY };
            self.seq += 1;
            out.vtime = self.seq;
            out.slice_ns = self.slice_ns;
            // The task's enqueue flags (`new` copies them) are not passed on.
            out.flags = 0;
            d.dispatch_task(&out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::fake::{FakeDispatcher, task};

    #[test]
    fn tasks_go_out_in_arrival_order_with_equal_slices() {
        let mut d = FakeDispatcher::default();
        d.queue.extend([task(10, 100, 0, 5), task(11, 1, 0, 5), task(12, 10000, 0, 5)]);
        let mut p = Fifo::new(5_000_000);
        p.schedule(&mut d).unwrap();
        let pids: Vec<i32> = d.dispatched.iter().map(|t| t.pid).collect();
        assert_eq!(pids, [10, 11, 12]);
        assert!(d.dispatched.windows(2).all(|w| w[0].vtime < w[1].vtime));
        assert!(d.dispatched.iter().all(|t| t.slice_ns == 5_000_000));
    }

    #[test]
    fn an_idle_cpu_is_used_when_there_is_one() {
        let mut d = FakeDispatcher::default();
        d.idle_cpus.push_back(1);
        d.queue.extend([task(10, 100, 0, 5), task(11, 100, 0, 5)]);
        Fifo::new(1).schedule(&mut d).unwrap();
        assert_eq!(d.dispatched[0].cpu, 1);
        assert_eq!(d.dispatched[1].cpu, RL_CPU_ANY);
    }

    #[test]
    fn equal_burners_get_equal_turns() {
        // Four burners that always come back: over many rounds each is
        // dispatched equally often.
        let mut d = FakeDispatcher::default();
        let mut p = Fifo::new(1);
        let mut counts = [0u32; 4];
        d.queue.extend((0..4).map(|i| task(i, 100, 0, 1)));
        for _ in 0..100 {
            p.schedule(&mut d).unwrap();
            for t in d.dispatched.drain(..) {
                counts[t.pid as usize] += 1;
                d.queue.push_back(task(t.pid, 100, 0, 1));
            }
        }
        assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    }
}
