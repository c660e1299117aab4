//! Booting a test VM with virtme-ng: the accelerator choice (KVM when it
//! really works, TCG otherwise), the `vng` invocation, a host-side timeout
//! that kills the whole VM, live output with a saved console log, and a
//! scanner for the kernel's alarm lines.
//!
//! The guest sees the host's root filesystem read-only (writes go to an
//! overlay and are lost); only [`VmSpec::rwdirs`] come back. It runs the
//! host's binaries at the same paths, so build on the host first.
//!
//! Output: the guest script's stdout and stderr, the kernel console
//! (`vng --verbose` puts it on stderr) and vng's own messages all go to
//! [`VmSpec::console_log`] in arrival order. On the terminal, the kernel's
//! boot chatter up to the script's start is replaced by one line (set
//! `SCX_BALLOT_VM_VERBOSE=1` to see it all); everything after is shown live.
//!
//! Interrupting (Ctrl-C, SIGTERM) kills the running VM's process group and
//! exits 130: this module installs the process's signal handler.

use std::time::Duration;

mod opts;
mod check;
mod accel;
mod boot;
mod vng;
mod console;
mod runner;

pub use opts::VmOpts;
pub use check::VmCheckCmd;
pub use boot::{VmSpec, VmOutcome, describe_stall, boot, boot_once};
pub use console::{read_console, scan_console};

/// Modules the guest need not load: disk, watchdog, CD and button drivers
/// and KVM itself. Udev loading them (xz-compressed, under TCG) costs ~5 s
/// of boot.
pub const MODULE_BLACKLIST: &str =
    "modprobe.blacklist=ahci,libahci,kvm_amd,kvm_intel,kvm,i6300esb,sr_mod,cdrom,sg,button";

/// How long the KVM test boot may take before KVM counts as broken. Under a
/// working KVM this kernel should reach the guest command in a few seconds
/// (TCG takes ~15 s): a KVM that needs more is not worth having.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The KVM test boot counts as hung when its console shows nothing new for
/// this long (a KVM boot prints its kernel log within a second or two).
pub const KVM_PROBE_STALL: Duration = Duration::from_secs(10);

/// QEMU's console lines after which a KVM guest never gets anywhere (QEMU
/// may stay up, spinning, after `KVM internal error ... emulation failure`).
const KVM_FATAL: &[&str] = &[
    "KVM internal error",
    "emulation failure",
    "failed to set MSR",
    "kvm_buf_set_msrs",
];

/// A boot whose console stays silent this long before the guest command
/// starts is wedged (see [`boot()`]). In 167 TCG boots beside one or two other
/// VMs on 2 cores, the longest pause before the guest command was 13.5 s (in
/// a boot that took 44 s), mostly while udev settled; a boot that wedged
/// after SMP bring-up stayed silent for 9 minutes.
pub const BOOT_STALL: Duration = Duration::from_secs(45);

/// Lines of console kept in [`VmOutcome::console_tail`].
pub const TAIL_LINES: usize = 200;

/// The guest command (script and arguments) travels base64-encoded on the
/// kernel command line, which holds 2048 bytes in all.
const MAX_COMMAND_BYTES: usize = 512;

/// The line virtme-ng-init prints right before running the guest command.
const SCRIPT_START: &str = "virtme-ng-init: starting script";

#[cfg(test)]
mod tests;
