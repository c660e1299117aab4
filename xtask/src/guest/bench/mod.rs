//! The guest side of `cargo xtask bench` (`xtask guest-bench`): for each
//! configuration, starts the scheduler (or none, for EEVDF), runs every
//! workload `repeat` times and records raw numbers as JSON. The host takes
//! medians and ratios.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::guest::scheduler::{
    Scheduler, cpu_ticks, online_cpus as cpus, state, wait_state,
};

mod workloads;

const API: &str = "127.0.0.1:7447";

/// One measurement of the bench; `--workloads` picks some.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// hackbench, partial and full mode.
    Messaging,
    /// Fixed CPU work split over twice as many processes as vCPUs.
    Cpu,
    /// How late a task that wakes every millisecond runs, beside burners.
    Wake,
    /// Election: from the acknowledged vote to the new leader on a CPU.
    VoteEffect,
    /// Election: votes/s in memory, with the room, and journaled.
    Votes,
}

impl Workload {
    pub const ALL: [Workload; 5] =
        [Workload::Messaging, Workload::Cpu, Workload::Wake, Workload::VoteEffect, Workload::Votes];
}

fn all_workloads() -> Vec<Workload> {
    Workload::ALL.to_vec()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// `eevdf`, `fifo`, `vruntime`, `election`, `scx_rustland`, ...
    pub name: String,
    /// The scheduler binary; None for EEVDF (no sched_ext scheduler).
    pub binary: Option<PathBuf>,
    /// scx_ballot (with the voting server for `election`), or another one.
    pub ballot: bool,
    /// Its arguments for partial mode (only SCHED_EXT tasks); None if it
    /// has none, and then every workload runs in full mode.
    pub partial_args: Option<Vec<String>>,
    /// Its arguments for full mode (every task).
    pub full_args: Vec<String>,
}

impl Config {
    pub fn eevdf() -> Config {
        Config {
            name: "eevdf".into(),
            binary: None,
            ballot: false,
            partial_args: Some(vec![]),
            full_args: vec![],
        }
    }

    /// scx_ballot with `policy`.
    pub fn ballot(binary: &Path, policy: &str) -> Config {
        let partial = vec!["--policy".to_string(), policy.to_string()];
        let mut full = partial.clone();
        full.push("--full".into());
        Config {
            name: policy.into(),
            binary: Some(binary.into()),
            ballot: true,
            partial_args: Some(partial),
            full_args: full,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub configs: Vec<Config>,
    pub repeat: u32,
    /// hackbench groups and loops.
    pub hackbench: (u32, u32),
    /// Million rounds of work per CPU-throughput worker.
    pub cpu_work: u64,
    /// Seconds the wake-up latency ticker runs.
    pub latency_secs: u64,
    /// Leader changes measured for vote -> effect.
    pub flips: u32,
    /// Seconds of vote load for the server throughput, and its connections.
    pub vote_secs: u64,
    pub vote_connections: u32,
    /// Viewers following `GET /events` beside the voters in the room load.
    #[serde(default)]
    pub room_viewers: u32,
    /// The booted kernel's config on the host, for schedulers whose BPF
    /// reads `CONFIG_*` values (scx_bpfland).
    #[serde(default)]
    pub kernel_config: Option<PathBuf>,
    /// What is measured (all by default).
    #[serde(default = "all_workloads")]
    pub workloads: Vec<Workload>,
}

impl Plan {
    fn wants(&self, w: Workload) -> bool {
        self.workloads.contains(&w)
    }
}

/// Raw results of one configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Raw {
    pub name: String,
    /// hackbench seconds, SCHED_EXT in partial mode (all tasks for EEVDF).
    pub messaging_s: Vec<f64>,
    /// hackbench seconds with the scheduler in full mode.
    pub messaging_full_s: Vec<f64>,
    /// Seconds for the fixed CPU work.
    pub cpu_s: Vec<f64>,
    pub wake_p50_us: Vec<f64>,
    pub wake_p99_us: Vec<f64>,
    /// Vote acknowledged -> first run of a task of the new leader, in ms.
    pub vote_effect_ms: Vec<f64>,
    pub votes_per_s: Vec<f64>,
    /// A vote's request -> answer time in that load, p50 and p99, in ms.
    #[serde(default)]
    pub vote_answer_p50_ms: Vec<f64>,
    #[serde(default)]
    pub vote_answer_p99_ms: Vec<f64>,
    /// The same load against the scheduler started with `--votes-file`:
    /// every vote on disk before its answer.
    #[serde(default)]
    pub journaled_votes_per_s: Vec<f64>,
    #[serde(default)]
    pub journaled_p50_ms: Vec<f64>,
    #[serde(default)]
    pub journaled_p99_ms: Vec<f64>,
    /// The room load: viewers held to the end, and the voters' votes/s
    /// beside them.
    #[serde(default)]
    pub room_held: Vec<f64>,
    #[serde(default)]
    pub room_votes_per_s: Vec<f64>,
    pub sched_peak_rss_kib: Option<u64>,
    pub sched_cpu_s: Option<f64>,
    /// Why this configuration failed (crashed, ejected), if it did.
    pub failure: Option<String>,
    pub notes: Vec<String>,
}

#[derive(Args, Debug)]
pub struct GuestBenchCmd {
    plan: PathBuf,
    /// The xtask's shared output folder.
    out: PathBuf,
    /// scx_ballot, for `exec` (switching workloads to SCHED_EXT).
    scx_ballot: PathBuf,
}

fn say(msg: &str) {
    println!("[bench] {msg}");
}

impl GuestBenchCmd {
    pub fn run(self) -> Result<()> {
        let plan: Plan =
            serde_json::from_slice(&std::fs::read(&self.plan)?).context("reading the plan")?;
        let me = std::env::current_exe()?;
        let mut all: Vec<Raw> = plan
            .configs
            .iter()
            .map(|c| Raw {
                name: c.name.clone(),
                ..Default::default()
            })
            .collect();
        if plan.configs.iter().any(|c| c.binary.is_some() && !c.ballot) {
            crate::guest::scheduler::provide_kconfig(plan.kernel_config.as_deref(), &say);
        }
        // Round-robin: every configuration once per round, so that a burst
        // of host noise lands on one run of several configurations rather
        // than on all the runs of one.
        for round in 0..plan.repeat {
            for (k, c) in plan.configs.iter().enumerate() {
                let raw = &mut all[k];
                if raw.failure.is_some() {
                    continue;
                }
                say(&format!(
                    "round {}/{}: configuration {} ({} CPUs)",
                    round + 1,
                    plan.repeat,
                    c.name,
                    cpus()
                ));
                let b = Bench {
                    plan: &plan,
                    cfg: c,
                    me: &me,
                    ballot: &self.scx_ballot,
                    out: &self.out,
                };
                if let Err(e) = b.run(raw, round) {
                    say(&format!("{}: {e:#}", c.name));
                    raw.failure = Some(format!("{e:#}"));
                }
                std::fs::write(self.out.join("raw.json"), serde_json::to_vec_pretty(&all)?)?;
            }
        }
        Ok(())
    }
}

/// Adds a round's footprint: the peak RSS of all rounds, their CPU time
/// summed.
fn add_footprint(raw: &mut Raw, (rss, cpu): (Option<u64>, Option<f64>)) {
    raw.sched_peak_rss_kib = raw.sched_peak_rss_kib.max(rss);
    if let Some(cpu) = cpu {
        raw.sched_cpu_s = Some(raw.sched_cpu_s.unwrap_or(0.0) + cpu);
    }
}

struct Bench<'a> {
    plan: &'a Plan,
    cfg: &'a Config,
    me: &'a Path,
    ballot: &'a Path,
    out: &'a Path,
}

struct Sched(Scheduler);

impl Sched {
    /// (peak RSS KiB, CPU seconds) of the scheduler process so far.
    fn footprint(&self) -> (Option<u64>, Option<f64>) {
        let pid = self.0.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (rss, cpu_ticks(&stat).map(|t| t as f64 / 100.0))
    }

    fn stop(mut self) -> Result<()> {
        let Some(status) = self.0.stop() else {
            bail!("the scheduler did not stop within 30 s of SIGINT");
        };
        if !wait_state("disabled", Duration::from_secs(30)) {
            bail!(
                "sched_ext state is {} 30 s after the scheduler exited, expected disabled",
                state()
            );
        }
        if !status.success() {
            bail!("the scheduler exited with {status}");
        }
        Ok(())
    }
}

