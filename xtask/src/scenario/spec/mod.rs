//! Scenario files (`vm/scenarios/*.toml`): parsing and validation on the
//! host. A file becomes a [`Scenario`], which is also what the guest runner
//! reads (as JSON), so both sides agree on one shape.
//!
//! Every error names the file, the line and the field.

use serde::{Deserialize, Serialize};

mod expect;
mod file;

pub use file::load_dir;

/// What a worker process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Spins without pause: always wants a CPU.
    Burner,
    /// Interactive: runs `run_ms` of CPU time, sleeps `sleep_ms`, again.
    Sleepy,
    /// A fork storm: starts a process that exits at once (`true`), waits
    /// for it, and again, as fast as it can.
    Forker,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Burner => "burner",
            Kind::Sleepy => "sleepy",
            Kind::Forker => "forker",
        }
    }
}

/// How a candidate's worker joins it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Join {
    /// Started with `scx_ballot exec --candidate NAME` (the environment
    /// marker; works before the candidate is registered).
    #[default]
    Exec,
    /// Started with `scx_ballot exec`, then added as a PID member through
    /// the admin API (the member leaves the ballot when the process exits).
    Pid,
}

/// The scheduling policy and the election's mode: the names the scheduler's
/// command line and API use (`scx_ballot_api`), so a scenario file cannot
/// name one the scheduler does not know.
pub use scx_ballot_api::{Mode, PolicyName as Policy};

/// A group of identical worker processes: a candidate's, or outsiders
/// (normal fair-class tasks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// `candidate/kind` or `outsider/kind`: how the group is named in
    /// tables and snapshots.
    pub id: String,
    /// None for outsiders.
    pub candidate: Option<String>,
    pub kind: Kind,
    pub count: Count,
    pub join: Join,
    pub run_ms: u32,
    pub sleep_ms: u32,
    /// The workers' nice level (workload groups; 0 otherwise).
    #[serde(default)]
    pub nice: i32,
    /// The CPUs its workers may run on (workload groups); empty for any.
    #[serde(default)]
    pub cpus: Vec<u32>,
    /// Workload groups: the `cpu.weight` of a cgroup v2 holding all the
    /// `[[group]]`'s workers (None: they stay in the root cgroup).
    #[serde(default)]
    pub cgroup_weight: Option<u32>,
}

/// How many processes a group has: fixed, or per guest CPU (so the
/// contention is the same whatever the number of vCPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Count {
    Fixed(u32),
    PerCpu(u32),
}

impl Count {
    pub fn resolve(self, cpus: u32) -> u32 {
        match self {
            Count::Fixed(n) => n,
            Count::PerCpu(n) => n * cpus,
        }
    }
}

/// How many processes of a candidate a step stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stop {
    Some(u32),
    All,
}

/// One timed phase: its steps happen at its start, then the runner lets
/// the scheduler settle and measures for `seconds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    pub settle_ms: u64,
    /// Votes cast at the start of the phase, per candidate.
    pub votes: Vec<(String, u32)>,
    /// Candidates registered (admin API) at the start of the phase.
    pub register: Vec<String>,
    /// Candidates removed (admin API) at the start of the phase.
    pub remove: Vec<String>,
    /// Worker processes of a candidate stopped at the start of the phase.
    pub stop: Vec<(String, Stop)>,
    /// The scheduler is killed (SIGKILL) at the start of the phase, before
    /// its other steps, and started again on the same votes journal: what
    /// was acknowledged must come back.
    pub restart: bool,
}

/// The scheduler a workload scenario runs under (`vm-test --scheduler`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Under {
    /// No sched_ext scheduler: the kernel's own (EEVDF).
    Eevdf,
    /// scx_ballot with this policy (partial mode).
    Ballot(Policy),
    /// Another sched_ext scheduler: a binary (its path, which the guest
    /// sees as the host does) with its arguments.
    Binary { name: String, path: String, args: Vec<String> },
}

impl Under {
    /// How runs and snapshots name it (`eevdf`, `fifo`, `scx_rustland`).
    pub fn name(&self) -> String {
        match self {
            Under::Eevdf => "eevdf".into(),
            Under::Ballot(p) => p.as_str().into(),
            Under::Binary { name, .. } => name.clone(),
        }
    }
}

/// scx_ballot's `--min-share` when none is given, in percent.
pub const DEFAULT_MIN_SHARE: f64 = 5.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub policy: Policy,
    pub mode: Mode,
    /// Percent, winner mode.
    pub min_share: Option<f64>,
    /// Candidates in the candidates file at start, in file order.
    pub candidates: Vec<String>,
    pub groups: Vec<Group>,
    pub phases: Vec<Phase>,
    /// A deliberately broken policy (`--debug-mutant`), for the regression
    /// controls; None for a normal run.
    #[serde(default)]
    pub mutant: Option<String>,
    /// The min share (percent) given to the scheduler instead of
    /// `min_share`, for a regression control: the snapshot is still judged
    /// against `min_share`. None for a normal run.
    #[serde(default)]
    pub scheduler_min_share: Option<f64>,
    /// Winner mode: the losers are held to their minimum share of the
    /// machine even with a CPU idle (scx_ballot `--cap`); their shares are
    /// then judged as parts of the machine, not of the candidates' CPU.
    #[serde(default)]
    pub cap: bool,
    /// A regression control runs without the file's `cap`.
    #[serde(default)]
    pub scheduler_no_cap: bool,
    /// A regression control restarts its scheduler without the votes
    /// journal.
    #[serde(default)]
    pub scheduler_no_journal: bool,
    /// A workload scenario (`[[group]]`s, no election): it runs under any
    /// scheduler, and has a snapshot per scheduler.
    #[serde(default)]
    pub workload: bool,
    /// The scheduler of this run of a workload scenario.
    #[serde(default)]
    pub under: Option<Under>,
    /// A workload scenario's expectations against EEVDF.
    #[serde(default)]
    pub expect: Vec<Expect>,
}

/// What a workload scenario expects of a group under a scheduler, relative
/// to the same group under EEVDF in the same boot (`[[expect]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Expect {
    /// A `[[group]]`'s name (all its workers).
    pub group: String,
    /// Its sleepy workers' mean wake-up wait is at most this many times
    /// EEVDF's.
    pub wait_vs_eevdf: Option<f64>,
    /// Its part of the groups' CPU time is at least this many times
    /// EEVDF's.
    pub share_vs_eevdf: Option<f64>,
    /// The schedulers it applies to; every one but EEVDF when empty.
    pub schedulers: Vec<String>,
}

impl Scenario {
    /// The name of one run: the scenario, then the mutant and the
    /// scheduler's min share if any (`landslide@fifo`,
    /// `landslide@min-share-20`).
    pub fn run_name(&self) -> String {
        let mut name = self.snapshot_name();
        if let Some(m) = &self.mutant {
            name += &format!("@{m}");
        }
        if let Some(m) = self.scheduler_min_share {
            name += &format!("@min-share-{m}");
        }
        if self.scheduler_no_cap {
            name += "@no-cap";
        }
        if self.scheduler_no_journal {
            name += "@no-journal";
        }
        name
    }

    /// The name of its snapshot: the scenario's, and for a workload
    /// scenario the scheduler's after an `@` (`nice-levels@eevdf`).
    pub fn snapshot_name(&self) -> String {
        match &self.under {
            Some(u) => format!("{}@{}", self.name, u.name()),
            None => self.name.clone(),
        }
    }

    /// Whether it runs an election (scx_ballot's election policy with a
    /// voting server), not a workload under some scheduler.
    pub fn is_election(&self) -> bool {
        !self.workload && self.policy == Policy::Election
    }

    /// Whether the scheduler runs with something else than the file says
    /// (a regression control, or `--mutant`).
    pub fn altered(&self) -> bool {
        self.mutant.is_some() || self.scheduler_min_share.is_some() || self.scheduler_no_cap || self.scheduler_no_journal
    }

    /// How the scheduler's run differs from the file (empty: it does not).
    pub fn alteration(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.mutant {
            parts.push(format!("--debug-mutant {m}"));
        }
        if let Some(m) = self.scheduler_min_share {
            parts.push(format!("--min-share {m}"));
        }
        if self.scheduler_no_cap {
            parts.push("without --cap".into());
        }
        if self.scheduler_no_journal {
            parts.push("without --votes-file".into());
        }
        parts.join(" ")
    }

    /// The share (percent) each losing class is expected to keep in
    /// winner mode: `min_share`, or the scheduler's default of 5.
    pub fn expected_min_share(&self) -> f64 {
        self.min_share.unwrap_or(DEFAULT_MIN_SHARE)
    }

    /// Whether the scheduler runs with `--cap`.
    pub fn cap_arg(&self) -> bool {
        self.cap && !self.scheduler_no_cap
    }

    /// The min share (percent) to give the scheduler, if any.
    pub fn min_share_arg(&self) -> Option<f64> {
        self.scheduler_min_share.or(self.min_share)
    }

    /// Phase count × (settle + measure), in seconds, without the
    /// scheduler's start.
    pub fn seconds(&self) -> f64 {
        self.phases.iter().map(|p| p.seconds + p.settle_ms as f64 / 1000.0).sum()
    }
}

// ---- the file format -------------------------------------------------

#[cfg(test)]
mod tests;
