//! `cargo xtask run`: a live election. It builds scx_ballot and runs the
//! demo (`xtask demo`, see `guest/demo.rs`): the scheduler with the election
//! policy and its voting server, CPU burners for the demo candidates (or
//! your `--candidates FILE`), and a line a second with the tally and the
//! CPU share of each candidate, until Ctrl-C.
//!
//! On a host whose kernel has sched_ext it runs there (re-running itself
//! with sudo when it is not root); otherwise inside the VM, with the voting
//! port forwarded to 127.0.0.1 on the host.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use xshell::{Shell, cmd};

use crate::common::vm::VmOpts;
use crate::host::vm_test::{fresh_dir, path_arg};
use crate::guest::scheduler::uname_r;
use crate::common::{compile, reap, vm};
use crate::host::deps;
use crate::project_root;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Where {
    /// The host if its kernel has sched_ext (with BTF) and no other
    /// sched_ext scheduler is loaded, otherwise the VM.
    Auto,
    /// This host (needs a sched_ext kernel and root; sudo is used if needed).
    Host,
    /// A VM booted with virtme-ng, whatever the host runs.
    Vm,
}

#[derive(Args, Debug)]
pub struct RunCmd {
    /// Stop by itself after this many seconds; without it, the election
    /// runs until Ctrl-C.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=604800))]
    pub seconds: Option<u32>,

    /// Where to run it.
    #[arg(long = "on", value_enum, default_value_t = Where::Auto)]
    pub place: Where,

    /// The port the voting server (and the ballot page) answers on, on
    /// 127.0.0.1 of this host. In the VM it is forwarded to the guest.
    #[arg(long, default_value_t = 7447)]
    pub port: u16,

    /// Your own candidates file (TOML or JSON, see README) instead of the
    /// demo's blue and red. No burners are started then: your processes join
    /// the candidates by the file's rules or `scx_ballot exec --candidate`.
    #[arg(long, value_name = "FILE")]
    pub candidates: Option<PathBuf>,

    /// CPU burners per candidate per CPU (default 1 for the demo
    /// candidates, 0 with --candidates). With fewer burners than CPUs a
    /// vote shows only with `-- --cap` (README, "--cap").
    #[arg(long, value_name = "N")]
    pub workers_per_cpu: Option<u32>,

    #[command(flatten)]
    pub vm: VmOpts,

    /// Flags passed to scx_ballot (after `--`), e.g. `-- --mode proportional`
    /// or `-- --min-share 10` (see `scx_ballot --help`).
    #[arg(last = true, value_name = "SCX_BALLOT FLAGS")]
    pub sched_args: Vec<String>,
}

/// Why this host can or cannot run the scheduler itself.
pub fn host_verdict(sched_ext_dir: bool, btf: bool, state: Option<&str>) -> Result<(), String> {
    if !sched_ext_dir {
        return Err("this host's kernel has no sched_ext".into());
    }
    if !btf {
        return Err("this host's kernel has no BTF (/sys/kernel/btf/vmlinux), which BPF schedulers need".into());
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
        let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
        let verdict = host_verdict(sys.is_dir(), btf, state.as_deref().map(str::trim));
        let on_host = match (self.place, &verdict) {
            (Where::Vm, _) => false,
            (Where::Host, Ok(())) | (Where::Auto, Ok(())) => true,
            (Where::Host, Err(why)) => bail!("cannot run on this host: {why}"),
            (Where::Auto, Err(why)) => {
                println!("note: {why}; running the election inside a VM instead (the voting port is forwarded)");
                false
            }
        };
        if let Some(file) = &self.candidates {
            std::fs::metadata(file).with_context(|| format!("--candidates {}", file.display()))?;
        }
        let free = std::net::TcpListener::bind(("127.0.0.1", self.port));
        if let Err(e) = free {
            bail!("port {} on 127.0.0.1 is not free ({e}); choose another with --port", self.port);
        }
        drop(free);
        let bin = compile::build_scheduler(sh)?;
        if on_host { self.run_on_host(sh, &bin) } else { self.run_in_vm(sh, &bin) }
    }

    /// The `xtask demo` arguments, minus where the output goes.
    fn demo_args(&self, bin: &Path, out: &Path, listen: &str, public_url: &str) -> Result<Vec<String>> {
        let mut args = vec![
            "demo".to_string(),
            "--scx-ballot".into(),
            path_arg(bin)?,
            "--out".into(),
            path_arg(out)?,
            "--listen".into(),
            listen.into(),
            "--public-url".into(),
            public_url.into(),
            "--seconds".into(),
            self.seconds.unwrap_or(0).to_string(),
        ];
        if let Some(file) = &self.candidates {
            args.extend(["--candidates".into(), path_arg(file)?]);
        }
        if let Some(n) = self.workers_per_cpu {
            args.extend(["--workers-per-cpu".into(), n.to_string()]);
        }
        args.push("--".into());
        args.extend(self.sched_args.iter().cloned());
        Ok(args)
    }

    fn run_on_host(&self, sh: &Shell, bin: &Path) -> Result<()> {
        let out = fresh_dir(&project_root().join("target/run"))?;
        let url = format!("http://127.0.0.1:{}/", self.port);
        let args = self.demo_args(bin, &out, &format!("127.0.0.1:{}", self.port), &url)?;
        let me = std::env::current_exe().context("locating the xtask binary")?;
        println!("==> the election on this host ({}); Ctrl-C stops it", uname_r());
        let run = if deps::is_root() {
            cmd!(sh, "{me} {args...}")
        } else {
            println!("note: loading a scheduler needs root; re-running the demo with sudo");
            cmd!(sh, "sudo -- {me} {args...}")
        };
        run.run().context("the election demo failed")
    }

    fn run_in_vm(&self, sh: &Shell, bin: &Path) -> Result<()> {
        let (tools, kernel, accel) = self.vm.prepare(sh)?;
        let out = fresh_dir(&project_root().join("target/run"))?;
        let url = format!("http://127.0.0.1:{}/", self.port);
        let me = std::env::current_exe().context("locating the xtask binary")?;
        let mut spec = self.vm.spec(kernel, accel, me, &out);
        spec.args = self.demo_args(bin, &out, "0.0.0.0:7447", &url)?;
        spec.forward_ports = vec![(self.port, 7447)];
        spec.timeout = std::time::Duration::from_secs(match self.seconds {
            Some(s) => u64::from(s) + 600,
            None => 7 * 24 * 3600,
        });
        println!(
            "==> booting the VM ({accel}, {} vCPUs) for the election; the voting port is forwarded: {url} on this host",
            spec.cpus
        );
        let stop_file = out.join("stop");
        let _gentle = reap::stop_gently_first(move || {
            let _ = std::fs::write(&stop_file, b"stop\n");
        });
        let outcome = vm::boot(sh, &tools, &spec)?;
        for note in outcome.wedge_notes() {
            println!("!!! {note}");
        }
        let alarms = vm::scan_console(&vm::read_console(&spec.console_log).unwrap_or_default());
        for alarm in &alarms {
            println!("console: {alarm}");
        }
        match outcome.status {
            Some(0) if alarms.is_empty() => Ok(()),
            Some(0) => bail!("the kernel complained (see above); console log: {}", spec.console_log.display()),
            status => bail!(
                "the election in the VM ended with {status:?}{}; console log: {}",
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
    fn host_needs_sched_ext_btf_and_no_other_scheduler() {
        assert!(host_verdict(true, true, Some("disabled")).is_ok());
        assert!(host_verdict(false, true, None).unwrap_err().contains("no sched_ext"));
        assert!(host_verdict(true, false, Some("disabled")).unwrap_err().contains("BTF"));
        assert!(host_verdict(true, true, Some("enabled")).unwrap_err().contains("another"));
        assert!(host_verdict(true, true, None).is_err());
    }
}
