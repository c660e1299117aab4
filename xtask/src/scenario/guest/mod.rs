//! The guest side of the scenario suite: `xtask guest-scenarios` runs every
//! scenario of a plan in the VM (the guest sees the host's files, so this
//! is the same binary), and `xtask guest-worker` is the workload it starts.
//!
//! The runner only measures and records (a [`Trace`](crate::scenario::trace::Trace) per run, as JSON);
//! every judgement is made on the host.

use scx_ballot_api::Tally;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::scenario::spec::{Mode, Scenario, Under};
use crate::guest::scheduler::online_cpus;

mod cgroup;
mod runner;
mod worker;

use runner::Runner;

pub use worker::GuestWorkerCmd;

/// Where the voting server listens in the guest.
const API: &str = "127.0.0.1:7447";
/// How often the timeline is sampled.
const SAMPLE_MS: u64 = 100;
/// Time to effect: how often the new leader's share is read after a vote,
/// over how long a trailing window, and for how long at most.
const EFFECT_POLL_MS: u64 = 2;
const EFFECT_WINDOW_MS: u64 = 20;
const EFFECT_LIMIT_MS: u64 = 1500;
/// Just after the vote the window is shorter; below this it is too noisy
/// to judge.
const EFFECT_MIN_WINDOW_MS: u64 = 10;
/// A leader whose aim is this close (points) to an even split shows no
/// change worth timing.
const EFFECT_MIN_GAP: f64 = 10.0;

/// What the host hands the guest runner.
#[derive(Serialize, Deserialize)]
pub struct Plan {
    /// How many times the scenarios run (the regression controls run once,
    /// after them).
    pub repeat: u32,
    pub scenarios: Vec<Scenario>,
    pub controls: Vec<Scenario>,
    /// The booted kernel's config on the host (which the guest sees at the
    /// same path), for schedulers whose BPF reads `CONFIG_*` values.
    #[serde(default)]
    pub kernel_config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GuestScenariosCmd {
    /// The plan (JSON) written by the host.
    plan: PathBuf,
    /// The scx_ballot binary.
    scx_ballot: PathBuf,
    /// Where traces and logs go (shared with the host).
    out: PathBuf,
}

impl GuestScenariosCmd {
    pub fn run(self) -> Result<()> {
        let plan: Plan = serde_json::from_slice(&std::fs::read(&self.plan).context("reading the plan")?)
            .context("parsing the plan")?;
        let me = std::env::current_exe().context("locating the xtask binary")?;
        let cpus = online_cpus();
        if plan.scenarios.iter().any(|s| matches!(s.under, Some(Under::Binary { .. }))) {
            crate::guest::scheduler::provide_kconfig(plan.kernel_config.as_deref(), &say);
        }
        let runs = (1..=plan.repeat)
            .flat_map(|i| plan.scenarios.iter().map(move |s| (i, s)))
            .chain(plan.controls.iter().map(|s| (1, s)));
        for (iteration, scenario) in runs {
            let name = scenario.run_name();
            let dir = self.out.join(format!("{name}.{iteration}"));
            std::fs::create_dir_all(&dir)?;
            say(&format!("scenario {name} (run {iteration}, {cpus} CPUs, about {:.0} s)", scenario.seconds() + 5.0));
            let mut runner = Runner::new(scenario, iteration, cpus, &self.scx_ballot, &me, &dir);
            if let Err(e) = runner.run() {
                say(&format!("scenario {name}: {e:#}"));
                runner.trace.error = Some(format!("{e:#}"));
            }
            runner.finish();
            let trace = std::mem::take(&mut runner.trace);
            let path = dir.join("trace.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&trace)?).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

fn say(msg: &str) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    println!("[guest {:02}:{:02}:{:02}] {msg}", t / 3600 % 24, t / 60 % 60, t % 60);
}

/// (CPU time, run-queue wait, times run) of a process, from
/// `/proc/PID/schedstat`.
fn schedstat(pid: i32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let mut it = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// The process CPU-time clock of `pid` (what glibc's
/// `clock_getcpuclockid` returns). For another process it reads the same
/// count as the first field of `/proc/PID/schedstat` (up to a tick behind
/// while the process runs), in one system call and without text to parse.
fn cpu_clock(pid: i32) -> nix::time::ClockId {
    nix::time::ClockId::from_raw((!pid << 3) | 2)
}

/// CPU time of a process in nanoseconds, from its CPU-time clock (falling
/// back on `/proc/PID/schedstat`).
fn cpu_ns(pid: i32) -> Option<u64> {
    match nix::time::clock_gettime(cpu_clock(pid)) {
        Ok(t) => Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64),
        Err(_) => schedstat(pid).map(|s| s.0),
    }
}

/// The candidate leading after a ballot change, when it is another than
/// before (none to someone counts; someone to none does not).
pub fn new_leader<'a>(before: Option<&str>, after: Option<&'a str>) -> Option<&'a str> {
    after.filter(|a| before != Some(*a))
}

/// The first of the answers (each naming the leader then) from which on
/// `leader` led without a break.
fn led_since(named: &[Option<&str>], leader: &str) -> usize {
    named.iter().rposition(|n| *n != Some(leader)).map_or(0, |i| i + 1)
}

/// The share (percent of the candidates' burner CPU time) a new leader's
/// burners must reach for the vote to count as followed: halfway from an
/// even split between the classes with burners to what the policy aims at.
/// `others`: the votes of every other class with burners. None when there
/// is nothing to compare with, or the aim is close to an even split.
pub fn effect_target(mode: Mode, min_share_pct: f64, leader_votes: u64, others: &[u64]) -> Option<f64> {
    if others.is_empty() {
        return None;
    }
    let n = others.len() as f64 + 1.0;
    let even = 100.0 / n;
    let aim = match mode {
        Mode::Winner => 100.0 - (n - 1.0) * min_share_pct,
        Mode::Proportional => {
            let all: f64 = others.iter().map(|v| *v as f64 + 1.0).sum::<f64>() + leader_votes as f64 + 1.0;
            (leader_votes as f64 + 1.0) * 100.0 / all
        }
    };
    (aim >= even + EFFECT_MIN_GAP).then(|| (even + aim) / 2.0)
}

/// Whether the leader's share over the trailing window reached
/// `target_pct`. `samples`: (microseconds since the vote, the leader's
/// burners' CPU ns, all candidates' burners' CPU ns), oldest first.
fn reached(samples: &[(u64, u64, u64)], target_pct: f64) -> bool {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return false };
    let from = last.0.saturating_sub(EFFECT_WINDOW_MS * 1000);
    let start = samples.iter().rev().find(|s| s.0 <= from).unwrap_or(first);
    if last.0 - start.0 < EFFECT_MIN_WINDOW_MS * 1000 {
        return false;
    }
    let lead = last.1.saturating_sub(start.1) as f64;
    let all = last.2.saturating_sub(start.2) as f64;
    all > 0.0 && lead * 100.0 >= target_pct * all
}

/// The ballot answers of one phase, with the candidates' burners' CPU
/// time read right after each.
struct Ballots {
    /// (pid, candidate) of every candidate's running burner.
    burners: Vec<(i32, String)>,
    /// The last CPU time read of each (a worker that is gone keeps it).
    last: Vec<u64>,
    /// (when, the leader it names, every burner's CPU time then).
    answers: Vec<(Instant, Option<String>, Vec<u64>)>,
    /// The last answer.
    tally: Option<Tally>,
}

impl Ballots {
    fn new(burners: Vec<(i32, String)>) -> Self {
        let last = vec![0; burners.len()];
        Ballots { burners, last, answers: Vec::new(), tally: None }
    }

    fn read(&mut self) -> &[u64] {
        for ((pid, _), last) in self.burners.iter().zip(self.last.iter_mut()) {
            if let Some(ns) = cpu_ns(*pid) {
                *last = ns;
            }
        }
        &self.last
    }

    fn answer(&mut self, answer: Tally) {
        let at = Instant::now();
        let cpu = self.read().to_vec();
        let leader = answer.leader.clone();
        self.tally = Some(answer);
        self.answers.push((at, leader, cpu));
    }

    /// Keeps only `tally`, read now, as the answer to time from.
    fn restart(&mut self, tally: Tally) {
        self.answers.clear();
        self.answer(tally);
    }
}

#[cfg(test)]
mod tests;
