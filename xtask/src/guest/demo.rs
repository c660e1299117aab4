//! The live election behind `cargo xtask run`: `xtask demo` starts
//! scx_ballot with the election policy and its voting server, CPU burners
//! for each demo candidate, and prints a line a second with the tally and
//! each candidate's CPU share (and what the rest of the machine took: the
//! scheduler's own threads, everything else), until its time is up, SIGINT/SIGTERM, or a
//! stop file appears (how the host asks a VM to stop). Then it stops the
//! workers and the scheduler and prints the scheduler's exit info.
//!
//! The same binary runs on a sched_ext host (as root) and inside the VM
//! (the guest sees the host's files).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use scx_ballot_api::{Candidate, Schedule, Tally};
use crate::guest::scheduler::{Scheduler, api as api_at, cpu_ticks, online_cpus, state, uname_r};

#[derive(Args, Debug)]
pub struct DemoCmd {
    /// The scx_ballot binary.
    #[arg(long)]
    scx_ballot: PathBuf,
    /// Where scx_ballot's output goes (and the stop file is looked for).
    #[arg(long)]
    out: PathBuf,
    /// Stop after this many seconds (0: until interrupted or stopped).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Where the voting server listens.
    #[arg(long, default_value = "127.0.0.1:7447")]
    listen: String,
    /// The URL to show for the voting page (the forwarded one in a VM).
    #[arg(long)]
    public_url: Option<String>,
    /// The candidates file; the demo's own (blue and red) by default.
    #[arg(long)]
    candidates: Option<PathBuf>,
    /// CPU burners started per candidate per CPU (0 for none; default 1).
    /// With your own --candidates the default is none: your processes join
    /// by the file's rules.
    #[arg(long)]
    workers_per_cpu: Option<u32>,
    /// Flags for scx_ballot.
    #[arg(last = true)]
    sched_args: Vec<String>,
}

impl DemoCmd {
    pub fn run(self) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
        std::fs::create_dir_all(&self.out)?;
        let stop_file = self.out.join("stop");
        let _ = std::fs::remove_file(&stop_file);
        let demo_file = self.candidates.is_none();
        let candidates = self.candidates.clone().unwrap_or_else(|| crate::project_root().join("vm/demo-candidates.toml"));
        let log_path = self.out.join("scx_ballot.log");
        let cpus = online_cpus();
        println!("demo: kernel {}, {cpus} CPUs; starting scx_ballot --policy election {}", uname_r(), self.sched_args.join(" "));
        let mut cmd = Command::new(&self.scx_ballot);
        cmd.args(["--policy", "election", "--listen", &self.listen, "--candidates"])
            .arg(&candidates)
            .arg("--votes-file")
            .arg(self.out.join("votes.journal"))
            .args(&self.sched_args);
        let mut workers: Vec<Child> = Vec::new();
        let (result, status) = match Scheduler::start(cmd, &log_path, Duration::from_secs(90), Some(&stop)) {
            Ok(mut sched) => {
                let result = self.live(&mut sched.child, &mut workers, &stop, &stop_file, demo_file, cpus);
                println!("demo: scx_ballot's CPU time by thread: {}", threads_cpu(sched.child.id()));
                for w in &mut workers {
                    let _ = w.kill();
                    let _ = w.wait();
                }
                let status = match sched.stop() {
                    Some(st) => format!("exited {}", st.code().map(|c| c.to_string()).unwrap_or_else(|| st.to_string())),
                    None => "did not stop within 30 s of SIGINT and was killed".into(),
                };
                (result, status)
            }
            Err(e) => (Err(e), "did not attach".to_string()),
        };
        println!("demo: {} worker(s) stopped; scx_ballot {}; sched_ext state {}", workers.len(), status, state());
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("EXIT") || l.contains("detached") || l.contains("rror") || l.contains("voting server"))
            .collect();
        println!("demo: scx_ballot's exit info (whole output in {}):", log_path.display());
        for l in tail.iter().rev().take(6).rev() {
            println!("  {l}");
        }
        result
    }

    fn live(
        &self,
        sched: &mut Child,
        workers: &mut Vec<Child>,
        stop: &AtomicBool,
        stop_file: &std::path::Path,
        demo_file: bool,
        cpus: u32,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let local = self.listen.replace("0.0.0.0", "127.0.0.1");
        let names: Vec<String> = loop {
            match api_at::<Vec<Candidate>>(&local, "GET", "/candidates", None) {
                Ok(v) => break v.into_iter().map(|c| c.name).collect(),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => bail!("the voting server does not answer on {local}: {e:#}"),
            }
        };
        println!("demo: sched_ext state enabled; candidates: {}", names.join(", "));
        let per_cpu = self.workers_per_cpu.unwrap_or(if demo_file { 1 } else { 0 });
        for name in &names {
            for _ in 0..per_cpu * cpus {
                let child = Command::new(&self.scx_ballot)
                    .args(["exec", "--candidate", name, "--", "sh", "-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting a burner for {name}"))?;
                workers.push(child);
            }
        }
        if per_cpu > 0 {
            println!("demo: {} CPU burner(s) per candidate (scx_ballot exec --candidate NAME)", per_cpu * cpus);
        }
        let url = self.public_url.clone().unwrap_or_else(|| format!("http://{local}/"));
        println!("demo: vote at {url} (the ballot page), or:");
        println!("  curl -X POST -H 'Content-Type: application/json' -d '{{\"candidate\":\"{}\",\"voter\":\"me\"}}' {url}votes   (one vote per voter id: vote again to move it)", names.first().map(String::as_str).unwrap_or("blue"));
        println!("demo: Ctrl-C stops everything{}", if self.seconds > 0 { format!(" (or it stops by itself after {} s)", self.seconds) } else { String::new() });
        let start = Instant::now();
        let mut t = 0u64;
        let mut usage = Usage::read(sched.id());
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if stop.load(Ordering::Relaxed) || stop_file.exists() {
                println!("demo: stopping");
                return Ok(());
            }
            if let Some(st) = sched.try_wait()? {
                bail!("scx_ballot exited on its own ({st})");
            }
            let elapsed = start.elapsed().as_secs();
            if elapsed <= t {
                continue;
            }
            t = elapsed;
            let now = Usage::read(sched.id());
            let (line, candidates) = live_line(t, &local);
            // What the candidates did not take: the scheduler process, and
            // the rest (the kernel, this demo, the guest's own threads).
            let rest = match (&usage, &now) {
                (Some(a), Some(b)) => b
                    .since(a, cpus)
                    .map(|(s, busy)| format!("  (scheduler {s:.1}%, other {:.1}%)", (busy - s - candidates).max(0.0)))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            usage = now;
            println!("{line}{rest}");
            if self.seconds > 0 && t >= self.seconds {
                return Ok(());
            }
        }
    }
}

/// The machine's busy time and the scheduler process's (all its threads:
/// the policy loop, the voting server, the tracker), in clock ticks.
struct Usage {
    at: Instant,
    busy: u64,
    sched: u64,
}

/// `scx_ballot 3.10 s, membership 0.80 s, ...`: each thread's CPU time so
/// far, most first (the policy loop is the process's first thread).
fn threads_cpu(pid: u32) -> String {
    let mut threads: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((comm.trim().to_string(), cpu_ticks(&stat)?))
        })
        .collect();
    threads.sort_by_key(|t| std::cmp::Reverse(t.1));
    let parts: Vec<String> = threads.iter().map(|(n, t)| format!("{n} {:.2} s", *t as f64 / USER_HZ)).collect();
    if parts.is_empty() { "unknown".into() } else { parts.join(", ") }
}

/// Clock ticks per second of `/proc/stat` and `/proc/PID/stat` (USER_HZ,
/// 100 on every architecture sched_ext runs on).
const USER_HZ: f64 = 100.0;

impl Usage {
    fn read(pid: u32) -> Option<Usage> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu  user nice system idle iowait irq softirq steal ...
        let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let busy = f.iter().take(8).sum::<u64>().checked_sub(*f.get(3)? + *f.get(4)?)?;
        let sched = cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        Some(Usage { at: Instant::now(), busy, sched })
    }

    /// The scheduler's share of the machine since `before`, and the share
    /// of everything that is neither the scheduler nor idle, in percent.
    /// The candidates are in the second; the caller takes them out.
    fn since(&self, before: &Usage, cpus: u32) -> Option<(f64, f64)> {
        let whole = self.at.duration_since(before.at).as_secs_f64() * USER_HZ * cpus as f64;
        if whole <= 0.0 {
            return None;
        }
        let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 * 100.0 / whole;
        Some((pct(self.sched, before.sched), pct(self.busy, before.busy)))
    }
}

/// `t=12s  blue 3 votes 94.8% CPU | red 1 vote 4.9% CPU | leader blue  [enabled]`
/// and the candidates' CPU time together, in percent of the machine.
fn live_line(t: u64, addr: &str) -> (String, f64) {
    let votes = api_at::<Tally>(addr, "GET", "/votes", None);
    let schedule = api_at::<Schedule>(addr, "GET", "/schedule", None);
    let (votes, schedule) = match (votes, schedule) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(e), _) | (_, Err(e)) => return (format!("t={t}s  voting server: {e:#}"), 0.0),
    };
    let candidates = schedule.candidates.values().map(|s| s.share * 100.0).sum();
    (format!("t={t}s  {}  [{}]", format_line(&votes, &schedule), state()), candidates)
}

pub fn format_line(votes: &Tally, schedule: &Schedule) -> String {
    let mut parts = Vec::new();
    for (name, &n) in &votes.votes {
        let share = schedule.candidates.get(name).map_or(0.0, |s| s.share);
        parts.push(format!("{name} {n} vote{} {:.1}% CPU", if n == 1 { "" } else { "s" }, share * 100.0));
    }
    let leader = votes.leader.as_deref().unwrap_or("none");
    format!("{} | leader {leader}", parts.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_command_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 5 0 0";
        assert_eq!(cpu_ticks(line), Some(280));
        assert_eq!(cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn the_live_line_shows_tally_share_and_leader() {
        let votes: Tally = serde_json::from_value(serde_json::json!({"votes": {"blue": 3, "red": 1}, "leader": "blue", "generation": 4}))
            .expect("a tally");
        let schedule: Schedule = serde_json::from_value(serde_json::json!({"window_ms": 1000, "leader": "blue", "pids": {},
            "candidates": {"blue": {"share": 0.948, "cpu_ns": 1}, "red": {"share": 0.049, "cpu_ns": 1}}}))
            .expect("a schedule");
        assert_eq!(format_line(&votes, &schedule), "blue 3 votes 94.8% CPU | red 1 vote 4.9% CPU | leader blue");
    }
}
