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
use log::{error, info, warn};

use scx_ballot::ballot::{self, Event, Store};
use scx_ballot::cli::{Cli, Command, Mutant, SchedOpts};
use scx_ballot::election::membership::{Tracker, Trust};
use scx_ballot::election::view::{Board, Member};
use scx_ballot::policy::{PolicyName, election};
use scx_ballot::server::{self, ServerConfig, ServerHandle};
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

/// The election's moving parts: the ballot and its server (the vote flow),
/// the membership tracker (which process belongs to whom), and what the
/// policy reads.
struct ElectionSide {
    inputs: election::Inputs,
    tracker: Tracker,
    /// Kept to wake the scheduling loop on every published change.
    store: Arc<Store>,
    _server: ServerHandle,
}

fn start_election(opts: &SchedOpts) -> Result<ElectionSide> {
    let admin_token = opts.admin_token()?;
    let board = Board::new();
    let (initial, trusted_per_candidate) = match &opts.candidates {
        Some(path) => ballot::load_candidates_file(path)?,
        None => (Vec::new(), Vec::new()),
    };
    let trust = Trust::new(opts.member_uid.iter().copied(), trusted_per_candidate)
        .context("reading the uid scx_ballot runs as")?;
    // The port first: a start that cannot serve must fail before the
    // journal is opened (and written).
    let listener = server::bind(opts.listen)?;
    let (store, warnings) =
        Store::open_counting(opts.votes_file.as_deref(), initial, board.clone(), opts.counting)
        .context("opening the ballot")?;
    for w in warnings {
        warn!("{w}");
    }
    if opts.votes_file.is_none() {
        warn!("no --votes-file: votes are kept in memory only and lost when scx_ballot stops");
    }
    let store = Arc::new(store);
    let on_exit_store = store.clone();
    let on_exit = Box::new(move |candidate: &str, member: &Member| {
        let event = Event::RemoveMember {
            candidate: candidate.to_string(),
            member: member.clone(),
        };
        if let Err(e) = on_exit_store.submit(event) {
            warn!("dropping an exited member of {candidate}: {e}");
        }
    });
    let tracker =
        Tracker::spawn(board.clone(), trust, on_exit).context("starting the membership tracker")?;
    let cfg = ServerConfig {
        listen: opts.listen,
        admin_token: admin_token.clone(),
        allow_hosts: opts.allow_hosts.clone(),
        vote_interval_ms: opts.vote_interval_ms,
        trust_forwarded_for: opts.trust_forwarded_for,
        max_body: ServerConfig::DEFAULT_MAX_BODY,
    };
    let server = server::spawn_on(listener, cfg, store.clone(), board.clone())
        .with_context(|| format!("starting the voting server on {}", opts.listen))?;
    info!("voting server: http://{}/", server.addr);
    if let (Some(token), None) = (&server.admin_token, &admin_token) {
        info!("admin token (the listener is not loopback-only): {token}");
    }
    let inputs = election::Inputs {
        board,
        membership: tracker.membership.clone(),
        nudge: tracker.nudge.clone(),
        mode: opts.mode,
        min_share: opts.min_share,
        cap: opts.cap,
        ignore_votes: opts.debug_mutant == Some(Mutant::IgnoreVotes),
    };
    Ok(ElectionSide {
        inputs,
        tracker,
        store,
        _server: server,
    })
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
    let election = start_election(opts)?;
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
        PolicyName::Election => Some(start_election(opts)?),
        _ => None,
    };
    let inputs = election.as_ref().map(|e| &e.inputs);
    let slice_ns = opts.slice_us * 1000;
    let policy_name = match (opts.debug_mutant, opts.policy) {
        (Some(Mutant::Fifo), PolicyName::Election) => PolicyName::Fifo,
        (Some(_), PolicyName::Election) | (None, _) => opts.policy,
        (Some(_), _) => anyhow::bail!("--debug-mutant needs --policy election"),
    };
    let mut policy = policy_name.build(slice_ns, inputs)?;
    let init = opts.init_opts(policy.idle_dispatch());
    let stats = opts.stats.map(Duration::from_secs_f64);
    let metrics_sink = election.as_ref().map(|e| e.tracker.metrics.clone());
    let mut publish = |m| {
        if let Some(sink) = &metrics_sink {
            sink.store(Arc::new(m));
        }
    };
    let mut open_object = MaybeUninit::uninit();
    loop {
        let mut sched = bpf::BpfScheduler::init_with(&mut open_object, &init)?;
        if let Some(e) = &election {
            // A vote changes the next decision: the loop wakes for it
            // instead of finishing its sleep.
            let waker = sched.waker()?;
            e.store.on_publish(move |_| waker.wake());
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
        policy = policy_name.build(slice_ns, inputs)?;
    }
}
