//! The ballot: candidates, votes, and the events that change them, as plain
//! data with no I/O. [`Event`] is what the votes journal stores; [`Ballot`]
//! checks and applies events; [`Store`] puts a ballot, its journal and the
//! published [`Standing`] together; [`load_candidates`] reads a candidates
//! file.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::election::view::{CandidateStanding, Member, Standing};

mod file;
pub(crate) mod store;

pub use file::{CandidatesFile, load_candidates, load_candidates_file};
pub use crate::election::procfs::proc_start_time;
pub use store::{Store, StoreError};
pub use scx_ballot_api::{Counting, Tally};

/// Most candidates a ballot holds.
pub const MAX_CANDIDATES: usize = 256;
/// Most membership rules one candidate holds.
pub const MAX_MEMBERS: usize = 256;
/// Longest candidate name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest voter id, in characters.
pub const MAX_VOTER_CHARS: usize = 128;
/// Most voters a one-vote-per-voter ballot remembers (their current votes).
pub const MAX_VOTERS: usize = 100_000;
/// Longest command name, in bytes (the kernel's `TASK_COMM_LEN` minus the NUL).
pub const MAX_COMM_BYTES: usize = 15;
/// Longest cgroup path, in bytes.
pub const MAX_CGROUP_BYTES: usize = 4096;

/// One change to the ballot: what a request asks for and what the journal
/// stores, one JSON object tagged by `"event"`, e.g.
/// `{"event":"vote","candidate":"blue","voter":"ana"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A vote of `voter` for `candidate` (one more, or moved there: see
    /// [`Counting`]).
    Vote { candidate: String, voter: String },
    /// A new candidate, with no votes, after the existing ones.
    CreateCandidate {
        name: String,
        #[serde(default)]
        members: Vec<Member>,
    },
    /// The candidate and its votes go away.
    DeleteCandidate { name: String },
    /// One more membership rule for `candidate`.
    AddMember { candidate: String, member: Member },
    /// Drop the rules of `candidate` matching `member`; a `pid` rule without
    /// `start_time` (or `boot_id`) matches that PID whatever its start time
    /// (or boot).
    RemoveMember { candidate: String, member: Member },
    /// Every candidate back to zero votes.
    ResetVotes,
}

/// Why an event cannot be applied. The ballot is unchanged after any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BallotError {
    /// Not 1..=64 characters of `[A-Za-z0-9_.-]`, or `.`/`..`.
    InvalidName(String),
    /// Not 1..=128 characters without control characters.
    InvalidVoter,
    /// A membership rule that cannot match anything (the reason says why).
    InvalidMember(String),
    UnknownCandidate(String),
    DuplicateCandidate(String),
    /// The same rule is already held by `candidate` (maybe another one).
    DuplicateMember {
        candidate: String,
        member: String,
    },
    /// Removing a rule the candidate does not have.
    AbsentMember {
        candidate: String,
        member: String,
    },
    /// A `pid` member naming no live process (or not the process of the
    /// given `start_time`).
    NoSuchProcess(i32),
    TooManyCandidates,
    TooManyMembers(String),
    /// A new voter, with [`MAX_VOTERS`] voters already holding a vote.
    TooManyVoters,
}

impl fmt::Display for BallotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BallotError::InvalidName(name) => write!(
                f,
                "invalid candidate name {name:?}: use 1 to {MAX_NAME_CHARS} characters of \
                 A-Z a-z 0-9 _ . - (not . or ..)"
            ),
            BallotError::InvalidVoter => write!(
                f,
                "invalid voter: use 1 to {MAX_VOTER_CHARS} characters without control characters"
            ),
            BallotError::InvalidMember(why) => write!(f, "invalid member: {why}"),
            BallotError::UnknownCandidate(name) => write!(f, "unknown candidate {name:?}"),
            BallotError::DuplicateCandidate(name) => {
                write!(f, "candidate {name:?} already exists")
            }
            BallotError::DuplicateMember { candidate, member } => {
                write!(f, "candidate {candidate:?} already has member {member}")
            }
            BallotError::AbsentMember { candidate, member } => {
                write!(f, "candidate {candidate:?} has no member {member}")
            }
            BallotError::NoSuchProcess(pid) => write!(f, "no process with pid {pid}"),
            BallotError::TooManyCandidates => {
                write!(f, "too many candidates (at most {MAX_CANDIDATES})")
            }
            BallotError::TooManyMembers(name) => {
                write!(f, "candidate {name:?} has too many members (at most {MAX_MEMBERS})")
            }
            BallotError::TooManyVoters => {
                write!(f, "too many voters (at most {MAX_VOTERS} hold a vote)")
            }
        }
    }
}

impl std::error::Error for BallotError {}

impl BallotError {
    /// A stable machine-readable name, used as the `code` of API errors.
    pub fn code(&self) -> &'static str {
        match self {
            BallotError::InvalidName(_) => "invalid_name",
            BallotError::InvalidVoter => "invalid_voter",
            BallotError::InvalidMember(_) => "invalid_member",
            BallotError::UnknownCandidate(_) => "unknown_candidate",
            BallotError::DuplicateCandidate(_) => "duplicate_candidate",
            BallotError::DuplicateMember { .. } => "duplicate_member",
            BallotError::AbsentMember { .. } => "absent_member",
            BallotError::NoSuchProcess(_) => "no_such_process",
            BallotError::TooManyCandidates => "too_many_candidates",
            BallotError::TooManyMembers(_) => "too_many_members",
            BallotError::TooManyVoters => "too_many_voters",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    name: String,
    members: Vec<Member>,
    votes: u64,
}

/// Candidates in creation order with their membership rules and vote counts.
///
/// With [`Counting::OnePerVoter`] (the default) the ballot remembers each
/// voter's current candidate, at most [`MAX_VOTERS`] of them; with
/// [`Counting::Cumulative`] votes are only counted, and who voted is not
/// kept (the server's rate limit keeps its own last-vote times). Deleting a
/// candidate drops its votes (its voters hold none until they vote again).
/// A member process that exits is the scheduler side's business: the
/// candidate, its rules and its votes stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ballot {
    candidates: Vec<Candidate>,
    counting: Counting,
    /// One vote per voter: each voter's current candidate.
    voters: std::collections::HashMap<String, std::sync::Arc<str>>,
    /// Voters held by the ballot this one checks for (see
    /// [`Ballot::checker`]) and not in `voters`.
    voters_elsewhere: usize,
}

impl Ballot {
    pub fn new() -> Self {
        Ballot::default()
    }

    /// An empty ballot that counts votes as `counting` says.
    pub fn counting(counting: Counting) -> Self {
        Ballot { counting, ..Ballot::default() }
    }

    /// A copy that checks events as this ballot would, for changes queued
    /// behind others not applied yet, without copying who voted for whom
    /// (a vote's check does not depend on it; near [`MAX_VOTERS`] it may
    /// take a known voter for a new one). Its vote counts are not to be
    /// read.
    pub fn checker(&self) -> Ballot {
        Ballot {
            candidates: self.candidates.clone(),
            counting: self.counting,
            voters: Default::default(),
            voters_elsewhere: self.voters.len() + self.voters_elsewhere,
        }
    }

    /// Whether `event` would apply, without changing anything.
    pub fn check(&self, event: &Event) -> Result<(), BallotError> {
        match event {
            Event::Vote { candidate, voter } => {
                validate_voter(voter)?;
                self.find(candidate)?;
                if self.counting == Counting::OnePerVoter
                    && !self.voters.contains_key(voter)
                    && self.voters.len() + self.voters_elsewhere >= MAX_VOTERS
                {
                    return Err(BallotError::TooManyVoters);
                }
            }
            Event::CreateCandidate { name, members } => {
                validate_name(name)?;
                if self.position(name).is_some() {
                    return Err(BallotError::DuplicateCandidate(name.clone()));
                }
                if self.candidates.len() >= MAX_CANDIDATES {
                    return Err(BallotError::TooManyCandidates);
                }
                if members.len() > MAX_MEMBERS {
                    return Err(BallotError::TooManyMembers(name.clone()));
                }
                for (i, member) in members.iter().enumerate() {
                    validate_member(member)?;
                    if members[..i].iter().any(|m| same_rule(m, member)) {
                        return Err(duplicate(name, member));
                    }
                    self.check_not_held(member)?;
                }
            }
            Event::DeleteCandidate { name } => {
                self.find(name)?;
            }
            Event::AddMember { candidate, member } => {
                let c = self.find(candidate)?;
                validate_member(member)?;
                self.check_not_held(member)?;
                if c.members.len() >= MAX_MEMBERS {
                    return Err(BallotError::TooManyMembers(candidate.clone()));
                }
            }
            Event::RemoveMember { candidate, member } => {
                let c = self.find(candidate)?;
                if !c.members.iter().any(|m| matches_rule(m, member)) {
                    return Err(BallotError::AbsentMember {
                        candidate: candidate.clone(),
                        member: describe(member),
                    });
                }
            }
            Event::ResetVotes => {}
        }
        Ok(())
    }

    /// Applies `event` when [`Ballot::check`] accepts it; otherwise returns
    /// its error and changes nothing.
    pub fn apply(&mut self, event: &Event) -> Result<(), BallotError> {
        self.check(event)?;
        match event {
            Event::Vote { candidate, voter } => {
                if self.counting == Counting::OnePerVoter {
                    let name: std::sync::Arc<str> = std::sync::Arc::from(candidate.as_str());
                    if let Some(before) = self.voters.insert(voter.clone(), name)
                        && let Some(i) = self.position(&before)
                    {
                        let c = &mut self.candidates[i];
                        c.votes = c.votes.saturating_sub(1);
                    }
                }
                let c = self.find_mut(candidate);
                c.votes = c.votes.saturating_add(1);
            }
            Event::CreateCandidate { name, members } => self.candidates.push(Candidate {
                name: name.clone(),
                members: members.clone(),
                votes: 0,
            }),
            Event::DeleteCandidate { name } => {
                self.candidates.retain(|c| c.name != *name);
                self.voters.retain(|_, c| **c != **name);
            }
            Event::AddMember { candidate, member } => {
                self.find_mut(candidate).members.push(member.clone())
            }
            Event::RemoveMember { candidate, member } => {
                self.find_mut(candidate).members.retain(|m| !matches_rule(m, member))
            }
            Event::ResetVotes => {
                self.candidates.iter_mut().for_each(|c| c.votes = 0);
                self.voters.clear();
            }
        }
        Ok(())
    }

    /// Votes per candidate.
    pub fn tally(&self) -> BTreeMap<String, u64> {
        self.candidates.iter().map(|c| (c.name.clone(), c.votes)).collect()
    }

    /// The leader by the rule of [`leader`].
    pub fn leader(&self) -> Option<&str> {
        leader(self.candidates.iter().map(|c| (c.name.as_str(), c.votes)))
    }

    /// Whether a candidate of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The membership rules of `name`, if it exists.
    pub fn members(&self, name: &str) -> Option<&[Member]> {
        self.find(name).ok().map(|c| c.members.as_slice())
    }

    /// The snapshot the scheduler side reads.
    pub fn standing(&self, generation: u64) -> Standing {
        Standing {
            generation,
            candidates: self
                .candidates
                .iter()
                .map(|c| CandidateStanding {
                    name: c.name.clone(),
                    votes: c.votes,
                    members: c.members.clone(),
                })
                .collect(),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.candidates.iter().position(|c| c.name == name)
    }

    fn find(&self, name: &str) -> Result<&Candidate, BallotError> {
        self.position(name)
            .map(|i| &self.candidates[i])
            .ok_or_else(|| BallotError::UnknownCandidate(name.to_owned()))
    }

    fn find_mut(&mut self, name: &str) -> &mut Candidate {
        let i = self.position(name).expect("apply runs only after check found the candidate");
        &mut self.candidates[i]
    }

    fn check_not_held(&self, member: &Member) -> Result<(), BallotError> {
        for c in &self.candidates {
            if c.members.iter().any(|m| same_rule(m, member)) {
                return Err(duplicate(&c.name, member));
            }
        }
        Ok(())
    }
}

/// The leader among `(name, votes)` pairs: the candidate with the most
/// votes, provided it has at least one; among candidates with equally many
/// votes, the one whose name sorts first in byte order (so `Blue` before
/// `blue`, `blue` before `green`, `10` before `9`). With no votes at all
/// there is no leader.
pub fn leader<'a>(tally: impl IntoIterator<Item = (&'a str, u64)>) -> Option<&'a str> {
    tally
        .into_iter()
        .filter(|&(_, votes)| votes > 0)
        .min_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_bytes().cmp(b.0.as_bytes())))
        .map(|(name, _)| name)
}

/// The leader of a published standing, by the rule of [`leader`]. The
/// scheduler side should use this rather than re-deriving the tie-break.
pub fn standing_leader(standing: &Standing) -> Option<&str> {
    leader(standing.candidates.iter().map(|c| (c.name.as_str(), c.votes)))
}

/// The [`Tally`] of a standing.
pub fn tally_of(standing: &Standing) -> Tally {
    Tally {
        votes: standing.candidates.iter().map(|c| (c.name.clone(), c.votes)).collect(),
        leader: standing_leader(standing).map(str::to_owned),
        generation: standing.generation,
    }
}

/// A candidate name: 1..=64 characters of `[A-Za-z0-9_.-]`, and not `.` or
/// `..` (which would not survive in a URL path).
pub fn validate_name(name: &str) -> Result<(), BallotError> {
    let ok = (1..=MAX_NAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name != "."
        && name != "..";
    if ok { Ok(()) } else { Err(BallotError::InvalidName(name.to_owned())) }
}

/// A voter id: 1..=128 characters, none of them a control character.
pub fn validate_voter(voter: &str) -> Result<(), BallotError> {
    let n = voter.chars().count();
    if (1..=MAX_VOTER_CHARS).contains(&n) && !voter.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(BallotError::InvalidVoter)
    }
}

/// Longest boot id, in bytes (the kernel's is a 36-character UUID).
pub const MAX_BOOT_ID_BYTES: usize = 64;

/// A membership rule that can match: pid > 0 and a boot id, if any, of
/// 1..=64 characters of `0-9 a-f -`; comm of 1..=15 bytes without NUL; a
/// cgroup path starting with `/`, at most 4096 bytes, without NUL.
pub fn validate_member(member: &Member) -> Result<(), BallotError> {
    let why = match member {
        Member::Pid { pid, .. } if *pid <= 0 => format!("pid must be positive, not {pid}"),
        Member::Pid { boot_id: Some(id), .. }
            if id.is_empty()
                || id.len() > MAX_BOOT_ID_BYTES
                || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') =>
        {
            format!("boot_id must be 1 to {MAX_BOOT_ID_BYTES} characters of 0-9 a-f -")
        }
        Member::Comm { comm } if comm.is_empty() || comm.len() > MAX_COMM_BYTES => {
            format!("comm must be 1 to {MAX_COMM_BYTES} bytes, not {}", comm.len())
        }
        Member::Comm { comm } if comm.contains('\0') => "comm contains a NUL byte".to_owned(),
        Member::Cgroup { path } if !path.starts_with('/') => {
            format!("cgroup path {path:?} must start with /")
        }
        Member::Cgroup { path } if path.len() > MAX_CGROUP_BYTES => {
            format!("cgroup path longer than {MAX_CGROUP_BYTES} bytes")
        }
        Member::Cgroup { path } if path.contains('\0') => {
            "cgroup path contains a NUL byte".to_owned()
        }
        _ => return Ok(()),
    };
    Err(BallotError::InvalidMember(why))
}

/// Whether `rule` is matched by `query`: equal, except that a `pid` query
/// without `start_time` (or `boot_id`) matches that PID whatever its start
/// time (or boot).
fn matches_rule(rule: &Member, query: &Member) -> bool {
    match (rule, query) {
        (
            Member::Pid { pid: a, start_time: ta, boot_id: ba },
            Member::Pid { pid: b, start_time: tb, boot_id: bb },
        ) => a == b && (tb.is_none() || ta == tb) && (bb.is_none() || ba == bb),
        _ => rule == query,
    }
}

/// Whether two rules would select the same processes.
fn same_rule(a: &Member, b: &Member) -> bool {
    matches_rule(a, b) || matches_rule(b, a)
}

fn duplicate(candidate: &str, member: &Member) -> BallotError {
    BallotError::DuplicateMember { candidate: candidate.to_owned(), member: describe(member) }
}

/// A member as a short phrase for messages.
pub fn describe(member: &Member) -> String {
    match member {
        Member::Pid { pid, start_time: Some(t), .. } => format!("pid {pid} (start time {t})"),
        Member::Pid { pid, start_time: None, .. } => format!("pid {pid}"),
        Member::Comm { comm } => format!("comm {comm:?}"),
        Member::Cgroup { path } => format!("cgroup {path:?}"),
    }
}

#[cfg(test)]
mod tests;
