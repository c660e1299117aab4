//! scx_ballot: a sched_ext CPU scheduler where people vote on which
//! processes get the CPU.
//!
//! `scx_ballot` loads the BPF dispatcher and runs a user-space policy until
//! Ctrl-C; with `--policy election` it also runs the voting server.
//! `scx_ballot --no-sched` runs the election alone, loading nothing.
//! `scx_ballot exec -- CMD` starts CMD as a SCHED_EXT task.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use log::{error, info};

use scx_ballot::cli::{Cli, Command, Mutant, SchedOpts};
use scx_ballot::election::Election;
use scx_ballot::policy::{self, PolicyName};
use scx_ballot::{bpf, exec, logger, preflight, sched};

fn main() {
    let cli = Cli::parse();
    logger::init(cli.sched.verbose);
    let result = match cli.command {
        Some(Command::Exec { argv, candidate }) => {
            exec::exec_in_sched_ext(&argv, candidate.as_deref()).map(|_| ())
        }
        None if cli.sched.no_sched => run_election_only(&cli.sched),
        None => run_scheduler(&cli.sched),
    };
    if let Err(e) = result {
        error!("{e:#}");
        std::process::exit(1);
    }
}

/// `--no-sched`: the election side alone (ballot, voting server, membership
/// tracker) until Ctrl-C or SIGTERM. No BPF is loaded, so there is no
/// preflight: it needs neither root nor sched_ext.
fn run_election_only(opts: &SchedOpts) -> Result<()> {
    if opts.policy != PolicyName::Election {
        anyhow::bail!(
            "--no-sched runs the election only; it cannot run --policy {}",
            format!("{:?}", opts.policy).to_lowercase()
        );
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the SIGINT/SIGTERM handler")?;
    let election = Election::start(opts)?;
    info!(
        "dry run (--no-sched): no scheduler is loaded; votes are counted but move no CPU; \
         Ctrl-C stops"
    );
    // The handler lives as long as the process, so its sender never drops.
    let _ = stop_rx.recv();
    info!("stopping the election");
    drop(election);
    Ok(())
}

fn run_scheduler(opts: &SchedOpts) -> Result<()> {
    opts.check_timing()?;
    preflight::check(&preflight::HostFacts::read())?;

    // Our own handler, installed before `init_with` (which then leaves it in
    // place: a process has one): the flag stops the loop and the restarts.
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the SIGINT/SIGTERM handler")?;

    let election = match opts.policy {
        PolicyName::Election => Some(Election::start(opts)?),
        _ => None,
    };
    let inputs = election.as_ref().map(Election::inputs);
    let slice_ns = opts.slice_us * 1000;
    let policy_name = match (opts.debug_mutant, opts.policy) {
        (Some(Mutant::Fifo), PolicyName::Election) => PolicyName::Fifo,
        (Some(_), PolicyName::Election) | (None, _) => opts.policy,
        (Some(_), _) => anyhow::bail!("--debug-mutant needs --policy election"),
    };
    let mut policy = policy::build(policy_name, slice_ns, inputs)?;
    let init = opts.init_opts(policy.idle_dispatch());
    let stats = opts.stats.map(Duration::from_secs_f64);
    let mut publish = |m| {
        if let Some(e) = &election {
            e.publish_metrics(m);
        }
    };
    let mut open_object = MaybeUninit::uninit();
    loop {
        let mut sched = bpf::BpfScheduler::init_with(&mut open_object, &init)?;
        if let Some(e) = &election {
            // A vote changes the next decision: the loop wakes for it
            // instead of finishing its sleep.
            let waker = sched.waker()?;
            e.on_change(move || waker.wake());
        }
        info!(
            "scx_ballot attached: policy {}, {} mode, slice {} us",
            policy.name(),
            if init.partial { "partial" } else { "full" },
            opts.slice_us
        );
        let uei =
            sched::run_with_metrics(&mut sched, policy.as_mut(), &shutdown, stats, &mut publish)?;
        drop(sched);
        if !uei.should_restart() || shutdown.load(Ordering::Relaxed) {
            info!("scx_ballot detached");
            return Ok(());
        }
        info!("the kernel asked for a restart (CPU hotplug); attaching again");
        policy = policy::build(policy_name, slice_ns, inputs)?;
    }
}
