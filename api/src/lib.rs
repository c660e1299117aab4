//! The contract of scx_ballot's HTTP API: the bodies its routes take and
//! give, the events of its stream, and the names of its modes and policies.
//! The voting server serializes these types and the xtask (the demo, the
//! bench, the scenarios, the browser test) deserializes them, so a renamed
//! or retyped field fails to compile on both sides instead of at run time
//! in a VM. No BPF and no I/O here.
//!
//! | route | takes | gives |
//! |---|---|---|
//! | `GET /votes` | | [`Tally`] |
//! | `POST /votes` | [`VoteRequest`] | [`Tally`] |
//! | `GET /candidates` | | `Vec<`[`Candidate`]`>` |
//! | `POST /candidates` | [`CreateCandidateRequest`] | [`Tally`] |
//! | `POST /candidates/NAME/members` | [`Member`] | [`Tally`] |
//! | `GET /schedule` | | [`Schedule`] |
//! | `GET /events` | | a stream of [`EVENT_TALLY`], [`EVENT_CANDIDATES`] and [`EVENT_SCHEDULE`] events |
//! | any, refused | | [`ErrorBody`] |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The stream event carrying a [`Tally`], sent on every change.
pub const EVENT_TALLY: &str = "tally";
/// The stream event carrying every [`Candidate`], sent once a second.
pub const EVENT_CANDIDATES: &str = "candidates";
/// The stream event carrying the [`Schedule`], sent once a second.
pub const EVENT_SCHEDULE: &str = "schedule";

/// The policies `--policy` offers (a scenario file's `policy`, `election`
/// when it names none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// Round-robin: every task in arrival order, equal slices (like scx_rlfifo).
    Fifo,
    /// Weighted fair share by virtual runtime: honours nice (like scx_rustland).
    Vruntime,
    /// The CPU follows the votes: candidates' processes get CPU by the
    /// standing of the election (see --mode).
    #[default]
    Election,
}

impl PolicyName {
    /// As `--policy` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Fifo => "fifo",
            PolicyName::Vruntime => "vruntime",
            PolicyName::Election => "election",
        }
    }
}

/// How the election turns votes into CPU (`winner` when not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The leader's tasks go first; every other candidate gets a bounded
    /// minimum.
    #[default]
    Winner,
    /// CPU shares in proportion to votes + 1.
    Proportional,
}

impl Mode {
    /// As `--mode` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Winner => "winner",
            Mode::Proportional => "proportional",
        }
    }
}

/// How votes count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Counting {
    /// Each voter holds one current vote: voting again moves it to the
    /// new candidate, and a candidate's count is its voters.
    #[default]
    OnePerVoter,
    /// Every accepted vote adds one, whoever casts it.
    Cumulative,
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
    /// of a trusted uid (a process names itself).
    Comm { comm: String },
    /// Every process in this cgroup (v2 path, e.g. `/system.slice/foo`) or
    /// below it.
    Cgroup { path: String },
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

/// `POST /votes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    pub candidate: String,
    /// Who votes (any id the client keeps, e.g. one per phone).
    pub voter: String,
}

/// `POST /candidates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCandidateRequest {
    pub name: String,
    #[serde(default)]
    pub members: Vec<Member>,
}

/// Votes, leader and generation of a standing: the answer of every route
/// that changes or reports the count, and the [`EVENT_TALLY`] event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Votes by candidate.
    pub votes: BTreeMap<String, u64>,
    /// The candidate with the most votes; none on a tie for the most or
    /// with no votes.
    pub leader: Option<String>,
    /// Grows with every change of the ballot.
    pub generation: u64,
}

/// One candidate, in `GET /candidates` and the [`EVENT_CANDIDATES`] event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub name: String,
    pub votes: u64,
    /// Its membership rules.
    pub members: Vec<Member>,
    /// The processes the last scan found by those rules.
    pub live: Vec<LiveMember>,
}

/// `GET /schedule` and the [`EVENT_SCHEDULE`] event: who got the CPU over
/// the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The window's length.
    pub window_ms: u64,
    pub leader: Option<String>,
    /// By candidate.
    pub candidates: BTreeMap<String, Share>,
    /// By process: members of a candidate, and SCHED_EXT tasks of none.
    pub pids: BTreeMap<i32, PidShare>,
}

/// One process in a [`Schedule`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidShare {
    pub share: f64,
    pub cpu_ns: u64,
    /// Its candidate; none for a SCHED_EXT task of no candidate.
    pub candidate: Option<String>,
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The same, for a program (e.g. `rate_limited`).
    pub code: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_spelled_as_the_command_line_spells_them() {
        for (p, s) in [(PolicyName::Fifo, "fifo"), (PolicyName::Vruntime, "vruntime"), (PolicyName::Election, "election")] {
            assert_eq!(p.as_str(), s);
            assert_eq!(serde_json::to_string(&p).expect("serializes"), format!("\"{s}\""));
        }
        for (m, s) in [(Mode::Winner, "winner"), (Mode::Proportional, "proportional")] {
            assert_eq!(m.as_str(), s);
            assert_eq!(serde_json::to_string(&m).expect("serializes"), format!("\"{s}\""));
        }
        assert_eq!(serde_json::to_string(&Counting::OnePerVoter).expect("serializes"), "\"one-per-voter\"");
    }

    #[test]
    fn members_are_tagged_by_kind() {
        let m: Member = serde_json::from_str(r#"{"kind":"pid","pid":7}"#).expect("parses");
        assert_eq!(m, Member::Pid { pid: 7, start_time: None, boot_id: None });
        assert_eq!(serde_json::to_string(&m).expect("serializes"), r#"{"kind":"pid","pid":7}"#);
        let c: Member = serde_json::from_str(r#"{"kind":"comm","comm":"yes"}"#).expect("parses");
        assert_eq!(c, Member::Comm { comm: "yes".into() });
    }

    #[test]
    fn a_vote_with_an_unknown_field_is_refused() {
        assert!(serde_json::from_str::<VoteRequest>(r#"{"candidate":"a","voter":"b"}"#).is_ok());
        assert!(serde_json::from_str::<VoteRequest>(r#"{"candidate":"a","voter":"b","x":1}"#).is_err());
    }
}
