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

use super::spec::{Group, Join, Kind, Scenario, Stop};
use super::trace::{Event, PhaseRecord, Sample, Trace, Worker};
use crate::guest::{Scheduler, bounded, online_cpus, state as sched_state, wait_api, wait_state};

/// Where the voting server listens in the guest.
const API: &str = "127.0.0.1:7447";
/// How often the timeline is sampled.
const SAMPLE_MS: u64 = 100;

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
        for phase in &self.scenario.phases {
            let start_ms = self.now_ms();
            self.event("phase", phase.name.clone());
            for name in &phase.register {
                api("POST", "/candidates", Some(&serde_json::json!({ "name": name, "members": [] }).to_string()))
                    .with_context(|| format!("registering {name}"))?;
                self.event("register", name.clone());
            }
            for (cand, n) in &phase.votes {
                for i in 0..*n {
                    let voter = format!("{}-{}-{cand}-{i}", self.trace.run, phase.name.replace(' ', "_"));
                    let body = serde_json::json!({ "candidate": cand, "voter": voter }).to_string();
                    api("POST", "/votes", Some(&body)).with_context(|| format!("voting for {cand}"))?;
                }
                self.event("votes", format!("{cand} +{n}"));
            }
            for name in &phase.remove {
                api("DELETE", &format!("/candidates/{name}"), None).with_context(|| format!("removing {name}"))?;
                self.event("remove", name.clone());
            }
            for (cand, how) in &phase.stop {
                let n = self.stop_workers(cand, *how);
                self.event("stop", format!("{cand}: {n} worker(s)"));
            }
            let tally = match self.scenario.policy {
                super::spec::Policy::Election => Some(api("GET", "/votes", None).context("reading the tally")?),
                _ => None,
            };
            self.sample_for(Duration::from_millis(phase.settle_ms));
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
            say(&format!("  phase {:?}: {} (state {})", phase.name, shown.join(", "), rec.state));
            self.trace.phases.push(rec);
        }
        Ok(())
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
            if let Some(m) = s.min_share {
                args.extend(["--min-share".into(), m.to_string()]);
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

    /// Waits `d`, sampling every worker's CPU time for the timeline.
    fn sample_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let t_ms = self.now_ms();
            let cpu_ns = self.counters().into_iter().map(|c| c.map(|c| c.0)).collect();
            self.trace.samples.push(Sample { t_ms, cpu_ns });
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
    crate::guest::api(API, method, path, body)
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
