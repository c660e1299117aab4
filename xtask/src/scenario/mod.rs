//! The scenario suite: scripted voting scenarios (`vm/scenarios/*.toml`)
//! run in the VM, recorded from the kernel's accounting, and snapshot-
//! tested with insta (`vm/scenarios/snapshots/`).
//!
//! - [`spec`]: the file format, parsed and checked on the host.
//! - [`guest`]: the runner and workload inside the VM.
//! - [`trace`]: what a run records (raw JSON under `target/`).
//! - [`judge`]: what is stable about a run: the snapshot text.
//! - [`judge`]`::workload`: the snapshot of a workload scenario (no
//!   election), run under any scheduler.
//! - [`ab`]: workload runs beside their run under EEVDF, and `[[expect]]`s.
//! - [`render`]: an SVG timeline and a Perfetto trace per run.
//! - [`page`]: the report page of a whole run (`report.html`).
//! - [`rejudge`]: `cargo xtask rejudge`, the judging of recorded runs
//!   again, without a VM.
//!
//! Regression controls run with the scenarios: a scenario run against a
//! deliberately broken election (`--debug-mutant`), or with the scheduler
//! given another min share than the file declares, must come out different
//! from its snapshot, or the suite fails.

pub mod ab;
pub mod guest;
pub mod judge;
pub mod page;
pub mod rejudge;
pub mod render;
pub mod spec;
pub mod trace;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project_root;
use spec::Scenario;
use trace::Trace;

/// How a regression control runs the scheduler differently from its
/// scenario file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Alter {
    /// A deliberately broken policy (`--debug-mutant NAME`).
    Mutant(&'static str),
    /// The scheduler's `--min-share` (percent) instead of the file's: the
    /// losers keep another share than the snapshot expects.
    MinShare(f64),
    /// The scheduler without the file's `cap`: the losers take the idle
    /// CPUs.
    NoCap,
    /// No votes journal: a restarted scheduler starts from no votes.
    NoJournal,
}

/// (scenario, alteration) pairs run as regression controls whenever their
/// scenario is selected: each must be caught (snapshot differs).
pub const CONTROLS: &[(&str, Alter)] = &[
    ("landslide", Alter::Mutant("fifo")),
    ("landslide", Alter::Mutant("ignore-votes")),
    ("landslide", Alter::MinShare(20.0)),
    ("interactive", Alter::Mutant("fifo")),
    ("cap", Alter::NoCap),
    ("restart", Alter::NoJournal),
];

/// Where `--scenarios DIR` put the scenario files, if it did.
static SCENARIO_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Takes the scenario files (and their `snapshots/`) from `dir` instead of
/// `vm/scenarios`: a scheduler project keeps its own next to its code.
pub fn use_scenario_dir(dir: &Path) -> Result<()> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("--scenarios {}: no such folder", dir.display()))?;
    if !dir.is_dir() {
        bail!("--scenarios {}: not a folder", dir.display());
    }
    let _ = SCENARIO_DIR.set(dir);
    Ok(())
}

pub fn scenario_dir() -> PathBuf {
    SCENARIO_DIR.get().cloned().unwrap_or_else(|| project_root().join("vm/scenarios"))
}

pub fn snapshot_dir() -> PathBuf {
    scenario_dir().join("snapshots")
}

/// What to run: the scenarios, and the controls for them.
pub struct Selection {
    pub scenarios: Vec<Scenario>,
    pub controls: Vec<Scenario>,
    /// `--mutant`: every scenario runs broken, to show the suite failing.
    pub mutant: Option<String>,
}

/// The schedulers workload scenarios run under when `--scheduler` names
/// none: the kernel's own and scx_ballot's two general policies (all built
/// here, so CI needs nothing from elsewhere).
pub const DEFAULT_UNDER: &[&str] = &["eevdf", "fifo", "vruntime"];

/// Upstream schedulers' arguments for partial mode (only SCHED_EXT tasks,
/// which is what the workers are); one not listed runs as it starts.
const PARTIAL_ARGS: &[(&str, &[&str])] = &[("scx_rustland", &["--partial"]), ("scx_lavd", &["--partial"])];

/// What `--scheduler NAME` names: `eevdf`; a policy of scx_ballot; an
/// `scx_*` scheduler from crates.io (installed into the cache once); or the
/// path of a sched_ext binary.
pub fn resolve_under(sh: &xshell::Shell, name: &str) -> Result<spec::Under> {
    use spec::{Policy, Under};
    Ok(match name {
        "eevdf" => Under::Eevdf,
        "fifo" => Under::Ballot(Policy::Fifo),
        "vruntime" => Under::Ballot(Policy::Vruntime),
        "election" => Under::Ballot(Policy::Election),
        path if path.contains('/') => {
            let p = std::fs::canonicalize(path).with_context(|| format!("--scheduler {path}: no such file"))?;
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("scheduler").to_string();
            Under::Binary { name, path: p.display().to_string(), args: Vec::new() }
        }
        scx if scx.starts_with("scx_") && scx.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            let bin = crate::common::compile::install_scx(sh, scx)?;
            let args = PARTIAL_ARGS.iter().find(|(n, _)| *n == scx).map(|(_, a)| a.iter().map(|s| s.to_string()).collect()).unwrap_or_default();
            Under::Binary { name: scx.to_string(), path: bin.display().to_string(), args }
        }
        other => bail!(
            "--scheduler {other:?}: give eevdf, fifo, vruntime or election (scx_ballot's policies), a scheduler of the scx project on crates.io (scx_rustland, scx_bpfland, scx_lavd, ...), or the path of a sched_ext binary"
        ),
    })
}

impl Selection {
    #[cfg(test)]
    pub fn new(scenarios: Vec<Scenario>, mutant: Option<String>) -> Self {
        Self::under(scenarios, mutant, &[spec::Under::Eevdf])
    }

    /// The selection with every workload scenario once per scheduler of
    /// `unders`; a mutant and the controls apply to elections only.
    pub fn under(scenarios: Vec<Scenario>, mutant: Option<String>, unders: &[spec::Under]) -> Self {
        let mut scenarios: Vec<Scenario> = scenarios
            .into_iter()
            .flat_map(|s| {
                if s.workload {
                    unders.iter().map(|u| Scenario { under: Some(u.clone()), ..s.clone() }).collect()
                } else {
                    vec![s]
                }
            })
            .collect();
        let controls = if mutant.is_some() {
            Vec::new()
        } else {
            CONTROLS
                .iter()
                .filter_map(|(name, alter)| {
                    let mut s = scenarios.iter().find(|s| s.name == *name)?.clone();
                    match alter {
                        Alter::Mutant(m) => s.mutant = Some(m.to_string()),
                        Alter::MinShare(m) => s.scheduler_min_share = Some(*m),
                        Alter::NoCap => s.scheduler_no_cap = true,
                        Alter::NoJournal => s.scheduler_no_journal = true,
                    }
                    Some(s)
                })
                .collect()
        };
        if let Some(m) = &mutant {
            scenarios.retain(|s| !s.workload);
            scenarios.iter_mut().for_each(|s| s.mutant = Some(m.clone()));
        }
        Selection { scenarios, controls, mutant }
    }

    /// Seconds the guest will spend, roughly (for the VM's time limit).
    pub fn estimate_secs(&self, repeat: u32) -> u64 {
        let per = |s: &Scenario| s.seconds() + 15.0;
        (self.scenarios.iter().map(per).sum::<f64>() * repeat as f64 + self.controls.iter().map(per).sum::<f64>()) as u64
    }

    pub fn write_plan(&self, out: &Path, repeat: u32, kernel_config: Option<&Path>) -> Result<PathBuf> {
        let plan = guest::Plan {
            repeat,
            scenarios: self.scenarios.clone(),
            controls: self.controls.clone(),
            kernel_config: kernel_config.map(Path::to_path_buf),
        };
        std::fs::create_dir_all(out)?;
        let path = out.join("plan.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&plan)?).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The snapshot a run on `cpus` vCPUs is compared with: `NAME@Ncpus` when
/// the scenario keeps one for that size (a result that depends on the CPU
/// count, such as how well a sleeper is served beside burners), otherwise
/// `NAME`, the one for every size.
pub fn snapshot_for(s: &Scenario, cpus: u32) -> String {
    let name = s.snapshot_name();
    let sized = format!("{name}@{cpus}cpus");
    if snapshot_dir().join(format!("{sized}.snap")).exists() { sized } else { name }
}

/// The stored snapshot of a scenario, without insta's header.
fn stored_snapshot(name: &str) -> Option<String> {
    let text = std::fs::read_to_string(snapshot_dir().join(format!("{name}.snap"))).ok()?;
    let body = text.strip_prefix("---\n")?.split_once("\n---\n")?.1;
    Some(body.trim_end().to_string())
}

/// Compares through insta (which shows the diff and, outside CI, leaves a
/// `.snap.new` for `cargo insta review`); true when it matches.
fn insta_matches(name: &str, text: &str) -> bool {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshot_dir());
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = settings.bind(|| std::panic::catch_unwind(|| insta::assert_snapshot!(name, text)).is_ok());
    std::panic::set_hook(hook);
    ok
}

/// One scenario run as judged on the host.
pub struct RunResult {
    pub run: String,
    pub iteration: u32,
    pub verdict: Verdict,
    pub numbers: String,
    pub svg: PathBuf,
    pub perfetto: PathBuf,
    pub trace_path: PathBuf,
    pub scheduler_log: String,
    pub wall_ms: u64,
    pub is_control: bool,
    /// The snapshot it was compared with (see [`snapshot_for`]).
    pub snapshot: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Matches,
    Differs,
    /// No stored snapshot yet.
    New,
    /// The guest left no trace, or the run reported an error.
    Broken(String),
}

impl RunResult {
    /// Whether this run is what the suite wants: a scenario that matches
    /// its snapshot, or a control that does not.
    pub fn ok(&self) -> bool {
        match (&self.verdict, self.is_control) {
            (Verdict::Matches, false) => true,
            (Verdict::Differs, true) => true,
            // A run that left no usable trace proves nothing either way.
            _ => false,
        }
    }
}

/// Judges what the guest recorded under `out`, writes the pictures next to
/// the traces, and returns one result per run.
pub fn judge_runs(sel: &Selection, out: &Path, repeat: u32) -> Vec<RunResult> {
    let mut results = Vec::new();
    let runs = (1..=repeat)
        .flat_map(|i| sel.scenarios.iter().map(move |s| (i, s, false)))
        .chain(sel.controls.iter().map(|s| (1, s, true)));
    for (iteration, s, is_control) in runs {
        let run = s.run_name();
        let dir = out.join(format!("{run}.{iteration}"));
        let trace_path = dir.join("trace.json");
        let svg = dir.join("timeline.svg");
        let perfetto = dir.join("perfetto.json");
        let trace: Result<Trace> = std::fs::read(&trace_path)
            .with_context(|| format!("reading {}", trace_path.display()))
            .and_then(|b| serde_json::from_slice(&b).context("parsing the trace"));
        let mut result = RunResult {
            run: run.clone(),
            iteration,
            verdict: Verdict::Broken(String::new()),
            numbers: String::new(),
            svg: svg.clone(),
            perfetto: perfetto.clone(),
            trace_path: trace_path.clone(),
            scheduler_log: dir.join("scheduler.log").display().to_string(),
            wall_ms: 0,
            is_control,
            snapshot: s.snapshot_name(),
        };
        let t = match trace {
            Ok(t) => t,
            Err(e) => {
                result.verdict = Verdict::Broken(format!("{e:#}"));
                results.push(result);
                continue;
            }
        };
        let _ = std::fs::write(&svg, render::svg(&t));
        let _ = std::fs::write(&perfetto, render::perfetto(&t).to_string());
        result.numbers = judge::numbers(s, &t);
        let _ = std::fs::write(dir.join("numbers.txt"), &result.numbers);
        result.wall_ms = t.wall_ms;
        result.scheduler_log = t.scheduler_log.clone();
        let text = judge::snapshot(s, &t);
        let _ = std::fs::write(dir.join("snapshot.txt"), &text);
        result.snapshot = snapshot_for(s, t.cpus);
        let stored = stored_snapshot(&result.snapshot);
        result.verdict = if let Some(e) = &t.error {
            Verdict::Broken(e.clone())
        } else if !s.altered() && iteration == 1 {
            // Through insta once per scenario: its diff, and `.snap.new`
            // for review where updates are allowed.
            match (insta_matches(&result.snapshot, &text), stored) {
                (true, _) => Verdict::Matches,
                (false, None) => Verdict::New,
                (false, Some(_)) => Verdict::Differs,
            }
        } else {
            match stored {
                None => Verdict::New,
                Some(stored) if stored == text.trim_end() => Verdict::Matches,
                Some(_) => Verdict::Differs,
            }
        };
        results.push(result);
    }
    results
}

/// Prints the summary table; returns the problems (empty: all good).
pub fn report(sel: &Selection, results: &[RunResult], repeat: u32) -> Vec<String> {
    let mut problems = Vec::new();
    println!("\nscenarios ({} run(s) each{}):", repeat, sel.mutant.as_ref().map(|m| format!(", mutant {m}")).unwrap_or_default());
    println!("  {:<28} {:<10} {:>7}  pictures", "scenario", "result", "wall");
    for s in sel.scenarios.iter().chain(&sel.controls) {
        let run = s.run_name();
        let mine: Vec<&RunResult> = results.iter().filter(|r| r.run == run).collect();
        let good = mine.iter().filter(|r| r.ok()).count();
        let is_control = mine.first().is_some_and(|r| r.is_control);
        let result = match (is_control, repeat) {
            (true, _) if good == mine.len() => "caught".to_string(),
            (true, _) => "MISSED".to_string(),
            (false, 1) if good == 1 => "same".to_string(),
            (false, 1) => match &mine[0].verdict {
                Verdict::New => "NEW".into(),
                Verdict::Broken(_) => "BROKEN".into(),
                _ => "DIFFERS".into(),
            },
            (false, _) => format!("{good}/{} same", mine.len()),
        };
        let wall = mine.iter().map(|r| r.wall_ms).max().unwrap_or(0) as f64 / 1000.0;
        let first = mine.first();
        println!(
            "  {:<28} {:<10} {:>6.1}s  {}",
            run,
            result,
            wall,
            first.map(|r| format!("{} {}", r.svg.display(), r.perfetto.display())).unwrap_or_default()
        );
        for r in &mine {
            if r.ok() {
                continue;
            }
            let what = match (&r.verdict, r.is_control) {
                (Verdict::Matches, true) => format!(
                    "control {run}: the scheduler run with {} produced the same snapshot as the real one: the scenario cannot tell them apart",
                    s.alteration()
                ),
                (Verdict::New, true) => format!("control {run}: no stored snapshot of {} to compare with", s.snapshot_name()),
                (Verdict::New, false) => format!(
                    "{run} (run {}): no snapshot stored yet; accept it with `cargo insta review` (or INSTA_UPDATE=always)",
                    r.iteration
                ),
                (Verdict::Differs, _) => format!("{run} (run {}): the snapshot differs", r.iteration),
                (Verdict::Broken(e), _) => format!("{run} (run {}): {e}", r.iteration),
                (Verdict::Matches, false) => unreachable!("ok() covers it"),
            };
            problems.push(what.clone());
            println!("    {what}");
            print!("{}", r.numbers);
            println!("    snapshot got: {}", r.trace_path.with_file_name("snapshot.txt").display());
            println!("    scheduler output ({}), last lines:", r.scheduler_log);
            let log = std::fs::read_to_string(&r.scheduler_log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                println!("      {l}");
            }
        }
    }
    if let Some(r) = results.iter().find(|r| !r.is_control) {
        println!("  raw traces: {}", r.trace_path.parent().and_then(Path::parent).unwrap_or(Path::new(".")).display());
        println!("  open a perfetto.json at https://ui.perfetto.dev (Open trace file); the SVGs in any browser");
    }
    if sel.mutant.is_none() && results.iter().any(|r| r.verdict == Verdict::New || (!r.is_control && r.verdict == Verdict::Differs)) {
        println!("  a deliberate change? review and accept with `cargo insta review` (CI never writes snapshots)");
    }
    problems
}

/// What follows the judging and the summary, in `vm-test scenarios` and
/// in `rejudge`: the A/B table against EEVDF, printed and written to
/// `out/ab.txt` (when any workload scenario ran under EEVDF and something
/// else), and the report page `out/report.html`. Returns the problems:
/// every `[[expect]]` not met, and a page that could not be written.
pub fn write_ab_and_page(sel: &Selection, results: &[RunResult], out: &Path) -> Vec<String> {
    let (table, mut problems) = ab::compare(&sel.scenarios, out);
    if !table.is_empty() {
        let ab = format!(
            "A/B against EEVDF (first run of each; share: part of the groups' CPU time, wait: mean run-queue wait per wake-up):\n{table}"
        );
        println!("\n{ab}");
        let _ = std::fs::write(out.join("ab.txt"), &ab);
    }
    match page::write(sel, results, &table, out) {
        Ok(page) => println!("\nreport (timelines side by side, diffs, A/B): {}", page.display()),
        Err(e) => problems.push(format!("the report page: {e:#}")),
    }
    problems
}

/// Picks the scenarios matching `filters` (substring of the name; all when
/// a filter is `scenarios`). None when no filter names scenarios.
pub fn select_scenarios(all: &[Scenario], filters: &[String]) -> Vec<Scenario> {
    if filters.iter().any(|f| f == "scenarios") {
        return all.to_vec();
    }
    all.iter().filter(|s| filters.iter().any(|f| s.name.contains(f.as_str()))).cloned().collect()
}

pub fn load() -> Result<Vec<Scenario>> {
    let all = spec::load_dir(&scenario_dir())?;
    if all.is_empty() {
        bail!("no scenario files in {}", scenario_dir().display());
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_name_shipped_scenarios_and_the_mutant_flag() {
        let all = load().unwrap();
        let sel = Selection::new(all.clone(), None);
        assert_eq!(sel.controls.len(), CONTROLS.len());
        assert!(sel.controls.iter().all(|c| c.altered()));
        let names: Vec<String> = sel.controls.iter().map(Scenario::run_name).collect();
        assert!(names.contains(&"landslide@min-share-20".to_string()), "{names:?}");
        let low = sel.controls.iter().find(|c| c.scheduler_min_share.is_some()).unwrap();
        assert_eq!((low.min_share_arg(), low.mutant.as_deref()), (Some(20.0), None));
        assert_eq!(low.alteration(), "--min-share 20");
        let sel = Selection::new(select_scenarios(&all, &["land".into()]), Some("fifo".into()));
        assert_eq!(sel.scenarios.len(), 1);
        assert!(sel.controls.is_empty());
        assert_eq!(sel.scenarios[0].run_name(), "landslide@fifo");
    }

    #[test]
    fn a_snapshot_kept_for_one_cpu_count_is_used_at_that_count_only() {
        let s = load().unwrap().into_iter().find(|s| s.name == "mixed-leader").unwrap();
        assert_eq!(snapshot_for(&s, 4), "mixed-leader@4cpus");
        assert_eq!(snapshot_for(&s, 2), "mixed-leader");
        // Every sized snapshot belongs to a scenario.
        let names: Vec<String> = load().unwrap().iter().map(|s| s.name.clone()).collect();
        for e in std::fs::read_dir(snapshot_dir()).unwrap() {
            let file = e.unwrap().file_name().to_string_lossy().into_owned();
            if let Some((base, _)) = file.strip_suffix("cpus.snap").and_then(|f| f.split_once('@')) {
                assert!(names.iter().any(|n| n == base), "{file}: no scenario {base}");
            }
        }
    }

    #[test]
    fn every_scenario_has_a_stored_snapshot() {
        let sh = xshell::Shell::new().unwrap();
        let unders: Vec<spec::Under> = DEFAULT_UNDER.iter().map(|n| resolve_under(&sh, n).unwrap()).collect();
        for s in Selection::under(load().unwrap(), None, &unders).scenarios {
            let name = s.snapshot_name();
            assert!(stored_snapshot(&name).is_some(), "vm/scenarios/snapshots/{name}.snap is missing");
        }
    }

    #[test]
    fn a_workload_scenario_runs_once_per_scheduler_and_an_election_once() {
        let all = load().unwrap();
        let unders = [spec::Under::Eevdf, spec::Under::Ballot(spec::Policy::Fifo)];
        let sel = Selection::under(all.clone(), None, &unders);
        let workloads = all.iter().filter(|s| s.workload).count();
        assert!(workloads >= 4, "{workloads} workload scenarios");
        assert_eq!(sel.scenarios.len(), all.len() + workloads);
        assert!(sel.scenarios.iter().any(|s| s.run_name() == "nice-levels@fifo"));
        assert!(sel.scenarios.iter().any(|s| s.run_name() == "landslide"));
        let broken = Selection::under(all, Some("fifo".into()), &unders);
        assert!(broken.scenarios.iter().all(|s| !s.workload && s.mutant.is_some()));
    }
}
