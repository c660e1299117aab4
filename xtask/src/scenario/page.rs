//! The run's report page (`target/vm-test/scenarios/report.html`): one
//! self-contained HTML file, no external assets, with per scenario the
//! timeline of every scheduler it ran under side by side, each run's
//! verdict, the snapshot diff where it differs, the A/B table against
//! EEVDF, and links to the Perfetto traces.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::spec::{Policy, Under};
use super::trace::{Event, PhaseRecord, Sample, Trace, Worker};
use super::{RunResult, Selection, Verdict, ab, judge, render, snapshot_for, stored_snapshot};

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#111}\
h2{margin-top:2em;border-bottom:1px solid #ccc}\
.runs{display:flex;flex-wrap:wrap;gap:1em}\
.run{flex:1 1 480px;min-width:360px;border:1px solid #ddd;padding:.5em}\
.run svg{width:100%;height:auto}\
.ok{color:#15803d}.bad{color:#b91c1c;font-weight:bold}\
pre{background:#f6f6f6;padding:.5em;overflow-x:auto}\
.del{color:#b91c1c}.add{color:#15803d}";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Writes `report.html` in `out` (where the runs' folders are); its path.
pub fn write(sel: &Selection, results: &[RunResult], ab: &str, out: &Path) -> Result<PathBuf> {
    write_titled("Scenarios: who got the CPU", sel, results, ab, out)
}

fn write_titled(title: &str, sel: &Selection, results: &[RunResult], ab: &str, out: &Path) -> Result<PathBuf> {
    let path = out.join("report.html");
    std::fs::write(&path, render(title, sel, results, ab, out)).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn verdict(r: &RunResult) -> (&'static str, String) {
    let text = match (&r.verdict, r.is_control) {
        (Verdict::Matches, false) => "matches its snapshot".to_string(),
        (Verdict::Differs, true) => "control: differs from the snapshot, as it must".to_string(),
        (Verdict::Matches, true) => "CONTROL MISSED: same snapshot as the real scheduler".to_string(),
        (Verdict::Differs, false) => "SNAPSHOT DIFFERS".to_string(),
        (Verdict::New, _) => "NO SNAPSHOT STORED".to_string(),
        (Verdict::Broken(e), _) => format!("BROKEN: {}", e.lines().next().unwrap_or("")),
    };
    (if r.ok() { "ok" } else { "bad" }, text)
}

fn render(title: &str, sel: &Selection, results: &[RunResult], ab: &str, out: &Path) -> String {
    let mut h = String::new();
    let _ = write!(h, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>scx_ballot scenarios</title><style>{STYLE}</style></head><body>\n");
    let bad = results.iter().filter(|r| !r.ok()).count();
    let _ = writeln!(
        h,
        "<h1>{}</h1>\n<p id=\"summary\" class=\"{}\">{} run(s), {} as expected, {} not.</p>",
        esc(title),
        if bad == 0 { "ok" } else { "bad" },
        results.len(),
        results.len() - bad,
        bad
    );
    if !ab.is_empty() {
        let _ = writeln!(h, "<h2>A/B against EEVDF</h2>\n<pre id=\"ab\">{}</pre>", esc(ab));
    }
    let mut names: Vec<&str> = Vec::new();
    for s in sel.scenarios.iter().chain(&sel.controls) {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    for name in names {
        let runs: Vec<_> = sel.scenarios.iter().chain(&sel.controls).filter(|s| s.name == name).collect();
        let _ = writeln!(h, "<h2 id=\"{}\">{}</h2>\n<p>{}</p>\n<div class=\"runs\">", esc(name), esc(name), esc(&runs[0].description));
        for s in runs {
            let run = s.run_name();
            let mine: Vec<&RunResult> = results.iter().filter(|r| r.run == run).collect();
            let good = mine.iter().filter(|r| r.ok()).count();
            // The first run of each, and any other that went wrong.
            for r in mine.iter().filter(|r| r.iteration == 1 || !r.ok()) {
                let (class, mut text) = verdict(r);
                if r.iteration == 1 && mine.len() > 1 {
                    text += &format!(" ({good} of {} runs as expected)", mine.len());
                }
                let dir = format!("{run}.{}", r.iteration);
                let _ = writeln!(h, "<div class=\"run\"><h3>{} <small>run {}</small></h3>", esc(&run), r.iteration);
                let _ = writeln!(h, "<p class=\"{class}\">{}</p>", esc(&text));
                match std::fs::read_to_string(&r.svg) {
                    Ok(svg) => h.push_str(&svg),
                    Err(_) => h.push_str("<p>no timeline: the run left no trace</p>"),
                }
                let _ = writeln!(
                    h,
                    "<p><a href=\"{d}/perfetto.json\">perfetto.json</a> (open at ui.perfetto.dev) · <a href=\"{d}/trace.json\">trace.json</a> · <a href=\"{d}/snapshot.txt\">snapshot.txt</a></p>",
                    d = esc(&dir)
                );
                if !r.numbers.is_empty() {
                    let _ = writeln!(h, "<details><summary>measured</summary><pre>{}</pre></details>", esc(&r.numbers));
                }
                if r.verdict == Verdict::Differs && !r.is_control {
                    let got = std::fs::read_to_string(out.join(&dir).join("snapshot.txt")).unwrap_or_default();
                    let stored = stored_snapshot(&r.snapshot).unwrap_or_default();
                    let _ = writeln!(h, "<p>snapshot diff (- stored, + this run):</p><pre class=\"diff\">{}</pre>", diff_html(&stored, &got));
                }
                h.push_str("</div>\n");
            }
        }
        h.push_str("</div>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// An example report from made-up runs, for the browser test: the
/// repository's `fair-burners` under EEVDF (an even split, as its snapshot
/// says) and under `fifo` (made uneven, so that its snapshot differs and
/// the page shows a diff). It goes through the same judging, A/B and page
/// code as a real run, without a VM.
pub fn write_example(out: &Path) -> Result<PathBuf> {
    let (sel, traces) = example_runs(0.7)?;
    let mut results = Vec::new();
    for (s, t) in sel.scenarios.iter().zip(&traces) {
        let run = s.run_name();
        let dir = out.join(format!("{run}.1"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let trace_path = dir.join("trace.json");
        std::fs::write(&trace_path, serde_json::to_vec(t)?)?;
        let svg = dir.join("timeline.svg");
        std::fs::write(&svg, render::svg(t))?;
        let perfetto = dir.join("perfetto.json");
        std::fs::write(&perfetto, render::perfetto(t).to_string())?;
        let text = judge::snapshot(s, t);
        std::fs::write(dir.join("snapshot.txt"), &text)?;
        let snapshot = snapshot_for(s, t.cpus);
        let verdict = match stored_snapshot(&snapshot) {
            None => Verdict::New,
            Some(stored) if stored == text.trim_end() => Verdict::Matches,
            Some(_) => Verdict::Differs,
        };
        results.push(RunResult {
            run,
            iteration: 1,
            verdict,
            numbers: judge::numbers(s, t),
            svg,
            perfetto,
            trace_path,
            scheduler_log: String::new(),
            wall_ms: t.phases.last().map_or(0, |p| p.end_ms),
            is_control: false,
            snapshot,
        });
    }
    let (table, _) = ab::compare(&sel.scenarios, out);
    write_titled("Example report (made-up runs)", &sel, &results, &table, out)
}

/// The made-up runs of the example: `fair-burners` under EEVDF, where its
/// two groups split 2 CPUs evenly, and under `fifo`, where the first group
/// gets `fifo_part` of them (0.5: evenly too, so both runs match their
/// snapshots). The selection and a trace per run of it, in its order.
pub fn example_runs(fifo_part: f64) -> Result<(Selection, Vec<Trace>)> {
    let base = super::load()?.into_iter().find(|s| s.name == "fair-burners").context("vm/scenarios/fair-burners.toml is missing")?;
    let sel = Selection::under(vec![base], None, &[Under::Eevdf, Under::Ballot(Policy::Fifo)]);
    let mut traces = Vec::new();
    for (i, s) in sel.scenarios.iter().enumerate() {
        // Per group, the part of one CPU each worker gets: 2 CPUs shared
        // by all, evenly under EEVDF, `fifo_part` to the first group in
        // the other run.
        let cpus = 2u32;
        let mut workers = Vec::new();
        for g in &s.groups {
            for n in 0..g.count.resolve(cpus) {
                workers.push(Worker { group: g.id.clone(), index: n + 1, pid: 100 + workers.len() as i32, started_ms: 0, stopped_ms: None });
            }
        }
        let per_group = workers.len() as f64 / s.groups.len().max(1) as f64;
        let frac: Vec<f64> = workers
            .iter()
            .map(|w| {
                let first = s.groups.first().is_some_and(|g| g.id == w.group);
                let part = if i == 0 { 0.5 } else if first { fifo_part } else { 1.0 - fifo_part };
                part * cpus as f64 / per_group
            })
            .collect();
        let end_ms = 7000u64;
        let samples = (0..=end_ms / 100)
            .map(|k| Sample { t_ms: k * 100, cpu_ns: frac.iter().map(|f| Some((f * (k * 100) as f64 * 1e6) as u64)).collect() })
            .collect();
        let window = (end_ms - 1000) as f64 * 1e6;
        traces.push(Trace {
            run: s.run_name(),
            scenario: s.name.clone(),
            iteration: 1,
            cpus,
            sample_ms: 100,
            phases: vec![PhaseRecord {
                name: s.phases.first().map(|p| p.name.clone()).unwrap_or_default(),
                start_ms: 0,
                measure_start_ms: 1000,
                end_ms,
                cpu_ns: frac.iter().map(|f| (f * window) as u64).collect(),
                wait_ns: frac.iter().map(|f| ((1.0 - f) * window) as u64).collect(),
                runs: vec![600; workers.len()],
                alive: vec![true; workers.len()],
                state: if i == 0 { "disabled" } else { "enabled" }.into(),
                ..Default::default()
            }],
            workers,
            samples,
            events: vec![Event { t_ms: 0, kind: "attached".into(), detail: s.under.as_ref().map(Under::name).unwrap_or_default() }],
            scheduler_exit: (i != 0).then_some(0),
            state_after: "disabled".into(),
            ..Default::default()
        });
    }
    Ok((sel, traces))
}

/// A line diff (longest common subsequence), as HTML lines marked `-` and
/// `+`.
fn diff_html(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", esc(a[i]));
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "<span class=\"add\">+ {}</span>", esc(b[j]));
            j += 1;
        } else {
            let _ = writeln!(out, "<span class=\"del\">- {}</span>", esc(a[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_marks_removed_and_added_lines() {
        let d = diff_html("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(d, "  a\n<span class=\"add\">+ x</span>\n<span class=\"del\">- b</span>\n  c\n");
        assert_eq!(diff_html("<x>", "<x>"), "  &lt;x&gt;\n");
    }
}
