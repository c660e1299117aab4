//! What the bench prints and writes: medians and spreads per
//! configuration, the Markdown table, and the SVG bar chart.

use std::fmt::Write as _;

use serde_json::json;

use crate::guest::bench::Raw;

use super::{TARGET_VOTE_P99_MS, TARGET_VOTES_PER_S, ROOM_VIEWERS, TARGET_RSS_MIB};

pub(super) fn median(v: &[f64]) -> Option<f64> {
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

pub(super) fn percentile(v: &[f64], p: f64) -> Option<f64> {
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
    pub(super) fn from_raw(r: &Raw) -> Row {
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

    pub(super) fn json(&self) -> serde_json::Value {
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
pub(super) fn overlap(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> bool {
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
