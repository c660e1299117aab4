//! One VM run ([`VmSpec`]) and its outcome ([`VmOutcome`]): booting, and
//! booting again after a wedged boot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::host::deps::VmTools;
use crate::host::kernel::Kernel;
use crate::cache_dir;

use super::{BOOT_STALL, MAX_COMMAND_BYTES};
use super::accel::Accel;
use super::vng::{absolute_script, vng_args, write_net_link, vng_command};
use super::runner::{Echo, Bounds, Stall, Silence, run_bounded};

/// One VM run.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: Kernel,
    pub accel: Accel,
    /// Guest CPUs. Under TCG each vCPU is a host thread: more than the host's
    /// cores only adds contention.
    pub cpus: u32,
    /// Guest memory in MiB (QEMU backs it with a shared memfd for virtiofs).
    pub memory_mib: u32,
    /// Host folders the guest may write to, at the same paths (created if
    /// missing). Everything else the guest writes is lost.
    pub rwdirs: Vec<PathBuf>,
    /// The guest command: a script or binary on the host's filesystem.
    pub script: PathBuf,
    /// Its arguments. Script and arguments together must stay short (they
    /// travel on the 2048-byte kernel command line): pass data in a file.
    pub args: Vec<String>,
    /// Host-side bound on the whole VM, boot included (~15 s under TCG);
    /// on expiry the VM's process group is killed.
    pub timeout: Duration,
    /// Where the whole output (guest stdout/stderr and kernel console) is
    /// saved.
    pub console_log: PathBuf,
    /// TCP ports forwarded from 127.0.0.1:host to the guest (host, guest).
    /// Adds a user-mode virtio NIC (`eth0`, 10.0.2.15 by DHCP; virtio_net
    /// loads as a module) and hides the host's /etc/systemd/network from the
    /// guest; guest servers must listen on 0.0.0.0 or 10.0.2.15.
    pub forward_ports: Vec<(u16, u16)>,
    /// Before the guest command starts, this long without a console line
    /// counts as a wedged boot: the VM is killed, its console kept and the
    /// boot tried once more (see [`boot`]). `None`: no such rule.
    pub boot_stall: Option<Duration>,
    /// More kernel command line (e.g. `lpj=9200000`), after the defaults.
    pub cmdline_extra: Vec<String>,
}

impl VmSpec {
    /// A spec with the defaults: 2 CPUs, 2048 MiB, no shared folders, no
    /// arguments, 10 minutes, console log under `cache_dir()/vm/`.
    pub fn new(kernel: Kernel, accel: Accel, script: PathBuf) -> Self {
        Self {
            kernel,
            accel,
            cpus: 2,
            memory_mib: 2048,
            rwdirs: Vec::new(),
            script,
            args: Vec::new(),
            timeout: Duration::from_secs(600),
            console_log: cache_dir().join("vm").join("console.log"),
            forward_ports: Vec::new(),
            boot_stall: Some(BOOT_STALL),
            cmdline_extra: Vec::new(),
        }
    }
}

/// How a VM run ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// The guest command's exit status (vng passes it through; 255 is vng's
    /// own failure). `None` when the VM was killed or timed out.
    pub status: Option<i32>,
    pub timed_out: bool,
    /// The last [`TAIL_LINES`](super::TAIL_LINES) lines of output; the whole is in the console
    /// log.
    pub console_tail: Vec<String>,
    /// From start to the guest command's start (the boot), if it started.
    pub boot_time: Option<Duration>,
    /// From start to the end of the VM.
    pub elapsed: Duration,
    /// The longest console pause of the (last) boot before the guest command
    /// started.
    pub boot_silence: Silence,
    /// Set when the last boot wedged too (the guest command never ran).
    pub stall: Option<Stall>,
    /// Every boot that wedged, in order, with its kept console.
    pub wedged: Vec<WedgedBoot>,
}

/// A boot that wedged: killed, its console kept under its own name.
#[derive(Debug, Clone, PartialEq)]
pub struct WedgedBoot {
    pub stall: Stall,
    /// `console.wedged-boot-N.log` next to the run's console log.
    pub console: PathBuf,
}

impl VmOutcome {
    /// One loud line per wedged boot, for a run's summary (none when every
    /// boot went through).
    pub fn wedge_notes(&self) -> Vec<String> {
        self.wedged
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let then = if i + 1 < self.wedged.len() || self.stall.is_none() {
                    "booted again"
                } else {
                    "gave up"
                };
                format!(
                    "WEDGED BOOT {} of this run: {}; {then}; console kept in {}",
                    i + 1,
                    describe_stall(&w.stall),
                    w.console.display()
                )
            })
            .collect()
    }
}

/// `the console stopped for 45 s after 11.2 s of boot (last line: `...`)`.
pub fn describe_stall(stall: &Stall) -> String {
    format!(
        "the console stopped for {:.0} s after {:.1} s of boot (last line: `{}`)",
        stall.silent_for.as_secs_f64(),
        stall.last_output_at.as_secs_f64(),
        stall.last_line.trim()
    )
}

/// Where the console of wedged boot `n` is kept: `console.log` becomes
/// `console.wedged-boot-N.log` in the same folder.
pub fn wedged_console_path(console_log: &Path, n: usize) -> PathBuf {
    let stem = console_log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "console".into());
    console_log.with_file_name(format!("{stem}.wedged-boot-{n}.log"))
}

/// Boots `spec.kernel` with virtme-ng, runs `spec.script` in it, streams the
/// output and returns how it ended. Fails only when the VM cannot be run at
/// all (or on Ctrl-C); a failing guest command is an `Ok` with its status.
///
/// A boot whose console stops moving before the guest command starts
/// (`spec.boot_stall`) is killed, its console kept as
/// `console.wedged-boot-1.log` beside `spec.console_log`, and the boot tried
/// once more; [`VmOutcome::wedged`] lists such boots.
pub fn boot(sh: &Shell, tools: &VmTools, spec: &VmSpec) -> Result<VmOutcome> {
    // What an earlier run in the same folder kept would read as this run's.
    for n in 1..=2 {
        let _ = std::fs::remove_file(wedged_console_path(&spec.console_log, n));
    }
    let mut wedged = Vec::new();
    loop {
        let mut outcome = boot_once(sh, tools, spec)?;
        let Some(stall) = outcome.stall.clone() else {
            outcome.wedged = wedged;
            return Ok(outcome);
        };
        let n = wedged.len() + 1;
        let kept = wedged_console_path(&spec.console_log, n);
        std::fs::copy(&spec.console_log, &kept)
            .with_context(|| format!("keeping the wedged boot's console as {}", kept.display()))?;
        let again = n == 1;
        eprintln!("vm: !!! WEDGED BOOT: {}; VM killed", describe_stall(&stall));
        eprintln!(
            "vm: !!! its console is kept in {}; {}",
            kept.display(),
            if again { "booting once more" } else { "giving up" }
        );
        wedged.push(WedgedBoot { stall, console: kept });
        if !again {
            outcome.wedged = wedged;
            return Ok(outcome);
        }
    }
}

/// One boot: [`boot`] without the retry of a wedged boot.
pub fn boot_once(sh: &Shell, tools: &VmTools, spec: &VmSpec) -> Result<VmOutcome> {
    let script = absolute_script(&spec.script)?;
    let command_len =
        script.as_os_str().len() + spec.args.iter().map(|a| a.len() + 3).sum::<usize>();
    if command_len > MAX_COMMAND_BYTES {
        bail!(
            "the guest command is {command_len} bytes; keep it under {MAX_COMMAND_BYTES} \
             (it travels on the kernel command line): pass data in a file in an rwdir"
        );
    }
    let mut spec = spec.clone();
    for dir in &mut spec.rwdirs {
        std::fs::create_dir_all(&*dir)
            .with_context(|| format!("creating the shared folder {}", dir.display()))?;
        *dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
    }
    if !spec.forward_ports.is_empty() {
        write_net_link()?;
    }
    let args = vng_args(&spec, &script, &spec.args);
    let stall_note = spec
        .boot_stall
        .map(|d| format!(", boot stall {} s", d.as_secs()))
        .unwrap_or_default();
    println!(
        "vm: booting {} ({}, {} CPUs, {} MiB, timeout {} s{stall_note}); console log {}",
        spec.kernel.version,
        spec.accel,
        spec.cpus,
        spec.memory_mib,
        spec.timeout.as_secs(),
        spec.console_log.display()
    );
    let echo = if std::env::var_os("SCX_BALLOT_VM_VERBOSE").is_some_and(|v| v != "0") {
        Echo::All
    } else {
        Echo::AfterStart
    };
    let bounds = Bounds {
        timeout: spec.timeout,
        boot_stall: spec.boot_stall,
        fatal: &[],
    };
    let run = run_bounded(vng_command(sh, tools, &args), &spec.console_log, bounds, echo)?;

    if run.boot_time.is_none() {
        eprintln!("vm: the guest never reached its command; last lines of the console:");
        for line in run.tail.iter().rev().take(40).rev() {
            eprintln!("  {line}");
        }
    }
    let end = match (&run.stall, run.timed_out, run.status) {
        (Some(stall), ..) => format!("wedged in boot ({}), VM killed", describe_stall(stall)),
        (None, true, _) => format!("timed out after {} s, VM killed", spec.timeout.as_secs()),
        (None, false, Some(code)) => format!("exited with {code}"),
        (None, false, None) => "killed by a signal".to_string(),
    };
    println!("vm: {end} after {:.1} s", run.elapsed.as_secs_f64());
    Ok(VmOutcome {
        status: run.status,
        timed_out: run.timed_out,
        console_tail: run.tail,
        boot_time: run.boot_time,
        elapsed: run.elapsed,
        boot_silence: run.boot_silence,
        stall: run.stall,
        wedged: Vec::new(),
    })
}
