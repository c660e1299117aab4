//! `cargo xtask rejudge DIR --runs N`: the scenario runs recorded in DIR
//! (by `vm-test scenarios`) judged again on the host, without a VM, with
//! what `vm-test` writes after judging: the A/B table and the report page.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{Selection, guest, judge_runs, report, write_ab_and_page};

/// `xtask rejudge DIR --runs N`: judges scenario runs already recorded in
/// DIR (e.g. after a VM run was cut short, or after changing the buckets),
/// without booting anything, and writes DIR/ab.txt (the A/B table against
/// EEVDF) and DIR/report.html (the report page) as `vm-test scenarios`
/// does. Controls are not judged, so the page shows none. Fails when a run
/// differs from its snapshot or left no trace, or an `[[expect]]` is not
/// met.
#[derive(clap::Args, Debug)]
pub struct RejudgeCmd {
    /// The scenario output folder (with plan.json), e.g. target/vm-test/scenarios;
    /// ab.txt and report.html are written into it.
    dir: PathBuf,
    /// How many runs of each scenario to judge (1..=N).
    #[arg(long, default_value_t = 1)]
    runs: u32,
}

impl RejudgeCmd {
    pub fn run(self) -> Result<()> {
        let plan: guest::Plan = serde_json::from_slice(&std::fs::read(self.dir.join("plan.json")).context("reading plan.json")?)
            .context("parsing plan.json")?;
        let sel = Selection { scenarios: plan.scenarios, controls: Vec::new(), mutant: None };
        let results = judge_runs(&sel, &self.dir, self.runs);
        let mut problems = report(&sel, &results, self.runs);
        let more = write_ab_and_page(&sel, &results, &self.dir);
        for p in &more {
            println!("  {p}");
        }
        problems.extend(more);
        if problems.is_empty() { Ok(()) } else { bail!("{} problem(s): runs that differ or are missing, or `[[expect]]`s not met", problems.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::page;

    #[test]
    fn rejudging_recorded_runs_writes_the_ab_table_and_the_report_page() {
        let dir = std::env::temp_dir().join(format!("scx_ballot-rejudge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Both made-up runs split the CPUs evenly, as their snapshots say:
        // a differing one would leave a `.snap.new` beside the snapshots.
        let (sel, traces) = page::example_runs(0.5).unwrap();
        for (s, t) in sel.scenarios.iter().zip(&traces) {
            let run = dir.join(format!("{}.1", s.run_name()));
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("trace.json"), serde_json::to_vec(t).unwrap()).unwrap();
        }
        sel.write_plan(&dir, 1, None).unwrap();

        RejudgeCmd { dir: dir.clone(), runs: 1 }.run().unwrap();
        let ab = std::fs::read_to_string(dir.join("ab.txt")).unwrap();
        assert!(ab.starts_with("A/B against EEVDF (first run of each;"), "{ab}");
        assert!(ab.contains("fair-burners") && ab.contains("fifo") && ab.contains("(1.00x)"), "{ab}");
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(html.contains("<p id=\"summary\" class=\"ok\">2 run(s), 2 as expected, 0 not.</p>"), "{html}");
        assert!(html.contains("<pre id=\"ab\">") && html.contains("fair-burners@fifo"), "{html}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
