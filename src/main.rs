//! scx_ballot: a sched_ext CPU scheduler where people vote on which
//! processes get the CPU.
//!
//! `scx_ballot` loads the BPF dispatcher and runs a user-space policy until
//! Ctrl-C; `scx_ballot exec -- CMD` starts CMD as a SCHED_EXT task.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use log::{error, info, warn};

use scx_ballot::cli::{Cli, Command, SchedOpts};
use scx_ballot::{bpf, exec, logger, preflight, sched};

fn main() {
    let cli = Cli::parse();
    logger::init(cli.sched.verbose);
    let result = match cli.command {
        Some(Command::Exec { argv }) => exec::exec_in_sched_ext(&argv).map(|_| ()),
        None => run_scheduler(&cli.sched),
    };
    if let Err(e) = result {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn run_scheduler(opts: &SchedOpts) -> Result<()> {
    preflight::check(&preflight::HostFacts::read())?;

    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the SIGINT/SIGTERM handler")?;

    let mut policy = opts.policy.build(opts.slice_us * 1000);
    let init = opts.init_opts(policy.builtin_idle());
    if !init.partial {
        if let Err(e) = bpf::lock_memory() {
            warn!("could not lock the scheduler's memory ({e}); a page fault may stall it");
        }
    }
    let stats = opts.stats.map(Duration::from_secs_f64);
    let mut open_object = MaybeUninit::uninit();
    loop {
        let mut sched = bpf::BpfScheduler::init(&mut open_object, &init)?;
        info!(
            "scx_ballot attached: policy {}, {} mode, slice {} us",
            policy.name(),
            if init.partial { "partial" } else { "full" },
            init.slice_us
        );
        let uei = sched::run(&mut sched, policy.as_mut(), &shutdown, stats)?;
        drop(sched);
        if !uei.should_restart() || shutdown.load(Ordering::Relaxed) {
            info!("scx_ballot detached");
            return Ok(());
        }
        info!("the kernel asked for a restart (CPU hotplug); attaching again");
        policy = opts.policy.build(opts.slice_us * 1000);
    }
}
