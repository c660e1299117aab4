//! `cargo xtask vm-boot-soak`: boots the VM many times with a trivial guest
//! command (`true`) and counts the boots that wedge (the console stops
//! moving before the guest command starts, see `vm::boot`), per set of extra
//! kernel boot options. Boots alternate between the sets, so a change in the
//! host's load falls on every set alike.
//!
//! Each boot is bounded by the boot-stall rule and by `--boot-timeout-secs`;
//! a wedged boot is not retried here (it is what is counted). Written to
//! `--out` (`target/vm-boot-soak/`): `boots.tsv` (one row per boot, appended
//! as the soak goes) and every boot's console as `boot-NNN.log`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use xshell::Shell;

use crate::common::vm::{self, VmOpts, VmOutcome, VmSpec};
use crate::host::vm_test;
use crate::project_root;

/// The VM options are [`VmOpts`]'s, as for every command that boots a VM,
/// with two differences on purpose: its `--vm-timeout-secs` (a whole VM
/// run, 900 s) is `--boot-timeout-secs` here, 240 s, since each boot is a
/// VM run of its own whose guest command is `true`; and `--boot-stall-secs`
/// may not be 0, the stall rule being what finds the wedges counted here.
#[derive(Args, Debug)]
#[command(
    mut_arg("vm_timeout_secs", |a| a
        .long("boot-timeout-secs")
        .value_name("BOOT_TIMEOUT_SECS")
        .default_value("240")
        .help("Bound on one boot, whatever happens, in seconds (each boot is one VM run: the other VM commands' --vm-timeout-secs, whose 900 s are for a whole test run)")),
    mut_arg("boot_stall_secs", |a| a
        .value_parser(clap::value_parser!(u64).range(1..))
        .help("Console silence before the guest command that counts as a wedge, in seconds (at least 1); a wedged boot is counted, not retried")),
)]
pub struct BootSoakCmd {
    #[command(flatten)]
    pub vm: VmOpts,

    /// Boots per option set.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub boots: u32,

    /// The extra kernel command line of one option set, e.g.
    /// `--cmdline-extra lpj=9200000`; `--cmdline-extra ""` boots with none.
    /// Repeat it to compare sets. Without it: one set, the usual boot
    /// options of `vm-test`.
    #[arg(long = "cmdline-extra", value_name = "OPTIONS", allow_hyphen_values = true)]
    pub sets: Vec<String>,

    /// Start no boot after this many minutes; what ran is reported.
    #[arg(long)]
    pub max_minutes: Option<u64>,

    /// Where the table and the consoles go (emptied first).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One option set: its label and its extra kernel command line.
#[derive(Debug, Clone)]
struct OptionSet {
    label: String,
    extra: Vec<String>,
}

/// What one boot showed.
#[derive(Debug, Clone, PartialEq)]
pub struct BootRecord {
    pub set: usize,
    pub result: BootResult,
    /// Seconds from start to the guest command's start (first sign of life).
    pub to_start_s: Option<f64>,
    pub total_s: f64,
    /// Longest console pause before the guest command started, and the line
    /// before it.
    pub longest_pause_s: f64,
    pub pause_after: String,
    pub marks: ConsoleMarks,
    /// The last console line of a wedged boot.
    pub wedged_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BootResult {
    Ok,
    Wedged,
    TimedOut,
    Failed(Option<i32>),
}

impl std::fmt::Display for BootResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.write_str("ok"),
            Self::Wedged => f.write_str("WEDGED"),
            Self::TimedOut => f.write_str("timed-out"),
            Self::Failed(status) => write!(f, "failed:{status:?}"),
        }
    }
}

/// What the kernel said about its delay-loop calibration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsoleMarks {
    /// The boot CPU's `lpj=` (measured from the timer, or preset).
    pub lpj: Option<u64>,
    /// The boot CPU's BogoMIPS.
    pub bsp_bogomips: Option<f64>,
    /// `smpboot: Total of N processors activated (X BogoMIPS)`.
    pub total_bogomips: Option<f64>,
    /// Times `calibrate_delay_direct() failed` (a secondary CPU fell back to
    /// the slow calibration loop).
    pub direct_failures: u32,
}

impl ConsoleMarks {
    /// BogoMIPS of each secondary CPU on average, from the total minus the
    /// boot CPU's.
    pub fn secondary_bogomips(&self, cpus: u32) -> Option<f64> {
        let (total, bsp) = (self.total_bogomips?, self.bsp_bogomips?);
        (cpus > 1).then(|| (total - bsp) / f64::from(cpus - 1))
    }
}

/// Reads the calibration lines of a console.
pub fn console_marks(lines: &[String]) -> ConsoleMarks {
    let mut marks = ConsoleMarks::default();
    for line in lines {
        if line.contains("Calibrating delay loop") {
            marks.lpj = between(line, "(lpj=", ")").and_then(|v| v.parse().ok());
            marks.bsp_bogomips = line
                .split(" BogoMIPS")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|v| v.parse().ok());
        } else if line.contains("processors activated (") {
            marks.total_bogomips =
                between(line, "activated (", " BogoMIPS").and_then(|v| v.parse().ok());
        } else if line.contains("calibrate_delay_direct() failed") {
            marks.direct_failures += 1;
        }
    }
    marks
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

impl BootSoakCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let (tools, kernel, accel) = self.vm.prepare(sh)?;
        let out = vm_test::fresh_dir(
            &self
                .out
                .clone()
                .unwrap_or_else(|| project_root().join("target/vm-boot-soak")),
        )?;
        let mut base = self.vm.spec(kernel, accel, "true", &out);
        // A bare command name: the guest's PATH finds it.
        base.script = PathBuf::from("true");
        base.rwdirs.clear();
        let sets: Vec<OptionSet> = if self.sets.is_empty() {
            vec![OptionSet {
                label: label(&base.cmdline_extra),
                extra: base.cmdline_extra.clone(),
            }]
        } else {
            self.sets
                .iter()
                .map(|s| {
                    let extra: Vec<String> = s.split_whitespace().map(str::to_string).collect();
                    OptionSet {
                        label: label(&extra),
                        extra,
                    }
                })
                .collect()
        };
        let total = self.boots as usize * sets.len();
        println!(
            "==> {total} boots ({} per set, alternating) of {} under {accel}, {} vCPUs; wedged = \
             no console line for {} s before the guest command; sets: {}",
            self.boots,
            base.kernel.version,
            self.vm.cpus,
            self.vm.boot_stall_secs,
            sets.iter()
                .map(|s| s.label.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let tsv_path = out.join("boots.tsv");
        let mut tsv = std::fs::File::create(&tsv_path)
            .with_context(|| format!("creating {}", tsv_path.display()))?;
        writeln!(tsv, "{}", TSV_HEADER)?;

        let started = Instant::now();
        let budget = self.max_minutes.map(|m| Duration::from_secs(m * 60));
        let mut records = Vec::new();
        for n in 0..total {
            if budget.is_some_and(|b| started.elapsed() >= b) {
                println!(
                    "==> {} minutes are up: stopping after {n} boots",
                    self.max_minutes.unwrap_or(0)
                );
                break;
            }
            let set = n % sets.len();
            let mut spec: VmSpec = base.clone();
            spec.cmdline_extra = sets[set].extra.clone();
            spec.console_log = out.join(format!("boot-{:03}.log", n + 1));
            println!("--- boot {}/{total}, options: {}", n + 1, sets[set].label);
            let outcome = vm::boot_once(sh, &tools, &spec)?;
            let console = vm::read_console(&spec.console_log).unwrap_or_default();
            let record = record(set, &outcome, &console);
            println!("    {}", describe(&record, self.vm.cpus));
            writeln!(
                tsv,
                "{}",
                tsv_row(
                    n + 1,
                    &sets[set].label,
                    &record,
                    self.vm.cpus,
                    &spec.console_log.display().to_string()
                )
            )?;
            records.push(record);
        }

        let summary = summary(&sets, &records, self.vm.cpus);
        println!("\n{summary}");
        std::fs::write(out.join("summary.md"), &summary)?;
        println!(
            "written: {}, {}, consoles boot-NNN.log in {}",
            tsv_path.display(),
            out.join("summary.md").display(),
            out.display()
        );
        if records.is_empty() {
            bail!("no boot ran");
        }
        Ok(())
    }
}

fn label(extra: &[String]) -> String {
    if extra.is_empty() {
        "(no extra options)".into()
    } else {
        extra.join(" ")
    }
}

fn record(set: usize, outcome: &VmOutcome, console: &[String]) -> BootRecord {
    let result = if outcome.stall.is_some() {
        BootResult::Wedged
    } else if outcome.timed_out {
        BootResult::TimedOut
    } else if outcome.status == Some(0) && outcome.boot_time.is_some() {
        BootResult::Ok
    } else {
        BootResult::Failed(outcome.status)
    };
    BootRecord {
        set,
        result,
        to_start_s: outcome.boot_time.map(|d| d.as_secs_f64()),
        total_s: outcome.elapsed.as_secs_f64(),
        longest_pause_s: outcome.boot_silence.secs,
        pause_after: outcome.boot_silence.after_line.trim().to_string(),
        marks: console_marks(console),
        wedged_after: outcome
            .stall
            .as_ref()
            .map(|s| s.last_line.trim().to_string()),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn describe(r: &BootRecord, cpus: u32) -> String {
    let mut s = format!(
        "{}: first sign of life after {} s, total {:.1} s, longest boot pause {:.1} s (after `{}`), \
         boot CPU {} BogoMIPS, secondary {}, calibrate_delay_direct failures {}",
        r.result,
        opt(r.to_start_s, 1),
        r.total_s,
        r.longest_pause_s,
        shorten(&r.pause_after),
        opt(r.marks.bsp_bogomips, 0),
        opt(r.marks.secondary_bogomips(cpus), 0),
        r.marks.direct_failures
    );
    if let Some(last) = &r.wedged_after {
        let _ = write!(s, "; WEDGED after `{}`", shorten(last));
    }
    s
}

fn shorten(line: &str) -> String {
    let line = line.trim();
    if line.chars().count() <= 90 {
        line.to_string()
    } else {
        format!("{}...", line.chars().take(87).collect::<String>())
    }
}

const TSV_HEADER: &str = "boot\toptions\tresult\tto_start_s\ttotal_s\tlongest_pause_s\tpause_after\tlpj\tbsp_bogomips\tsecondary_bogomips\tdirect_failures\twedged_after\tconsole";

fn tsv_row(n: usize, label: &str, r: &BootRecord, cpus: u32, console: &str) -> String {
    let clean = |s: &str| s.replace('\t', " ");
    format!(
        "{n}\t{label}\t{}\t{}\t{:.1}\t{:.1}\t{}\t{}\t{}\t{}\t{}\t{}\t{console}",
        r.result,
        opt(r.to_start_s, 1),
        r.total_s,
        r.longest_pause_s,
        clean(&r.pause_after),
        r.marks
            .lpj
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(r.marks.bsp_bogomips, 0),
        opt(r.marks.secondary_bogomips(cpus), 0),
        r.marks.direct_failures,
        clean(r.wedged_after.as_deref().unwrap_or("-")),
    )
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)])
}

/// A Markdown table: per set, boots, wedges, other failures, time to first
/// sign of life, longest boot pause of the good boots, secondary CPUs'
/// BogoMIPS.
fn summary(sets: &[OptionSet], records: &[BootRecord], cpus: u32) -> String {
    let mut s = String::from(
        "| boot options | boots | wedged | other failures | first sign of life s (median / p90 / max) | longest boot pause s (max, good boots) | secondary CPU BogoMIPS (min-max) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (i, set) in sets.iter().enumerate() {
        let mine: Vec<&BootRecord> = records.iter().filter(|r| r.set == i).collect();
        let wedged = mine
            .iter()
            .filter(|r| r.result == BootResult::Wedged)
            .count();
        let failed = mine
            .iter()
            .filter(|r| !matches!(r.result, BootResult::Ok | BootResult::Wedged))
            .count();
        let good: Vec<&&BootRecord> = mine.iter().filter(|r| r.result == BootResult::Ok).collect();
        let mut starts: Vec<f64> = good.iter().filter_map(|r| r.to_start_s).collect();
        starts.sort_by(f64::total_cmp);
        let pause = good
            .iter()
            .map(|r| r.longest_pause_s)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let mut ap: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.marks.secondary_bogomips(cpus))
            .collect();
        ap.sort_by(f64::total_cmp);
        let ap = match (ap.first(), ap.last()) {
            (Some(lo), Some(hi)) => format!("{lo:.0}-{hi:.0}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {wedged} | {failed} | {} / {} / {} | {} | {ap} |",
            set.label,
            mine.len(),
            opt(percentile(&starts, 0.5), 1),
            opt(percentile(&starts, 0.9), 1),
            opt(starts.last().copied(), 1),
            opt(pause, 1),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_vm_options_are_vm_opts_with_a_timeout_per_boot() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let argv = ["cargo-xtask", "vm-boot-soak"].into_iter().chain(args.iter().copied());
            crate::Cli::try_parse_from(argv).map(|cli| match cli.cmd {
                crate::Cmd::VmBootSoak(cmd) => cmd,
                _ => unreachable!("vm-boot-soak parses as itself"),
            })
        };
        let d = parse(&[]).unwrap();
        assert_eq!((d.vm.vm_timeout_secs, d.vm.boot_stall_secs, d.vm.cpus, d.boots), (240, vm::BOOT_STALL.as_secs(), 2, 10));
        let c = parse(&["--boot-timeout-secs", "60", "--boot-stall-secs", "30", "--cpus", "4", "--accel", "tcg"]).unwrap();
        assert_eq!((c.vm.vm_timeout_secs, c.vm.boot_stall_secs, c.vm.cpus), (60, 30, 4));
        assert!(parse(&["--boot-stall-secs", "0"]).is_err(), "the stall rule finds the wedges");
        assert!(parse(&["--vm-timeout-secs", "60"]).is_err(), "one bound per boot, by its own name");
    }

    #[test]
    fn calibration_marks() {
        let console = lines(
            "[    0.002053] Calibrating delay loop (skipped), value calculated using timer frequency.. 4600.01 BogoMIPS (lpj=9200036)\n\
             [    0.000000] calibrate_delay_direct() dropping max bogoMips estimate 4 = 28653699\n\
             [    0.000000] calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.\n\
             [    1.411712] smp: Brought up 1 node, 2 CPUs\n\
             [    1.412726] smpboot: Total of 2 processors activated (12423.37 BogoMIPS)\n",
        );
        let m = console_marks(&console);
        assert_eq!(m.lpj, Some(9_200_036));
        assert_eq!(m.bsp_bogomips, Some(4600.01));
        assert_eq!(m.total_bogomips, Some(12423.37));
        assert_eq!(m.direct_failures, 1);
        let ap = m.secondary_bogomips(2).expect("both numbers are there");
        assert!((ap - 7823.36).abs() < 0.01, "{ap}");

        let preset = console_marks(&lines(
            "[    0.002000] Calibrating delay loop (skipped) preset value.. 4600.00 BogoMIPS (lpj=9200000)\n",
        ));
        assert_eq!(preset.lpj, Some(9_200_000));
        assert_eq!(preset.bsp_bogomips, Some(4600.00));
        assert_eq!(preset.secondary_bogomips(2), None);
    }

    #[test]
    fn summary_counts_per_set() {
        let sets = vec![
            OptionSet {
                label: "(no extra options)".into(),
                extra: vec![],
            },
            OptionSet {
                label: "lpj=9200000".into(),
                extra: vec!["lpj=9200000".into()],
            },
        ];
        let rec = |set, result, start: Option<f64>| BootRecord {
            set,
            result,
            to_start_s: start,
            total_s: 20.0,
            longest_pause_s: 5.0,
            pause_after: String::new(),
            marks: ConsoleMarks::default(),
            wedged_after: None,
        };
        let records = vec![
            rec(0, BootResult::Ok, Some(15.0)),
            rec(0, BootResult::Wedged, None),
            rec(1, BootResult::Ok, Some(14.0)),
            rec(1, BootResult::Failed(Some(255)), None),
        ];
        let table = summary(&sets, &records, 2);
        assert!(
            table.contains("| (no extra options) | 2 | 1 | 0 | 15.0 / 15.0 / 15.0 | 5.0 | - |"),
            "{table}"
        );
        assert!(
            table.contains("| lpj=9200000 | 2 | 0 | 1 | 14.0 / 14.0 / 14.0 | 5.0 | - |"),
            "{table}"
        );
    }
}
