//! Scheduling policies, one file each. A policy sees tasks and, for the
//! election, a read-only view of the ballot; it knows nothing of HTTP, files
//! or BPF details.

pub mod election;
pub mod fifo;
pub mod vruntime;

use crate::sched::Policy;

pub use scx_ballot_api::PolicyName;

/// The policy `name`; `election` needs the board and membership it reads.
pub fn build(
    name: PolicyName,
    slice_ns: u64,
    election: Option<&election::Inputs>,
) -> anyhow::Result<Box<dyn Policy>> {
    Ok(match (name, election) {
        (PolicyName::Fifo, _) => Box::new(fifo::Fifo::new(slice_ns)),
        (PolicyName::Vruntime, _) => Box::new(vruntime::Vruntime::new(slice_ns)),
        (PolicyName::Election, Some(inputs)) => {
            Box::new(election::Election::new(inputs.clone(), slice_ns))
        }
        (PolicyName::Election, None) => anyhow::bail!("the election policy needs its inputs"),
    })
}
