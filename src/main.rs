//! scx_ballot: a sched_ext CPU scheduler where people vote on which
//! processes get the CPU.
//!
//! `scx_ballot` loads the BPF scheduler and runs until Ctrl-C;
//! `scx_ballot exec -- CMD` starts CMD as a SCHED_EXT task.

mod bpf;
mod bpf_intf;
mod bpf_skel;
mod cli;
mod exec;
mod logger;
mod preflight;

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use log::{error, info};

use cli::{Cli, Command, SchedOpts};

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

    let cfg = opts.bpf_config();
    let stats = opts.stats.map(Duration::from_secs_f64);
    let mut open_object = MaybeUninit::uninit();
    loop {
        let sched = bpf::Scheduler::init(&cfg, &mut open_object)?;
        info!(
            "scx_ballot attached ({} mode, slice {} us)",
            if cfg.partial { "partial" } else { "full" },
            cfg.slice_us
        );
        let uei = sched.run(&shutdown, stats)?;
        if !uei.should_restart() || shutdown.load(Ordering::Relaxed) {
            info!("scx_ballot detached");
            return Ok(());
        }
        info!("the kernel asked for a restart (CPU hotplug); attaching again");
    }
}
