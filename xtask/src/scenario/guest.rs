//! The guest side of the scenario suite: `xtask guest-scenarios` runs every
//! scenario of a plan in the VM (the guest sees the host's files, so this
//! is the same binary), and `xtask guest-worker` is the workload it starts.
//!
//! The runner only measures and records (a [`Trace`] per run, as JSON);
//! every judgement is made on the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::spec::{Group, Join, Kind, Mode, Policy, Scenario, Stop};
use super::trace::{Effect, Event, PhaseRecord, Sample, Trace, Worker};
use crate::guest::scheduler::{Scheduler, bounded, online_cpus, state as sched_state, wait_api, wait_state};

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
    /// The last answer, while every answer carried the tally.
    tally: Option<serde_json::Value>,
    complete: bool,
}

impl Ballots {
    fn new(burners: Vec<(i32, String)>) -> Self {
        let last = vec![0; burners.len()];
        Ballots { burners, last, answers: Vec::new(), tally: None, complete: true }
    }

    fn read(&mut self) -> &[u64] {
        for ((pid, _), last) in self.burners.iter().zip(self.last.iter_mut()) {
            if let Some(ns) = cpu_ns(*pid) {
                *last = ns;
            }
        }
        &self.last
    }

    fn answer(&mut self, answer: serde_json::Value) {
        let at = Instant::now();
        let cpu = self.read().to_vec();
        let leader = answer.get("leader").and_then(|l| l.as_str()).map(str::to_string);
        self.complete &= answer.get("leader").is_some();
        self.tally = self.complete.then_some(answer);
        self.answers.push((at, leader, cpu));
    }

    /// Keeps only `tally`, read now, as the answer to time from.
    fn restart(&mut self, tally: serde_json::Value) {
        self.answers.clear();
        self.complete = true;
        self.answer(tally);
    }
}

struct Running {
    child: Child,
    group: usize,
}

struct Runner<'a> {
    scenario: &'a Scenario,
    cpus: u32,
    bin: &'a Path,
    me: &'a Path,
    dir: &'a Path,
    start: Instant,
    sched: Option<Scheduler>,
    procs: Vec<Running>,
    trace: Trace,
}

impl<'a> Runner<'a> {
    fn new(scenario: &'a Scenario, iteration: u32, cpus: u32, bin: &'a Path, me: &'a Path, dir: &'a Path) -> Self {
        let trace = Trace {
            run: scenario.run_name(),
            scenario: scenario.name.clone(),
            iteration,
            cpus,
            sample_ms: SAMPLE_MS,
            scheduler_log: dir.join("scheduler.log").display().to_string(),
            ..Default::default()
        };
        Runner { scenario, cpus, bin, me, dir, start: Instant::now(), sched: None, procs: Vec::new(), trace }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn event(&mut self, kind: &str, detail: String) {
        let t_ms = self.now_ms();
        self.trace.events.push(Event { t_ms, kind: kind.into(), detail });
    }

    fn run(&mut self) -> Result<()> {
        if sched_state() != "disabled" {
            bail!("a sched_ext scheduler is still loaded before the scenario (state {})", sched_state());
        }
        self.start_scheduler()?;
        for (gi, group) in self.scenario.groups.iter().enumerate() {
            for _ in 0..group.count.resolve(self.cpus) {
                self.spawn_worker(gi, group)?;
            }
        }
        // The leader before the current phase's steps (no votes at start).
        let mut leader: Option<String> = None;
        for phase in &self.scenario.phases {
            let start_ms = self.now_ms();
            self.event("phase", phase.name.clone());
            // The candidates' burners' CPU time at each ballot answer, to
            // time a change of leader from the answer that made it.
            let mut ballots = Ballots::new(if self.scenario.policy == Policy::Election { self.candidate_burners() } else { Vec::new() });
            for name in &phase.register {
                let answer = api("POST", "/candidates", Some(&serde_json::json!({ "name": name, "members": [] }).to_string()))
                    .with_context(|| format!("registering {name}"))?;
                ballots.answer(answer);
                self.event("register", name.clone());
            }
            for (cand, n) in &phase.votes {
                for i in 0..*n {
                    let voter = format!("{}-{}-{cand}-{i}", self.trace.run, phase.name.replace(' ', "_"));
                    let body = serde_json::json!({ "candidate": cand, "voter": voter }).to_string();
                    let answer = api("POST", "/votes", Some(&body)).with_context(|| format!("voting for {cand}"))?;
                    ballots.answer(answer);
                }
                self.event("votes", format!("{cand} +{n}"));
            }
            for name in &phase.remove {
                let answer = api("DELETE", &format!("/candidates/{name}"), None).with_context(|| format!("removing {name}"))?;
                ballots.answer(answer);
                self.event("remove", name.clone());
            }
            for (cand, how) in &phase.stop {
                let n = self.stop_workers(cand, *how);
                self.event("stop", format!("{cand}: {n} worker(s)"));
            }
            let steps_done = Instant::now();
            let effect = if ballots.answers.is_empty() || self.scenario.policy != Policy::Election {
                None
            } else {
                if ballots.tally.is_none() {
                    // An answer without the tally: time from the last one.
                    let tally = api("GET", "/votes", None).context("reading the tally")?;
                    ballots.restart(tally);
                }
                self.time_to_effect(leader.as_deref(), ballots)
            };
            let tally = match self.scenario.policy {
                Policy::Election => Some(api("GET", "/votes", None).context("reading the tally")?),
                _ => None,
            };
            if let Some(t) = &tally {
                leader = t.get("leader").and_then(|l| l.as_str()).map(str::to_string);
            }
            // The settling time counts from the end of the steps; timing the
            // effect may use it up, never the measured window.
            let settled = steps_done + Duration::from_millis(phase.settle_ms);
            self.sample_for(settled.saturating_duration_since(Instant::now()));
            let measure_start_ms = self.now_ms();
            let before = self.counters();
            self.sample_for(Duration::from_secs_f64(phase.seconds));
            let after = self.counters();
            let end_ms = self.now_ms();
            let mut rec = PhaseRecord {
                name: phase.name.clone(),
                start_ms,
                measure_start_ms,
                end_ms,
                tally,
                state: sched_state(),
                effect,
                ..Default::default()
            };
            for (b, a) in before.iter().zip(&after) {
                let (cpu, wait, runs, alive) = match (b, a) {
                    (Some(b), Some(a)) => (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1), a.2.saturating_sub(b.2), true),
                    _ => (0, 0, 0, false),
                };
                rec.cpu_ns.push(cpu);
                rec.wait_ns.push(wait);
                rec.runs.push(runs);
                rec.alive.push(alive);
            }
            let shown: Vec<String> = self
                .scenario
                .groups
                .iter()
                .enumerate()
                .map(|(gi, g)| {
                    let ms: u64 = self.procs.iter().enumerate().filter(|(_, p)| p.group == gi).map(|(i, _)| rec.cpu_ns[i]).sum::<u64>() / 1_000_000;
                    format!("{} {ms} ms", g.id)
                })
                .collect();
            let effect = match &rec.effect {
                Some(Effect { leader, effect_ms: Some(ms), .. }) => format!(", {leader} ran after {ms} ms"),
                Some(Effect { leader, limit_ms, .. }) => format!(", {leader} not within {limit_ms} ms"),
                None => String::new(),
            };
            say(&format!("  phase {:?}: {} (state {}{effect})", phase.name, shown.join(", "), rec.state));
            self.trace.phases.push(rec);
        }
        Ok(())
    }

    /// The pid and candidate of every candidate's running burner.
    fn candidate_burners(&self) -> Vec<(i32, String)> {
        self.procs
            .iter()
            .zip(&self.trace.workers)
            .filter(|(_, w)| w.stopped_ms.is_none())
            .filter_map(|(p, w)| {
                let g = &self.scenario.groups[p.group];
                (g.kind == Kind::Burner).then_some((w.pid, g.candidate.clone()?))
            })
            .collect()
    }

    /// After a phase's ballot steps: how soon a new leader's burners took
    /// their share of the candidates' burner CPU time, counted from the
    /// answer since which it has led. The counters read at each answer
    /// come first; then only the candidates' burners are read, through
    /// their CPU-time clocks, until the share is reached (the timeline
    /// keeps being sampled meanwhile). None when the leader did not
    /// change, or there is nothing to compare with.
    fn time_to_effect(&mut self, before: Option<&str>, mut b: Ballots) -> Option<Effect> {
        let s = self.scenario;
        let tally = b.tally.take()?;
        let after = tally.get("leader").and_then(|l| l.as_str());
        let leader = new_leader(before, after)?.to_string();
        let votes = |c: &str| tally.get("votes").and_then(|v| v.get(c)).and_then(|n| n.as_u64());
        let running = |c: &str| {
            self.procs.iter().zip(&self.trace.workers).any(|(p, w)| {
                let g = &s.groups[p.group];
                g.kind == Kind::Burner && g.candidate.as_deref() == Some(c) && w.stopped_ms.is_none()
            })
        };
        if !running(&leader) {
            return None;
        }
        // Every other class with burners: a registered candidate weighs by
        // its votes; the unregistered ones' workers are one unaffiliated
        // class with none.
        let mut others: Vec<u64> = Vec::new();
        let mut unaffiliated = false;
        for g in s.groups.iter().filter(|g| g.kind == Kind::Burner) {
            let Some(c) = g.candidate.as_deref() else { continue };
            if c == leader || !running(c) {
                continue;
            }
            match votes(c) {
                Some(v) => others.push(v),
                None => unaffiliated = true,
            }
        }
        if unaffiliated {
            others.push(0);
        }
        let target_pct = effect_target(s.mode, s.expected_min_share(), votes(&leader).unwrap_or(0), &others)?;
        let mut effect =
            Effect { leader, target_pct, window_ms: EFFECT_WINDOW_MS, effect_ms: None, limit_ms: EFFECT_LIMIT_MS, polls: 0 };

        let mine: Vec<bool> = b.burners.iter().map(|(_, c)| *c == effect.leader).collect();
        let sums = |cpu: &[u64]| -> (u64, u64) {
            let lead = cpu.iter().zip(&mine).filter(|(_, m)| **m).map(|(ns, _)| ns).sum();
            (lead, cpu.iter().sum())
        };
        // Since when the new leader has led without a break.
        let named: Vec<Option<&str>> = b.answers.iter().map(|a| a.1.as_deref()).collect();
        let from = led_since(&named, &effect.leader);
        let Some(&(since, _, _)) = b.answers.get(from) else { return Some(effect) };
        let mut samples: Vec<(u64, u64, u64)> = Vec::with_capacity(b.answers.len() + (EFFECT_LIMIT_MS / EFFECT_POLL_MS) as usize);
        for (at, _, cpu) in &b.answers[from..] {
            let (lead, all) = sums(cpu);
            samples.push((at.saturating_duration_since(since).as_micros() as u64, lead, all));
        }
        let limit = since + Duration::from_millis(EFFECT_LIMIT_MS);
        let mut next_sample = Instant::now();
        loop {
            let now = Instant::now();
            let (lead, all) = sums(b.read());
            effect.polls += 1;
            samples.push((now.saturating_duration_since(since).as_micros() as u64, lead, all));
            if reached(&samples, target_pct) {
                let ms = now.saturating_duration_since(since).as_millis() as u64;
                effect.effect_ms = Some(ms);
                let t_ms = self.now_ms();
                self.trace.events.push(Event { t_ms, kind: "effect".into(), detail: format!("{} ran after {ms} ms", effect.leader) });
                break;
            }
            if now >= limit {
                break;
            }
            if now >= next_sample {
                self.sample();
                next_sample = now + Duration::from_millis(SAMPLE_MS);
            }
            std::thread::sleep(Duration::from_millis(EFFECT_POLL_MS).min(limit.saturating_duration_since(Instant::now())));
        }
        Some(effect)
    }

    fn start_scheduler(&mut self) -> Result<()> {
        let s = self.scenario;
        let mut args: Vec<String> = vec!["--stats".into(), "1".into(), "--policy".into(), s.policy.name().into()];
        if s.policy == super::spec::Policy::Election {
            let file = self.dir.join("candidates.toml");
            let mut text = String::new();
            for c in &s.candidates {
                text += &format!("[[candidate]]\nname = \"{c}\"\n\n");
            }
            std::fs::write(&file, text)?;
            args.extend(["--mode".into(), s.mode.name().into(), "--listen".into(), API.into()]);
            args.extend(["--candidates".into(), file.display().to_string()]);
            if let Some(m) = s.min_share_arg() {
                args.extend(["--min-share".into(), m.to_string()]);
            }
            if s.cap_arg() {
                args.push("--cap".into());
            }
            if let Some(m) = &s.mutant {
                args.extend(["--debug-mutant".into(), m.clone()]);
            }
        }
        // Bounded twice: `timeout` in the guest, the VM's limit on the host.
        let mut cmd = bounded(self.bin, 600);
        cmd.args(&args);
        self.sched = Some(Scheduler::start(cmd, &self.dir.join("scheduler.log"), Duration::from_secs(90), None)?);
        if s.policy == super::spec::Policy::Election {
            wait_api(API, Duration::from_secs(30))?;
        }
        self.event("attached", format!("policy {}", s.policy.name()));
        Ok(())
    }

    fn spawn_worker(&mut self, gi: usize, group: &Group) -> Result<()> {
        let mut cmd = match (&group.candidate, group.join) {
            (None, _) => Command::new(self.me),
            (Some(c), Join::Exec) => {
                let mut cmd = Command::new(self.bin);
                cmd.args(["exec", "--candidate", c, "--"]).arg(self.me);
                cmd
            }
            (Some(_), Join::Pid) => {
                let mut cmd = Command::new(self.bin);
                cmd.args(["exec", "--"]).arg(self.me);
                cmd
            }
        };
        cmd.args(["guest-worker", "--kind", group.kind.name()]);
        if group.kind == Kind::Sleepy {
            cmd.args(["--run-ms", &group.run_ms.to_string(), "--sleep-ms", &group.sleep_ms.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting a {} worker", group.id))?;
        let pid = child.id() as i32;
        let index = self.procs.iter().filter(|p| p.group == gi).count() as u32 + 1;
        self.procs.push(Running { child, group: gi });
        let started_ms = self.now_ms();
        self.trace.workers.push(Worker { group: group.id.clone(), index, pid, started_ms, stopped_ms: None });
        if let (Some(c), Join::Pid) = (&group.candidate, group.join) {
            let body = serde_json::json!({ "kind": "pid", "pid": pid }).to_string();
            api("POST", &format!("/candidates/{c}/members"), Some(&body))
                .with_context(|| format!("adding pid {pid} to {c}"))?;
        }
        Ok(())
    }

    /// Stops (SIGKILL) the last-started running workers of `cand`.
    fn stop_workers(&mut self, cand: &str, how: Stop) -> usize {
        let mine: Vec<usize> = (0..self.procs.len())
            .rev()
            .filter(|&i| self.trace.workers[i].stopped_ms.is_none())
            .filter(|&i| self.scenario.groups[self.procs[i].group].candidate.as_deref() == Some(cand))
            .collect();
        let n = match how {
            Stop::All => mine.len(),
            Stop::Some(n) => (n as usize).min(mine.len()),
        };
        for &i in &mine[..n] {
            let _ = self.procs[i].child.kill();
            let _ = self.procs[i].child.wait();
            let t = self.now_ms();
            self.trace.workers[i].stopped_ms = Some(t);
        }
        n
    }

    fn counters(&self) -> Vec<Option<(u64, u64, u64)>> {
        self.trace
            .workers
            .iter()
            .map(|w| if w.stopped_ms.is_some() { None } else { schedstat(w.pid) })
            .collect()
    }

    /// Samples every worker's CPU time for the timeline.
    fn sample(&mut self) {
        let t_ms = self.now_ms();
        let cpu_ns = self.counters().into_iter().map(|c| c.map(|c| c.0)).collect();
        self.trace.samples.push(Sample { t_ms, cpu_ns });
    }

    /// Waits `d`, sampling every worker's CPU time for the timeline.
    fn sample_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            self.sample();
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(SAMPLE_MS)));
        }
    }

    /// Stops everything the run started, whatever happened.
    fn finish(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(mut sched) = self.sched.take() {
            // SIGINT to `timeout`, which forwards it to scx_ballot.
            self.trace.scheduler_exit = sched.stop().and_then(|s| s.code());
        }
        wait_state("disabled", Duration::from_secs(30));
        self.trace.state_after = sched_state();
        self.trace.wall_ms = self.now_ms();
    }
}

/// One request to the guest's voting server.
fn api(method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value> {
    crate::guest::scheduler::api(API, method, path, body)
}

#[derive(Args, Debug)]
pub struct GuestWorkerCmd {
    /// burner: spins; sleepy: runs run_ms, sleeps sleep_ms; ticker: wakes
    /// every millisecond and records how late (for `--report`).
    #[arg(long, value_parser = ["burner", "sleepy", "ticker"])]
    kind: String,
    /// Burner: stop after this many million rounds of work (fixed work).
    #[arg(long)]
    iterations: Option<u64>,
    /// Ticker: where to write the wake-up delays (JSON).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Sleepy: CPU time per round, in milliseconds.
    #[arg(long, default_value_t = 2)]
    run_ms: u64,
    /// Sleepy: sleep per round, in milliseconds.
    #[arg(long, default_value_t = 8)]
    sleep_ms: u64,
    /// The worker exits by itself after this long, whatever happens.
    #[arg(long, default_value_t = 600)]
    max_secs: u64,
}

impl GuestWorkerCmd {
    pub fn run(self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(self.max_secs);
        let mut x = 0u64;
        if self.kind == "ticker" {
            return ticker(end, self.report.as_deref());
        }
        let mut rounds = 0u64;
        while Instant::now() < end && self.iterations.is_none_or(|n| rounds < n) {
            rounds += 1;
            if self.kind == "burner" {
                for i in 0..1_000_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            } else {
                let until = thread_cpu() + Duration::from_millis(self.run_ms);
                while thread_cpu() < until {
                    for i in 0..1000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                std::thread::sleep(Duration::from_millis(self.sleep_ms));
            }
        }
        Ok(())
    }
}

/// Wakes at every millisecond until `end`; writes how late each wake-up
/// was (p50, p99, max, in microseconds) to `report`.
fn ticker(end: Instant, report: Option<&Path>) -> Result<()> {
    let mut late_us: Vec<u64> = Vec::new();
    let mut next = Instant::now() + Duration::from_millis(1);
    while next < end {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        late_us.push(Instant::now().saturating_duration_since(next).as_micros() as u64);
        next += Duration::from_millis(1);
        // After a long stall, count from now rather than catch up at once.
        let now = Instant::now();
        if next < now {
            next = now + Duration::from_millis(1);
        }
    }
    late_us.sort_unstable();
    let pct = |p: f64| late_us.get(((late_us.len() as f64 * p) as usize).min(late_us.len().saturating_sub(1))).copied().unwrap_or(0);
    let out = serde_json::json!({"wakeups": late_us.len(), "p50_us": pct(0.5), "p99_us": pct(0.99), "max_us": late_us.last().copied().unwrap_or(0)});
    if let Some(path) = report {
        std::fs::write(path, out.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_is_one_that_was_not_leading() {
        assert_eq!(new_leader(None, Some("blue")), Some("blue"));
        assert_eq!(new_leader(Some("blue"), Some("red")), Some("red"));
        assert_eq!(new_leader(Some("blue"), Some("blue")), None);
        assert_eq!(new_leader(Some("blue"), None), None);
        assert_eq!(new_leader(None, None), None);
    }

    #[test]
    fn the_effect_counts_from_the_answer_that_made_the_leader() {
        // Landslide: blue leads from its first vote on.
        assert_eq!(led_since(&[Some("blue"), Some("blue"), Some("blue")], "blue"), 0);
        assert_eq!(led_since(&[None, Some("blue"), Some("blue")], "blue"), 1);
        // Red took the lead, then blue took it back.
        assert_eq!(led_since(&[Some("blue"), Some("red"), Some("blue")], "blue"), 2);
    }

    #[test]
    fn the_target_is_halfway_to_the_aim() {
        // Two candidates, min share 5: from 50% to 95%.
        assert_eq!(effect_target(Mode::Winner, 5.0, 10, &[1]), Some(72.5));
        // Three: from 33.3% to 90%.
        let t = effect_target(Mode::Winner, 5.0, 8, &[5, 0]).unwrap();
        assert!((t - (100.0 / 3.0 + 90.0) / 2.0).abs() < 1e-9, "{t}");
        // Proportional 11:3 weighs 12:4: from 50% to 75%.
        assert_eq!(effect_target(Mode::Proportional, 5.0, 11, &[3]), Some(62.5));
        // Nothing to compare with, or no change worth timing.
        assert_eq!(effect_target(Mode::Winner, 5.0, 3, &[]), None);
        assert_eq!(effect_target(Mode::Proportional, 5.0, 1, &[1]), None);
        assert_eq!(effect_target(Mode::Proportional, 5.0, 2, &[1]), Some(55.0));
        assert_eq!(effect_target(Mode::Winner, 50.0, 2, &[1]), None);
    }

    #[test]
    fn the_share_is_judged_over_the_trailing_window() {
        let ms = |t: u64| t * 1000;
        // Too short a window just after the vote.
        assert!(!reached(&[(0, 0, 0), (ms(4), 4, 4)], 70.0));
        // 10 ms, all the leader's.
        assert!(reached(&[(0, 0, 0), (ms(10), 10, 10)], 70.0));
        // Even for 20 ms, then all the leader's for 20 ms: only the last
        // 20 ms count.
        let mut s = vec![(0, 0, 0), (ms(20), 10, 20)];
        assert!(!reached(&s, 70.0));
        s.push((ms(30), 20, 30));
        assert!(!reached(&s, 70.0));
        s.push((ms(40), 30, 40));
        assert!(reached(&s, 70.0));
        // No CPU at all is no effect.
        assert!(!reached(&[(0, 5, 5), (ms(30), 5, 5)], 70.0));
    }

    #[test]
    fn the_cpu_clock_of_a_process_is_its_cpu_time() {
        let me = std::process::id() as i32;
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let own = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
        let read = nix::time::clock_gettime(cpu_clock(me)).unwrap();
        let (own, read) = (own.tv_sec() as u64 * 1_000_000_000 + own.tv_nsec() as u64, read.tv_sec() as u64 * 1_000_000_000 + read.tv_nsec() as u64);
        assert!(read >= own && read - own < 1_000_000_000, "{read} {own}");

        // Another process: the count of its schedstat.
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let pid = child.id() as i32;
        let clock = nix::time::clock_gettime(cpu_clock(pid)).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
        let stat = schedstat(pid).map(|s| s.0);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(clock.ok(), stat);
    }
}
