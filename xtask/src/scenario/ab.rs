//! A/B against EEVDF: a workload scenario's runs under several schedulers
//! in one boot, side by side with its run under the kernel's own scheduler,
//! and the scenario's `[[expect]]`s checked against that baseline.

use std::fmt::Write as _;
use std::path::Path;

use super::judge::workload::{Figures, figures};
use super::spec::{Expect, Scenario};
use super::trace::Trace;

/// The baseline's name.
pub const BASELINE: &str = "eevdf";

/// Waits under this many milliseconds count as this much in a ratio:
/// below it a TCG guest's noise, not the scheduler, sets the ratio.
const WAIT_FLOOR_MS: f64 = 0.5;

/// One scheduler's run of a scenario.
struct Column {
    under: String,
    phases: Vec<Vec<Figures>>,
}

impl Column {
    /// A group's (by its `[[group]]` name) part of the CPU time in a phase.
    fn share(&self, phase: usize, group: &str) -> f64 {
        self.rows(phase, group).map(|f| f.share).sum()
    }

    /// A group's sleepy workers' mean wake-up wait in a phase.
    fn wait(&self, phase: usize, group: &str) -> Option<f64> {
        let waits: Vec<f64> = self.rows(phase, group).filter_map(|f| f.wait_ms).collect();
        (!waits.is_empty()).then(|| waits.iter().sum::<f64>() / waits.len() as f64)
    }

    fn rows<'a>(&'a self, phase: usize, group: &'a str) -> impl Iterator<Item = &'a Figures> + 'a {
        self.phases.get(phase).into_iter().flatten().filter(move |f| f.group.split('/').next() == Some(group))
    }
}

/// The comparison of every workload scenario that ran under EEVDF and
/// under something else (the first run of each): the text, and one
/// problem per expectation not met.
pub fn compare(scenarios: &[Scenario], out: &Path) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut problems = Vec::new();
    let mut bases: Vec<&str> = Vec::new();
    for s in scenarios.iter().filter(|s| s.workload && !s.altered()) {
        if !bases.contains(&s.name.as_str()) {
            bases.push(&s.name);
        }
    }
    for base in bases {
        let runs: Vec<&Scenario> = scenarios.iter().filter(|s| s.name == base && !s.altered()).collect();
        let cols: Vec<Column> = runs
            .iter()
            .filter_map(|s| {
                let path = out.join(format!("{}.1", s.run_name())).join("trace.json");
                let t: Trace = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
                t.error.is_none().then(|| Column { under: s.under.as_ref().map(|u| u.name()).unwrap_or_else(|| BASELINE.into()), phases: figures(s, &t) })
            })
            .collect();
        let Some(baseline) = cols.iter().find(|c| c.under == BASELINE) else {
            if !runs[0].expect.is_empty() {
                problems.push(format!("{base}: its [[expect]]s compare with EEVDF, whose run left no trace"));
            }
            continue;
        };
        if cols.len() < 2 {
            continue;
        }
        table(&mut text, base, &cols, baseline);
        for e in &runs[0].expect {
            expectation(&mut text, &mut problems, base, e, &cols, baseline);
        }
    }
    (text, problems)
}

/// `x` as a ratio of the baseline's `base`.
fn ratio(x: f64, base: f64) -> f64 {
    if base > 0.0 { x / base } else { f64::INFINITY }
}

fn table(out: &mut String, base: &str, cols: &[Column], baseline: &Column) {
    let _ = write!(out, "  {base:<36}");
    for c in cols {
        let _ = write!(out, " {:<18}", c.under);
    }
    let _ = writeln!(out);
    let phases = baseline.phases.len();
    for (pi, rows) in baseline.phases.iter().enumerate() {
        let phase = if phases > 1 { format!("phase {} ", pi + 1) } else { String::new() };
        for f in rows {
            let mut line = format!("    {:<32}", format!("{phase}{} share", f.group));
            for c in cols {
                let v = c.phases.get(pi).and_then(|r| r.iter().find(|x| x.group == f.group)).map(|x| x.share);
                line += &match v {
                    None => format!(" {:<18}", "-"),
                    Some(v) if c.under == BASELINE => format!(" {:<18}", format!("{v:.1}%")),
                    Some(v) => format!(" {:<18}", format!("{v:.1}% ({:.2}x)", ratio(v, f.share))),
                };
            }
            let _ = writeln!(out, "{}", line.trim_end());
            if let Some(base_wait) = f.wait_ms {
                let mut line = format!("    {:<32}", format!("{phase}{} wait", f.group));
                for c in cols {
                    let v = c.phases.get(pi).and_then(|r| r.iter().find(|x| x.group == f.group)).and_then(|x| x.wait_ms);
                    line += &match v {
                        None => format!(" {:<18}", "-"),
                        Some(v) if c.under == BASELINE => format!(" {:<18}", format!("{v:.2} ms")),
                        Some(v) => format!(" {:<18}", format!("{v:.2} ms ({:.2}x)", wait_ratio(v, base_wait))),
                    };
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
    }
}

fn wait_ratio(x: f64, base: f64) -> f64 {
    ratio(x.max(WAIT_FLOOR_MS), base.max(WAIT_FLOOR_MS))
}

/// Checks one `[[expect]]` in every phase under every scheduler it names
/// (all but EEVDF when it names none) that ran.
fn expectation(out: &mut String, problems: &mut Vec<String>, base: &str, e: &Expect, cols: &[Column], baseline: &Column) {
    let applies = |c: &&Column| c.under != BASELINE && (e.schedulers.is_empty() || e.schedulers.contains(&c.under));
    if !cols.iter().any(|c| applies(&c)) {
        // None of the schedulers it binds ran.
        return;
    }
    for pi in 0..baseline.phases.len() {
        let phase = if baseline.phases.len() > 1 { format!(" (phase {})", pi + 1) } else { String::new() };
        if let Some(limit) = e.wait_vs_eevdf {
            let Some(b) = baseline.wait(pi, &e.group) else { continue };
            let mut line = format!("    expect {} wait <= {limit}x EEVDF's {b:.2} ms{phase}:", e.group);
            for c in cols.iter().filter(applies) {
                let Some(w) = c.wait(pi, &e.group) else { continue };
                let r = wait_ratio(w, b);
                let ok = r <= limit;
                line += &format!(" {} {w:.2} ms ({r:.2}x) {};", c.under, if ok { "ok" } else { "NOT MET" });
                if !ok {
                    problems.push(format!(
                        "{base}@{}: {}'s wake-up wait is {w:.2} ms, {r:.2}x EEVDF's {b:.2} ms{phase}; the scenario expects at most {limit}x",
                        c.under, e.group
                    ));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end_matches(';'));
        }
        if let Some(limit) = e.share_vs_eevdf {
            let b = baseline.share(pi, &e.group);
            let mut line = format!("    expect {} share >= {limit}x EEVDF's {b:.1}%{phase}:", e.group);
            for c in cols.iter().filter(applies) {
                let v = c.share(pi, &e.group);
                let r = ratio(v, b);
                let ok = r >= limit;
                line += &format!(" {} {v:.1}% ({r:.2}x) {};", c.under, if ok { "ok" } else { "NOT MET" });
                if !ok {
                    problems.push(format!(
                        "{base}@{}: {} got {v:.1}% of the CPU time, {r:.2}x EEVDF's {b:.1}%{phase}; the scenario expects at least {limit}x",
                        c.under, e.group
                    ));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end_matches(';'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(under: &str, share: f64, wait: f64) -> Column {
        Column {
            under: under.into(),
            phases: vec![vec![
                Figures { group: "i/sleepy".into(), share, wait_ms: Some(wait) },
                Figures { group: "b/burner".into(), share: 100.0 - share, wait_ms: None },
            ]],
        }
    }

    #[test]
    fn an_expectation_not_met_is_a_problem_naming_the_scheduler_and_the_ratio() {
        let cols = [col("eevdf", 20.0, 2.0), col("fifo", 10.0, 9.0), col("vruntime", 19.0, 2.5)];
        let e = Expect { group: "i".into(), wait_vs_eevdf: Some(2.0), share_vs_eevdf: Some(0.8), schedulers: Vec::new() };
        let (mut out, mut problems) = (String::new(), Vec::new());
        expectation(&mut out, &mut problems, "s", &e, &cols, &cols[0]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("s@fifo: i's wake-up wait is 9.00 ms, 4.50x"), "{problems:?}");
        assert!(problems[1].starts_with("s@fifo: i got 10.0%"), "{problems:?}");
        assert!(out.contains("vruntime 2.50 ms (1.25x) ok"), "{out}");
        // Named schedulers only.
        let only = Expect { schedulers: vec!["vruntime".into()], ..e };
        let (mut out, mut problems) = (String::new(), Vec::new());
        expectation(&mut out, &mut problems, "s", &only, &cols, &cols[0]);
        assert!(problems.is_empty(), "{problems:?}");
        // One that binds no scheduler that ran says nothing.
        let none = Expect { schedulers: vec!["scx_lavd".into()], ..only };
        let mut out = String::new();
        expectation(&mut out, &mut problems, "s", &none, &cols, &cols[0]);
        assert!(out.is_empty() && problems.is_empty(), "{out}");
    }

    #[test]
    fn tiny_waits_do_not_make_big_ratios() {
        assert_eq!(wait_ratio(0.3, 0.05), 1.0);
        assert_eq!(wait_ratio(2.0, 0.1), 4.0);
    }

    #[test]
    fn the_table_shows_every_scheduler_beside_the_baseline() {
        let cols = [col("eevdf", 20.0, 2.0), col("fifo", 10.0, 9.0)];
        let mut out = String::new();
        table(&mut out, "s", &cols, &cols[0]);
        assert!(out.contains("i/sleepy share") && out.contains("20.0%") && out.contains("10.0% (0.50x)"), "{out}");
        assert!(out.contains("i/sleepy wait") && out.contains("9.00 ms (4.50x)"), "{out}");
    }
}
