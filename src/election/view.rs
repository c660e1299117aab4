//! The meeting point of the two flows: what the vote side publishes for the
//! scheduler, and what the scheduler side publishes for the HTTP API. Both
//! are immutable snapshots behind an `ArcSwap`: readers take a cheap `load()`
//! and never hold a lock; writers build a new snapshot and swap it in.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::stats::Metrics;

/// How the election turns votes into CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The leader's tasks go first; every other candidate gets a bounded
    /// minimum.
    Winner,
    /// CPU shares in proportion to votes + 1.
    Proportional,
}

/// How a process becomes a member of a candidate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Member {
    /// A process (all its threads). `start_time` (clock ticks after boot,
    /// field 22 of /proc/PID/stat) and `boot_id`
    /// (/proc/sys/kernel/random/boot_id) pin its identity, so neither a
    /// recycled PID nor the same PID after a reboot inherits a candidate's
    /// votes; both are filled in when the member is added. (A member
    /// journaled without `boot_id`, by an older version, matches by PID and
    /// start time alone.)
    Pid {
        pid: i32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_time: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot_id: Option<String>,
    },
    /// Every process whose command name (comm, at most 15 bytes) is this,
    /// of a trusted uid (see `membership::Trust`: a process names itself).
    Comm { comm: String },
    /// Every process in this cgroup (v2 path, e.g. `/system.slice/foo`) or
    /// below it.
    Cgroup { path: String },
}

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

/// A live process that belongs to a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMember {
    pub pid: i32,
    pub comm: String,
}

/// CPU use over the last measurement window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// Fraction of the machine's CPU time (0.0..=1.0 of all CPUs).
    pub share: f64,
    /// CPU time in the window, in nanoseconds.
    pub cpu_ns: u64,
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
