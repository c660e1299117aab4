//! `cargo xtask bench`: what scheduling costs, measured the same way every
//! time, as ratios taken in one VM run. For each configuration (EEVDF, i.e.
//! no sched_ext scheduler; scx_ballot `fifo`, `vruntime`, `election`; with
//! `--compare`, scx_rustland and scx_rlfifo from crates.io) the guest
//! (`guest/bench.rs`) runs each workload several times; here the medians
//! are taken, compared with EEVDF, printed, and written to `target/bench/`
//! as JSON and an SVG bar chart.
//!
//! Timings are reported, never asserted: the command fails only when a
//! configuration crashes or is ejected.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use xshell::{Shell, cmd};

use crate::guest::bench::{Config, Plan, Raw};
use crate::common::vm::VmOpts;
use crate::host::vm_test::{fresh_dir, path_arg};
use crate::common::{compile, vm};
use crate::host::deps;
use crate::{cache_dir, project_root};

#[derive(Args, Debug)]
pub struct BenchCmd {
    #[command(flatten)]
    pub vm: VmOpts,

    /// Runs of each workload per configuration (the median is reported).
    /// More runs, steadier medians, longer bench.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,

    /// Also measure scx_rustland and scx_rlfifo, installed from crates.io
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
            // scx_rustland has --partial; scx_rlfifo always takes every task.
            for (name, partial) in [
                ("scx_rustland", Some(vec!["--partial".to_string()])),
                ("scx_rlfifo", None),
            ] {
                let binary = install_scx(sh, name)?;
                configs.push(Config {
                    name: name.into(),
                    binary: Some(binary),
                    ballot: false,
                    partial_args: partial,
                    full_args: vec![],
                });
            }
        }
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

/// `cargo install NAME` into the cache (once); its binary.
fn install_scx(sh: &Shell, name: &str) -> Result<PathBuf> {
    let root = cache_dir().join("scx");
    let bin = root.join("bin").join(name);
    if bin.exists() {
        return Ok(bin);
    }
    println!(
        "==> installing {name} from crates.io into {} (once; several minutes)",
        root.display()
    );
    let clang = compile::bpf_clang(sh)?;
    cmd!(sh, "cargo install --locked --root {root} {name}")
        .env("BPF_CLANG", clang)
        .run()
        .with_context(|| format!("cargo install {name}"))?;
    Ok(bin)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() as f64 * p) as usize).min(v.len() - 1)])
}

#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Fastest and slowest run of each timed workload.
    messaging_range: Option<(f64, f64)>,
    messaging_full_range: Option<(f64, f64)>,
    cpu_range: Option<(f64, f64)>,
    name: String,
    messaging_s: Option<f64>,
    messaging_full_s: Option<f64>,
    cpu_s: Option<f64>,
    wake_p50_us: Option<f64>,
    wake_p99_us: Option<f64>,
    vote_p50_ms: Option<f64>,
    vote_p99_ms: Option<f64>,
    votes_per_s: Option<f64>,
    vote_answer_ms: (Option<f64>, Option<f64>),
    journaled_votes_per_s: Option<f64>,
    journaled_ms: (Option<f64>, Option<f64>),
    room_held: Option<f64>,
    room_votes_per_s: Option<f64>,
    rss_mib: Option<f64>,
    sched_cpu_s: Option<f64>,
    failed: bool,
}

impl Row {
    fn from_raw(r: &Raw) -> Row {
        Row {
            messaging_range: range(&r.messaging_s),
            messaging_full_range: range(&r.messaging_full_s),
            cpu_range: range(&r.cpu_s),
            name: r.name.clone(),
            messaging_s: median(&r.messaging_s),
            messaging_full_s: median(&r.messaging_full_s),
            cpu_s: median(&r.cpu_s),
            wake_p50_us: median(&r.wake_p50_us),
            wake_p99_us: median(&r.wake_p99_us),
            vote_p50_ms: percentile(&r.vote_effect_ms, 0.5),
            vote_p99_ms: percentile(&r.vote_effect_ms, 0.99),
            votes_per_s: median(&r.votes_per_s),
            vote_answer_ms: (median(&r.vote_answer_p50_ms), median(&r.vote_answer_p99_ms)),
            journaled_votes_per_s: median(&r.journaled_votes_per_s),
            journaled_ms: (median(&r.journaled_p50_ms), median(&r.journaled_p99_ms)),
            room_held: r.room_held.iter().copied().reduce(f64::min),
            room_votes_per_s: median(&r.room_votes_per_s),
            rss_mib: r.sched_peak_rss_kib.map(|k| k as f64 / 1024.0),
            sched_cpu_s: r.sched_cpu_s,
            failed: r.failure.is_some(),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "name": self.name, "failed": self.failed,
            "messaging_s": self.messaging_s, "messaging_full_s": self.messaging_full_s,
            "cpu_s": self.cpu_s, "wake_p50_us": self.wake_p50_us, "wake_p99_us": self.wake_p99_us,
            "vote_effect_p50_ms": self.vote_p50_ms, "vote_effect_p99_ms": self.vote_p99_ms,
            "votes_per_s": self.votes_per_s,
            "vote_answer_p50_ms": self.vote_answer_ms.0, "vote_answer_p99_ms": self.vote_answer_ms.1,
            "journaled_votes_per_s": self.journaled_votes_per_s,
            "journaled_p50_ms": self.journaled_ms.0, "journaled_p99_ms": self.journaled_ms.1,
            "room_viewers": ROOM_VIEWERS, "room_viewers_held_min": self.room_held, "room_votes_per_s": self.room_votes_per_s,
            "sched_peak_rss_mib": self.rss_mib, "sched_cpu_s": self.sched_cpu_s,
        })
    }
}

/// Votes/s and their answer times: `808 (1.2/5.3)`, or `-`.
fn with_times(rate: Option<f64>, (p50, p99): (Option<f64>, Option<f64>)) -> String {
    match rate {
        Some(v) => format!("{v:.0} ({}/{})", num(p50, 1), num(p99, 1)),
        None => "-".into(),
    }
}

/// Throughput of a timed workload relative to EEVDF (> 1: faster).
fn speed(base: Option<f64>, x: Option<f64>) -> String {
    match (base, x) {
        (Some(b), Some(x)) if x > 0.0 => format!("{:.2}x", b / x),
        _ => "-".into(),
    }
}

/// The fastest and the slowest of a workload's runs.
fn range(v: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// A ratio of medians with the spread of the runs behind it: the base's
/// median against this configuration's slowest and fastest run.
fn speed_spread(base: Option<f64>, x: Option<f64>, spread: Option<(f64, f64)>) -> String {
    let ratio = speed(base, x);
    match (base, spread) {
        (Some(b), Some((lo, hi))) if lo > 0.0 && hi > lo => {
            format!("{ratio}, {:.2}-{:.2}x", b / hi, b / lo)
        }
        _ => ratio,
    }
}

/// Whether two workloads' runs overlap: then their ranking is noise.
fn overlap(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> bool {
    matches!((a, b), (Some((a0, a1)), Some((b0, b1))) if a0 <= b1 && b0 <= a1)
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The table (Markdown, readable on a terminal too).
pub fn table(rows: &[Row], cpus: u32, accel: &str, repeat: u32) -> String {
    let base = rows.iter().find(|r| r.name == "eevdf");
    let b = |f: fn(&Row) -> Option<f64>| base.and_then(f);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{cpus} vCPUs ({accel}), medians of {repeat} runs, the configurations taking turns (one run of each per round); ratios are throughput against EEVDF (higher is better), then the range over the runs\n"
    );
    let _ = writeln!(
        t,
        "| configuration | messaging s (ratio, range) | messaging, full mode s (ratio, range) | CPU work s (ratio, range) | wake-up p50/p99 us | vote->effect p50/p99 ms | votes/s (answer p50/p99 ms) | journaled votes/s (p50/p99 ms) | room: streams held, votes/s | sched RSS MiB | sched CPU s |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            t,
            "| {}{} | {} ({}) | {} ({}) | {} ({}) | {}/{} | {}/{} | {} | {} | {} | {} | {} |",
            r.name,
            if r.failed { " (FAILED)" } else { "" },
            num(r.messaging_s, 2),
            speed_spread(b(|x| x.messaging_s), r.messaging_s, r.messaging_range),
            num(r.messaging_full_s, 2),
            speed_spread(b(|x| x.messaging_s), r.messaging_full_s, r.messaging_full_range),
            num(r.cpu_s, 2),
            speed_spread(b(|x| x.cpu_s), r.cpu_s, r.cpu_range),
            num(r.wake_p50_us, 0),
            num(r.wake_p99_us, 0),
            num(r.vote_p50_ms, 1),
            num(r.vote_p99_ms, 1),
            with_times(r.votes_per_s, r.vote_answer_ms),
            with_times(r.journaled_votes_per_s, r.journaled_ms),
            match r.room_held {
                Some(h) => format!("{h:.0}/{ROOM_VIEWERS}, {}", num(r.room_votes_per_s, 0)),
                None => "-".into(),
            },
            num(r.rss_mib, 1),
            num(r.sched_cpu_s, 1),
        );
    }
    if let Some(e) = rows.iter().find(|r| r.name == "election") {
        let mut notes = Vec::new();
        if let Some(p99) = e.vote_p99_ms {
            notes.push(format!(
                "vote->effect p99 {p99:.1} ms (target <= {TARGET_VOTE_P99_MS} ms)"
            ));
        }
        if let Some(v) = e.votes_per_s {
            notes.push(format!("{v:.0} votes/s (target >= {TARGET_VOTES_PER_S})"));
        }
        if let Some(m) = e.rss_mib {
            notes.push(format!(
                "election RSS {m:.1} MiB (target <= {TARGET_RSS_MIB} MiB)"
            ));
        }
        let _ = writeln!(t, "\ntargets: {}", notes.join("; "));
    }
    if let Some(rl) = rows.iter().find(|r| r.name == "scx_rustland") {
        let against: Vec<String> = rows
            .iter()
            .filter(|r| ["fifo", "vruntime", "election"].contains(&r.name.as_str()))
            .map(|r| {
                let apart = |a, b| if overlap(a, b) { " (runs overlap: cannot be told apart)" } else { "" };
                format!(
                    "{} {}{} partial, {}{} full",
                    r.name,
                    speed(rl.messaging_s, r.messaging_s),
                    apart(rl.messaging_range, r.messaging_range),
                    speed(rl.messaging_full_s, r.messaging_full_s),
                    apart(rl.messaging_full_range, r.messaging_full_range),
                )
            })
            .collect();
        let _ = writeln!(
            t,
            "messaging against scx_rustland in the same mode (target >= 1.0x): {}",
            against.join("; ")
        );
    }
    t
}

/// A bar chart of the throughput ratios against EEVDF.
pub fn svg(rows: &[Row]) -> String {
    let base = rows
        .iter()
        .find(|r| r.name == "eevdf")
        .cloned()
        .unwrap_or_default();
    type Metric = (&'static str, fn(&Row) -> Option<f64>, Option<f64>);
    let metrics: [Metric; 3] = [
        ("messaging", |r| r.messaging_s, base.messaging_s),
        ("messaging (full)", |r| r.messaging_full_s, base.messaging_s),
        ("CPU work", |r| r.cpu_s, base.cpu_s),
    ];
    let colours = [
        "#6b7280", "#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c",
    ];
    let (w, h, left, top, bottom) = (760.0, 320.0, 50.0, 30.0, 60.0);
    let group_w = (w - left - 20.0) / metrics.len() as f64;
    let bar_w = (group_w - 20.0) / rows.len().max(1) as f64;
    let scale = |ratio: f64| (h - top - bottom) * (ratio / 1.5).min(1.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="8" y="18" font-size="13" font-weight="bold">throughput against EEVDF (1.0 = the same; capped at 1.5)</text>"#
    );
    let y1 = h - bottom - scale(1.0);
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{y1:.1}" x2="{:.1}" y2="{y1:.1}" stroke="#111" stroke-dasharray="4 3"/><text x="8" y="{:.1}">1.0</text>"##,
        w - 10.0,
        y1 + 4.0
    );
    for (mi, (label, f, b)) in metrics.iter().enumerate() {
        let gx = left + group_w * mi as f64 + 10.0;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{label}</text>"#,
            gx,
            h - bottom + 16.0
        );
        for (ri, r) in rows.iter().enumerate() {
            let ratio = match (b, f(r)) {
                (Some(b), Some(x)) if x > 0.0 => b / x,
                _ => continue,
            };
            let bh = scale(ratio);
            let x = gx + bar_w * ri as f64;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{} {label}: {ratio:.2}x</title></rect>"#,
                h - bottom - bh,
                bar_w - 2.0,
                colours[ri % colours.len()],
                r.name
            );
        }
    }
    for (ri, r) in rows.iter().enumerate() {
        let x = left + 110.0 * ri as f64;
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            h - 22.0,
            colours[ri % colours.len()],
            x + 14.0,
            h - 13.0,
            r.name
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, msg: f64) -> Raw {
        Raw {
            name: name.into(),
            messaging_s: vec![msg, msg * 2.0, msg * 0.9],
            cpu_s: vec![2.0],
            ..Default::default()
        }
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(percentile(&[5.0, 1.0, 9.0, 3.0], 0.99), Some(9.0));
        let rows: Vec<Row> = [raw("eevdf", 1.0), raw("fifo", 2.0)]
            .iter()
            .map(Row::from_raw)
            .collect();
        let t = table(&rows, 2, "tcg", 3);
        // Medians, their ratio, and the spread of the runs (1, 2 and 0.9
        // times the median) against the base's median.
        assert!(t.contains("| eevdf | 1.00 (1.00x, 0.50-1.11x)"), "{t}");
        assert!(t.contains("| fifo | 2.00 (0.50x, 0.25-0.56x)"), "{t}");
        assert!(overlap(Some((1.0, 2.0)), Some((1.9, 3.0))));
        assert!(!overlap(Some((1.0, 2.0)), Some((2.1, 3.0))));
        assert!(!overlap(None, Some((2.1, 3.0))));
        let svg = svg(&rows);
        assert!(svg.contains("fifo messaging: 0.50x"), "{svg}");
    }

    #[test]
    fn a_failed_configuration_is_marked() {
        let mut r = raw("election", 1.0);
        r.failure = Some("ejected".into());
        let rows = vec![Row::from_raw(&r)];
        assert!(table(&rows, 2, "tcg", 1).contains("election (FAILED)"));
    }
}
