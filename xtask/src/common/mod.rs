//! Libraries shared by the commands: booting a VM and scanning its console,
//! building the scheduler, and process-group helpers.

pub mod clang;
pub mod compile;
pub mod reap;
pub mod vm;
