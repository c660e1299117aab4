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
//! - `pid`: that process, all its threads, as long as its start time is the
//!   one recorded when it was added (a recycled PID matches nothing);
//! - `comm`: its command name;
//! - `cgroup`: its cgroup v2 path is that path or below it;
//! - or it is a SCHED_EXT task started by `scx_ballot exec --candidate NAME`,
//!   which leaves `SCX_BALLOT_CANDIDATE=NAME` in its environment (inherited
//!   by its children).
//!
//! SCHED_EXT tasks that match no candidate are "unaffiliated" (see the
//! election policy for how they are scheduled). A `pid` member whose process
//! has exited is reported once to the `on_exit` callback, which drops it from
//! the ballot; the candidate and its votes stay.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::bpf::QueuedTask;
use crate::election::view::{Board, LiveMember, Member, Observations, Share, Standing};
use crate::stats::Metrics;

/// How often `/proc` is scanned for members when nothing asks sooner.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest time between two scans.
pub const SCAN_GAP: Duration = Duration::from_millis(200);
/// How often the tracker checks whether the membership rules changed.
const RULES_CHECK: Duration = Duration::from_millis(50);
/// The window CPU shares are measured over.
pub const SHARE_WINDOW: Duration = Duration::from_secs(1);
/// The environment variable `scx_ballot exec --candidate` sets.
pub const CANDIDATE_ENV: &str = "SCX_BALLOT_CANDIDATE";

/// The scheduling policy number of SCHED_EXT in /proc/PID/stat.
const SCHED_EXT_POLICY: i64 = 7;

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

/// How the policy asks the tracker for a scan sooner than planned.
#[derive(Debug, Default)]
pub struct Nudge {
    asked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Nudge {
    /// Asks for a scan; cheap when one is already asked for.
    pub fn ask(&self) {
        if !self.asked.swap(true, Ordering::AcqRel) {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_one();
        }
    }

    /// Waits up to `timeout` for a request (it stays pending until
    /// [`Nudge::take`]).
    fn wait(&self, timeout: Duration) {
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.pending() {
            let _ = self.wake.wait_timeout(guard, timeout);
        }
    }

    pub(crate) fn pending(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    fn take(&self) {
        self.asked.store(false, Ordering::Release);
    }
}

/// What one scan learnt about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub comm: String,
    pub start_time: u64,
    pub policy: i64,
}

/// Parses `/proc/PID/stat`: (comm, start time, scheduling policy).
pub fn parse_stat(text: &str) -> Option<(String, u64, i64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the comm start at field 3 (state).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let start_time = rest.get(22 - 3)?.parse().ok()?;
    let policy = rest.get(41 - 3)?.parse().ok()?;
    Some((comm, start_time, policy))
}

/// The cgroup v2 path in a `/proc/PID/cgroup` text.
pub fn parse_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
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

/// The value of `SCX_BALLOT_CANDIDATE` in a `/proc/PID/environ` blob.
pub fn candidate_from_environ(environ: &[u8]) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        entry
            .strip_prefix(CANDIDATE_ENV)?
            .strip_prefix('=')
            .map(str::to_string)
    })
}

/// The candidate a process belongs to under `standing`'s rules, by the
/// first matching rule of the first matching candidate. `cgroup` and
/// `env_candidate` are looked up lazily (they cost a file read each).
pub fn match_candidate<'s>(
    standing: &'s Standing,
    p: &ProcInfo,
    cgroup: &mut dyn FnMut() -> Option<String>,
    env_candidate: &mut dyn FnMut() -> Option<String>,
) -> Option<&'s str> {
    let mut cg: Option<Option<String>> = None;
    for c in &standing.candidates {
        for rule in &c.members {
            let hit = match rule {
                Member::Pid { pid, start_time } => {
                    *pid == p.pid && start_time.is_none_or(|t| t == p.start_time)
                }
                Member::Comm { comm } => *comm == p.comm,
                Member::Cgroup { path } => cg
                    .get_or_insert_with(&mut *cgroup)
                    .as_deref()
                    .is_some_and(|have| cgroup_within(have, path)),
            };
            if hit {
                return Some(&c.name);
            }
        }
    }
    if p.policy == SCHED_EXT_POLICY
        && let Some(name) = env_candidate()
    {
        return standing
            .candidates
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.name.as_str());
    }
    None
}

/// Shares of CPU time over a window: `delta_ns / (window_ns * cpus)`.
pub fn share_of(delta_ns: u64, window: Duration, cpus: u64) -> Share {
    let total = window.as_nanos() as f64 * cpus.max(1) as f64;
    Share {
        share: if total > 0.0 {
            delta_ns as f64 / total
        } else {
            0.0
        },
        cpu_ns: delta_ns,
    }
}

/// The tracker thread and what it publishes.
pub struct Tracker {
    pub membership: Arc<ArcSwap<Membership>>,
    /// Asks for a scan sooner.
    pub nudge: Arc<Nudge>,
    /// The driver loop writes the framework counters here.
    pub metrics: Arc<ArcSwap<Metrics>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Called with (candidate, member) when a `pid` member's process is gone.
pub type OnExit = Box<dyn Fn(&str, &Member) + Send>;

impl Tracker {
    pub fn spawn(board: Arc<Board>, on_exit: OnExit) -> std::io::Result<Tracker> {
        let membership = Arc::new(ArcSwap::from_pointee(Membership::default()));
        let metrics = Arc::new(ArcSwap::from_pointee(Metrics::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = ScanState {
            board,
            membership: membership.clone(),
            metrics: metrics.clone(),
            env_cache: HashMap::new(),
            last_cpu: HashMap::new(),
            last_share_at: Instant::now(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
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
            metrics,
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
    metrics: Arc<ArcSwap<Metrics>>,
    /// `SCX_BALLOT_CANDIDATE` of processes already read, by (pid, start,
    /// comm). The comm is part of the key because it changes at exec: a
    /// process seen between `scx_ballot exec` switching to SCHED_EXT and
    /// its exec of the command still has the old environment (and during
    /// the exec an empty one, which is never cached).
    env_cache: HashMap<(i32, u64, String), Option<String>>,
    /// CPU time at the start of the current window, by (pid, start).
    last_cpu: HashMap<(i32, u64), u64>,
    last_share_at: Instant,
    cpus: u64,
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
            let Some((comm, start_time, policy)) = std::fs::read_to_string(proc_dir.join("stat"))
                .ok()
                .as_deref()
                .and_then(parse_stat)
            else {
                continue;
            };
            let info = ProcInfo {
                pid,
                comm,
                start_time,
                policy,
            };
            seen.insert((pid, start_time));
            let env_cache = &mut self.env_cache;
            let mut mid_exec = false;
            let found = match_candidate(
                &standing,
                &info,
                &mut || {
                    std::fs::read_to_string(proc_dir.join("cgroup"))
                        .ok()
                        .and_then(|t| parse_cgroup(&t).map(str::to_string))
                },
                &mut || {
                    let key = (pid, start_time, info.comm.clone());
                    if let Some(found) = env_cache.get(&key) {
                        return found.clone();
                    }
                    let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
                    let found = candidate_from_environ(&environ);
                    // An empty environment is a process in the middle of an
                    // exec (its new one is not set up yet): ask again later.
                    if environ.is_empty() {
                        mid_exec = true;
                    } else {
                        env_cache.insert(key, found.clone());
                    }
                    found
                },
            );
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
        self.env_cache.retain(|k, _| seen.contains(&(k.0, k.1)));
        for c in &standing.candidates {
            for rule in &c.members {
                if let Member::Pid { pid, start_time } = rule {
                    let alive = match start_time {
                        Some(t) => seen.contains(&(*pid, *t)),
                        None => seen.iter().any(|(p, _)| p == pid),
                    };
                    if !alive && self.reported_gone.insert((c.name.clone(), rule.clone())) {
                        (self.on_exit)(&c.name, rule);
                    }
                }
            }
        }
        self.membership.store(Arc::new(Membership {
            seen: seen_procs,
        }));

        let elapsed = self.last_share_at.elapsed();
        if elapsed < SHARE_WINDOW {
            return;
        }
        self.last_share_at = Instant::now();
        let mut candidate_shares: std::collections::BTreeMap<String, Share> = standing
            .candidates
            .iter()
            .map(|c| (c.name.clone(), Share::default()))
            .collect();
        let mut pid_shares = std::collections::BTreeMap::new();
        let mut now_cpu = HashMap::new();
        for (info, name) in &watched {
            let key = (info.pid, info.start_time);
            let cpu = process_cpu_ns(&Path::new("/proc").join(info.pid.to_string()));
            now_cpu.insert(key, cpu);
            let delta = self
                .last_cpu
                .get(&key)
                .map_or(0, |&before| cpu.saturating_sub(before));
            pid_shares.insert(info.pid, share_of(delta, elapsed, self.cpus));
            if let Some(name) = name {
                let entry = candidate_shares.entry(name.to_string()).or_default();
                entry.cpu_ns += delta;
            }
        }
        for share in candidate_shares.values_mut() {
            *share = share_of(share.cpu_ns, elapsed, self.cpus);
        }
        self.last_cpu = now_cpu;
        self.board.observations.store(Arc::new(Observations {
            members,
            candidate_shares,
            pid_shares,
            window_ms: elapsed.as_millis() as u64,
            metrics: **self.metrics.load(),
        }));
    }
}

/// CPU time of all threads of a process (ns), from their schedstat.
fn process_cpu_ns(proc_dir: &Path) -> u64 {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::view::CandidateStanding;

    const STAT: &str = "4242 (stress ng) R 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 \
        987654 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 7 0 0 0";

    #[test]
    fn a_task_asks_for_a_scan_when_its_process_is_not_as_seen() {
        use crate::sched::fake::task;
        let mut m = Membership::default();
        let mut t = task(10, 100, 0, 1); // comm "burn", SCHED_EXT
        assert!(m.lookup(&t).1, "a process the scan never saw");
        m.seen.insert(
            10,
            Seen {
                candidate: None,
                comm: "burn".into(),
                sched_ext: true,
            },
        );
        assert!(!m.lookup(&t).1);
        m.seen.insert(
            10,
            Seen {
                candidate: None,
                comm: "sh".into(),
                sched_ext: true,
            },
        );
        assert!(m.lookup(&t).1, "it exec'd since");
        // Threads may name themselves: only the main thread's comm counts.
        t.pid = 11;
        assert!(!m.lookup(&t).1);
        m.seen.insert(
            10,
            Seen {
                candidate: None,
                comm: "burn".into(),
                sched_ext: false,
            },
        );
        assert!(m.lookup(&t).1, "it switched to SCHED_EXT since");
    }

    #[test]
    fn a_nudge_stays_pending_until_taken() {
        let n = Nudge::default();
        assert!(!n.pending());
        n.ask();
        n.ask();
        let t = Instant::now();
        n.wait(Duration::from_secs(5));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a pending ask ends the wait at once"
        );
        assert!(n.pending());
        n.take();
        assert!(!n.pending());
    }

    #[test]
    fn stat_fields_are_read_after_the_comm() {
        assert_eq!(parse_stat(STAT), Some(("stress ng".into(), 987654, 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cgroup_rules_match_the_path_and_below_only() {
        assert_eq!(parse_cgroup("0::/demo/blue\n"), Some("/demo/blue"));
        assert!(cgroup_within("/demo/blue", "/demo/blue"));
        assert!(cgroup_within("/demo/blue/worker", "/demo/blue/"));
        assert!(!cgroup_within("/demo/blueberry", "/demo/blue"));
        assert!(cgroup_within("/anything", "/"));
    }

    #[test]
    fn the_exec_marker_is_found_in_the_environment() {
        let env = b"PATH=/bin\0SCX_BALLOT_CANDIDATE=blue\0HOME=/root\0";
        assert_eq!(candidate_from_environ(env), Some("blue".into()));
        assert_eq!(candidate_from_environ(b"SCX_BALLOT_CANDIDATEX=1\0"), None);
    }

    fn standing() -> Standing {
        Standing {
            generation: 3,
            candidates: vec![
                CandidateStanding {
                    name: "blue".into(),
                    votes: 0,
                    members: vec![Member::Pid {
                        pid: 4242,
                        start_time: Some(987654),
                    }],
                },
                CandidateStanding {
                    name: "red".into(),
                    votes: 0,
                    members: vec![
                        Member::Comm {
                            comm: "stress ng".into(),
                        },
                        Member::Cgroup {
                            path: "/demo/red".into(),
                        },
                    ],
                },
            ],
        }
    }

    fn proc(pid: i32, comm: &str, start_time: u64, policy: i64) -> ProcInfo {
        ProcInfo {
            pid,
            comm: comm.into(),
            start_time,
            policy,
        }
    }

    #[test]
    fn a_pid_member_matches_only_with_its_start_time() {
        let s = standing();
        let none = &mut || None;
        assert_eq!(
            match_candidate(&s, &proc(4242, "x", 987654, 0), none, &mut || None),
            Some("blue")
        );
        // The same PID, recycled by a later process: not blue.
        assert_eq!(
            match_candidate(&s, &proc(4242, "x", 999999, 0), &mut || None, &mut || None),
            None
        );
    }

    #[test]
    fn first_candidate_in_creation_order_wins() {
        let s = standing();
        // PID rule of blue and comm rule of red both match: blue was first.
        let p = proc(4242, "stress ng", 987654, 0);
        assert_eq!(
            match_candidate(&s, &p, &mut || None, &mut || None),
            Some("blue")
        );
    }

    #[test]
    fn comm_cgroup_and_exec_marker() {
        let s = standing();
        let by_comm = proc(1, "stress ng", 1, 0);
        assert_eq!(
            match_candidate(&s, &by_comm, &mut || None, &mut || None),
            Some("red")
        );
        let by_cg = proc(2, "sh", 1, 0);
        assert_eq!(
            match_candidate(&s, &by_cg, &mut || Some("/demo/red/w1".into()), &mut || {
                None
            }),
            Some("red")
        );
        // The exec marker only counts for SCHED_EXT tasks, and only for a
        // candidate that exists.
        let ext = proc(3, "sh", 1, 7);
        assert_eq!(
            match_candidate(&s, &ext, &mut || None, &mut || Some("blue".into())),
            Some("blue")
        );
        assert_eq!(
            match_candidate(&s, &ext, &mut || None, &mut || Some("gone".into())),
            None
        );
        let fair = proc(4, "sh", 1, 0);
        assert_eq!(
            match_candidate(&s, &fair, &mut || None, &mut || Some("blue".into())),
            None
        );
    }

    #[test]
    fn shares_are_fractions_of_all_cpus() {
        let s = share_of(1_000_000_000, Duration::from_secs(1), 2);
        assert!((s.share - 0.5).abs() < 1e-9);
        assert_eq!(share_of(5, Duration::ZERO, 2).share, 0.0);
    }
}
