//! The meeting point of the two flows: what the vote side publishes for the
//! scheduler, and what the scheduler side publishes for the HTTP API. Both
//! are immutable snapshots behind an `ArcSwap`: readers take a cheap `load()`
//! and never hold a lock; writers build a new snapshot and swap it in.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::stats::Metrics;

pub use scx_ballot_api::{LiveMember, Member, Mode, Share};

/// What the vote side publishes for the scheduler: the current standing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Standing {
    /// Bumped at every change.
    pub generation: u64,
    /// Candidates in creation order, with their membership rules and votes.
    pub candidates: Vec<CandidateStanding>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateStanding {
    pub name: String,
    pub votes: u64,
    pub members: Vec<Member>,
}

/// What the scheduler side publishes for the HTTP API.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observations {
    /// Live members per candidate.
    pub members: BTreeMap<String, Vec<LiveMember>>,
    /// CPU share per candidate over the last window.
    pub candidate_shares: BTreeMap<String, Share>,
    /// CPU share per PID (members of a candidate, and SCHED_EXT tasks of no
    /// candidate) over the last window.
    pub pid_shares: BTreeMap<i32, Share>,
    /// Length of that window in milliseconds.
    pub window_ms: u64,
}

/// The published snapshots, shared by every thread: the standing (from the
/// ballot), the observations (from the membership tracker) and the
/// framework's counters (from the driver loop, for `GET /stats`).
#[derive(Debug, Default)]
pub struct Board {
    pub standing: ArcSwap<Standing>,
    pub observations: ArcSwap<Observations>,
    pub metrics: ArcSwap<Metrics>,
}

impl Board {
    pub fn new() -> Arc<Self> {
        Arc::new(Board::default())
    }
}
