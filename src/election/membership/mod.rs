//! Which processes belong to which candidate, and how much CPU they got.
//!
//! A tracker thread scans `/proc`: it matches every process against the
//! candidates' membership rules (first matching candidate in creation order
//! wins), publishes the result for the election policy ([`Membership`]) and,
//! once per [`SHARE_WINDOW`], the CPU each candidate and process got for the
//! HTTP API ([`Observations`]).
//!
//! Reading every process's `stat` costs the more processes there are, so
//! the tracker scans every [`SCAN_INTERVAL`], and sooner (but at most once
//! per [`SCAN_GAP`]) when something changed that it has not seen: the
//! membership rules, or a queued task that the last scan did not see as it
//! is now (a new process, one that exec'd or switched to SCHED_EXT; the
//! policy asks through [`Nudge`]).
//!
//! A process is a member of candidate NAME when a rule says so:
//! - `pid`: that process, all its threads, as long as its start time and
//!   boot are the ones recorded when it was added (a recycled PID, or the
//!   same PID after a reboot, matches nothing);
//! - `comm`: its command name;
//! - `cgroup`: its cgroup v2 path is that path or below it;
//! - or it is a SCHED_EXT task started by `scx_ballot exec --candidate NAME`,
//!   which leaves `SCX_BALLOT_CANDIDATE=NAME` in its environment (inherited
//!   by its children).
//!
//! Who may join ([`Trust`]): `pid` and `cgroup` rules are set by the
//! administrator and name the processes themselves, so they are trusted as
//! they are. A process chooses its own command name and environment, and
//! any user may switch a process to SCHED_EXT, so `comm` rules and the exec
//! marker count only for processes whose real and effective uids are both
//! trusted: the uid scx_ballot runs as, the `--member-uid` uids, and for one
//! candidate the `uids` of its entry in the candidates file.
//!
//! SCHED_EXT tasks that match no candidate are "unaffiliated" (see the
//! election policy for how they are scheduled). A `pid` member whose process
//! has exited is reported once to the `on_exit` callback, which drops it from
//! the ballot; the candidate and its votes stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::sched::QueuedTask;

mod nudge;
mod rules;
mod shares;
mod tracker;
#[cfg(test)]
mod tests;

pub use nudge::Nudge;
pub use rules::{ProcFacts, Trust, cgroup_within, match_candidate};
pub use shares::{SHARE_WINDOW, share_of};
pub use tracker::{OnExit, Tracker};

/// How often `/proc` is scanned for members when nothing asks sooner.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest time between two scans.
pub const SCAN_GAP: Duration = Duration::from_millis(200);
/// The environment variable `scx_ballot exec --candidate` sets.
pub const CANDIDATE_ENV: &str = "SCX_BALLOT_CANDIDATE";

/// Process → candidate, for the policy.
#[derive(Debug, Default)]
pub struct Membership {
    /// Every process the scan saw, members or not (by tgid).
    pub seen: HashMap<i32, Seen>,
}

/// A process as the last scan saw it: its candidate, and enough to tell
/// when a queued task of it is not what was classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub candidate: Option<Arc<str>>,
    pub comm: String,
    pub sched_ext: bool,
}

impl Membership {
    /// The candidate of `task`'s process, and whether this scan may have it
    /// wrong: the process is new to it, exec'd since (another comm, seen on
    /// its main thread) or switched to or from SCHED_EXT.
    pub fn lookup(&self, task: &QueuedTask) -> (Option<&Arc<str>>, bool) {
        match self.seen.get(&task.tgid) {
            None => (None, true),
            Some(seen) => (
                seen.candidate.as_ref(),
                seen.sched_ext != task.sched_ext
                    || (task.pid == task.tgid && seen.comm != task.comm_str()),
            ),
        }
    }
}
