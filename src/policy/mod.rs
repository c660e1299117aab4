//! Scheduling policies, one file each. A policy sees tasks and, for the
//! election, a read-only view of the ballot; it knows nothing of HTTP, files
//! or BPF details.

pub mod election;
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
    /// The CPU follows the votes: candidates' processes get CPU by the
    /// standing of the election (see --mode).
    Election,
}

impl PolicyName {
    /// The policy; `election` needs the board and membership it reads.
    pub fn build(self, slice_ns: u64, election: Option<&election::Inputs>) -> anyhow::Result<Box<dyn Policy>> {
        Ok(match (self, election) {
            (PolicyName::Fifo, _) => Box::new(fifo::Fifo::new(slice_ns)),
            (PolicyName::Vruntime, _) => Box::new(vruntime::Vruntime::new(slice_ns)),
            (PolicyName::Election, Some(inputs)) => {
                Box::new(election::Election::new(inputs.clone(), slice_ns))
            }
            (PolicyName::Election, None) => anyhow::bail!("the election policy needs its inputs"),
        })
    }
}
