//! Agents that run next to the scheduler: inside the VM (the bench's
//! workloads) or on a sched_ext host (the live demo). The scenario runner,
//! also an in-VM agent, lives with the rest of the scenario suite in
//! `crate::scenario`.

pub mod bench;
pub mod demo;
pub mod scheduler;
