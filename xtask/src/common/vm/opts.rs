//! [`VmOpts`]: the command-line options of every command that boots a VM.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use xshell::Shell;

use crate::host::deps::{self, VmTools};
use crate::host::kernel::{self, Kernel, KernelChoice};
use crate::project_root;

use super::BOOT_STALL;
use super::accel::{Accel, choose_accel};
use super::boot::VmSpec;

/// How to get and boot the VM: shared by every command that boots one.
#[derive(Args, Debug, Clone)]
pub struct VmOpts {
    /// Which kernel to boot: `default` (Debian's trixie-backports cloud
    /// kernel, downloaded once into the cache), `host` (the running kernel,
    /// if it has sched_ext) or a path to your own bzImage/vmlinuz.
    #[arg(long, default_value = "default")]
    pub kernel: KernelChoice,

    /// Force `kvm` or `tcg` instead of probing (same as SCX_BALLOT_KVM=1/0).
    /// The probe costs one short test boot per kernel and QEMU version, and
    /// its answer is cached.
    #[arg(long)]
    pub accel: Option<Accel>,

    /// Guest CPUs. Under TCG each vCPU is a host thread: more vCPUs than
    /// host cores only slow the guest down.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,

    /// Host-side limit on one whole VM run, boot included, in seconds; the
    /// VM is killed when it expires.
    #[arg(long, default_value_t = 900)]
    pub vm_timeout_secs: u64,

    /// A boot whose console shows nothing new for this many seconds before
    /// the guest command starts is wedged: it is killed, its console kept
    /// (`console.wedged-boot-N.log`) and the boot tried once more. 0 turns
    /// the rule off.
    #[arg(long, default_value_t = BOOT_STALL.as_secs())]
    pub boot_stall_secs: u64,
}

impl VmOpts {
    /// Installs the VM tools, obtains and checks the kernel, and picks the
    /// accelerator.
    pub fn prepare(&self, sh: &Shell) -> Result<(VmTools, Kernel, Accel)> {
        let tools = deps::ensure_vm_tools(sh)?;
        let kernel = kernel::obtain(sh, &self.kernel)?;
        kernel::verify_config(&kernel, &project_root().join(kernel::FRAGMENT))?;
        let accel = choose_accel(sh, &tools, &kernel, self.accel);
        Ok((tools, kernel, accel))
    }

    /// `script` is relative to the project root, or absolute (e.g. the
    /// xtask binary itself, for the commands it runs in the guest).
    pub fn spec(&self, kernel: Kernel, accel: Accel, script: impl AsRef<Path>, out: &Path) -> VmSpec {
        let mut spec = VmSpec::new(kernel, accel, project_root().join(script));
        spec.cpus = self.cpus;
        spec.rwdirs = vec![out.to_path_buf()];
        spec.console_log = out.join("console.log");
        spec.timeout = Duration::from_secs(self.vm_timeout_secs);
        spec.boot_stall = self.boot_stall();
        spec
    }

    /// The boot-stall rule of `--boot-stall-secs` (0: none).
    pub fn boot_stall(&self) -> Option<Duration> {
        (self.boot_stall_secs > 0).then(|| Duration::from_secs(self.boot_stall_secs))
    }
}
