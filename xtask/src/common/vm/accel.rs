//! The accelerator choice: KVM when a test boot shows it really works
//! (probed once per kernel and QEMU version, the answer cached), TCG
//! otherwise.

use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use xshell::{Shell, cmd};

use crate::host::deps::VmTools;
use crate::host::kernel::Kernel;
use crate::cache_dir;

use super::{KVM_PROBE_TIMEOUT, KVM_PROBE_STALL, KVM_FATAL};
use super::boot::VmSpec;
use super::vng::{vng_args, vng_command};
use super::runner::{Echo, Bounds, Run, run_bounded};

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

pub(super) fn format_probe(probe: &Probe) -> String {
    match probe {
        Probe::Booted => "booted\n".into(),
        Probe::Failed(why) => format!("failed: {why}\n"),
        Probe::TimedOut => "timed out\n".into(),
    }
}

pub(super) fn parse_probe(text: &str) -> Option<Probe> {
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
pub(super) fn failure_reason(tail: &[String], status: Option<i32>) -> String {
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
