//! What the guest runner records for one scenario run (written as JSON,
//! read on the host): every worker process, every phase with its
//! measurement window, the timeline samples and the ballot events. Times
//! are milliseconds since the run started; CPU figures come from the
//! kernel's accounting (`/proc/PID/schedstat`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trace {
    /// The scenario's name, `@mutant` appended for a regression control.
    pub run: String,
    pub scenario: String,
    /// 1-based, when the suite is repeated.
    pub iteration: u32,
    pub cpus: u32,
    pub sample_ms: u64,
    pub workers: Vec<Worker>,
    pub phases: Vec<PhaseRecord>,
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    /// The scheduler's exit status (None: it was not started or did not
    /// exit).
    pub scheduler_exit: Option<i32>,
    /// `/sys/kernel/sched_ext/state` after the scheduler stopped.
    pub state_after: String,
    /// Set when the run could not be carried out; the rest may be partial.
    pub error: Option<String>,
    /// The scheduler's output file (a guest path, also valid on the host).
    pub scheduler_log: String,
    pub wall_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Worker {
    /// `candidate/kind` or `outsider/kind`.
    pub group: String,
    /// 1-based within its group.
    pub index: u32,
    pub pid: i32,
    pub started_ms: u64,
    /// When the runner stopped it (a `stop` step), if it did.
    pub stopped_ms: Option<u64>,
}

impl Worker {
    pub fn label(&self) -> String {
        format!("{} #{}", self.group, self.index)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub name: String,
    pub start_ms: u64,
    pub measure_start_ms: u64,
    pub end_ms: u64,
    /// Per worker (same order as `Trace::workers`; workers started later
    /// or stopped count from what they had): CPU time, run-queue wait and
    /// number of times it ran, over the measurement window.
    pub cpu_ns: Vec<u64>,
    pub wait_ns: Vec<u64>,
    pub runs: Vec<u64>,
    /// Whether the worker was alive over the whole window.
    pub alive: Vec<bool>,
    /// `GET /votes` after the phase's steps (election only).
    pub tally: Option<scx_ballot_api::Tally>,
    /// `/sys/kernel/sched_ext/state` at the end of the window.
    pub state: String,
    /// How soon a new leader's burners got the CPU after the vote; only in
    /// phases whose ballot steps changed the leader to a candidate with
    /// burners, while another candidate's burners competed (None: not
    /// measured, and in traces recorded before it was).
    #[serde(default)]
    pub effect: Option<Effect>,
}

/// The time to effect of a change of leader: from the acknowledgement of
/// the phase's last ballot step, polled every few milliseconds, until the
/// new leader's part of the candidates' burner CPU time over the last
/// `window_ms` reached `target_pct`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// The candidate that leads after the phase's ballot steps.
    pub leader: String,
    /// The share (percent) to reach: halfway from an even split between
    /// the candidates with burners to what the policy aims at.
    pub target_pct: f64,
    pub window_ms: u64,
    /// Milliseconds after the acknowledgement; None when the target was
    /// not reached within `limit_ms`.
    pub effect_ms: Option<u64>,
    pub limit_ms: u64,
    /// How many times the workers' counters were read.
    pub polls: u32,
}

/// Cumulative CPU time of every worker (same order as `Trace::workers`;
/// None when it is not running) at `t_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: u64,
    pub cpu_ns: Vec<Option<u64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub t_ms: u64,
    /// `votes`, `register`, `remove`, `stop`, `phase`, `attached`, and
    /// `effect` (a new leader's burners took their share).
    pub kind: String,
    pub detail: String,
}
