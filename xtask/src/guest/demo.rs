//! The live election behind `cargo xtask run`: `xtask demo` starts
//! scx_ballot with the election policy and its voting server, CPU burners
//! for each demo candidate, and prints a line a second with the tally and
//! each candidate's CPU share, until its time is up, SIGINT/SIGTERM, or a
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
use crate::guest::scheduler::{Scheduler, api as api_at, online_cpus, state, uname_r};

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
            println!("{}", live_line(t, &local));
            if self.seconds > 0 && t >= self.seconds {
                return Ok(());
            }
        }
    }
}

/// `t=12s  blue 3 votes 94.8% CPU | red 1 vote 4.9% CPU | leader blue  [enabled]`
fn live_line(t: u64, addr: &str) -> String {
    let votes = api_at::<Tally>(addr, "GET", "/votes", None);
    let schedule = api_at::<Schedule>(addr, "GET", "/schedule", None);
    let (votes, schedule) = match (votes, schedule) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(e), _) | (_, Err(e)) => return format!("t={t}s  voting server: {e:#}"),
    };
    format!("t={t}s  {}  [{}]", format_line(&votes, &schedule), state())
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
    fn the_live_line_shows_tally_share_and_leader() {
        let votes: Tally = serde_json::from_value(serde_json::json!({"votes": {"blue": 3, "red": 1}, "leader": "blue", "generation": 4}))
            .expect("a tally");
        let schedule: Schedule = serde_json::from_value(serde_json::json!({"window_ms": 1000, "leader": "blue", "pids": {},
            "candidates": {"blue": {"share": 0.948, "cpu_ns": 1}, "red": {"share": 0.049, "cpu_ns": 1}}}))
            .expect("a schedule");
        assert_eq!(format_line(&votes, &schedule), "blue 3 votes 94.8% CPU | red 1 vote 4.9% CPU | leader blue");
    }
}
