//! Tests of the VM module: accelerator choice, `vng` arguments, console scan, bounded runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::host::kernel::Kernel;

use super::*;
use super::accel::{Accel, DevKvm, Probe, Decision, decide_accel, kvm_override_from_env, kvm_precheck, format_probe, parse_probe, failure_reason};
use super::boot::{VmSpec, VmOutcome, WedgedBoot, wedged_console_path};
use super::vng::vng_args;
use super::console::{scan_console, strip_printk_time};
use super::runner::{Echo, Bounds, Stall, Silence, Run, run_bounded};

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
