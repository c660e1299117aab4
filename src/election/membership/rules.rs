//! The membership rules, without I/O: who may join by a rule the process
//! controls itself ([`Trust`]), and which candidate a process belongs to
//! ([`match_candidate`]), given what `/proc` says of it ([`ProcFacts`]).

use std::collections::{BTreeSet, HashMap};

use crate::election::procfs::{ProcInfo, current_boot_id, parse_status};
use crate::election::view::{Member, Standing};

/// The scheduling policy number of SCHED_EXT in /proc/PID/stat.
pub(super) const SCHED_EXT_POLICY: i64 = crate::sched::SCHED_EXT as i64;

/// Whose processes may join a candidate by a rule the process controls
/// itself (its command name, or the exec marker in its environment); and
/// the boot whose `pid` members are genuine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Uids trusted for every candidate: the one scx_ballot runs as, and
    /// `--member-uid`.
    pub uids: BTreeSet<u32>,
    /// Uids trusted for one candidate only, by candidate name (the `uids`
    /// of its entry in the candidates file).
    pub per_candidate: HashMap<String, BTreeSet<u32>>,
    /// This boot's id; a `pid` member recorded in another boot matches
    /// nothing. `None` when it cannot be read: then only members recorded
    /// without a boot id match.
    pub boot_id: Option<String>,
}

impl Trust {
    /// The uid this process runs as (effective), plus `extra`, for every
    /// candidate; `per_candidate` for one each; this boot's id.
    pub fn new(
        extra: impl IntoIterator<Item = u32>,
        per_candidate: impl IntoIterator<Item = (String, Vec<u32>)>,
    ) -> std::io::Result<Trust> {
        let own = std::fs::read_to_string("/proc/self/status")?;
        let own = parse_status(&own)
            .ok_or_else(|| std::io::Error::other("no Uid line in /proc/self/status"))?
            .euid;
        let mut per: HashMap<String, BTreeSet<u32>> = HashMap::new();
        for (name, uids) in per_candidate {
            per.entry(name).or_default().extend(uids);
        }
        Ok(Trust {
            uids: std::iter::once(own).chain(extra).collect(),
            per_candidate: per,
            boot_id: current_boot_id(),
        })
    }

    /// Whether a process of real uid `ruid` and effective uid `euid` may
    /// join `candidate` by its command name or its exec marker.
    pub fn allows(&self, candidate: &str, (ruid, euid): (u32, u32)) -> bool {
        let ok = |uid: u32| {
            self.uids.contains(&uid)
                || self
                    .per_candidate
                    .get(candidate)
                    .is_some_and(|set| set.contains(&uid))
        };
        ok(ruid) && ok(euid)
    }
}

/// Whether `path` is `rule` or below it.
pub fn cgroup_within(path: &str, rule: &str) -> bool {
    let rule = rule.trim_end_matches('/');
    rule.is_empty()
        || path == rule
        || path
            .strip_prefix(rule)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What matching reads of a process beyond its `stat`, when a rule needs
/// it (each costs a file read).
pub trait ProcFacts {
    /// Its cgroup v2 path.
    fn cgroup(&mut self) -> Option<String>;
    /// The candidate its exec marker names.
    fn marker(&mut self) -> Option<String>;
    /// Its real and effective uids.
    fn uids(&mut self) -> Option<(u32, u32)>;
}

/// The candidate a process belongs to under `standing`'s rules, by the
/// first matching rule of the first matching candidate. A `comm` rule and
/// the exec marker count only for a process `trust` allows for that
/// candidate; a `pid` rule only in the boot it was recorded in.
pub fn match_candidate<'s>(
    standing: &'s Standing,
    trust: &Trust,
    p: &ProcInfo,
    facts: &mut dyn ProcFacts,
) -> Option<&'s str> {
    let mut cg: Option<Option<String>> = None;
    let mut uids: Option<Option<(u32, u32)>> = None;
    let mut trusted = |facts: &mut dyn ProcFacts, candidate: &str| {
        uids.get_or_insert_with(|| facts.uids())
            .is_some_and(|ids| trust.allows(candidate, ids))
    };
    for c in &standing.candidates {
        for rule in &c.members {
            let hit = match rule {
                Member::Pid {
                    pid,
                    start_time,
                    boot_id,
                } => {
                    *pid == p.pid
                        && start_time.is_none_or(|t| t == p.start_time)
                        && boot_id
                            .as_deref()
                            .is_none_or(|b| trust.boot_id.as_deref() == Some(b))
                }
                Member::Comm { comm } => *comm == p.comm && trusted(facts, &c.name),
                Member::Cgroup { path } => cg
                    .get_or_insert_with(|| facts.cgroup())
                    .as_deref()
                    .is_some_and(|have| cgroup_within(have, path)),
            };
            if hit {
                return Some(&c.name);
            }
        }
    }
    if p.policy == SCHED_EXT_POLICY
        && let Some(name) = facts.marker()
        && let Some(c) = standing.candidates.iter().find(|c| c.name == name)
        && trusted(facts, &c.name)
    {
        return Some(&c.name);
    }
    None
}
