//! `cargo xtask run`: the scheduler and a demo workload, on this host when
//! its kernel has sched_ext, otherwise inside the VM. `vm/demo.sh` does the
//! same job in both places and prints, every second, which task got how much
//! CPU.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use xshell::{Shell, cmd};

use crate::vm::VmOpts;
use crate::vm_test::{fresh_dir, path_arg};
use crate::{compile, deps, project_root, vm};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Where {
    /// The host if its kernel has sched_ext and no other sched_ext scheduler
    /// is loaded, otherwise the VM.
    Auto,
    /// This host (needs a sched_ext kernel and root; sudo is used if needed).
    Host,
    /// A VM booted with virtme-ng, whatever the host runs.
    Vm,
}

#[derive(Args, Debug)]
pub struct RunCmd {
    /// How long the demo runs, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub seconds: u32,

    /// Where to run it.
    #[arg(long = "on", value_enum, default_value_t = Where::Auto)]
    pub place: Where,

    #[command(flatten)]
    pub vm: VmOpts,

    /// Flags passed to scx_ballot (after `--`), e.g. `-- --slice-us 20000`.
    #[arg(last = true, value_name = "SCX_BALLOT FLAGS")]
    pub sched_args: Vec<String>,
}

/// Why this host can or cannot run the scheduler itself.
pub fn host_verdict(sched_ext_dir: bool, state: Option<&str>) -> Result<(), String> {
    if !sched_ext_dir {
        return Err("this host's kernel has no sched_ext".into());
    }
    match state {
        Some("disabled") => Ok(()),
        Some(other) => Err(format!("another sched_ext scheduler is loaded here (state {other})")),
        None => Err("this host's sched_ext state cannot be read".into()),
    }
}

impl RunCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let sys = Path::new("/sys/kernel/sched_ext");
        let state = std::fs::read_to_string(sys.join("state")).ok();
        let verdict = host_verdict(sys.is_dir(), state.as_deref().map(str::trim));
        let on_host = match (self.place, &verdict) {
            (Where::Vm, _) => false,
            (Where::Host, Ok(())) | (Where::Auto, Ok(())) => true,
            (Where::Host, Err(why)) => bail!("cannot run on this host: {why}"),
            (Where::Auto, Err(why)) => {
                println!("note: {why}; running the demo inside a VM instead");
                false
            }
        };
        let bin = compile::build_scheduler(sh)?;
        if on_host { self.run_on_host(sh, &bin) } else { self.run_in_vm(sh, &bin) }
    }

    fn run_on_host(&self, sh: &Shell, bin: &Path) -> Result<()> {
        let demo = project_root().join("vm/demo.sh");
        let secs = self.seconds.to_string();
        let args = &self.sched_args;
        println!("==> running scx_ballot and the demo burners on this host for {secs} s");
        let run = if deps::is_root() {
            cmd!(sh, "{demo} {bin} {secs} {args...}")
        } else {
            println!("note: loading a scheduler needs root; re-running the demo with sudo");
            cmd!(sh, "sudo {demo} {bin} {secs} {args...}")
        };
        run.run().context("the demo failed")
    }

    fn run_in_vm(&self, sh: &Shell, bin: &Path) -> Result<()> {
        let (tools, kernel, accel) = self.vm.prepare(sh)?;
        let out = fresh_dir(&project_root().join("target/run"))?;
        let mut spec = self.vm.spec(kernel, accel, "vm/demo.sh", &out);
        spec.args = vec![path_arg(bin)?, self.seconds.to_string()];
        spec.args.extend(self.sched_args.iter().cloned());
        println!("==> booting the VM ({accel}, {} vCPUs); the demo runs {} s once it is up", spec.cpus, self.seconds);
        let outcome = vm::boot(sh, &tools, &spec)?;
        let alarms = vm::scan_console(&vm::read_console(&spec.console_log).unwrap_or_default());
        for alarm in &alarms {
            println!("console: {alarm}");
        }
        match outcome.status {
            Some(0) if alarms.is_empty() => Ok(()),
            Some(0) => bail!("the kernel complained (see above); console log: {}", spec.console_log.display()),
            status => bail!(
                "the demo in the VM ended with {status:?}{}; console log: {}",
                if outcome.timed_out { " (timed out)" } else { "" },
                spec.console_log.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_needs_sched_ext_and_no_other_scheduler() {
        assert!(host_verdict(true, Some("disabled")).is_ok());
        assert!(host_verdict(false, None).unwrap_err().contains("no sched_ext"));
        assert!(host_verdict(true, Some("enabled")).unwrap_err().contains("another"));
        assert!(host_verdict(true, None).is_err());
    }
}
