//! Commands run on the developer's machine (or in CI): build, install, get
//! kernels, boot VMs, and judge what the VM recorded.

pub mod bench;
pub mod boot_soak;
pub mod browser;
pub mod deps;
pub mod kernel;
pub mod run;
pub mod soak;
pub mod test;
pub mod vm_test;
