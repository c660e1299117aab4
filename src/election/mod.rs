//! The election: the snapshots both flows meet at ([`view`]), which processes
//! belong to which candidate and how much CPU they got ([`membership`],
//! reading `/proc` through [`procfs`]), and [`Election::start`], which owns
//! the ballot's store, the membership tracker and the voting server.
//!
//! A vote's path: the server's event loop (`server::http`) hands the
//! request to its route (`server`), which submits it to the store
//! (`ballot::store`: journal, then tally); the store publishes the new
//! standing on the board ([`view`]) and wakes the scheduling loop
//! ([`Election::on_change`]); the election policy (`policy::election`)
//! reads the standing and the membership, and its decisions go to the BPF
//! side through the connector (`bpf`).

use std::sync::Arc;

use anyhow::{Context, Result};
use log::{info, warn};

use crate::ballot::{self, Event, Store};
use crate::cli::{Mutant, SchedOpts};
use crate::policy::election::Inputs;
use crate::server::{self, ServerConfig, ServerHandle};
use crate::stats::Metrics;

pub mod membership;
pub mod procfs;
pub mod view;

use membership::{Tracker, Trust};
use view::{Board, Member};

/// The election's moving parts: the ballot and its server (the vote flow),
/// the membership tracker (which process belongs to whom), and what the
/// policy reads. Dropping it stops the server, then the tracker.
pub struct Election {
    inputs: Inputs,
    store: Arc<Store>,
    board: Arc<Board>,
    _server: ServerHandle,
    _tracker: Tracker,
}

impl Election {
    /// Opens the ballot (and its journal), starts the membership tracker and
    /// the voting server, as `opts` say. The port is bound before the
    /// journal is opened: a start that cannot serve fails before it writes.
    pub fn start(opts: &SchedOpts) -> Result<Election> {
        let admin_token = opts.admin_token()?;
        let board = Board::new();
        let (initial, trusted_per_candidate) = match &opts.candidates {
            Some(path) => ballot::load_candidates_file(path)?,
            None => (Vec::new(), Vec::new()),
        };
        let trust = Trust::new(opts.member_uid.iter().copied(), trusted_per_candidate)
            .context("reading the uid scx_ballot runs as")?;
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
        let tracker = Tracker::spawn(board.clone(), trust, on_exit)
            .context("starting the membership tracker")?;
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
        let inputs = Inputs {
            board: board.clone(),
            membership: tracker.membership.clone(),
            nudge: tracker.nudge.clone(),
            mode: opts.mode,
            min_share: opts.min_share,
            cap: opts.cap,
            ignore_votes: opts.debug_mutant == Some(Mutant::IgnoreVotes),
        };
        Ok(Election { inputs, store, board, _server: server, _tracker: tracker })
    }

    /// What the election policy reads.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// Runs `f` after every published change of the standing (e.g. to wake
    /// the scheduling loop, so a new leader runs without waiting for a poll).
    pub fn on_change(&self, f: impl Fn() + Send + Sync + 'static) {
        self.store.on_publish(move |_| f());
    }

    /// The driver loop's counters, for `GET /stats`.
    pub fn publish_metrics(&self, metrics: Metrics) {
        self.board.metrics.store(Arc::new(metrics));
    }
}
