//! `cargo xtask vm-check`: one boot with a tiny guest command, no scheduler.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::cache_dir;

use super::opts::VmOpts;
use super::boot::{VmSpec, describe_stall, boot};
use super::console::{read_console, scan_console};

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
