//! `xtask guest-worker`: one scenario workload process (burner, sleepy,
//! forker, ticker).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct GuestWorkerCmd {
    /// burner: spins; sleepy: runs run_ms, sleeps sleep_ms; forker: starts
    /// `true` and waits for it, again and again (a fork/exit storm); ticker:
    /// wakes every millisecond and records how late (for `--report`).
    #[arg(long, value_parser = ["burner", "sleepy", "forker", "ticker"])]
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
        if self.kind == "forker" {
            while Instant::now() < end {
                // A child that cannot start (out of processes) is retried.
                if let Ok(mut child) = std::process::Command::new("true").spawn() {
                    let _ = child.wait();
                }
            }
            return Ok(());
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
