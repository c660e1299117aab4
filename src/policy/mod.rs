//! Scheduling policies, one file each. A policy sees tasks and, for the
//! election, a read-only view of the ballot; it knows nothing of HTTP, files
//! or BPF details.

pub mod fifo;
pub mod vruntime;

use clap::ValueEnum;

use crate::sched::Policy;

/// The policies `--policy` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyName {
    /// Round-robin: every task in arrival order, equal slices (like scx_rlfifo).
    Fifo,
    /// Weighted fair share by virtual runtime: honours nice (like scx_rustland).
    Vruntime,
}

impl PolicyName {
    pub fn build(self, slice_ns: u64) -> Box<dyn Policy> {
        match self {
            PolicyName::Fifo => Box::new(fifo::Fifo::new(slice_ns)),
            PolicyName::Vruntime => Box::new(vruntime::Vruntime::new(slice_ns)),
        }
    }
}
