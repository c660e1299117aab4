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

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use xshell::{Shell, cmd};

use crate::host::deps::{self, VmTools};
use crate::host::kernel::{self, Kernel, KernelChoice};
use crate::common::reap::{self, kill_group};
use crate::{cache_dir, project_root};

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
/// starts is wedged (see [`boot`]). In 167 TCG boots beside one or two other
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

// ---------------------------------------------------------------------------
// `cargo xtask vm-check`

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

/// Boot the VM once with a tiny guest command: checks the tools, the kernel,
/// the accelerator and the console plumbing, without the scheduler.
#[derive(Debug, clap::Args)]
pub struct VmCheckCmd {
    #[command(flatten)]
    pub vm: VmOpts,
}

/// What the vm-check guest runs: records the release and the sched_ext
/// state into the shared folder given as its argument.
const CHECK_SCRIPT: &str = r#"#!/bin/sh
# Written by `cargo xtask vm-check`: records what the guest kernel offers.
set -u
out="$1"
uname -r > "$out/release"
if [ -r /sys/kernel/sched_ext/state ]; then
    cat /sys/kernel/sched_ext/state > "$out/sched_ext_state"
else
    echo absent > "$out/sched_ext_state"
fi
echo "guest: $(uname -r), sched_ext $(cat "$out/sched_ext_state")"
"#;

impl VmCheckCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let (tools, kernel, accel) = self.vm.prepare(sh)?;

        let work = cache_dir().join("vm-check");
        let out = work.join("out");
        if out.exists() {
            std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
        }
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let script = work.join("guest.sh");
        std::fs::write(&script, CHECK_SCRIPT).context("writing the guest script")?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .context("making the guest script executable")?;

        let spec = VmSpec {
            cpus: self.vm.cpus,
            rwdirs: vec![out.clone()],
            args: vec![out.to_string_lossy().into_owned()],
            timeout: Duration::from_secs(300),
            console_log: work.join("console.log"),
            boot_stall: self.vm.boot_stall(),
            ..VmSpec::new(kernel.clone(), accel, script)
        };
        let outcome = boot(sh, &tools, &spec)?;
        for note in outcome.wedge_notes() {
            eprintln!("!!! {note}");
        }
        let alarms = scan_console(&read_console(&spec.console_log)?);
        for alarm in &alarms {
            eprintln!("console alarm: {alarm}");
        }
        let read =
            |name: &str| std::fs::read_to_string(out.join(name)).map(|s| s.trim().to_string());
        let (release, state) = (read("release"), read("sched_ext_state"));
        if let Some(stall) = &outcome.stall {
            bail!("the VM check's boot wedged twice; the second time {}", describe_stall(stall));
        }
        if outcome.timed_out {
            bail!("the VM check timed out after {} s", spec.timeout.as_secs());
        }
        if outcome.status != Some(0) {
            // boot() already showed the tail when the guest never started.
            let shown = if outcome.boot_time.is_some() { 20 } else { 0 };
            for line in outcome.console_tail.iter().rev().take(shown).rev() {
                eprintln!("  {line}");
            }
            bail!(
                "the VM check failed: guest command status {:?}",
                outcome.status
            );
        }
        let (Ok(release), Ok(state)) = (release, state) else {
            bail!(
                "the guest wrote nothing into {}: the shared folder does not work",
                out.display()
            );
        };
        if release != kernel.version {
            bail!("the guest runs {release}, expected {}", kernel.version);
        }
        if state == "absent" {
            bail!("the guest kernel {release} has no /sys/kernel/sched_ext");
        }
        if !alarms.is_empty() {
            bail!("{} alarm line(s) on the console", alarms.len());
        }
        let boot_time = outcome
            .boot_time
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "?".into());
        println!(
            "vm-check: ok: {release} under {accel}, sched_ext {state}, boot {boot_time} \
             (longest console pause {:.1} s), total {:.1} s{}",
            outcome.boot_silence.secs,
            outcome.elapsed.as_secs_f64(),
            match outcome.wedged.len() {
                0 => String::new(),
                n => format!(", after {n} WEDGED BOOT(S) (see above)"),
            }
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Accelerator

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation: fast, when the host's KVM really works.
    Kvm,
    /// QEMU's emulator (`vng --disable-kvm`): slower, works everywhere.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(format!("unknown accelerator `{other}` (kvm or tcg)")),
        }
    }
}

/// What the host's /dev/kvm looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevKvm {
    Missing,
    /// Present but not openable read-write (the error says why).
    Unusable(String),
    /// Opens, but cannot be hardware KVM (see [`kvm_precheck`]; says why).
    NotHardware(String),
    Openable,
}

/// The result of a test boot with KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Booted,
    /// vng failed; the reason is QEMU's last error line.
    Failed(String),
    TimedOut,
}

/// The accelerator decision, or the need for a test boot first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Use this accelerator; the note says why, in one line.
    Use(Accel, String),
    /// /dev/kvm opens: only a test boot tells whether KVM works.
    NeedProbe,
}

/// Decides the accelerator from an override (parameter or
/// `SCX_BALLOT_KVM`), the state of /dev/kvm and, once known, a test boot.
pub fn decide_accel(override_: Option<Accel>, dev: &DevKvm, probe: Option<&Probe>) -> Decision {
    if let Some(accel) = override_ {
        let why = match (accel, dev) {
            (Accel::Kvm, DevKvm::Missing) => " (there is no /dev/kvm: expect QEMU to fail)",
            (Accel::Kvm, DevKvm::Unusable(_)) => " (/dev/kvm does not open: expect QEMU to fail)",
            (Accel::Kvm, DevKvm::NotHardware(_)) => {
                " (this /dev/kvm is not hardware KVM: expect QEMU to fail or hang)"
            }
            _ => "",
        };
        return Decision::Use(accel, format!("using {accel} as asked{why}"));
    }
    match (dev, probe) {
        (DevKvm::Missing, _) => Decision::Use(Accel::Tcg, "no /dev/kvm: using TCG".into()),
        (DevKvm::Unusable(e), _) => Decision::Use(
            Accel::Tcg,
            format!("/dev/kvm does not open ({e}): using TCG"),
        ),
        (DevKvm::NotHardware(why), _) => Decision::Use(
            Accel::Tcg,
            format!("/dev/kvm opens but {why}: using TCG without a test boot"),
        ),
        (DevKvm::Openable, None) => Decision::NeedProbe,
        (DevKvm::Openable, Some(Probe::Booted)) => {
            Decision::Use(Accel::Kvm, "KVM test boot passed: using KVM".into())
        }
        (DevKvm::Openable, Some(Probe::Failed(why))) => Decision::Use(
            Accel::Tcg,
            format!("KVM is present but a test boot failed ({why}): using TCG"),
        ),
        (DevKvm::Openable, Some(Probe::TimedOut)) => Decision::Use(
            Accel::Tcg,
            format!(
                "KVM is present but a test boot hung (no console output for {} s, or not \
                 done in {} s): using TCG",
                KVM_PROBE_STALL.as_secs(),
                KVM_PROBE_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Reads an `SCX_BALLOT_KVM` value: `1` forces KVM, `0` forces TCG, unset
/// or empty means "probe".
pub fn kvm_override_from_env(value: Option<&str>) -> Result<Option<Accel>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("1") => Ok(Some(Accel::Kvm)),
        Some("0") => Ok(Some(Accel::Tcg)),
        Some(other) => Err(format!("SCX_BALLOT_KVM={other}: use 0 (TCG) or 1 (KVM)")),
    }
}

/// The decision of this process, reused by later calls with the same key.
static CHOSEN: Mutex<Option<(String, Accel)>> = Mutex::new(None);

/// Chooses KVM or TCG for booting `kernel`: `override_`, else
/// `SCX_BALLOT_KVM`, else /dev/kvm and the CPU's flags (see
/// [`kvm_precheck`]) plus a quick test boot, bounded by
/// [`KVM_PROBE_TIMEOUT`], [`KVM_PROBE_STALL`] and QEMU's fatal console
/// lines. The test boot runs at most once per kernel version, QEMU version
/// and host kernel: its result is kept under `cache_dir()/kvm-probe/`, and
/// within a process the decision is reused. Prints one line saying what and
/// why.
pub fn choose_accel(
    sh: &Shell,
    tools: &VmTools,
    kernel: &Kernel,
    override_: Option<Accel>,
) -> Accel {
    let override_ = override_.or_else(|| {
        match kvm_override_from_env(std::env::var("SCX_BALLOT_KVM").ok().as_deref()) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("warning: {e}; ignoring it");
                None
            }
        }
    });
    let key = probe_key(sh, kernel);
    if override_.is_none()
        && let Some((k, accel)) = CHOSEN
            .lock()
            .expect("no panics while holding CHOSEN")
            .as_ref()
        && *k == key
    {
        return *accel;
    }

    let dev = dev_kvm();
    let decision = match decide_accel(override_, &dev, None) {
        Decision::NeedProbe => {
            let (probe, remembered) = cached_or_run_probe(sh, tools, kernel, &key);
            match decide_accel(None, &dev, Some(&probe)) {
                Decision::Use(accel, note) if remembered => Decision::Use(
                    accel,
                    format!(
                        "{note} [remembered: delete {} to probe again]",
                        probe_dir().display()
                    ),
                ),
                d => d,
            }
        }
        d => d,
    };
    let Decision::Use(accel, note) = decision else {
        unreachable!("a decision with a probe result never asks for another probe")
    };
    println!("vm: {note}");
    if override_.is_none() {
        *CHOSEN.lock().expect("no panics while holding CHOSEN") = Some((key, accel));
    }
    accel
}

fn dev_kvm() -> DevKvm {
    let path = Path::new("/dev/kvm");
    if !path.exists() {
        return DevKvm::Missing;
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open(path) {
        return DevKvm::Unusable(e.to_string());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut modules: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|m| m.starts_with("kvm"))
                .collect()
        })
        .unwrap_or_default();
    modules.sort();
    match kvm_precheck(&cpuinfo, &modules) {
        Some(why) => DevKvm::NotHardware(why),
        None => DevKvm::Openable,
    }
}

/// Why an openable /dev/kvm cannot run our guest with hardware
/// virtualisation, from `/proc/cpuinfo` and the loaded `kvm*` modules; `None`
/// when it may (then only a test boot tells). KVM's x86 drivers (`kvm_intel`,
/// `kvm_amd`) need the CPU's `vmx` or `svm` flag, which a VM shows only when
/// its host offers nested virtualisation; without it, a /dev/kvm comes from
/// something else (e.g. `kvm_pvm`, which runs only PVM-built guest kernels)
/// and a test boot of ours hangs or fails. A cpuinfo without `flags` lines
/// (not x86) decides nothing.
pub fn kvm_precheck(cpuinfo: &str, kvm_modules: &[String]) -> Option<String> {
    let mut flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':').map(|(_, f)| f))
        .flat_map(str::split_whitespace)
        .peekable();
    flags.peek()?;
    if flags.any(|f| f == "vmx" || f == "svm") {
        return None;
    }
    let others: Vec<&str> = kvm_modules
        .iter()
        .map(String::as_str)
        .filter(|m| *m != "kvm")
        .collect();
    let from = if others.is_empty() {
        String::new()
    } else {
        format!("; its KVM module is {}", others.join(", "))
    };
    Some(format!(
        "the CPU offers no hardware virtualisation (no vmx or svm flag in /proc/cpuinfo{from})"
    ))
}

/// Kernel version, QEMU version and host kernel: what KVM's usability
/// depends on. Sanitised for use as a file name.
fn probe_key(sh: &Shell, kernel: &Kernel) -> String {
    let qemu = cmd!(sh, "qemu-system-x86_64 --version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .and_then(|out| {
            out.lines()
                .next()
                .and_then(|l| l.split("version ").nth(1))
                .and_then(|v| v.split_whitespace().next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{}_qemu-{qemu}_host-{}", kernel.version, host.trim())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn probe_dir() -> PathBuf {
    cache_dir().join("kvm-probe")
}

/// The probe result for `key`, and whether it was remembered from an
/// earlier run.
fn cached_or_run_probe(sh: &Shell, tools: &VmTools, kernel: &Kernel, key: &str) -> (Probe, bool) {
    let dir = probe_dir();
    let file = dir.join(key);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Some(probe) = parse_probe(&text)
    {
        return (probe, true);
    }
    println!(
        "vm: /dev/kvm opens; test-booting with KVM (at most {} s, {} s without console \
         output; remembered in {})",
        KVM_PROBE_TIMEOUT.as_secs(),
        KVM_PROBE_STALL.as_secs(),
        dir.display()
    );
    let started = Instant::now();
    let probe = run_probe(sh, tools, kernel, &dir.join(format!("{key}.log")));
    println!(
        "vm: KVM test boot took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(&file, format_probe(&probe));
    }
    (probe, false)
}

fn format_probe(probe: &Probe) -> String {
    match probe {
        Probe::Booted => "booted\n".into(),
        Probe::Failed(why) => format!("failed: {why}\n"),
        Probe::TimedOut => "timed out\n".into(),
    }
}

fn parse_probe(text: &str) -> Option<Probe> {
    let text = text.trim();
    match text {
        "booted" => Some(Probe::Booted),
        "timed out" => Some(Probe::TimedOut),
        _ => text
            .strip_prefix("failed: ")
            .map(|w| Probe::Failed(w.to_string())),
    }
}

fn run_probe(sh: &Shell, tools: &VmTools, kernel: &Kernel, log: &Path) -> Probe {
    let spec = VmSpec {
        cpus: 1,
        memory_mib: 512,
        timeout: KVM_PROBE_TIMEOUT,
        console_log: log.to_path_buf(),
        ..VmSpec::new(kernel.clone(), Accel::Kvm, PathBuf::from("true"))
    };
    let args = vng_args(&spec, Path::new("true"), &[]);
    let command = vng_command(sh, tools, &args);
    let bounds = Bounds {
        timeout: spec.timeout,
        boot_stall: Some(KVM_PROBE_STALL),
        fatal: KVM_FATAL,
    };
    match run_bounded(command, &spec.console_log, bounds, Echo::Silent) {
        Err(e) => Probe::Failed(format!("{e:#}")),
        Ok(Run { fatal: Some(line), .. }) => Probe::Failed(line),
        Ok(run) if run.timed_out || run.stall.is_some() => Probe::TimedOut,
        Ok(run) if run.status == Some(0) => Probe::Booted,
        Ok(run) => Probe::Failed(failure_reason(&run.tail, run.status)),
    }
}

/// QEMU's last error line (e.g. `failed to set MSR 0x10a ...`), else the
/// last line, else the exit status.
fn failure_reason(tail: &[String], status: Option<i32>) -> String {
    let has = |l: &String, words: &[&str]| {
        let l = l.to_ascii_lowercase();
        words.iter().any(|w| l.contains(w))
    };
    tail.iter()
        .rev()
        .find(|l| has(l, &["error"]))
        .or_else(|| {
            tail.iter()
                .rev()
                .find(|l| has(l, &["assert", "failure", "failed"]))
        })
        .or_else(|| tail.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| format!("vng exited with {status:?}"))
}

// ---------------------------------------------------------------------------
// Booting

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
    /// The last [`TAIL_LINES`] lines of output; the whole is in the console
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

fn absolute_script(script: &Path) -> Result<PathBuf> {
    if script.components().count() == 1 && !script.exists() {
        // A bare command name such as `true`: the guest's PATH finds it.
        return Ok(script.to_path_buf());
    }
    script
        .canonicalize()
        .with_context(|| format!("the guest command {}", script.display()))
}

/// The `vng` arguments for `spec` (without the program name).
///
/// Always `--disable-microvm`: vng would pick QEMU's microvm machine under
/// KVM, which needs virtio-mmio built in, and Debian builds it as a module
/// that vng's busybox initramfs cannot load. q35 works for both
/// accelerators. `--verbose` routes the kernel console to stderr, where it is
/// captured.
pub fn vng_args(spec: &VmSpec, script: &Path, args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "--verbose".into(),
        "--run".into(),
        spec.kernel.image.clone().into(),
    ];
    if spec.accel == Accel::Tcg {
        out.push("--disable-kvm".into());
    }
    out.push("--disable-microvm".into());
    out.extend(["--cpus".into(), spec.cpus.to_string().into()]);
    out.extend(["--memory".into(), format!("{}M", spec.memory_mib).into()]);
    out.extend(["-a".into(), MODULE_BLACKLIST.into()]);
    if !spec.cmdline_extra.is_empty() {
        out.extend(["-a".into(), spec.cmdline_extra.join(" ").into()]);
    }
    for dir in &spec.rwdirs {
        let mut arg = OsString::from("--rwdir=");
        arg.push(dir);
        out.push(arg);
    }
    if !spec.forward_ports.is_empty() {
        let fwds: String = spec
            .forward_ports
            .iter()
            .map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect();
        out.extend([
            "-a".into(),
            "virtme.dhcp net.ifnames=0 biosdevname=0".into(),
        ]);
        let mut rodir = OsString::from("--rodir=/etc/systemd/network=");
        rodir.push(net_link_dir());
        out.push(rodir);
        out.push(
            format!("--qemu-opts=-device virtio-net-pci,netdev=fwd -netdev user,id=fwd{fwds}")
                .into(),
        );
    }
    out.push("--".into());
    out.push(script.into());
    out.extend(args.iter().map(OsString::from));
    out
}

/// A folder holding one systemd `.link` file that keeps the kernel's
/// interface names, mounted over the guest's /etc/systemd/network when ports
/// are forwarded. virtme-ng-init configures `eth0` by name, but a guest udev
/// that believes it runs in a container (the host's `/.dockerenv` is visible
/// in the guest) ignores `net.ifnames=0` and renames it to `enp0sN`.
fn net_link_dir() -> PathBuf {
    cache_dir().join("vm").join("net-link")
}

const NET_LINK_FILE: &str = "[Match]\nOriginalName=*\n\n[Link]\nNamePolicy=kernel\n";

fn write_net_link() -> Result<()> {
    let dir = net_link_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("10-scx-ballot-kernel-names.link"), NET_LINK_FILE)
        .context("writing the guest's network .link file")
}

fn vng_command(sh: &Shell, tools: &VmTools, args: &[OsString]) -> Command {
    let vng = &tools.vng;
    cmd!(sh, "{vng} {args...}")
        .env("PATH", tools.path_env())
        .into()
}

/// Reads a saved console log back into lines.
pub fn read_console(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the console log {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The alarm lines of a console: kernel `BUG:`/`WARNING:`/Oops/panic
/// reports, lockups and hung tasks, RCU or sched_ext stalls, and sched_ext
/// disabling a BPF scheduler because of an error or a stall. A scheduler
/// unregistered from user space is normal, and so is TCG's
/// `clocksource: Watchdog remote CPU ... read timed out`.
pub fn scan_console(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| is_alarm(l)).cloned().collect()
}

fn is_alarm(line: &str) -> bool {
    let msg = strip_printk_time(line);
    let starts = [
        "BUG:",
        "WARNING:",
        "Oops",
        "Kernel panic",
        "general protection fault",
    ];
    if starts.iter().any(|s| msg.starts_with(s)) {
        return true;
    }
    if msg.contains(": BUG:")
        || msg.contains("hard LOCKUP")
        || msg.contains("blocked for more than")
    {
        return true;
    }
    let lower = msg.to_ascii_lowercase();
    let sched_ext = msg.contains("sched_ext");
    if (sched_ext || lower.contains("rcu")) && lower.contains("stall") {
        return true;
    }
    sched_ext && msg.contains("disabled") && lower.contains("error")
}

/// `[   12.345678] message` → `message`.
fn strip_printk_time(line: &str) -> &str {
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[')
        && let Some(end) = rest.find(']')
        && rest[..end]
            .trim()
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
    {
        return rest[end + 1..].trim_start();
    }
    trimmed
}

// ---------------------------------------------------------------------------
// Running vng under a timeout

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// Nothing on the terminal (the KVM probe).
    Silent,
    /// Everything after the guest command starts, plus one line for the boot.
    AfterStart,
    /// Everything.
    All,
}

/// When [`run_bounded`] kills the VM.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// The whole run.
    timeout: Duration,
    /// Before the guest command starts: this long without a console line
    /// means the boot is wedged. After the start, silence can be normal (a
    /// guest script measuring quietly), so the rule ends there.
    boot_stall: Option<Duration>,
    /// Console lines that mean the VM is dead even though QEMU may linger
    /// (the KVM probe's `KVM internal error`): the run ends at the first.
    fatal: &'static [&'static str],
}

/// A boot whose console stopped moving before the guest command started.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// From the run's start to the last console line.
    pub last_output_at: Duration,
    /// How long the console had then been silent.
    pub silent_for: Duration,
    /// The last console line before the silence.
    pub last_line: String,
}

/// The longest pause between console lines before the guest command
/// started (from the run's start, so a VM that prints nothing counts too).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Silence {
    pub secs: f64,
    /// The line before the pause ("" at the run's start).
    pub after_line: String,
}

struct Run {
    status: Option<i32>,
    timed_out: bool,
    stall: Option<Stall>,
    fatal: Option<String>,
    tail: Vec<String>,
    boot_time: Option<Duration>,
    boot_silence: Silence,
    elapsed: Duration,
}

struct Shared {
    log: File,
    tail: VecDeque<String>,
    started: Instant,
    boot_time: Option<Duration>,
    echo: Echo,
    /// When the last line arrived (the start, before the first).
    last_output: Instant,
    boot_silence: Silence,
    fatal_words: &'static [&'static str],
    fatal: Option<String>,
}

/// Runs `command` in its own process group with stdin from /dev/null (so QEMU
/// never touches the terminal), tees its output into `log` and the terminal,
/// and kills the group when `bounds` say so (or on Ctrl-C, see `reap`).
fn run_bounded(mut command: Command, log: &Path, bounds: Bounds, echo: Echo) -> Result<Run> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file =
        File::create(log).with_context(|| format!("creating the console log {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = command.spawn().context("starting vng")?;
    let pgid = i32::try_from(child.id()).expect("pids fit in i32");
    let interrupt = reap::kill_on_interrupt(pgid);

    let shared = Arc::new(Mutex::new(Shared {
        log: log_file,
        tail: VecDeque::with_capacity(TAIL_LINES),
        started,
        boot_time: None,
        echo,
        last_output: started,
        boot_silence: Silence::default(),
        fatal_words: bounds.fatal,
        fatal: None,
    }));
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    for (stream, to_stderr) in [
        (Box::new(stdout) as Box<dyn Read + Send>, false),
        (Box::new(stderr), true),
    ] {
        let shared = Arc::clone(&shared);
        let done = done_tx.clone();
        std::thread::spawn(move || {
            pump(stream, to_stderr, &shared);
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let deadline = started + bounds.timeout;
    let mut timed_out = false;
    let mut killed = false;
    let mut stall = None;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for vng")? {
            break status;
        }
        let now = Instant::now();
        {
            let s = shared.lock().expect("reader threads do not panic");
            if s.fatal.is_some() {
                killed = true;
            } else if let Some(limit) = bounds.boot_stall
                && s.boot_time.is_none()
                && now.duration_since(s.last_output) >= limit
            {
                stall = Some(Stall {
                    last_output_at: s.last_output.duration_since(started),
                    silent_for: now.duration_since(s.last_output),
                    last_line: s.tail.back().cloned().unwrap_or_default(),
                });
                killed = true;
            }
        }
        if !killed && now >= deadline {
            timed_out = true;
            killed = true;
        }
        if killed {
            kill_group(pgid);
            break child.wait().context("waiting for the killed vng")?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // virtiofsd or QEMU may outlive vng for a moment; they hold the pipes.
    kill_group(pgid);
    drop(interrupt);
    for _ in 0..2 {
        if done_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    let mut shared = shared.lock().expect("reader threads do not panic");
    Ok(Run {
        status: if killed { None } else { status.code() },
        timed_out,
        stall,
        fatal: shared.fatal.take(),
        tail: shared.tail.iter().cloned().collect(),
        boot_time: shared.boot_time,
        boot_silence: std::mem::take(&mut shared.boot_silence),
        elapsed,
    })
}

fn pump(stream: Box<dyn Read + Send>, to_stderr: bool, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']).to_string();
        let mut s = shared.lock().expect("reader threads do not panic");
        let _ = writeln!(s.log, "{line}");
        let now = Instant::now();
        if s.boot_time.is_none() {
            let pause = now.duration_since(s.last_output).as_secs_f64();
            if pause > s.boot_silence.secs {
                s.boot_silence = Silence {
                    secs: pause,
                    after_line: s.tail.back().cloned().unwrap_or_default(),
                };
            }
        }
        s.last_output = now;
        if s.fatal.is_none() && s.fatal_words.iter().any(|w| line.contains(w)) {
            s.fatal = Some(line.trim().to_string());
        }
        let mut show = match s.echo {
            Echo::Silent => false,
            Echo::All => true,
            Echo::AfterStart => s.boot_time.is_some(),
        };
        if s.boot_time.is_none() && line.contains(SCRIPT_START) {
            let boot = s.started.elapsed();
            s.boot_time = Some(boot);
            if s.echo == Echo::AfterStart {
                println!(
                    "vm: guest command started after {:.1} s of boot",
                    boot.as_secs_f64()
                );
                show = false;
            }
        }
        if show {
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        if s.tail.len() == TAIL_LINES {
            s.tail.pop_front();
        }
        s.tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn override_wins() {
        assert_eq!(
            decide_accel(Some(Accel::Tcg), &DevKvm::Openable, None),
            Decision::Use(Accel::Tcg, "using tcg as asked".into())
        );
        let Decision::Use(accel, note) = decide_accel(Some(Accel::Kvm), &DevKvm::Missing, None)
        else {
            panic!("an override needs no probe");
        };
        assert_eq!(accel, Accel::Kvm);
        assert!(note.contains("no /dev/kvm"), "{note}");
    }

    #[test]
    fn no_usable_device_means_tcg_without_probe() {
        assert!(matches!(
            decide_accel(None, &DevKvm::Missing, None),
            Decision::Use(Accel::Tcg, _)
        ));
        let Decision::Use(Accel::Tcg, note) =
            decide_accel(None, &DevKvm::Unusable("Permission denied".into()), None)
        else {
            panic!("an unusable /dev/kvm means TCG");
        };
        assert!(note.contains("Permission denied"));
    }

    #[test]
    fn openable_device_needs_a_probe() {
        assert_eq!(
            decide_accel(None, &DevKvm::Openable, None),
            Decision::NeedProbe
        );
        assert!(matches!(
            decide_accel(None, &DevKvm::Openable, Some(&Probe::Booted)),
            Decision::Use(Accel::Kvm, _)
        ));
        let Decision::Use(Accel::Tcg, note) = decide_accel(
            None,
            &DevKvm::Openable,
            Some(&Probe::Failed("failed to set MSR 0x10a".into())),
        ) else {
            panic!("a failed probe means TCG");
        };
        assert!(note.contains("MSR 0x10a"));
        assert!(matches!(
            decide_accel(None, &DevKvm::Openable, Some(&Probe::TimedOut)),
            Decision::Use(Accel::Tcg, _)
        ));
    }

    #[test]
    fn a_kvm_without_hardware_virtualisation_needs_no_probe() {
        let Decision::Use(Accel::Tcg, note) = decide_accel(
            None,
            &DevKvm::NotHardware("no vmx".into()),
            None,
        ) else {
            panic!("a /dev/kvm that is not hardware KVM means TCG");
        };
        assert!(note.contains("no vmx") && note.contains("without a test boot"), "{note}");
        let Decision::Use(Accel::Kvm, note) =
            decide_accel(Some(Accel::Kvm), &DevKvm::NotHardware("no vmx".into()), None)
        else {
            panic!("an override needs no probe");
        };
        assert!(note.contains("not hardware KVM"), "{note}");
    }

    #[test]
    fn precheck_reads_cpu_flags_and_modules() {
        let modules = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cpu = |flags: &str| {
            format!("processor\t: 0\nmodel name\t: x\nflags\t\t: fpu {flags} sse\n\nprocessor\t: 1\nflags\t\t: fpu {flags} sse\n")
        };
        let pvm = kvm_precheck(&cpu("hypervisor lm"), &modules(&["kvm", "kvm_pvm"]))
            .expect("no vmx/svm: not hardware KVM");
        assert!(pvm.contains("no vmx or svm") && pvm.contains("kvm_pvm"), "{pvm}");
        let bare = kvm_precheck(&cpu("lm"), &modules(&["kvm"])).expect("no vmx/svm");
        assert!(!bare.contains("module"), "{bare}");
        assert_eq!(kvm_precheck(&cpu("vmx lm"), &modules(&["kvm", "kvm_intel"])), None);
        assert_eq!(kvm_precheck(&cpu("svm lm"), &modules(&["kvm", "kvm_amd"])), None);
        // Not x86 (no flags lines), or unreadable: the test boot decides.
        assert_eq!(kvm_precheck("Features\t: fp asimd\n", &[]), None);
        assert_eq!(kvm_precheck("", &[]), None);
    }

    #[test]
    fn env_override() {
        assert_eq!(kvm_override_from_env(None), Ok(None));
        assert_eq!(kvm_override_from_env(Some("")), Ok(None));
        assert_eq!(kvm_override_from_env(Some("1")), Ok(Some(Accel::Kvm)));
        assert_eq!(kvm_override_from_env(Some("0")), Ok(Some(Accel::Tcg)));
        assert!(kvm_override_from_env(Some("yes")).is_err());
    }

    #[test]
    fn probe_results_round_trip() {
        for p in [Probe::Booted, Probe::TimedOut, Probe::Failed("x: y".into())] {
            assert_eq!(parse_probe(&format_probe(&p)), Some(p));
        }
        assert_eq!(parse_probe("garbage"), None);
    }

    #[test]
    fn probe_failure_reason_prefers_qemu_errors() {
        let tail = lines(
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0xc000069\n\
             qemu-system-x86_64: target/i386/kvm/kvm.c:3849: kvm_buf_set_msrs: Assertion `ret == n' failed.\n\n",
        );
        assert!(failure_reason(&tail, Some(255)).contains("failed to set MSR 0x10a"));
        assert_eq!(failure_reason(&[], Some(1)), "vng exited with Some(1)");
    }

    #[test]
    fn console_alarms() {
        let console = lines(
            "[    1.000000] Linux version 7.3.4+deb13-cloud-amd64\n\
             [    5.100000] clocksource: Watchdog remote CPU 1 read timed out\n\
             [    6.000000] sched_ext: BPF scheduler \"ballot\" enabled\n\
             [    7.000000] sched_ext: BPF scheduler \"ballot\" disabled (unregistered from user space)\n\
             [    8.000000] sched_ext: BPF scheduler \"ballot\" disabled (runnable task stall)\n\
             [    8.100000] sched_ext: BPF scheduler \"ballot\" disabled (runtime error)\n\
             [    8.200000] sched_ext: BPF scheduler \"ballot\" disabled (scx_bpf_error)\n\
             [    9.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
             [    9.100000] Oops: 0002 [#1] PREEMPT SMP NOPTI\n\
             [    9.200000] WARNING: CPU: 1 PID: 77 at kernel/sched/ext.c:1234 scx_foo+0x10/0x20\n\
             [   10.000000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
             [   11.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [stress-ng:99]\n\
             [   12.000000] Kernel panic - not syncing: Fatal exception\n\
             hello from the guest script\n\
             [   13.000000] ACPI: PM: Preparing to enter system sleep state S5\n",
        );
        let alarms = scan_console(&console);
        let has = |s: &str| alarms.iter().any(|a| a.contains(s));
        assert_eq!(alarms.len(), 9, "{alarms:#?}");
        for expected in [
            "runnable task stall",
            "runtime error",
            "scx_bpf_error",
            "BUG: kernel NULL",
            "Oops",
            "WARNING: CPU",
            "detected stalls",
            "soft lockup",
            "Kernel panic",
        ] {
            assert!(has(expected), "{expected} not flagged: {alarms:#?}");
        }
        assert!(!has("unregistered from user space"));
        assert!(!has("clocksource"));
    }

    #[test]
    fn printk_time_is_stripped() {
        assert_eq!(strip_printk_time("[   12.345678] BUG: x"), "BUG: x");
        assert_eq!(strip_printk_time("BUG: x"), "BUG: x");
        assert_eq!(
            strip_printk_time("[not a time] BUG: x"),
            "[not a time] BUG: x"
        );
    }

    fn sh_command(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn bounded(script: &str, stall: Option<u64>, fatal: &'static [&'static str]) -> Run {
        let log = std::env::temp_dir().join(format!(
            "xtask-vm-test-{}-{:x}.log",
            std::process::id(),
            script.len() as u64 * 31 + stall.unwrap_or(0)
        ));
        let bounds = Bounds {
            timeout: Duration::from_secs(20),
            boot_stall: stall.map(Duration::from_secs),
            fatal,
        };
        let run = run_bounded(sh_command(script), &log, bounds, Echo::Silent).expect("sh runs");
        let _ = std::fs::remove_file(&log);
        run
    }

    #[test]
    fn a_silent_boot_is_killed_as_wedged() {
        let run = bounded("echo smp: Brought up 1 node; sleep 15", Some(1), &[]);
        let stall = run.stall.expect("one silent second before the start is a stall");
        assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
        assert_eq!(stall.last_line, "smp: Brought up 1 node");
        assert!(stall.silent_for >= Duration::from_secs(1));
        assert!(!run.timed_out);
        assert_eq!(run.status, None);
        assert!(run.boot_silence.secs < 1.0, "{:?}", run.boot_silence);
    }

    #[test]
    fn silence_after_the_guest_command_starts_is_normal() {
        let run = bounded(
            &format!("echo booting; sleep 0.3; echo '{SCRIPT_START}'; sleep 2; echo done"),
            Some(1),
            &[],
        );
        assert_eq!(run.stall, None);
        assert_eq!(run.status, Some(0));
        assert!(run.boot_time.is_some());
        assert!(run.boot_silence.secs >= 0.25, "{:?}", run.boot_silence);
        assert_eq!(run.boot_silence.after_line, "booting");
    }

    #[test]
    fn a_fatal_line_ends_the_run_at_once() {
        let run = bounded(
            "echo 'KVM internal error. Suberror: 1'; echo 'emulation failure'; sleep 15",
            None,
            &["KVM internal error"],
        );
        assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
        assert_eq!(run.fatal.as_deref(), Some("KVM internal error. Suberror: 1"));
        assert!(!run.timed_out);
        assert_eq!(run.status, None);
    }

    #[test]
    fn wedged_consoles_are_named_after_the_log() {
        assert_eq!(
            wedged_console_path(Path::new("/t/vm-test/console.log"), 1),
            Path::new("/t/vm-test/console.wedged-boot-1.log")
        );
        let stall = Stall {
            last_output_at: Duration::from_millis(11_200),
            silent_for: Duration::from_secs(45),
            last_line: "[    1.4] smp: Brought up 1 node, 2 CPUs".into(),
        };
        let outcome = VmOutcome {
            status: Some(0),
            timed_out: false,
            console_tail: Vec::new(),
            boot_time: Some(Duration::from_secs(15)),
            elapsed: Duration::from_secs(30),
            boot_silence: Silence::default(),
            stall: None,
            wedged: vec![WedgedBoot {
                stall: stall.clone(),
                console: "/t/console.wedged-boot-1.log".into(),
            }],
        };
        assert_eq!(
            outcome.wedge_notes(),
            ["WEDGED BOOT 1 of this run: the console stopped for 45 s after 11.2 s of boot \
              (last line: `[    1.4] smp: Brought up 1 node, 2 CPUs`); booted again; console \
              kept in /t/console.wedged-boot-1.log"]
        );
        let twice = VmOutcome {
            stall: Some(stall.clone()),
            wedged: vec![outcome.wedged[0].clone(), outcome.wedged[0].clone()],
            ..outcome
        };
        let notes = twice.wedge_notes();
        assert!(notes[0].contains("booted again") && notes[1].contains("gave up"), "{notes:?}");
    }

    fn spec() -> VmSpec {
        let kernel = Kernel {
            image: "/k/vmlinuz".into(),
            version: "7.3.4".into(),
            config: None,
            source: "test".into(),
            packages: Vec::new(),
            differs: None,
        };
        VmSpec {
            rwdirs: vec!["/out".into()],
            ..VmSpec::new(kernel, Accel::Tcg, "/g.sh".into())
        }
    }

    #[test]
    fn tcg_argv() {
        let args = vng_args(&spec(), Path::new("/g.sh"), &["a b".into()]);
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--verbose",
                "--run",
                "/k/vmlinuz",
                "--disable-kvm",
                "--disable-microvm",
                "--cpus",
                "2",
                "--memory",
                "2048M",
                "-a",
                MODULE_BLACKLIST,
                "--rwdir=/out",
                "--",
                "/g.sh",
                "a b",
            ]
        );
    }

    #[test]
    fn kvm_argv_with_forwarded_ports() {
        let spec = VmSpec {
            accel: Accel::Kvm,
            forward_ports: vec![(18080, 8080), (18081, 8081)],
            ..spec()
        };
        let args: Vec<String> = vng_args(&spec, Path::new("/g.sh"), &[])
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.contains(&"--disable-kvm".to_string()));
        assert!(args.contains(&"virtme.dhcp net.ifnames=0 biosdevname=0".to_string()));
        assert!(
            args.iter()
                .any(|a| a.starts_with("--rodir=/etc/systemd/network="))
        );
        assert!(
            args.contains(
                &"--qemu-opts=-device virtio-net-pci,netdev=fwd -netdev user,id=fwd,\
              hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=tcp:127.0.0.1:18081-:8081"
                    .to_string()
            )
        );
    }
}
