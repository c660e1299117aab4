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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
/// Where the kernel tells this boot apart from every other.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Most threads tried when a process's own environment cannot be read.
const ENVIRON_THREADS_TRIED: usize = 8;

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

/// This boot's id (/proc/sys/kernel/random/boot_id), if readable.
pub fn current_boot_id() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

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
///
/// No lock is taken on the policy's side: `ask` sets a flag and unparks
/// the tracker thread. (With a mutex, a tracker preempted while holding it
/// would stall the scheduling loop in full mode, where the tracker waits
/// for the loop to be scheduled at all.)
#[derive(Debug, Default)]
pub struct Nudge {
    asked: AtomicBool,
    /// The thread that waits: the first to call [`Nudge::wait`].
    waiter: std::sync::OnceLock<std::thread::Thread>,
}

impl Nudge {
    /// Asks for a scan; cheap when one is already asked for.
    pub fn ask(&self) {
        if !self.asked.swap(true, Ordering::AcqRel)
            && let Some(waiter) = self.waiter.get()
        {
            waiter.unpark();
        }
    }

    /// Waits up to `timeout` for a request (it stays pending until
    /// [`Nudge::take`]). An `ask` between the check and the park still
    /// ends the park at once (an unpark before a park is kept).
    fn wait(&self, timeout: Duration) {
        self.waiter.get_or_init(std::thread::current);
        if !self.pending() {
            std::thread::park_timeout(timeout);
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

/// What `/proc/PID/status` says of a process's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Its thread group (the process a thread belongs to).
    pub tgid: i32,
    /// Real uid.
    pub ruid: u32,
    /// Effective uid.
    pub euid: u32,
}

/// Parses the `Tgid:` and `Uid:` lines of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::split_whitespace)
    };
    let tgid = field("Tgid")?.next()?.parse().ok()?;
    let mut uids = field("Uid")?;
    let ruid = uids.next()?.parse().ok()?;
    let euid = uids.next()?.parse().ok()?;
    Some(Status { tgid, ruid, euid })
}

/// What a read of a `/proc/.../environ` file says about the exec marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Environ {
    /// An environment, with the marker's candidate if it has one.
    Read(Option<String>),
    /// Nothing to read: a process in the middle of an exec (its new
    /// environment is not set up yet), or one whose environment is empty.
    Empty,
    /// The read failed: the task is gone (ESRCH: also a process whose main
    /// thread exited while others run on), or not ours to read (EACCES).
    /// Says nothing of an exec.
    Unreadable,
}

/// Classifies the result of reading an `environ` file.
pub fn classify_environ(read: std::io::Result<Vec<u8>>) -> Environ {
    match read {
        Ok(bytes) if bytes.is_empty() => Environ::Empty,
        Ok(bytes) => Environ::Read(candidate_from_environ(&bytes)),
        Err(_) => Environ::Unreadable,
    }
}

/// Reads the environment of the process at `proc_dir`: its own, and when
/// that is empty or unreadable, through one of its other threads (they
/// share its memory, and stay readable when the main thread has exited).
pub fn read_environ(proc_dir: &Path) -> Environ {
    let own = classify_environ(std::fs::read(proc_dir.join("environ")));
    if matches!(own, Environ::Read(_)) {
        return own;
    }
    let leader = proc_dir.file_name();
    let threads = std::fs::read_dir(proc_dir.join("task"))
        .into_iter()
        .flatten()
        .flatten();
    threads
        .filter(|t| Some(t.file_name().as_os_str()) != leader)
        .take(ENVIRON_THREADS_TRIED)
        .map(|t| classify_environ(std::fs::read(t.path().join("environ"))))
        .find(|e| matches!(e, Environ::Read(_)))
        .unwrap_or(own)
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

/// What the scan remembers of environments between scans.
#[derive(Debug, Default)]
struct EnvState {
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
    fn end_scan(&mut self, seen: &HashSet<(i32, u64)>) {
        self.cache.retain(|k, _| seen.contains(&(k.0, k.1)));
        self.empty_last = std::mem::take(&mut self.empty_now);
    }
}

/// [`ProcFacts`] of a process under a `/proc` folder.
struct ProcDir<'a> {
    dir: PathBuf,
    key: (i32, u64, String),
    env: &'a mut EnvState,
    /// Its environment was empty, for the first time: maybe in the middle
    /// of an exec, so not classified yet.
    mid_exec: bool,
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
            // environment, or one this scan may not read (an exec sets up
            // the new one at once). Once only, it may be a read in the
            // middle of an exec (the memory being switched): not cached,
            // or a member read then would stay unaffiliated for good.
            Environ::Empty | Environ::Unreadable if self.env.empty_last.contains(&self.key) => None,
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
fn classify<'s>(
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
    /// Starts the tracker; `trust` says who may join by comm or exec
    /// marker, and which boot's `pid` members count.
    pub fn spawn(board: Arc<Board>, trust: Trust, on_exit: OnExit) -> std::io::Result<Tracker> {
        let membership = Arc::new(ArcSwap::from_pointee(Membership::default()));
        let metrics = Arc::new(ArcSwap::from_pointee(Metrics::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = ScanState {
            board,
            membership: membership.clone(),
            metrics: metrics.clone(),
            trust,
            env: EnvState::default(),
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
    trust: Trust,
    env: EnvState,
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

/// Whether the process of `pid` member `rule` is among `seen` (pid, start
/// time) in boot `boot_id`: a member recorded in another boot is gone.
fn pid_member_alive(rule: &Member, seen: &HashSet<(i32, u64)>, boot_id: Option<&str>) -> bool {
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
    fn an_ask_from_another_thread_ends_the_wait() {
        let n = Arc::new(Nudge::default());
        let waiter = {
            let n = n.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                n.wait(Duration::from_secs(30));
                t.elapsed()
            })
        };
        // Until the waiter has registered, an ask stays pending and the
        // wait returns at once; either way it must not sit out 30 s.
        std::thread::sleep(Duration::from_millis(50));
        n.ask();
        let waited = waiter.join().unwrap();
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
        assert!(n.pending());
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
                        boot_id: Some(BOOT.into()),
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

    const BOOT: &str = "5a0c2b7e-0000-4000-8000-000000000001";

    /// Root is trusted, in boot [`BOOT`].
    fn trust() -> Trust {
        Trust {
            uids: BTreeSet::from([0]),
            per_candidate: HashMap::new(),
            boot_id: Some(BOOT.into()),
        }
    }

    /// A process's facts beyond its stat; by default a root process in no
    /// cgroup and without the marker.
    struct Fake {
        cgroup: Option<String>,
        marker: Option<String>,
        uids: Option<(u32, u32)>,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                cgroup: None,
                marker: None,
                uids: Some((0, 0)),
            }
        }
    }

    impl ProcFacts for Fake {
        fn cgroup(&mut self) -> Option<String> {
            self.cgroup.clone()
        }
        fn marker(&mut self) -> Option<String> {
            self.marker.clone()
        }
        fn uids(&mut self) -> Option<(u32, u32)> {
            self.uids
        }
    }

    fn fake() -> Fake {
        Fake::default()
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
        let t = trust();
        assert_eq!(
            match_candidate(&s, &t, &proc(4242, "x", 987654, 0), &mut fake()),
            Some("blue")
        );
        // The same PID, recycled by a later process: not blue.
        assert_eq!(
            match_candidate(&s, &t, &proc(4242, "x", 999999, 0), &mut fake()),
            None
        );
    }

    #[test]
    fn first_candidate_in_creation_order_wins() {
        let s = standing();
        // PID rule of blue and comm rule of red both match: blue was first.
        let p = proc(4242, "stress ng", 987654, 0);
        assert_eq!(match_candidate(&s, &trust(), &p, &mut fake()), Some("blue"));
    }

    #[test]
    fn comm_cgroup_and_exec_marker() {
        let s = standing();
        let t = trust();
        let by_comm = proc(1, "stress ng", 1, 0);
        assert_eq!(match_candidate(&s, &t, &by_comm, &mut fake()), Some("red"));
        let by_cg = proc(2, "sh", 1, 0);
        let in_red = &mut Fake {
            cgroup: Some("/demo/red/w1".into()),
            ..fake()
        };
        assert_eq!(match_candidate(&s, &t, &by_cg, in_red), Some("red"));
        // The exec marker only counts for SCHED_EXT tasks, and only for a
        // candidate that exists.
        let marked = |name: &str| Fake {
            marker: Some(name.into()),
            ..fake()
        };
        let ext = proc(3, "sh", 1, 7);
        assert_eq!(
            match_candidate(&s, &t, &ext, &mut marked("blue")),
            Some("blue")
        );
        assert_eq!(match_candidate(&s, &t, &ext, &mut marked("gone")), None);
        let fair = proc(4, "sh", 1, 0);
        assert_eq!(match_candidate(&s, &t, &fair, &mut marked("blue")), None);
    }

    #[test]
    fn a_pid_member_of_another_boot_matches_nothing() {
        let s = standing();
        let p = proc(4242, "x", 987654, 0);
        let other_boot = Trust {
            boot_id: Some("5a0c2b7e-0000-4000-8000-000000000002".into()),
            ..trust()
        };
        assert_eq!(match_candidate(&s, &trust(), &p, &mut fake()), Some("blue"));
        assert_eq!(match_candidate(&s, &other_boot, &p, &mut fake()), None);
        let unknown_boot = Trust {
            boot_id: None,
            ..trust()
        };
        assert_eq!(match_candidate(&s, &unknown_boot, &p, &mut fake()), None);
        // ... and is reported gone, though the same (pid, start time) runs.
        let rule = &s.candidates[0].members[0];
        let seen = HashSet::from([(4242, 987654)]);
        assert!(pid_member_alive(rule, &seen, Some(BOOT)));
        assert!(!pid_member_alive(
            rule,
            &seen,
            other_boot.boot_id.as_deref()
        ));
        // A member journaled without a boot id matches by pid and start time.
        let legacy = Member::Pid {
            pid: 4242,
            start_time: Some(987654),
            boot_id: None,
        };
        assert!(pid_member_alive(&legacy, &seen, Some(BOOT)));
    }

    #[test]
    fn comm_rules_and_the_marker_count_only_for_trusted_uids() {
        let s = standing();
        let root = trust();
        let nobody = |marker: Option<&str>| Fake {
            marker: marker.map(str::to_string),
            uids: Some((65534, 65534)),
            ..fake()
        };
        let by_comm = proc(1, "stress ng", 1, 0);
        let ext = proc(3, "sh", 1, 7);
        assert_eq!(
            match_candidate(&s, &root, &by_comm, &mut nobody(None)),
            None
        );
        assert_eq!(
            match_candidate(&s, &root, &ext, &mut nobody(Some("blue"))),
            None
        );
        // Unknown uids (the process is gone) are not trusted either.
        let gone = &mut Fake {
            uids: None,
            ..fake()
        };
        assert_eq!(match_candidate(&s, &root, &by_comm, gone), None);
        // Both the real and the effective uid must be trusted (a setuid
        // program run by nobody, or root acting as nobody, is not).
        for uids in [(65534, 0), (0, 65534)] {
            let f = &mut Fake {
                uids: Some(uids),
                ..fake()
            };
            assert_eq!(match_candidate(&s, &root, &by_comm, f), None, "{uids:?}");
        }
        // Rules the admin sets join nobody's processes all the same.
        let in_red = &mut Fake {
            cgroup: Some("/demo/red".into()),
            ..nobody(None)
        };
        assert_eq!(
            match_candidate(&s, &root, &proc(2, "sh", 1, 0), in_red),
            Some("red")
        );
        assert_eq!(
            match_candidate(&s, &root, &proc(4242, "x", 987654, 0), &mut nobody(None)),
            Some("blue")
        );
        // Trusted for every candidate (--member-uid) ...
        let everywhere = Trust {
            uids: BTreeSet::from([0, 65534]),
            ..trust()
        };
        assert_eq!(
            match_candidate(&s, &everywhere, &by_comm, &mut nobody(None)),
            Some("red")
        );
        assert_eq!(
            match_candidate(&s, &everywhere, &ext, &mut nobody(Some("blue"))),
            Some("blue")
        );
        // ... or for one (the candidates file's `uids`).
        let red_only = Trust {
            per_candidate: HashMap::from([("red".to_string(), BTreeSet::from([65534]))]),
            ..trust()
        };
        assert_eq!(
            match_candidate(&s, &red_only, &by_comm, &mut nobody(None)),
            Some("red")
        );
        assert_eq!(
            match_candidate(&s, &red_only, &ext, &mut nobody(Some("blue"))),
            None
        );
    }

    /// A child process, killed and reaped on drop.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Waits (at most 5 s) until `pid`'s /proc/PID/stat satisfies `ready`.
    fn wait_for_stat(pid: i32, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if ready(&stat) {
                return stat;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} never got ready: {stat:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `sleep 30` as `uid` (none: as this process), once it has exec'd.
    fn sleeper(uid: Option<u32>) -> Child {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let child = Child(cmd.spawn().expect("start sleep"));
        let pid = child.0.id() as i32;
        wait_for_stat(pid, |stat| {
            parse_stat(stat).is_some_and(|(comm, ..)| comm == "sleep")
        });
        child
    }

    #[test]
    fn a_live_process_of_an_untrusted_uid_does_not_join_by_comm() {
        let own = Trust::new([], []).expect("this process's uid");
        let me = *own.uids.first().expect("its own uid");
        // As root the stranger is nobody; otherwise it runs as this user,
        // and the trust is root's alone.
        let (stranger, trusting) = if me == 0 {
            (Some(65534), own.clone())
        } else {
            (
                None,
                Trust {
                    uids: BTreeSet::from([0]),
                    ..own.clone()
                },
            )
        };
        let theirs = sleeper(stranger);
        let mine = sleeper(None);
        let s = Standing {
            generation: 1,
            candidates: vec![CandidateStanding {
                name: "red".into(),
                votes: 0,
                members: vec![Member::Comm {
                    comm: "sleep".into(),
                }],
            }],
        };
        let candidate = |child: &Child, trust: &Trust| {
            let pid = child.0.id() as i32;
            let dir = PathBuf::from(format!("/proc/{pid}"));
            let (info, found, _) =
                classify(&dir, pid, &s, trust, &mut EnvState::default()).expect("the child runs");
            assert_eq!(info.comm, "sleep");
            found.map(str::to_string)
        };
        assert_eq!(candidate(&theirs, &trusting), None, "untrusted uid");
        if me == 0 {
            assert_eq!(
                candidate(&mine, &trusting),
                Some("red".into()),
                "root's own"
            );
        }
        let uid = stranger.unwrap_or(me);
        let trusted = Trust {
            uids: trusting.uids.iter().copied().chain([uid]).collect(),
            ..trusting.clone()
        };
        assert_eq!(
            candidate(&theirs, &trusted),
            Some("red".into()),
            "--member-uid"
        );
    }

    #[test]
    fn an_unreadable_environment_is_no_exec() {
        use std::io::Error;
        for errno in [libc::ESRCH, libc::EACCES] {
            let read = Err(Error::from_raw_os_error(errno));
            assert_eq!(classify_environ(read), Environ::Unreadable, "errno {errno}");
        }
        assert_eq!(classify_environ(Ok(Vec::new())), Environ::Empty);
        assert_eq!(
            classify_environ(Ok(b"A=1\0SCX_BALLOT_CANDIDATE=blue\0".to_vec())),
            Environ::Read(Some("blue".into()))
        );
        assert_eq!(classify_environ(Ok(b"A=1\0".to_vec())), Environ::Read(None));
    }

    /// A fake /proc/PID folder: `environ` (`None`: unreadable, a folder)
    /// and the environ of its threads, by tid.
    fn fake_proc(
        dir: &Path,
        pid: i32,
        environ: Option<&[u8]>,
        threads: &[(i32, &[u8])],
    ) -> PathBuf {
        let proc_dir = dir.join(pid.to_string());
        std::fs::create_dir_all(proc_dir.join("task")).expect("create");
        match environ {
            Some(bytes) => std::fs::write(proc_dir.join("environ"), bytes).expect("write"),
            None => std::fs::create_dir_all(proc_dir.join("environ")).expect("create"),
        }
        for (tid, bytes) in threads {
            let task = proc_dir.join("task").join(tid.to_string());
            std::fs::create_dir_all(&task).expect("create");
            std::fs::write(task.join("environ"), bytes).expect("write");
        }
        proc_dir
    }

    /// What the scan's marker lookup of the process at `dir` finds in one
    /// scan: (marker, in the middle of an exec).
    fn marker_in_scan(dir: &Path, env: &mut EnvState) -> (Option<String>, bool) {
        let key = (7, 100, "burn".to_string());
        let mut facts = ProcDir {
            dir: dir.to_path_buf(),
            key,
            env,
            mid_exec: false,
        };
        let found = facts.marker();
        let mid_exec = facts.mid_exec;
        env.end_scan(&HashSet::from([(7, 100)]));
        (found, mid_exec)
    }

    #[test]
    fn a_process_without_its_main_thread_is_no_exec() {
        let tmp = crate::ballot::store::tests::TempDir::new("environ");
        let marked: &[u8] = b"SCX_BALLOT_CANDIDATE=blue\0";
        // The main thread exited (its environ fails with ESRCH); another
        // thread shares the memory and has the marker.
        let dir = fake_proc(tmp.path(), 7, None, &[(7, b""), (8, marked)]);
        let mut env = EnvState::default();
        assert_eq!(marker_in_scan(&dir, &mut env), (Some("blue".into()), false));
        // No thread readable: no marker; maybe a read in the middle of an
        // exec, so it is asked again in the next scan, and only then taken
        // as no exec.
        let dir = fake_proc(&tmp.path().join("b"), 7, None, &[]);
        let mut env = EnvState::default();
        assert_eq!(marker_in_scan(&dir, &mut env), (None, true));
        assert_eq!(marker_in_scan(&dir, &mut env), (None, false));
    }

    /// A process whose main thread has exited while another thread runs
    /// on (for at most 20 s); killed and reaped on drop.
    struct ZombieLeader(i32);

    impl ZombieLeader {
        fn start() -> ZombieLeader {
            extern "C" fn linger(_: *mut libc::c_void) -> *mut libc::c_void {
                // SAFETY: sleep and _exit have no preconditions; _exit ends
                // the child without running the parent's copied state.
                unsafe {
                    libc::sleep(20);
                    libc::_exit(0)
                }
            }
            // SAFETY: the child only starts a thread and ends its main
            // thread with raw calls, never returning into the test harness
            // it copied; glibc keeps malloc and thread creation usable after
            // fork.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                // SAFETY: as above; `thread` outlives the call, the start
                // routine takes no argument.
                unsafe {
                    // Drop the copies of the test process's descriptors (a
                    // votes journal's lock among them) that fork made.
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    let mut thread: libc::pthread_t = std::mem::zeroed();
                    let made = libc::pthread_create(
                        &mut thread,
                        std::ptr::null(),
                        linger,
                        std::ptr::null_mut(),
                    );
                    if made != 0 {
                        libc::_exit(1);
                    }
                    // Only this thread exits (exit, not exit_group).
                    libc::syscall(libc::SYS_exit, 0);
                    libc::_exit(2)
                }
            }
            let leader = ZombieLeader(pid);
            // The state (field 3) of the main thread is Z once it has exited.
            wait_for_stat(pid, |stat| {
                stat.rfind(')')
                    .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'))
            });
            leader
        }
    }

    impl Drop for ZombieLeader {
        fn drop(&mut self) {
            // SAFETY: plain system calls on the child this test started.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }

    #[test]
    fn a_live_process_whose_main_thread_exited_has_its_environment_read() {
        let leader = ZombieLeader::start();
        let dir = PathBuf::from(format!("/proc/{}", leader.0));
        let own = classify_environ(std::fs::read(dir.join("environ")));
        assert!(
            !matches!(own, Environ::Read(_)),
            "the kernel gives no environment of an exited main thread: {own:?}"
        );
        // Its other thread shares the memory: the environment (this test's,
        // without the marker) is read through it.
        assert_eq!(read_environ(&dir), Environ::Read(None));
        let mut env = EnvState::default();
        assert_eq!(marker_in_scan(&dir, &mut env), (None, false), "no exec");
    }

    #[test]
    fn an_empty_environment_is_taken_for_an_exec_for_one_scan_only() {
        let tmp = crate::ballot::store::tests::TempDir::new("environ-empty");
        let dir = fake_proc(tmp.path(), 7, Some(b""), &[]);
        let mut env = EnvState::default();
        assert_eq!(
            marker_in_scan(&dir, &mut env),
            (None, true),
            "maybe in an exec"
        );
        assert_eq!(
            marker_in_scan(&dir, &mut env),
            (None, false),
            "an empty environment"
        );
        assert_eq!(marker_in_scan(&dir, &mut env), (None, false), "and cached");
        // An exec that completes by the next scan is read then.
        let dir = fake_proc(&tmp.path().join("b"), 7, Some(b""), &[]);
        let mut env = EnvState::default();
        assert_eq!(marker_in_scan(&dir, &mut env), (None, true));
        std::fs::write(dir.join("environ"), b"SCX_BALLOT_CANDIDATE=red\0").expect("write");
        assert_eq!(marker_in_scan(&dir, &mut env), (Some("red".into()), false));
    }

    #[test]
    fn shares_are_fractions_of_all_cpus() {
        let s = share_of(1_000_000_000, Duration::from_secs(1), 2);
        assert!((s.share - 0.5).abs() < 1e-9);
        assert_eq!(share_of(5, Duration::ZERO, 2).share, 0.0);
    }
}
