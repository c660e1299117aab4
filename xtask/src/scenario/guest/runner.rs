//! Running one scenario in the VM: its workers, phases, ballots and
//! samples, recorded into a [`Trace`].

use scx_ballot_api::Tally;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cgroup::Cgroups;
use crate::scenario::spec::{Group, Join, Kind, Scenario, Stop, Under};
use crate::scenario::trace::{Effect, Event, PhaseRecord, Sample, Trace, Worker};
use crate::guest::scheduler::{Scheduler, bounded, state as sched_state, wait_api, wait_state};

use super::{API, SAMPLE_MS, EFFECT_POLL_MS, EFFECT_WINDOW_MS, EFFECT_LIMIT_MS, say, schedstat, new_leader, led_since, effect_target, reached, Ballots};

struct Running {
    child: Child,
    group: usize,
}

pub(super) struct Runner<'a> {
    scenario: &'a Scenario,
    cpus: u32,
    bin: &'a Path,
    me: &'a Path,
    dir: &'a Path,
    start: Instant,
    sched: Option<Scheduler>,
    procs: Vec<Running>,
    cgroups: Cgroups,
    pub(super) trace: Trace,
}

impl<'a> Runner<'a> {
    pub(super) fn new(scenario: &'a Scenario, iteration: u32, cpus: u32, bin: &'a Path, me: &'a Path, dir: &'a Path) -> Self {
        let trace = Trace {
            run: scenario.run_name(),
            scenario: scenario.name.clone(),
            iteration,
            cpus,
            sample_ms: SAMPLE_MS,
            scheduler_log: dir.join("scheduler.log").display().to_string(),
            ..Default::default()
        };
        Runner { scenario, cpus, bin, me, dir, start: Instant::now(), sched: None, procs: Vec::new(), cgroups: Cgroups::default(), trace }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn event(&mut self, kind: &str, detail: String) {
        let t_ms = self.now_ms();
        self.trace.events.push(Event { t_ms, kind: kind.into(), detail });
    }

    pub(super) fn run(&mut self) -> Result<()> {
        if sched_state() != "disabled" {
            bail!("a sched_ext scheduler is still loaded before the scenario (state {})", sched_state());
        }
        // A journal left by an earlier run of the same name would replay.
        let _ = std::fs::remove_file(self.journal());
        self.start_scheduler()?;
        self.cgroups = Cgroups::create(&self.scenario.groups)?;
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
            if phase.restart {
                self.restart_scheduler()?;
            }
            // The candidates' burners' CPU time at each ballot answer, to
            // time a change of leader from the answer that made it.
            let mut ballots = Ballots::new(if self.scenario.is_election() { self.candidate_burners() } else { Vec::new() });
            for name in &phase.register {
                let answer: Tally = api("POST", "/candidates", Some(&serde_json::json!({ "name": name, "members": [] }).to_string()))
                    .with_context(|| format!("registering {name}"))?;
                ballots.answer(answer);
                self.event("register", name.clone());
            }
            for (cand, n) in &phase.votes {
                for i in 0..*n {
                    let voter = format!("{}-{}-{cand}-{i}", self.trace.run, phase.name.replace(' ', "_"));
                    let body = serde_json::json!({ "candidate": cand, "voter": voter }).to_string();
                    let answer: Tally = api("POST", "/votes", Some(&body)).with_context(|| format!("voting for {cand}"))?;
                    ballots.answer(answer);
                }
                self.event("votes", format!("{cand} +{n}"));
            }
            for name in &phase.remove {
                let answer: Tally = api("DELETE", &format!("/candidates/{name}"), None).with_context(|| format!("removing {name}"))?;
                ballots.answer(answer);
                self.event("remove", name.clone());
            }
            for (cand, how) in &phase.stop {
                let n = self.stop_workers(cand, *how);
                self.event("stop", format!("{cand}: {n} worker(s)"));
            }
            let steps_done = Instant::now();
            let effect = if ballots.answers.is_empty() || !self.scenario.is_election() {
                None
            } else {
                if ballots.tally.is_none() {
                    // An answer without the tally: time from the last one.
                    let tally: Tally = api("GET", "/votes", None).context("reading the tally")?;
                    ballots.restart(tally);
                }
                self.time_to_effect(leader.as_deref(), ballots)
            };
            let tally = match self.scenario.is_election() {
                true => Some(api::<Tally>("GET", "/votes", None).context("reading the tally")?),
                false => None,
            };
            if let Some(t) = &tally {
                leader = t.leader.clone();
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
        let after = tally.leader.as_deref();
        let leader = new_leader(before, after)?.to_string();
        let votes = |c: &str| tally.votes.get(c).copied();
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
        if let Some(under) = &s.under {
            return self.start_under(under);
        }
        let mut args: Vec<String> = vec!["--stats".into(), "1".into(), "--policy".into(), s.policy.as_str().into()];
        if s.policy == crate::scenario::spec::Policy::Election {
            let file = self.dir.join("candidates.toml");
            let mut text = String::new();
            for c in &s.candidates {
                text += &format!("[[candidate]]\nname = \"{c}\"\n\n");
            }
            std::fs::write(&file, text)?;
            args.extend(["--mode".into(), s.mode.as_str().into(), "--listen".into(), API.into()]);
            args.extend(["--candidates".into(), file.display().to_string()]);
            if let Some(m) = s.min_share_arg() {
                args.extend(["--min-share".into(), m.to_string()]);
            }
            if s.cap_arg() {
                args.push("--cap".into());
            }
            if s.phases.iter().any(|p| p.restart) && !s.scheduler_no_journal {
                args.extend(["--votes-file".into(), self.journal().display().to_string()]);
            }
            if let Some(m) = &s.mutant {
                args.extend(["--debug-mutant".into(), m.clone()]);
            }
        }
        // Bounded twice: `timeout` in the guest, the VM's limit on the host.
        let mut cmd = bounded(self.bin, 600);
        cmd.args(&args);
        self.sched = Some(Scheduler::start(cmd, &self.dir.join("scheduler.log"), Duration::from_secs(90), None)?);
        if s.policy == crate::scenario::spec::Policy::Election {
            wait_api(API, Duration::from_secs(30))?;
        }
        self.event("attached", format!("policy {}", s.policy.as_str()));
        Ok(())
    }

    /// The votes journal of a scenario that restarts its scheduler.
    fn journal(&self) -> std::path::PathBuf {
        self.dir.join("votes.journal")
    }

    /// SIGKILLs the scheduler (the process `timeout` runs, not `timeout`),
    /// waits until sched_ext has let go, and starts it again with the same
    /// arguments, so on the same votes journal. Its output so far stays in
    /// `scheduler.killed.log`.
    fn restart_scheduler(&mut self) -> Result<()> {
        let Some(mut sched) = self.sched.take() else { bail!("restart: no scheduler runs") };
        let pid = sched.pid();
        if pid == sched.child.id() {
            bail!("restart: the scheduler (the child of timeout) is not there");
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
            .context("restart: SIGKILL")?;
        let _ = sched.child.wait();
        if !wait_state("disabled", Duration::from_secs(30)) {
            bail!("restart: sched_ext state is {} 30 s after SIGKILL, expected disabled", sched_state());
        }
        self.event("restart", format!("scheduler (pid {pid}) SIGKILLed"));
        let log = self.dir.join("scheduler.log");
        let _ = std::fs::rename(&log, self.dir.join("scheduler.killed.log"));
        self.start_scheduler()
    }

    /// A workload scenario's scheduler: none for EEVDF, scx_ballot with a
    /// policy, or another sched_ext binary; attached once sched_ext says
    /// `enabled`.
    fn start_under(&mut self, under: &Under) -> Result<()> {
        let (bin, args): (&Path, Vec<String>) = match under {
            Under::Eevdf => {
                self.event("attached", "none: EEVDF".into());
                return Ok(());
            }
            Under::Ballot(p) => (self.bin, vec!["--stats".into(), "1".into(), "--policy".into(), p.as_str().into()]),
            Under::Binary { path, args, .. } => (Path::new(path), args.clone()),
        };
        let mut cmd = bounded(bin, 600);
        cmd.args(&args);
        self.sched = Some(Scheduler::start(cmd, &self.dir.join("scheduler.log"), Duration::from_secs(90), None)?);
        let ops = std::fs::read_to_string("/sys/kernel/sched_ext/root/ops").unwrap_or_default();
        self.event("attached", format!("{} ({})", under.name(), ops.trim()));
        Ok(())
    }

    fn spawn_worker(&mut self, gi: usize, group: &Group) -> Result<()> {
        let mut cmd = match (&group.candidate, group.join) {
            // A workload group's workers are SCHED_EXT (whoever schedules
            // them), at the group's nice level, on its CPUs.
            (None, _) if self.scenario.workload => {
                let mut cmd = match group.cpus.iter().max() {
                    None => Command::new("nice"),
                    Some(&top) if top >= self.cpus => {
                        bail!("group {}: CPU {top} is not in this machine's {} (run with more --cpus)", group.id, self.cpus)
                    }
                    Some(_) => {
                        let list: Vec<String> = group.cpus.iter().map(u32::to_string).collect();
                        let mut cmd = Command::new("taskset");
                        cmd.args(["--cpu-list", &list.join(","), "nice"]);
                        cmd
                    }
                };
                cmd.args(["-n", &group.nice.to_string()]).arg(self.bin).args(["exec", "--"]).arg(self.me);
                cmd
            }
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
        self.cgroups.join(group, pid)?;
        let started_ms = self.now_ms();
        self.trace.workers.push(Worker { group: group.id.clone(), index, pid, started_ms, stopped_ms: None });
        if let (Some(c), Join::Pid) = (&group.candidate, group.join) {
            let body = serde_json::json!({ "kind": "pid", "pid": pid }).to_string();
            api::<Tally>("POST", &format!("/candidates/{c}/members"), Some(&body))
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
    pub(super) fn finish(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.cgroups.remove();
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
fn api<T: serde::de::DeserializeOwned>(method: &str, path: &str, body: Option<&str>) -> Result<T> {
    crate::guest::scheduler::api(API, method, path, body)
}
