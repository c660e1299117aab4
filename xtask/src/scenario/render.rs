//! Pictures of a scenario run: an SVG timeline (a lane per worker, shaded
//! by how much of each sampling interval it ran; phase boundaries and
//! ballot events marked) and a Chrome trace-event JSON that opens in
//! ui.perfetto.dev (a CPU counter per worker, phases as slices, events as
//! instants).

use std::fmt::Write as _;

use serde_json::json;

use super::trace::Trace;

const PALETTE: &[&str] = &["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const OUTSIDER: &str = "#6b7280";

/// The colour of a group: outsiders grey, candidates by first appearance.
fn colours(t: &Trace) -> Vec<&'static str> {
    let mut owners: Vec<&str> = Vec::new();
    t.workers
        .iter()
        .map(|w| {
            let owner = w.group.split('/').next().unwrap_or("");
            if owner == "outsider" {
                return OUTSIDER;
            }
            let i = owners.iter().position(|o| *o == owner).unwrap_or_else(|| {
                owners.push(owner);
                owners.len() - 1
            });
            PALETTE[i % PALETTE.len()]
        })
        .collect()
}

/// Per worker, per sample interval: (start ms, end ms, fraction of one CPU).
fn intervals(t: &Trace) -> Vec<Vec<(u64, u64, f64)>> {
    let mut lanes = vec![Vec::new(); t.workers.len()];
    for pair in t.samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let dt = b.t_ms.saturating_sub(a.t_ms);
        if dt == 0 {
            continue;
        }
        for (w, lane) in lanes.iter_mut().enumerate() {
            if let (Some(Some(x)), Some(Some(y))) = (a.cpu_ns.get(w), b.cpu_ns.get(w)) {
                let frac = (y.saturating_sub(*x) as f64 / (dt as f64 * 1e6)).clamp(0.0, 1.0);
                lane.push((a.t_ms, b.t_ms, frac));
            }
        }
    }
    lanes
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub fn svg(t: &Trace) -> String {
    let lane_h = 18.0;
    let left = 150.0;
    let width = 1000.0;
    let top = 46.0;
    let end_ms = t.samples.last().map(|s| s.t_ms).unwrap_or(1).max(1) as f64;
    let x = |ms: u64| left + (ms as f64 / end_ms) * (width - left - 10.0);
    let height = top + lane_h * t.workers.len() as f64 + 84.0;
    let colours = colours(t);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="8" y="16" font-size="13" font-weight="bold">{} (run {}, {} CPUs): who ran when</text>"#,
        esc(&t.run),
        t.iteration,
        t.cpus
    );
    for (w, lane) in intervals(t).iter().enumerate() {
        let y = top + lane_h * w as f64;
        let _ = writeln!(s, r#"<text x="8" y="{:.1}">{}</text>"#, y + 12.0, esc(&t.workers[w].label()));
        let _ = writeln!(s, r##"<rect x="{left}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="#f3f4f6"/>"##, width - left - 10.0, lane_h - 3.0);
        for (a, b, frac) in lane {
            if *frac < 0.01 {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="{frac:.2}"/>"#,
                x(*a),
                (x(*b) - x(*a)).max(0.5),
                lane_h - 3.0,
                colours[w]
            );
        }
    }
    let bottom = top + lane_h * t.workers.len() as f64;
    for p in &t.phases {
        let px = x(p.start_ms);
        let _ = writeln!(s, r##"<line x1="{px:.1}" y1="22" x2="{px:.1}" y2="{bottom:.1}" stroke="#111" stroke-dasharray="4 3"/>"##);
        let _ = writeln!(s, r#"<text x="{:.1}" y="32">{}</text>"#, px + 3.0, esc(&p.name));
        let (m0, m1) = (x(p.measure_start_ms), x(p.end_ms));
        let _ = writeln!(s, r##"<line x1="{m0:.1}" y1="{:.1}" x2="{m1:.1}" y2="{:.1}" stroke="#111" stroke-width="2"/>"##, bottom + 6.0, bottom + 6.0);
    }
    for e in t.events.iter().filter(|e| matches!(e.kind.as_str(), "votes" | "register" | "remove" | "stop")) {
        let ex = x(e.t_ms);
        let _ = writeln!(
            s,
            r##"<path d="M{:.1} 36 l4 6 l-8 0 z" fill="#b45309"><title>{}: {}</title></path>"##,
            ex,
            esc(&e.kind),
            esc(&e.detail)
        );
    }
    axis(&mut s, end_ms, bottom + 10.0, &x);
    legend(&mut s, t, &colours, bottom + 44.0);
    let _ = writeln!(
        s,
        r#"<text x="8" y="{:.1}">shade: share of one CPU per {} ms; dashes: phase starts; bars: measured windows; triangles: votes and ballot changes ({})</text>"#,
        bottom + 68.0,
        t.sample_ms,
        esc(&t.events.iter().filter(|e| e.kind == "votes").map(|e| e.detail.clone()).collect::<Vec<_>>().join(", "))
    );
    s.push_str("</svg>\n");
    s
}

/// A time axis under the lanes: a tick and its second every 1, 2, 5, 10,
/// ... s, at most 15 of them.
fn axis(s: &mut String, end_ms: f64, y: f64, x: &dyn Fn(u64) -> f64) {
    let step_ms = [1000u64, 2000, 5000, 10_000, 20_000, 30_000, 60_000, 120_000, 300_000, 600_000]
        .into_iter()
        .find(|step| end_ms / *step as f64 <= 15.0)
        .unwrap_or(600_000);
    let _ = writeln!(s, r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#555"/>"##, x(0), x(end_ms as u64));
    let mut ms = 0;
    while ms as f64 <= end_ms {
        let tx = x(ms);
        let _ = writeln!(s, r##"<line x1="{tx:.1}" y1="{y:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#555"/>"##, y + 4.0);
        let _ = writeln!(s, r#"<text x="{tx:.1}" y="{:.1}" text-anchor="middle">{} s</text>"#, y + 15.0, ms / 1000);
        ms += step_ms;
    }
}

/// The legend: each group's colour, and what the shades mean.
fn legend(s: &mut String, t: &Trace, colours: &[&str], y: f64) {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (w, c) in t.workers.iter().zip(colours) {
        let owner = w.group.split('/').next().unwrap_or("").to_string();
        if !seen.iter().any(|(o, _)| *o == owner) {
            seen.push((owner, c));
        }
    }
    let mut lx = 8.0;
    for (owner, c) in &seen {
        let _ = writeln!(s, r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{c}"/>"#, y - 9.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{y:.1}">{}</text>"#, lx + 14.0, esc(owner));
        lx += 24.0 + 7.0 * owner.len() as f64;
    }
    lx += 16.0;
    for frac in [0.25, 0.5, 1.0] {
        let _ = writeln!(s, r##"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="#111" fill-opacity="{frac}"/>"##, y - 9.0);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{y:.1}">{:.0}%</text>"#, lx + 14.0, frac * 100.0);
        lx += 50.0;
    }
    let _ = writeln!(s, r#"<text x="{lx:.1}" y="{y:.1}">of one CPU</text>"#);
}

/// Chrome trace-event format (JSON object form), microsecond timestamps.
pub fn perfetto(t: &Trace) -> serde_json::Value {
    let mut events = Vec::new();
    events.push(json!({"ph": "M", "name": "process_name", "pid": 1, "args": {"name": format!("scenario {}", t.run)}}));
    events.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "phases"}}));
    for p in &t.phases {
        events.push(json!({"ph": "X", "name": p.name, "pid": 1, "tid": 1, "ts": p.start_ms * 1000,
            "dur": p.end_ms.saturating_sub(p.start_ms) * 1000, "args": {"tally": p.tally, "state": p.state}}));
        events.push(json!({"ph": "X", "name": "measured", "pid": 1, "tid": 2, "ts": p.measure_start_ms * 1000,
            "dur": p.end_ms.saturating_sub(p.measure_start_ms) * 1000}));
    }
    events.push(json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "measurement windows"}}));
    for e in &t.events {
        events.push(json!({"ph": "i", "s": "g", "name": format!("{}: {}", e.kind, e.detail), "pid": 1, "tid": 1, "ts": e.t_ms * 1000}));
    }
    for (w, lane) in intervals(t).iter().enumerate() {
        let worker = &t.workers[w];
        let pid = 100 + w as u64;
        events.push(json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": format!("{} (pid {})", worker.label(), worker.pid)}}));
        for (a, _, frac) in lane {
            events.push(json!({"ph": "C", "name": "cpu %", "pid": pid, "ts": a * 1000, "args": {"cpu": (frac * 1000.0).round() / 10.0}}));
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::trace::{Event, PhaseRecord, Sample, Worker};

    fn trace() -> Trace {
        Trace {
            run: "t<1>".into(),
            cpus: 2,
            sample_ms: 100,
            workers: vec![
                Worker { group: "blue/burner".into(), index: 1, pid: 10, started_ms: 0, stopped_ms: None },
                Worker { group: "outsider/burner".into(), index: 1, pid: 11, started_ms: 0, stopped_ms: None },
            ],
            phases: vec![PhaseRecord { name: "p".into(), start_ms: 0, measure_start_ms: 100, end_ms: 200, ..Default::default() }],
            samples: vec![
                Sample { t_ms: 0, cpu_ns: vec![Some(0), Some(0)] },
                Sample { t_ms: 100, cpu_ns: vec![Some(50_000_000), Some(100_000_000)] },
                Sample { t_ms: 200, cpu_ns: vec![Some(50_000_000), None] },
            ],
            events: vec![Event { t_ms: 5, kind: "votes".into(), detail: "blue +3".into() }],
            ..Default::default()
        }
    }

    #[test]
    fn intervals_are_cpu_fractions() {
        let lanes = intervals(&trace());
        assert_eq!(lanes[0], vec![(0, 100, 0.5), (100, 200, 0.0)]);
        assert_eq!(lanes[1], vec![(0, 100, 1.0)]);
    }

    #[test]
    fn the_svg_is_escaped_and_has_a_lane_per_worker() {
        let s = svg(&trace());
        assert!(s.contains("t&lt;1&gt;") && !s.contains("t<1>"));
        assert!(s.contains("blue/burner #1") && s.contains("outsider/burner #1"));
        assert!(s.contains("blue +3"));
        assert!(s.contains(OUTSIDER) && s.contains(PALETTE[0]));
        // A time axis and a legend of colours and shades.
        assert!(s.contains(">0 s</text>"), "{s}");
        assert!(s.contains(">blue</text>") && s.contains(">outsider</text>") && s.contains("of one CPU"), "{s}");
    }

    #[test]
    fn the_axis_ticks_at_most_fifteen_times() {
        let mut s = String::new();
        axis(&mut s, 64_000.0, 10.0, &|ms| ms as f64 / 100.0);
        let ticks = s.matches(" s</text>").count();
        assert_eq!(ticks, 13, "{s}"); // every 5 s: 0..=60
        assert!(s.contains(">60 s</text>"));
    }

    #[test]
    fn the_perfetto_trace_has_counters_phases_and_instants() {
        let v = perfetto(&trace());
        let ev = v["traceEvents"].as_array().unwrap();
        assert!(ev.iter().any(|e| e["ph"] == "C" && e["args"]["cpu"] == 50.0));
        assert!(ev.iter().any(|e| e["ph"] == "X" && e["name"] == "p"));
        assert!(ev.iter().any(|e| e["ph"] == "i" && e["name"] == "votes: blue +3"));
    }
}
