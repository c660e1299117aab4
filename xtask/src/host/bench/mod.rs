//! `cargo xtask bench`: what scheduling costs, measured the same way every
//! time, as ratios taken in one VM run. For each configuration (EEVDF, i.e.
//! no sched_ext scheduler; scx_ballot `fifo`, `vruntime`, `election`; with
//! `--compare`, scx_rustland and scx_rlfifo from crates.io) the guest
//! (`guest/bench/`) runs each workload several times; here the medians
//! are taken, compared with EEVDF, printed, and written to `target/bench/`
//! as JSON and an SVG bar chart.
//!
//! Timings are reported, never asserted: the command fails only when a
//! configuration crashes or is ejected.


use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use xshell::Shell;

use crate::guest::bench::{Config, Plan, Raw, Workload};
use crate::common::vm::VmOpts;
use crate::host::vm_test::{fresh_dir, path_arg};
use crate::common::{compile, vm};
use crate::host::deps;
use crate::project_root;

mod report;

pub use report::{Row, table, svg};

#[derive(Args, Debug)]
pub struct BenchCmd {
    #[command(flatten)]
    pub vm: VmOpts,

    /// Runs of each workload per configuration (the median is reported).
    /// More runs, steadier medians, longer bench.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,

    /// Also measure scx_rustland, scx_rlfifo and scx_bpfland, installed from crates.io
    /// into the project's cache (`cargo install`, several minutes the first
    /// time).
    #[arg(long)]
    pub compare: bool,

    /// hackbench groups (each 20 tasks) and loops. Bigger is steadier and
    /// slower (TCG runs a few times slower than a real machine).
    #[arg(long, default_value_t = 4)]
    pub groups: u32,
    #[arg(long, default_value_t = 200)]
    pub loops: u32,

    /// Only these measurements (comma-separated; all by default), e.g.
    /// `--workloads vote-effect --configs election` to follow one number
    /// while working on it.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<Workload>,

    /// Only these configurations, by name (comma-separated; all by
    /// default): eevdf, fifo, vruntime, election, and with --compare
    /// scx_rustland, scx_rlfifo, scx_bpfland.
    #[arg(long, value_delimiter = ',')]
    pub configs: Vec<String>,
}

/// Targets the issue names (reported against, never asserted).
const TARGET_VOTE_P99_MS: f64 = 50.0;
const TARGET_VOTES_PER_S: f64 = 10_000.0;
/// Open ballot pages (event streams) beside the voters in the room load.
const ROOM_VIEWERS: u32 = 1000;
const TARGET_RSS_MIB: f64 = 32.0;

impl BenchCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        deps::ensure_bench_deps(sh)?;
        let bin = compile::build_scheduler(sh)?;
        let mut configs = vec![Config::eevdf()];
        for p in ["fifo", "vruntime", "election"] {
            configs.push(Config::ballot(&bin, p));
        }
        if self.compare {
            // scx_rustland has --partial; scx_rlfifo and scx_bpfland (all
            // BPF: the limit a user-space policy can come near) always take
            // every task.
            for (name, partial) in [
                ("scx_rustland", Some(vec!["--partial".to_string()])),
                ("scx_rlfifo", None),
                ("scx_bpfland", None),
            ] {
                let binary = compile::install_scx(sh, name)?;
                configs.push(Config {
                    name: name.into(),
                    binary: Some(binary),
                    ballot: false,
                    partial_args: partial,
                    full_args: vec![],
                });
            }
        }
        if !self.configs.is_empty() {
            let known: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
            if let Some(bad) = self.configs.iter().find(|n| !known.contains(n)) {
                bail!("--configs: no configuration {bad:?} (this run has: {})", known.join(", "));
            }
            configs.retain(|c| self.configs.contains(&c.name));
        }
        let workloads =
            if self.workloads.is_empty() { Workload::ALL.to_vec() } else { self.workloads.clone() };
        let (tools, kernel, accel) = self.vm.prepare(sh)?;
        let out = fresh_dir(&project_root().join("target/bench"))?;
        let plan = Plan {
            configs,
            repeat: self.repeat,
            hackbench: (self.groups, self.loops),
            cpu_work: 40,
            latency_secs: 3,
            flips: 20,
            vote_secs: 3,
            vote_connections: 16,
            room_viewers: ROOM_VIEWERS,
            kernel_config: kernel.config.clone(),
            workloads,
        };
        let plan_path = out.join("plan.json");
        std::fs::write(&plan_path, serde_json::to_vec_pretty(&plan)?)?;
        let me = std::env::current_exe().context("locating the xtask binary")?;
        let mut spec = self.vm.spec(kernel, accel, me, &out);
        spec.args = vec![
            "guest-bench".into(),
            path_arg(&plan_path)?,
            path_arg(&out)?,
            path_arg(&bin)?,
        ];
        spec.timeout = spec.timeout.max(std::time::Duration::from_secs(
            600 + 240 * plan.configs.len() as u64 * u64::from(self.repeat),
        ));
        println!(
            "==> booting the VM once ({accel}, {} vCPUs) for {} configurations x {} runs",
            spec.cpus,
            plan.configs.len(),
            self.repeat
        );
        let started = std::time::Instant::now();
        let outcome = vm::boot(sh, &tools, &spec)?;
        let raws: Vec<Raw> = std::fs::read(out.join("raw.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut failures: Vec<String> = plan
            .configs
            .iter()
            .filter(|c| !raws.iter().any(|r| r.name == c.name))
            .map(|c| format!("{}: not measured (the guest stopped early)", c.name))
            .collect();
        failures.extend(
            raws.iter()
                .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name))),
        );
        let alarms = vm::scan_console(&vm::read_console(&spec.console_log).unwrap_or_default());
        failures.extend(alarms.iter().map(|a| format!("console: {a}")));
        let wedge_notes = outcome.wedge_notes();
        if let Some(stall) = &outcome.stall {
            failures.push(format!("the boot wedged twice; the second time {}", vm::describe_stall(stall)));
        } else if outcome.status != Some(0) {
            failures.push(format!(
                "the guest ended with {:?}{}",
                outcome.status,
                if outcome.timed_out {
                    " (timed out)"
                } else {
                    ""
                }
            ));
        }

        let rows: Vec<Row> = raws.iter().map(Row::from_raw).collect();
        let table = table(&rows, spec.cpus, accel.to_string().as_str(), self.repeat);
        println!("\n{table}");
        for note in &wedge_notes {
            println!("!!! {note}");
        }
        let json = json!({
            "cpus": spec.cpus,
            "accel": accel.to_string(),
            "repeat": self.repeat,
            "hackbench": {"groups": self.groups, "loops": self.loops},
            "configs": rows.iter().map(Row::json).collect::<Vec<_>>(),
            "raw": raws,
            "failures": failures,
            "wedged_boots": wedge_notes,
            "wall_s": started.elapsed().as_secs(),
        });
        std::fs::write(out.join("bench.json"), serde_json::to_vec_pretty(&json)?)?;
        std::fs::write(out.join("bench.svg"), svg(&rows))?;
        std::fs::write(out.join("bench.md"), &table)?;
        println!(
            "written: {}, {}, {}",
            out.join("bench.json").display(),
            out.join("bench.svg").display(),
            out.join("bench.md").display()
        );
        if !failures.is_empty() {
            for f in &failures {
                println!("FAILED {f}");
            }
            bail!(
                "{} configuration(s) failed; console log {}",
                failures.len(),
                spec.console_log.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
