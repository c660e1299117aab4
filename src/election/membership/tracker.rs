//! The tracker thread: scans `/proc`, publishes the membership for the
//! policy and, once per window, the live members and CPU shares for the
//! HTTP API; reports `pid` members whose process is gone.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::rules::{ProcFacts, SCHED_EXT_POLICY, Trust, match_candidate};
use super::shares::Shares;
use super::{Membership, Nudge, SCAN_GAP, SCAN_INTERVAL, Seen};
use crate::election::procfs::{Environ, ProcInfo, parse_cgroup, parse_stat, parse_status, read_environ};
use crate::election::view::{Board, LiveMember, Member, Observations, Standing};

/// How often the tracker checks whether the membership rules changed.
const RULES_CHECK: Duration = Duration::from_millis(50);

/// What the scan remembers of environments between scans.
#[derive(Debug, Default)]
pub(super) struct EnvState {
    /// `SCX_BALLOT_CANDIDATE` of processes already read, by (pid, start,
    /// comm). The comm is part of the key because it changes at exec: a
    /// process seen between `scx_ballot exec` switching to SCHED_EXT and
    /// its exec of the command still has the old environment (and during
    /// the exec an empty one, which is not cached at once).
    cache: HashMap<(i32, u64, String), Option<String>>,
    /// Processes whose environment was empty or unreadable in the last
    /// scan: so again, it is no exec but an empty (or unreadable) one.
    empty_last: HashSet<(i32, u64, String)>,
    /// Those of this scan.
    empty_now: HashSet<(i32, u64, String)>,
}

impl EnvState {
    /// Ends a scan that saw the processes `seen` (by pid and start time).
    pub(super) fn end_scan(&mut self, seen: &HashSet<(i32, u64)>) {
        self.cache.retain(|k, _| seen.contains(&(k.0, k.1)));
        self.empty_last = std::mem::take(&mut self.empty_now);
    }
}

/// [`ProcFacts`] of a process under a `/proc` folder.
pub(super) struct ProcDir<'a> {
    pub(super) dir: PathBuf,
    pub(super) key: (i32, u64, String),
    pub(super) env: &'a mut EnvState,
    /// Its environment was empty, for the first time: maybe in the middle
    /// of an exec, so not classified yet.
    pub(super) mid_exec: bool,
}

impl ProcFacts for ProcDir<'_> {
    fn cgroup(&mut self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("cgroup"))
            .ok()
            .and_then(|t| parse_cgroup(&t).map(str::to_string))
    }

    fn marker(&mut self) -> Option<String> {
        if let Some(found) = self.env.cache.get(&self.key) {
            return found.clone();
        }
        let found = match read_environ(&self.dir) {
            Environ::Read(found) => found,
            // Empty or unreadable in two scans in a row: an empty
            // environment, or one this scan may not read. Still not
            // cached: two scans asked for at once (a nudge) can both fall
            // inside one exec, which under emulation takes milliseconds,
            // and a member cached then stayed unaffiliated for good (one
            // of a candidate's workers in a class of its own, at its own
            // minimum share, a run in five or eight). Read again next scan.
            Environ::Empty | Environ::Unreadable if self.env.empty_last.contains(&self.key) => {
                self.env.empty_now.insert(self.key.clone());
                return None;
            }
            // Once only, it may be a read in the middle of an exec (the
            // memory being switched): the process is left out of this scan.
            Environ::Empty | Environ::Unreadable => {
                self.env.empty_now.insert(self.key.clone());
                self.mid_exec = true;
                return None;
            }
        };
        self.env.cache.insert(self.key.clone(), found.clone());
        found
    }

    fn uids(&mut self) -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(self.dir.join("status")).ok()?;
        parse_status(&text).map(|s| (s.ruid, s.euid))
    }
}

/// One process of a `/proc` folder as the scan sees it: what its `stat`
/// says, its candidate, and whether it is in the middle of an exec (then no
/// member yet). `None` when it has no readable `stat` (it exited).
pub(super) fn classify<'s>(
    proc_dir: &Path,
    pid: i32,
    standing: &'s Standing,
    trust: &Trust,
    env: &mut EnvState,
) -> Option<(ProcInfo, Option<&'s str>, bool)> {
    let (comm, start_time, policy) = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .as_deref()
        .and_then(parse_stat)?;
    let info = ProcInfo {
        pid,
        comm,
        start_time,
        policy,
    };
    let mut facts = ProcDir {
        dir: proc_dir.to_path_buf(),
        key: (pid, start_time, info.comm.clone()),
        env,
        mid_exec: false,
    };
    let found = match_candidate(standing, trust, &info, &mut facts);
    let mid_exec = facts.mid_exec;
    Some((info, found, mid_exec))
}

/// The tracker thread and what it publishes.
pub struct Tracker {
    pub membership: Arc<ArcSwap<Membership>>,
    /// Asks for a scan sooner.
    pub nudge: Arc<Nudge>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Called with (candidate, member) when a `pid` member's process is gone.
pub type OnExit = Box<dyn Fn(&str, &Member) + Send>;

impl Tracker {
    /// Starts the tracker; `trust` says who may join by comm or exec
    /// marker, and which boot's `pid` members count.
    pub fn spawn(board: Arc<Board>, trust: Trust, on_exit: OnExit) -> std::io::Result<Tracker> {
        let membership = Arc::new(ArcSwap::from_pointee(Membership::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = ScanState {
            board,
            membership: membership.clone(),
            trust,
            env: EnvState::default(),
            shares: Shares::new(),
            on_exit,
            reported_gone: BTreeSet::new(),
        };
        let nudge = Arc::new(Nudge::default());
        let (flag, asked) = (stop.clone(), nudge.clone());
        let thread = std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || {
                let mut last_scan: Option<Instant> = None;
                let mut scanned_rules: Vec<Rules> = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    let standing = state.board.standing.load_full();
                    let since = last_scan.map_or(Duration::MAX, |at| at.elapsed());
                    let due = since >= SCAN_INTERVAL
                        || (since >= SCAN_GAP
                            && (asked.pending() || !same_rules(&standing, &scanned_rules)));
                    if due {
                        scanned_rules = rules_of(&standing);
                        asked.take();
                        state.scan();
                        last_scan = Some(Instant::now());
                    } else if asked.pending() {
                        // Asked too soon after the last scan: wait out the gap.
                        std::thread::sleep(SCAN_GAP.saturating_sub(since));
                    } else {
                        asked.wait(RULES_CHECK);
                    }
                }
            })?;
        Ok(Tracker {
            membership,
            nudge,
            stop,
            thread: Some(thread),
        })
    }
}

/// What the membership rules of one candidate are (votes left out).
type Rules = (String, Vec<Member>);

/// Whether `standing` has the membership rules `rules` (no copy made: it
/// runs every [`RULES_CHECK`]).
fn same_rules(standing: &Standing, rules: &[Rules]) -> bool {
    standing.candidates.len() == rules.len()
        && standing
            .candidates
            .iter()
            .zip(rules)
            .all(|(c, (name, members))| c.name == *name && c.members == *members)
}

fn rules_of(standing: &Standing) -> Vec<Rules> {
    standing
        .candidates
        .iter()
        .map(|c| (c.name.clone(), c.members.clone()))
        .collect()
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.nudge.ask();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct ScanState {
    board: Arc<Board>,
    membership: Arc<ArcSwap<Membership>>,
    trust: Trust,
    env: EnvState,
    shares: Shares,
    on_exit: OnExit,
    /// `pid` members already reported as gone.
    reported_gone: BTreeSet<(String, Member)>,
}

impl ScanState {
    fn scan(&mut self) {
        let standing = self.board.standing.load_full();
        let mut seen_procs = HashMap::new();
        let mut members: std::collections::BTreeMap<String, Vec<LiveMember>> = standing
            .candidates
            .iter()
            .map(|c| (c.name.clone(), Vec::new()))
            .collect();
        let mut watched: Vec<(ProcInfo, Option<Arc<str>>)> = Vec::new();
        let mut names: HashMap<&str, Arc<str>> = HashMap::new();
        let mut seen = HashSet::new();

        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let proc_dir = entry.path();
            let Some((info, found, mid_exec)) =
                classify(&proc_dir, pid, &standing, &self.trust, &mut self.env)
            else {
                continue;
            };
            seen.insert((pid, info.start_time));
            let name = found.map(|n| names.entry(n).or_insert_with(|| Arc::from(n)).clone());
            // Left out while in the middle of an exec (it is then no
            // member yet): its tasks ask for another scan.
            if !mid_exec {
                let seen = Seen {
                    candidate: name.clone(),
                    comm: info.comm.clone(),
                    sched_ext: info.policy == SCHED_EXT_POLICY,
                };
                seen_procs.insert(pid, seen);
            }
            if let Some(list) = name.as_ref().and_then(|n| members.get_mut(&**n)) {
                list.push(LiveMember { pid, comm: info.comm.clone() });
            }
            if name.is_some() || info.policy == SCHED_EXT_POLICY {
                watched.push((info, name));
            }
        }
        self.env.end_scan(&seen);
        for c in &standing.candidates {
            for rule in &c.members {
                if matches!(rule, Member::Pid { .. }) {
                    let alive = pid_member_alive(rule, &seen, self.trust.boot_id.as_deref());
                    if !alive && self.reported_gone.insert((c.name.clone(), rule.clone())) {
                        (self.on_exit)(&c.name, rule);
                    }
                }
            }
        }
        self.membership.store(Arc::new(Membership {
            seen: seen_procs,
        }));

        let Some(window) = self.shares.measure(&standing, &watched) else {
            return;
        };
        self.board.observations.store(Arc::new(Observations {
            members,
            candidate_shares: window.candidates,
            pid_shares: window.pids,
            window_ms: window.length.as_millis() as u64,
        }));
    }
}

/// Whether the process of `pid` member `rule` is among `seen` (pid, start
/// time) in boot `boot_id`: a member recorded in another boot is gone.
pub(super) fn pid_member_alive(rule: &Member, seen: &HashSet<(i32, u64)>, boot_id: Option<&str>) -> bool {
    let Member::Pid {
        pid,
        start_time,
        boot_id: recorded,
    } = rule
    else {
        return true;
    };
    recorded.as_deref().is_none_or(|b| boot_id == Some(b))
        && match start_time {
            Some(t) => seen.contains(&(*pid, *t)),
            None => seen.iter().any(|(p, _)| p == pid),
        }
}
