//! The bench's runs in the VM: a configuration's scheduler started and
//! checked, then each workload (messaging, CPU work, wake-up latency,
//! vote to effect, votes/s, a room of viewers) measured under it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::guest::scheduler::{
    Scheduler, api as api_at, bounded, online_cpus as cpus, state, wait_api, 
};
use crate::vote_load::Load;

use super::{API, Bench, Raw, Sched, Workload, add_footprint};

impl Bench<'_> {
    fn start(&self, full: bool) -> Result<Option<Sched>> {
        self.start_with(full, None)
    }

    /// `start`, the election with its votes journaled in `journal`.
    fn start_with(&self, full: bool, journal: Option<&Path>) -> Result<Option<Sched>> {
        let Some(bin) = &self.cfg.binary else {
            return Ok(None);
        };
        let log = self.out.join(format!(
            "{}{}{}.log",
            self.cfg.name,
            if full { "-full" } else { "" },
            if journal.is_some() { "-journaled" } else { "" }
        ));
        let mut cmd = bounded(bin, 900);
        match (full, &self.cfg.partial_args) {
            (false, Some(args)) => cmd.args(args),
            _ => cmd.args(&self.cfg.full_args),
        };
        if self.cfg.ballot && self.cfg.name == "election" {
            let file = self.out.join("candidates.toml");
            std::fs::write(
                &file,
                "[[candidate]]\nname = \"blue\"\n\n[[candidate]]\nname = \"red\"\n",
            )?;
            cmd.args(["--listen", API, "--candidates"]).arg(file);
            if let Some(journal) = journal {
                let _ = std::fs::remove_file(journal);
                cmd.arg("--votes-file").arg(journal);
            }
        }
        let sched = Sched(Scheduler::start(cmd, &log, Duration::from_secs(120), None)?);
        if self.cfg.ballot && self.cfg.name == "election" {
            wait_api(API, Duration::from_secs(120))?;
        }
        Ok(Some(sched))
    }

    /// A command, switched to SCHED_EXT when a scheduler runs in partial
    /// mode (optionally for a candidate).
    fn ext(&self, sched: bool, candidate: Option<&str>, prog: &Path, args: &[String]) -> Command {
        if !sched {
            let mut c = Command::new(prog);
            c.args(args);
            return c;
        }
        let mut c = Command::new(self.ballot);
        c.arg("exec");
        if let Some(name) = candidate {
            c.args(["--candidate", name]);
        }
        c.arg("--").arg(prog).args(args);
        c
    }

    fn check(&self, sched: &Option<Sched>) -> Result<()> {
        if sched.is_some() && state() != "enabled" {
            bail!(
                "the scheduler is gone (sched_ext state {}): ejected or crashed",
                state()
            );
        }
        Ok(())
    }

    /// One round: every workload once, the scheduler started and stopped
    /// for it. The footprint adds up over rounds (CPU) or keeps the peak
    /// (RSS).
    pub(super) fn run(&self, raw: &mut Raw, i: u32) -> Result<()> {
        let (g, l) = self.plan.hackbench;
        let has_partial = self.cfg.partial_args.is_some();
        // Partial mode (or no sched_ext scheduler at all, for EEVDF): the
        // workloads are switched to SCHED_EXT one by one.
        if has_partial {
            let sched = self.start(false)?;
            let on = sched.is_some();
            if self.plan.wants(Workload::Messaging) {
                raw.messaging_s.push(self.hackbench(on, g, l)?);
            }
            self.cpu_and_wake(on, i, raw)?;
            self.check(&sched)?;
            if self.cfg.name == "election" && self.plan.wants(Workload::VoteEffect) {
                raw.vote_effect_ms.extend(self.vote_effect()?);
                self.check(&sched)?;
            }
            if self.cfg.name == "election" && self.plan.wants(Workload::Votes) {
                let load = self.voters().run()?;
                raw.votes_per_s.push(load.votes_per_s);
                raw.vote_answer_p50_ms.push(load.p50_us / 1000.0);
                raw.vote_answer_p99_ms.push(load.p99_us / 1000.0);
                if self.plan.room_viewers > 0 {
                    let (held, votes) = self.room_load()?;
                    raw.room_held.push(held);
                    raw.room_votes_per_s.push(votes);
                }
                self.check(&sched)?;
            }
            if let Some(s) = sched {
                add_footprint(raw, s.footprint());
                s.stop()?;
            }
            if self.cfg.ballot && self.cfg.name == "election" && self.plan.wants(Workload::Votes) {
                // The same voters against a journal: each vote on disk
                // (the guest's virtio disk) before its answer.
                let journal = self.out.join(format!("votes-{i}.journal"));
                let sched = self.start_with(false, Some(&journal))?;
                let load = self.voters().run()?;
                raw.journaled_votes_per_s.push(load.votes_per_s);
                raw.journaled_p50_ms.push(load.p50_us / 1000.0);
                raw.journaled_p99_ms.push(load.p99_us / 1000.0);
                self.check(&sched)?;
                if let Some(s) = sched {
                    s.stop()?;
                }
            }
        } else if i == 0 {
            raw.notes.push("partial mode: not measured (the scheduler has none); CPU work and wake-up latency in full mode".into());
        }
        let full_mode_work = self.plan.wants(Workload::Messaging)
            || (!has_partial && (self.plan.wants(Workload::Cpu) || self.plan.wants(Workload::Wake)));
        if self.cfg.binary.is_none() || !full_mode_work {
            return Ok(());
        }
        // Full mode: every task of the guest is the scheduler's.
        let full = self.start(true)?;
        if self.plan.wants(Workload::Messaging) {
            raw.messaging_full_s.push(self.hackbench(false, g, l)?);
        }
        if !has_partial {
            self.cpu_and_wake(false, i, raw)?;
        }
        self.check(&full)?;
        if let Some(f) = full {
            if !has_partial {
                add_footprint(raw, f.footprint());
            }
            f.stop()?;
        }
        Ok(())
    }

    /// CPU work and wake-up latency, run `i` (the scheduler's mode decides
    /// whose they are; `on` switches them to SCHED_EXT).
    fn cpu_and_wake(&self, on: bool, i: u32, raw: &mut Raw) -> Result<()> {
        if self.plan.wants(Workload::Cpu) {
            raw.cpu_s.push(self.cpu_work(on)?);
        }
        if self.plan.wants(Workload::Wake) {
            let (p50, p99) = self.wake_latency(on, i)?;
            raw.wake_p50_us.push(p50);
            raw.wake_p99_us.push(p99);
        }
        Ok(())
    }

    fn hackbench(&self, on: bool, groups: u32, loops: u32) -> Result<f64> {
        let args = vec![
            "-g".to_string(),
            groups.to_string(),
            "-l".into(),
            loops.to_string(),
        ];
        let out = self
            .ext(on, None, Path::new("hackbench"), &args)
            .stdin(Stdio::null())
            .output()
            .context("running hackbench (Debian package rt-tests)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let secs = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("Time:")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .with_context(|| {
                format!(
                    "hackbench printed no time: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        Ok(secs)
    }

    fn spawn_all(
        &self,
        on: bool,
        candidate: Option<&str>,
        n: u32,
        args: &[String],
    ) -> Result<Vec<Child>> {
        (0..n)
            .map(|_| {
                self.ext(on, candidate, self.me, args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting a worker")
            })
            .collect()
    }

    fn cpu_work(&self, on: bool) -> Result<f64> {
        let args: Vec<String> = ["guest-worker", "--kind", "burner", "--iterations"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                self.plan.cpu_work.to_string(),
                "--max-secs".into(),
                "300".into(),
            ])
            .collect();
        let start = Instant::now();
        let mut kids = self.spawn_all(on, None, 2 * cpus(), &args)?;
        for k in &mut kids {
            k.wait()?;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    fn wake_latency(&self, on: bool, i: u32) -> Result<(f64, f64)> {
        let burn: Vec<String> = ["guest-worker", "--kind", "burner", "--max-secs", "120"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut load = self.spawn_all(on, None, cpus(), &burn)?;
        let report = self.out.join(format!("{}-ticker-{i}.json", self.cfg.name));
        let tick: Vec<String> = vec![
            "guest-worker".into(),
            "--kind".into(),
            "ticker".into(),
            "--max-secs".into(),
            self.plan.latency_secs.to_string(),
            "--report".into(),
            report.display().to_string(),
        ];
        let status = self
            .ext(on, None, self.me, &tick)
            .stdin(Stdio::null())
            .status();
        for k in &mut load {
            let _ = k.kill();
            let _ = k.wait();
        }
        status.context("running the ticker")?;
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&report).context("reading the ticker's report")?,
        )?;
        Ok((
            v["p50_us"].as_f64().unwrap_or(f64::NAN),
            v["p99_us"].as_f64().unwrap_or(f64::NAN),
        ))
    }

    /// Leader flips: from the vote's acknowledgement to the first time a
    /// task of the new leader gets on a CPU (its run count in
    /// /proc/PID/schedstat moves).
    fn vote_effect(&self) -> Result<Vec<f64>> {
        let burn: Vec<String> = ["guest-worker", "--kind", "burner", "--max-secs", "300"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut blue = self.spawn_all(true, Some("blue"), 2 * cpus(), &burn)?;
        let mut red = self.spawn_all(true, Some("red"), 2 * cpus(), &burn)?;
        let result = (|| -> Result<Vec<f64>> {
            std::thread::sleep(Duration::from_millis(1500)); // membership scan
            let pids = |kids: &Vec<Child>| kids.iter().map(|k| k.id()).collect::<Vec<u32>>();
            let (bp, rp) = (pids(&blue), pids(&red));
            let runs = |p: &[u32]| -> u64 {
                p.iter()
                    .filter_map(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()
                    })
                    .filter_map(|s| {
                        s.split_whitespace()
                            .nth(2)
                            .and_then(|x| x.parse::<u64>().ok())
                    })
                    .sum()
            };
            let mut out = Vec::new();
            let mut n = 0u64;
            for flip in 0..self.plan.flips {
                let (name, mine) = if flip % 2 == 0 {
                    ("blue", &bp)
                } else {
                    ("red", &rp)
                };
                // Let the current leader settle in first.
                std::thread::sleep(Duration::from_millis(300));
                // Vote until this candidate leads; time the vote that did it.
                loop {
                    n += 1;
                    let body =
                        serde_json::json!({"candidate": name, "voter": format!("bench-{n}")})
                            .to_string();
                    // Counted before the vote: the scheduler hears of it
                    // before the voter has the acknowledgement, so a count
                    // taken after could miss the first run and wait for the
                    // next (a lease later). A run of the loser's own share
                    // starting within the request's millisecond or two would
                    // count too (the loser runs about once per 100 ms).
                    let before = runs(mine);
                    let tally: scx_ballot_api::Tally = api_at(API, "POST", "/votes", Some(&body))?;
                    let acked = Instant::now();
                    if tally.leader.as_deref() != Some(name) {
                        continue;
                    }
                    while runs(mine) == before {
                        if acked.elapsed() > Duration::from_secs(5) {
                            bail!("no task of the new leader ran within 5 s of the vote");
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    out.push(acked.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
            Ok(out)
        })();
        for k in blue.iter_mut().chain(red.iter_mut()) {
            let _ = k.kill();
            let _ = k.wait();
        }
        result
    }

    /// The voters of both loads: one vote in flight per connection, as a
    /// page sends them.
    fn voters(&self) -> Load {
        Load {
            addr: API.into(),
            candidate: "blue".into(),
            connections: self.plan.vote_connections,
            secs: self.plan.vote_secs,
            pipeline: 1,
        }
    }

    /// A room beside the scheduler: `room_viewers` open ballot pages on the
    /// event stream while the voters post; the viewers held to the end and
    /// the votes/s.
    fn room_load(&self) -> Result<(f64, f64)> {
        let viewers = crate::vote_load::Viewers::new(self.plan.room_viewers, crate::vote_load::View::Stream);
        let room = self.voters().run_with_viewers(&viewers)?;
        let held = room.viewers.map_or(0.0, |v| f64::from(v.held));
        let votes = room.voters.map_or(0.0, |v| v.votes_per_s);
        Ok((held, votes))
    }
}
