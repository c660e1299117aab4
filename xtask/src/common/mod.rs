//! Libraries shared by the commands: booting a VM and scanning its console,
//! building the scheduler, the HTTP client, and process-group helpers.

pub mod clang;
pub mod compile;
pub mod http;
pub mod reap;
pub mod vm;
