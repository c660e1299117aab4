//! `cargo xtask vm-test`: boots a sched_ext kernel once and runs the guest
//! checks in it, then judges what the guest recorded.
//!
//! First light (`vm/first-light.sh`): the scheduler attaches, a SCHED_EXT
//! burner gets CPU time while it is attached and a normal one stays in the
//! fair class, the scheduler unloads cleanly, and the console stays clean.
//! A negative control runs the same checks against a scheduler started with
//! `--debug-no-dispatch` and requires them to catch its starved burner.
//!
//! Framework (`vm/framework.sh`): each policy under stress in partial and
//! full mode, CPU shares under `fifo` and `vruntime`, and a SIGKILLed
//! scheduler (see `framework.rs`).
//!
//! Soak (`vm/soak.sh`): the short form of `cargo xtask soak`, one short
//! round per policy and mode (see `host/soak.rs`).
//!
//! Port (`vm/port.sh`): scx_rlfifo from crates.io, ported by the guide's
//! diff and built on the host first, attaches, survives stress, shares
//! fairly and exits with its report (see `port.rs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use xshell::Shell;

pub mod facts;
pub mod first_light;
pub mod framework;
pub mod port;

use facts::CaseFacts;
use crate::host::soak;
use crate::scenario;
use crate::common::vm::{self, VmOpts};
use crate::common::compile;
use crate::project_root;

#[derive(Args, Debug)]
pub struct VmTestCmd {
    #[command(flatten)]
    pub vm: VmOpts,

    /// Length of each measurement window in the guest, in seconds. Longer
    /// windows average out more noise and cost more time.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=120))]
    pub window_secs: u32,

    /// How long each stress case runs, in seconds (full mode runs two
    /// thirds of it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(3..=600))]
    pub stress_secs: u32,

    /// Run every scenario this many times in the one boot and report, per
    /// scenario, how many runs matched its snapshot (a stability check).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub repeat: u32,

    /// Run the selected scenarios against a deliberately broken election
    /// (`fifo`: the fifo policy decides; `ignore-votes`: the election policy
    /// is blind to votes). The snapshots must then differ: this shows the
    /// suite catching a regression, and the command fails.
    #[arg(long, value_parser = ["fifo", "ignore-votes"])]
    pub mutant: Option<String>,

    /// The schedulers the workload scenarios (the `[[group]]` ones, with
    /// no election) run under, each with a snapshot of its own
    /// (`NAME@SCHEDULER.snap`): `eevdf` (no sched_ext scheduler), `fifo`,
    /// `vruntime` or `election` (scx_ballot's policies), a scheduler of
    /// the scx project on crates.io (`scx_rustland`, `scx_bpfland`,
    /// `scx_lavd`, ...: installed into target/xtask/scx once, several
    /// minutes), or the path of any sched_ext binary (run with no
    /// arguments). Partial-mode schedulers get the workers, which are
    /// SCHED_EXT; full-mode ones schedule everything. Election scenarios
    /// always run under scx_ballot's election.
    #[arg(long, value_delimiter = ',', default_values_t = scenario::DEFAULT_UNDER.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub scheduler: Vec<String>,

    /// Scenario files (`*.toml`) and their snapshots (`DIR/snapshots/`)
    /// from DIR instead of vm/scenarios: a scheduler project keeps its own
    /// scenarios and snapshots in its repository.
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<std::path::PathBuf>,

    /// What to run: suite names (`first-light`, `framework`, `port`,
    /// `soak`, `scenarios`) and/or parts of scenario names (`vm/scenarios/*.toml`,
    /// e.g. `landslide`). Everything when none is given.
    pub filters: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The scheduler attaches, runs a SCHED_EXT task, unloads; negative control.
    FirstLight,
    /// Policies under stress, partial and full mode, CPU shares, SIGKILL.
    Framework,
    /// scx_rlfifo from crates.io, ported by the guide, run like a policy.
    Port,
    /// The short form of `cargo xtask soak`.
    Soak,
    /// Scripted voting scenarios, snapshot-tested (`vm/scenarios/`).
    Scenarios,
}

const SUITES: [Suite; 5] = [Suite::FirstLight, Suite::Framework, Suite::Port, Suite::Soak, Suite::Scenarios];

impl Suite {
    fn dir_name(self) -> &'static str {
        match self {
            Suite::FirstLight => "first-light",
            Suite::Framework => "framework",
            Suite::Port => "port",
            Suite::Soak => "soak",
            Suite::Scenarios => "scenarios",
        }
    }
}

/// One named check and what went wrong with it.
struct Check {
    name: &'static str,
    problems: Vec<String>,
}

impl VmTestCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        if let Some(dir) = &self.scenarios {
            scenario::use_scenario_dir(dir)?;
        }
        let all_scenarios = scenario::load()?;
        let (suites, chosen) = self.select(&all_scenarios)?;
        let bin = compile::build_scheduler(sh)?;
        let ported = if suites.contains(&Suite::Port) {
            Some(port::build(sh, &compile::bpf_clang(sh)?)?)
        } else {
            None
        };
        let (tools, kernel, accel) = self.vm.prepare(sh)?;

        let mut unders = if suites.contains(&Suite::Scenarios) {
            self.scheduler.iter().map(|n| scenario::resolve_under(sh, n)).collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        if let Some(s) = chosen.iter().find(|s| s.workload && !s.expect.is_empty())
            && !unders.is_empty()
            && !unders.contains(&scenario::spec::Under::Eevdf)
        {
            println!("==> {} compares with EEVDF ([[expect]]): running it under eevdf too", s.name);
            unders.insert(0, scenario::spec::Under::Eevdf);
        }
        let selection = scenario::Selection::under(chosen, self.mutant.clone(), &unders);
        let out = fresh_dir(&project_root().join("target/vm-test"))?;
        if let Some(ported) = &ported {
            // The guest finds it in the suite's folder.
            let dir = out.join(Suite::Port.dir_name());
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(ported, dir.join(port::CRATE)).with_context(|| format!("copying {}", ported.display()))?;
        }
        let scenario_out = out.join(Suite::Scenarios.dir_name());
        if suites.contains(&Suite::Scenarios) {
            selection.write_plan(&scenario_out, self.repeat, kernel.config.as_deref())?;
        }
        let mut spec = self.vm.spec(kernel, accel, "vm/guest-tests.sh", &out);
        let scenario_secs = if suites.contains(&Suite::Scenarios) { selection.estimate_secs(self.repeat) } else { 0 };
        spec.timeout = spec.timeout.max(std::time::Duration::from_secs(scenario_secs + 600));
        spec.args = vec![
            path_arg(&bin)?,
            path_arg(&out)?,
            self.window_secs.to_string(),
            self.stress_secs.to_string(),
            path_arg(&std::env::current_exe().context("locating the xtask binary")?)?,
        ];
        spec.args.extend(suites.iter().map(|s| s.dir_name().to_string()));
        let names: Vec<String> = selection.scenarios.iter().chain(&selection.controls).map(|s| s.run_name()).collect();
        println!("==> booting the VM once for the suites {:?} ({accel}, {} vCPUs)", spec.args[5..].to_vec(), spec.cpus);
        if suites.contains(&Suite::Scenarios) {
            println!("    scenarios, {} time(s): {}", self.repeat, names.join(" "));
        }
        let started = std::time::Instant::now();
        let outcome = vm::boot(sh, &tools, &spec)?;
        let vm_secs = started.elapsed().as_secs_f64();

        let mut checks = Vec::new();
        let mut vm_problems = Vec::new();
        let wedge_notes = outcome.wedge_notes();
        if let Some(stall) = &outcome.stall {
            vm_problems.push(format!("the boot wedged twice; the second time {}", vm::describe_stall(stall)));
        } else if outcome.timed_out {
            vm_problems.push(format!("the VM did not finish within {} s", self.vm.vm_timeout_secs));
        } else if outcome.status != Some(0) {
            vm_problems.push(format!("the guest script exited with {:?}", outcome.status));
        }
        checks.push(Check { name: "vm: boots and runs the guest checks", problems: vm_problems });

        let mut summary = Vec::new();
        if suites.contains(&Suite::FirstLight) {
            let dir = out.join("first-light");
            let working = CaseFacts::read(&dir.join("working"));
            checks.push(Check {
                name: "first light: attaches, SCHED_EXT burner runs, fair burner stays out, clean unload",
                problems: first_light::failures(&working),
            });
            let broken = CaseFacts::read(&dir.join("no-dispatch"));
            let broken_failures = first_light::failures(&broken);
            let control = if first_light::starvation_caught(&broken_failures) {
                Vec::new()
            } else {
                vec![format!(
                    "a scheduler that never dispatches was not caught (its burner got {}): {:?}",
                    share_text(&broken),
                    broken_failures
                )]
            };
            checks.push(Check { name: "negative control: a scheduler that never dispatches is caught", problems: control });
            summary.push(format!(
                "first light: SCHED_EXT burner share of a {} s window: working {}, no-dispatch {}",
                self.window_secs,
                share_text(&working),
                share_text(&broken)
            ));
        }
        if suites.contains(&Suite::Framework) {
            let dir = out.join("framework");
            for (name, problems) in framework::judge(&dir) {
                checks.push(Check { name, problems });
            }
            for (case, ..) in framework::CASES {
                let facts = std::fs::read_to_string(dir.join(case).join("result")).unwrap_or_default();
                summary.push(format!("{case}: {}", facts.split_whitespace().collect::<Vec<_>>().join(" ")));
            }
        }

        if suites.contains(&Suite::Port) {
            let dir = out.join(Suite::Port.dir_name());
            for (name, problems) in port::judge(&dir) {
                checks.push(Check { name, problems });
            }
            let facts = std::fs::read_to_string(dir.join("result")).unwrap_or_default();
            summary.push(format!("port ({} {}): {}", port::CRATE, port::VERSION, facts.split('\n').filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")));
        }

        if suites.contains(&Suite::Soak) {
            let rounds = soak::read_rounds(&out.join(Suite::Soak.dir_name())).unwrap_or_default();
            checks.push(Check {
                name: "soak (short): every policy, partial and full, under stress-ng, votes and SIGKILL: no ejection, no vote lost",
                problems: soak::judge(&rounds, soak::SHORT_ROUNDS),
            });
            summary.push(format!(
                "soak (short form: {} round(s) of {} s per policy and mode):\n{}",
                soak::SHORT_ROUNDS,
                soak::SHORT_SECS,
                soak::table(&rounds).trim_end()
            ));
        }

        if suites.contains(&Suite::Scenarios) {
            let results = scenario::judge_runs(&selection, &scenario_out, self.repeat);
            let mut problems = scenario::report(&selection, &results, self.repeat);
            problems.extend(scenario::write_ab_and_page(&selection, &results, &scenario_out));
            if let Some(differs) = &spec.kernel.differs {
                // Every snapshot failure says it: the kernel may be the cause.
                for p in problems.iter_mut().filter(|p| p.contains("snapshot differs")) {
                    p.push_str(&format!(" [{differs}]"));
                }
            }
            let name = if self.mutant.is_some() {
                "scenarios: every snapshot matches (run with a broken election: expected to fail)"
            } else {
                "scenarios: every snapshot matches; every broken-election control is caught"
            };
            checks.push(Check { name, problems });
        }

        let mut console = vm::read_console(&spec.console_log).unwrap_or_default();
        console.extend(vm::read_console(&out.join("dmesg.txt")).unwrap_or_default());
        let alarms = vm::scan_console(&console);
        checks.push(Check { name: "console: no BUG, WARNING, stall or ejection", problems: alarms });

        println!();
        for note in wedge_notes.iter().chain(spec.kernel.differs.iter()) {
            println!("!!! {note}");
        }
        for line in &summary {
            println!("{line}");
        }
        let failed = checks.iter().filter(|c| !c.problems.is_empty()).count();
        for check in &checks {
            let verdict = if check.problems.is_empty() { "ok  " } else { "FAIL" };
            println!("  {verdict} {}", check.name);
            for problem in &check.problems {
                println!("         {problem}");
            }
        }
        if failed > 0 {
            print_diagnostics(&outcome.console_tail, &out, &suites);
        }
        let mut wedged = match wedge_notes.len() {
            0 => String::new(),
            n => format!("; {n} WEDGED BOOT(S), see above"),
        };
        if spec.kernel.differs.is_some() {
            wedged.push_str("; NOT THE LOCKED KERNEL, see above");
        }
        println!("vm-test: {} passed, {} failed (the VM ran {vm_secs:.0} s{wedged})", checks.len() - failed, failed);
        if failed > 0 {
            bail!("{failed} VM check(s) failed; the whole console is in {}", spec.console_log.display());
        }
        Ok(())
    }
}

impl VmTestCmd {
    /// The suites and scenarios the filters name (all without filters).
    fn select(&self, all: &[scenario::spec::Scenario]) -> Result<(Vec<Suite>, Vec<scenario::spec::Scenario>)> {
        if self.filters.is_empty() {
            return Ok((SUITES.to_vec(), all.to_vec()));
        }
        let mut suites: Vec<Suite> = SUITES.iter().copied().filter(|s| self.filters.iter().any(|f| f == s.dir_name())).collect();
        // A suite's name selects that suite, not the scenarios it is part of
        // the name of (`port` is in `proportional`).
        let scenario_filters: Vec<String> = self
            .filters
            .iter()
            .filter(|f| *f == "scenarios" || !SUITES.iter().any(|s| s.dir_name() == f.as_str()))
            .cloned()
            .collect();
        let chosen = scenario::select_scenarios(all, &scenario_filters);
        for f in &self.filters {
            let named_suite = SUITES.iter().any(|s| s.dir_name() == f);
            if !named_suite && !all.iter().any(|s| s.name.contains(f.as_str())) {
                let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "{f:?} names no suite and no scenario; suites: first-light framework port soak election scenarios; scenarios: {}",
                    names.join(" ")
                );
            }
        }
        if !chosen.is_empty() && !suites.contains(&Suite::Scenarios) {
            suites.push(Suite::Scenarios);
        }
        if self.mutant.is_some() && !suites.contains(&Suite::Scenarios) {
            bail!("--mutant applies to scenarios; name some (or `scenarios`)");
        }
        Ok((suites, chosen))
    }
}

fn share_text(facts: &CaseFacts) -> String {
    match facts.ext_share() {
        Some(share) => format!("{:.1}%", share * 100.0),
        None => "nothing recorded".into(),
    }
}

/// On failure: the console's tail and every scheduler log.
fn print_diagnostics(console_tail: &[String], out: &Path, suites: &[Suite]) {
    println!("\n--- last lines of the console ---");
    let start = console_tail.len().saturating_sub(60);
    for line in &console_tail[start..] {
        println!("  {line}");
    }
    // Scenario runs print their own failures (report), with their logs.
    for suite in suites.iter().filter(|s| **s != Suite::Scenarios) {
        for log in scheduler_logs(&out.join(suite.dir_name())) {
            println!("--- scheduler output, {} ---", log.display());
            match std::fs::read_to_string(&log) {
                Ok(text) => {
                    let lines: Vec<&str> = text.lines().collect();
                    let start = lines.len().saturating_sub(15);
                    lines[start..].iter().for_each(|l| println!("  {l}"));
                }
                Err(e) => println!("  (none: {e})"),
            }
        }
    }
}

/// Every `scheduler*.log` in `dir` and its case folders, in name order.
fn scheduler_logs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for path in entries.flatten().map(|e| e.path()) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("scheduler") && name.ends_with(".log") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// An empty folder at `dir` (what an earlier run left is removed).
pub fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// A path as a guest-command argument (the guest sees the host's files at
/// the same paths).
pub fn path_arg(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    abs.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", abs.display()))
}
