//! scx_ballot as a library: the BPF connector ([`bpf::BpfScheduler`]), the
//! driver loop and [`sched::Policy`] trait, and the policies. The
//! `scx_ballot` binary is a thin command line on top; your own policy can be
//! another (see `docs/writing-a-policy.md`).

pub mod ballot;
pub mod bpf;
mod bpf_intf;
mod bpf_skel;
pub mod cli;
pub mod election;
pub mod exec;
pub mod journal;
pub mod logger;
pub mod policy;
pub mod preflight;
pub mod sched;
pub mod server;
pub mod stats;
