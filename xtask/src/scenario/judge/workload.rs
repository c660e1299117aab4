//! The snapshot of a workload scenario (`[[group]]`s, no election), run
//! under any scheduler: per phase and per group, never a PID,
//!
//! - `vs fair`: burners and forkers: the group's part of all the groups'
//!   CPU time over the part a fair scheduler would give it. Fair is a
//!   weighted max-min split of the vCPUs: each worker weighs by its nice
//!   level (the kernel's table: 1024 at nice 0, 1.25 times less per level)
//!   and wants at most one CPU (a burner or forker) or its duty cycle (a
//!   sleepy worker); what a capped worker leaves goes to the others, and
//!   workers pinned to some CPUs (`cpus`) share those CPUs. With cgroups
//!   (`cgroup_weight`), the split is first between the cgroups by their
//!   `cpu.weight`, then among each cgroup's workers.
//!   Buckets: `nothing` (under 0.5% of the CPU time), `< 0.5x`,
//!   `0.5-0.8x`, `fair` (0.8 to 1.25), `1.25-2x`, `> 2x`.
//! - `served`: sleepy workers: the part of their duty cycle they got,
//!   coarser than in the election scenarios (`nothing`, `starved` under
//!   30%, `served`): how long a waking worker waits is the `wake-up wait`
//!   column's, and a scheduler that makes it wait a slice or two (`fifo`
//!   serves 55 to 62% of a 2-in-10 ms cycle beside burners) sits on the
//!   election buckets' 60% line from run to run.
//! - `wake-up wait`: sleepy workers: mean run-queue wait per time they ran
//!   (`/proc/PID/schedstat`), in coarse buckets.
//! - `runs/s`: forkers: times they got on a CPU per second and per
//!   process, about one per child started; it tells a storm that keeps
//!   going from one that stalled.

use std::fmt::Write as _;

use super::bucket;
use crate::scenario::spec::{Kind, Scenario};
use crate::scenario::trace::Trace;

/// `vs fair` buckets: (lower bound of the ratio, name).
const VS_FAIR: &[(f64, &str)] = &[(0.0, "< 0.5x"), (0.5, "0.5-0.8x"), (0.8, "fair"), (1.25, "1.25-2x"), (2.0, "> 2x")];
/// `served` buckets: (lower bound in percent of the duty cycle, name).
const SERVED: &[(f64, &str)] = &[(0.0, "nothing"), (0.5, "starved"), (30.0, "served")];
/// Under this part of all the CPU time a group got nothing.
const NOTHING_PCT: f64 = 0.5;
/// `wake-up wait` buckets: (upper bound in milliseconds, name).
const WAKE_WAIT: &[(f64, &str)] = &[(1.0, "< 1 ms"), (5.0, "1-5 ms"), (20.0, "5-20 ms")];
const WAKE_WAIT_LONG: &str = "over 20 ms";
/// `runs/s` buckets: (lower bound, name).
const RUNS: &[(f64, &str)] = &[(0.0, "stalled"), (1.0, "< 100/s"), (100.0, "100-1000/s"), (1000.0, "over 1000/s")];

/// The kernel's weight of a nice level (`sched_prio_to_weight`, to within
/// a percent).
pub fn nice_weight(nice: i32) -> f64 {
    1024.0 / 1.25f64.powi(nice)
}

/// One worker as the fair model sees it.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// Its nice weight.
    pub weight: f64,
    /// The most CPU it can use: 1 (a burner) or its duty cycle.
    pub cap: f64,
    /// The CPUs it may run on, a bit per CPU; 0 for any.
    pub cpus: u64,
}

/// Above this many CPUs affinity is left out of the fair model (it checks
/// every subset of the CPUs).
const AFFINITY_CPUS: usize = 12;

/// Weighted max-min fair allocation of `cpus` CPUs (progressive filling):
/// every worker's allocation grows with its weight until it reaches its
/// cap, or until a set of CPUs is full with the workers allowed only on
/// it (pinned workers share their CPUs; floating ones take the rest).
pub fn fair_split(cpus: usize, workers: &[Want]) -> Vec<f64> {
    let all: u64 = if cpus >= 64 { u64::MAX } else { (1u64 << cpus) - 1 };
    let mask = |w: &Want| if w.cpus == 0 || cpus > AFFINITY_CPUS { all } else { w.cpus & all };
    // The sets of CPUs whose capacity binds: every subset, or the whole
    // machine alone.
    let sets: Vec<u64> = if cpus <= AFFINITY_CPUS { (1..=all).collect() } else { vec![all] };
    let mut alloc = vec![0.0; workers.len()];
    let mut open: Vec<usize> =
        (0..workers.len()).filter(|&i| workers[i].weight > 0.0 && workers[i].cap > 0.0 && mask(&workers[i]) != 0).collect();
    while !open.is_empty() {
        // How far the level can rise before a cap or a set binds.
        let mut step = f64::INFINITY;
        for &i in &open {
            step = step.min((workers[i].cap.min(1.0) - alloc[i]) / workers[i].weight);
        }
        for &set in &sets {
            let inside = |i: &usize| mask(&workers[*i]) & !set == 0;
            let rate: f64 = open.iter().filter(|i| inside(i)).map(|&i| workers[i].weight).sum();
            if rate > 0.0 {
                let used: f64 = (0..workers.len()).filter(inside).map(|i| alloc[i]).sum();
                step = step.min((set.count_ones() as f64 - used) / rate);
            }
        }
        let step = step.max(0.0);
        for &i in &open {
            alloc[i] += step * workers[i].weight;
        }
        // Freeze who can grow no more: at their cap, or inside a full set.
        let mut frozen: Vec<usize> = open.iter().copied().filter(|&i| alloc[i] >= workers[i].cap.min(1.0) - 1e-9).collect();
        for &set in &sets {
            let inside = |i: &usize| mask(&workers[*i]) & !set == 0;
            let used: f64 = (0..workers.len()).filter(inside).map(|i| alloc[i]).sum();
            if used >= set.count_ones() as f64 - 1e-9 {
                frozen.extend(open.iter().copied().filter(inside));
            }
        }
        if frozen.is_empty() {
            break;
        }
        open.retain(|i| !frozen.contains(i));
    }
    alloc
}

/// Weighted max-min fair split of `capacity` CPUs among (weight, most it
/// can use), with no affinity: each gets `min(cap, level * weight)`.
fn fluid_split(capacity: f64, workers: &[(f64, f64)]) -> Vec<f64> {
    let mut alloc = vec![0.0; workers.len()];
    let mut open: Vec<usize> = (0..workers.len()).filter(|&i| workers[i].0 > 0.0 && workers[i].1 > 0.0).collect();
    let mut left = capacity;
    while !open.is_empty() && left > 1e-9 {
        let level = left / open.iter().map(|&i| workers[i].0).sum::<f64>();
        let capped: Vec<usize> = open.iter().copied().filter(|&i| workers[i].1 <= level * workers[i].0).collect();
        if capped.is_empty() {
            for &i in &open {
                alloc[i] = level * workers[i].0;
            }
            break;
        }
        for &i in &capped {
            alloc[i] = workers[i].1;
            left -= workers[i].1;
        }
        open.retain(|i| !capped.contains(i));
    }
    alloc
}

/// The fair split with cgroups (the kernel's group scheduling): at the top,
/// each cgroup weighs its `cpu.weight` (100 as much as a nice-0 task) and
/// can use at most what its workers can; workers outside a cgroup compete
/// with them as themselves; each cgroup's part is then split among its
/// workers by their own weights. `cgroup[i]`: worker i's cgroup (index,
/// cpu.weight).
pub fn cgroup_split(cpus: usize, workers: &[Want], cgroup: &[Option<(usize, u32)>]) -> Vec<f64> {
    let mut top: Vec<(f64, f64)> = Vec::new();
    // Per top-level entity: a cgroup index, or a lone worker.
    let mut entity: Vec<Result<usize, usize>> = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        match cgroup[i] {
            None => {
                top.push((w.weight, w.cap.min(1.0)));
                entity.push(Err(i));
            }
            Some((c, weight)) => match entity.iter().position(|e| *e == Ok(c)) {
                Some(at) => top[at].1 += w.cap.min(1.0),
                None => {
                    top.push((weight as f64 * 1024.0 / 100.0, w.cap.min(1.0)));
                    entity.push(Ok(c));
                }
            },
        }
    }
    for t in &mut top {
        t.1 = t.1.min(cpus as f64);
    }
    let shares = fluid_split(cpus as f64, &top);
    let mut alloc = vec![0.0; workers.len()];
    for (e, share) in entity.iter().zip(shares) {
        match e {
            Err(i) => alloc[*i] = share,
            Ok(c) => {
                let members: Vec<usize> = (0..workers.len()).filter(|&i| cgroup[i].map(|(x, _)| x) == Some(*c)).collect();
                let inner: Vec<(f64, f64)> = members.iter().map(|&i| (workers[i].weight, workers[i].cap.min(1.0))).collect();
                for (&i, a) in members.iter().zip(fluid_split(share, &inner)) {
                    alloc[i] = a;
                }
            }
        }
    }
    alloc
}

/// One group in one phase.
struct Row {
    group: String,
    kind: Kind,
    procs: usize,
    cpu_ms: f64,
    /// Percent of all the groups' CPU time.
    share: f64,
    /// Percent a fair split gives it.
    fair: f64,
    served: Option<f64>,
    wait_ms: Option<f64>,
    runs_per_s: f64,
}

fn rows(s: &Scenario, t: &Trace, pi: usize) -> Vec<Row> {
    let p = &t.phases[pi];
    let window_ms = p.end_ms.saturating_sub(p.measure_start_ms).max(1) as f64;
    let mut out = Vec::new();
    let mut wants: Vec<Want> = Vec::new();
    let mut cgroups: Vec<Option<(usize, u32)>> = Vec::new();
    let owners: Vec<&str> = s.groups.iter().map(|g| g.id.split('/').next().unwrap_or("")).collect();
    let mut owner: Vec<usize> = Vec::new();
    for (gi, g) in s.groups.iter().enumerate() {
        let idx: Vec<usize> = t.workers.iter().enumerate().filter(|(_, w)| w.group == g.id).map(|(i, _)| i).collect();
        let alive = idx.iter().filter(|&&i| p.alive.get(i).copied().unwrap_or(false)).count();
        let sum = |v: &[u64]| idx.iter().map(|&i| v.get(i).copied().unwrap_or(0)).sum::<u64>();
        let (cpu_ns, runs, wait_ns) = (sum(&p.cpu_ns), sum(&p.runs), sum(&p.wait_ns));
        let duty = match g.kind {
            Kind::Sleepy => g.run_ms as f64 / (g.run_ms + g.sleep_ms) as f64,
            Kind::Burner | Kind::Forker => 1.0,
        };
        for _ in 0..alive {
            let cpus = g.cpus.iter().filter(|&&c| c < 64).fold(0u64, |m, &c| m | 1 << c);
            wants.push(Want { weight: nice_weight(g.nice), cap: duty, cpus });
            // One cgroup per `[[group]]`: indexed by its first worker set.
            cgroups.push(g.cgroup_weight.map(|w| (owners.iter().position(|o| *o == owners[gi]).unwrap_or(gi), w)));
            owner.push(gi);
        }
        let per_proc = if alive == 0 { 0.0 } else { cpu_ns as f64 / 1e6 / window_ms / alive as f64 * 100.0 };
        out.push(Row {
            group: g.id.clone(),
            kind: g.kind,
            procs: alive,
            cpu_ms: cpu_ns as f64 / 1e6,
            share: 0.0,
            fair: 0.0,
            served: (g.kind == Kind::Sleepy).then(|| per_proc / (duty * 100.0) * 100.0),
            wait_ms: (g.kind == Kind::Sleepy && runs > 0).then(|| wait_ns as f64 / runs as f64 / 1e6),
            runs_per_s: if alive == 0 { 0.0 } else { runs as f64 / (window_ms / 1000.0) / alive as f64 },
        });
    }
    let alloc = if cgroups.iter().any(Option::is_some) {
        cgroup_split(t.cpus.max(1) as usize, &wants, &cgroups)
    } else {
        fair_split(t.cpus.max(1) as usize, &wants)
    };
    let alloc_total: f64 = alloc.iter().sum();
    let cpu_total: f64 = out.iter().map(|r| r.cpu_ms).sum();
    for (gi, r) in out.iter_mut().enumerate() {
        let mine: f64 = alloc.iter().zip(&owner).filter(|(_, o)| **o == gi).map(|(a, _)| a).sum();
        r.fair = if alloc_total > 0.0 { mine / alloc_total * 100.0 } else { 0.0 };
        r.share = if cpu_total > 0.0 { r.cpu_ms / cpu_total * 100.0 } else { 0.0 };
    }
    out
}

/// What the A/B comparison reads of one group in one phase.
pub struct Figures {
    pub group: String,
    /// Percent of all the groups' CPU time.
    pub share: f64,
    /// Sleepy workers' mean run-queue wait per run, in milliseconds.
    pub wait_ms: Option<f64>,
}

/// Per phase, per group: the figures of a workload run.
pub fn figures(s: &Scenario, t: &Trace) -> Vec<Vec<Figures>> {
    (0..t.phases.len())
        .map(|pi| rows(s, t, pi).into_iter().map(|r| Figures { group: r.group, share: r.share, wait_ms: r.wait_ms }).collect())
        .collect()
}

fn vs_fair(r: &Row) -> &'static str {
    if r.kind == Kind::Sleepy {
        return "-";
    }
    if r.share < NOTHING_PCT {
        return "nothing";
    }
    bucket(VS_FAIR, if r.fair > 0.0 { r.share / r.fair } else { 0.0 })
}

fn wake_wait(r: &Row) -> &'static str {
    match r.wait_ms {
        None => "-",
        Some(ms) => WAKE_WAIT.iter().find(|(hi, _)| ms < *hi).map(|(_, n)| *n).unwrap_or(WAKE_WAIT_LONG),
    }
}

fn runs(r: &Row) -> &'static str {
    if r.kind == Kind::Forker { bucket(RUNS, r.runs_per_s) } else { "-" }
}

/// What the scheduler of the run was, and how it ended.
fn scheduler_line(s: &Scenario, t: &Trace) -> String {
    let name = s.under.as_ref().map(|u| u.name()).unwrap_or_else(|| "eevdf".into());
    if name == "eevdf" {
        return format!("scheduler: none (EEVDF), sched_ext state afterwards {}", t.state_after);
    }
    let exit = match t.scheduler_exit {
        Some(c) => format!("exited {c}"),
        None => "did not exit".to_string(),
    };
    format!("scheduler: {name}, {exit}, state afterwards {}", t.state_after)
}

/// The snapshot text of a workload run.
pub fn snapshot(s: &Scenario, t: &Trace) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", s.description);
    let under = s.under.as_ref().map(|u| u.name()).unwrap_or_else(|| "eevdf".into());
    let _ = writeln!(out, "under: {under}");
    if let Some(e) = &t.error {
        let _ = writeln!(out, "error: {}", e.lines().next().unwrap_or(""));
    }
    let want_state = if under == "eevdf" { "disabled" } else { "enabled" };
    for (pi, p) in t.phases.iter().enumerate() {
        let _ = writeln!(out, "\nphase {} \"{}\"", pi + 1, p.name);
        let _ = writeln!(out, "  {:<20} {:<9} {:<8} {:<14} runs/s", "group", "vs fair", "served", "wake-up wait");
        for r in rows(s, t, pi) {
            let served = r.served.map(|x| bucket(SERVED, x)).unwrap_or("-");
            let _ = writeln!(out, "  {:<20} {:<9} {:<8} {:<14} {}", r.group, vs_fair(&r), served, wake_wait(&r), runs(&r));
        }
        if p.state != want_state {
            let _ = writeln!(out, "  sched_ext state: {}", p.state);
        }
    }
    let _ = writeln!(out, "\n{}", scheduler_line(s, t));
    out.lines().map(str::trim_end).collect::<Vec<_>>().join("\n") + "\n"
}

/// The measured table, with numbers, for the summary and for failures.
pub fn numbers(s: &Scenario, t: &Trace) -> String {
    let mut out = String::new();
    for (pi, p) in t.phases.iter().enumerate() {
        let _ = writeln!(out, "    phase {} \"{}\", state {}", pi + 1, p.name, p.state);
        for r in rows(s, t, pi) {
            let mut line = format!(
                "      {:<20} procs {:>2}  cpu {:>7.0} ms  share {:5.1}% (fair {:5.1}%, {})",
                r.group,
                r.procs,
                r.cpu_ms,
                r.share,
                r.fair,
                vs_fair(&r)
            );
            if let Some(x) = r.served {
                line += &format!("  served {x:5.1}% ({})", bucket(SERVED, x));
            }
            if let Some(w) = r.wait_ms {
                line += &format!("  wait/run {w:.2} ms ({})", wake_wait(&r));
            }
            if r.kind == Kind::Forker {
                line += &format!("  runs/s {:.0} ({})", r.runs_per_s, runs(&r));
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_weights_follow_the_kernel_table() {
        assert_eq!(nice_weight(0), 1024.0);
        assert!((nice_weight(4) - 423.0).abs() < 5.0, "{}", nice_weight(4));
        assert!((nice_weight(-5) - 3121.0).abs() < 30.0, "{}", nice_weight(-5));
    }

    fn want(weight: f64, cap: f64, cpus: u64) -> Want {
        Want { weight, cap, cpus }
    }

    #[test]
    fn the_fair_split_caps_sleepers_and_shares_the_rest_by_weight() {
        // Two burners at weight 1 and a sleeper wanting 0.2, on 2 CPUs.
        let a = fair_split(2, &[want(1.0, 1.0, 0), want(1.0, 1.0, 0), want(1.0, 0.2, 0)]);
        assert!((a[2] - 0.2).abs() < 1e-9 && (a[0] - 0.9).abs() < 1e-9, "{a:?}");
        // More burners than CPUs: by weight.
        let b = fair_split(1, &[want(3.0, 1.0, 0), want(1.0, 1.0, 0)]);
        assert!((b[0] - 0.75).abs() < 1e-9 && (b[1] - 0.25).abs() < 1e-9, "{b:?}");
        // Fewer than CPUs: each one whole CPU.
        let c = fair_split(4, &[want(3.0, 1.0, 0), want(1.0, 1.0, 0)]);
        assert_eq!(c, vec![1.0, 1.0]);
    }

    #[test]
    fn pinned_workers_share_their_cpu_and_floating_ones_take_the_rest() {
        // Three burners pinned to CPU 0 and one floating, on 2 CPUs: the
        // pinned share CPU 0, the floating one has CPU 1 to itself.
        let a = fair_split(2, &[want(1.0, 1.0, 1), want(1.0, 1.0, 1), want(1.0, 1.0, 1), want(1.0, 1.0, 0)]);
        assert!(a[..3].iter().all(|x| (x - 1.0 / 3.0).abs() < 1e-9) && (a[3] - 1.0).abs() < 1e-9, "{a:?}");
        // Two pinned to CPU 0, four floating, on 4 CPUs: 0.5 each pinned,
        // the floating ones share the other three.
        let pinned = [want(1.0, 1.0, 1); 2];
        let floating = [want(1.0, 1.0, 0); 4];
        let b = fair_split(4, &[&pinned[..], &floating[..]].concat());
        assert!(b[..2].iter().all(|x| (x - 0.5).abs() < 1e-9), "{b:?}");
        assert!(b[2..].iter().all(|x| (x - 0.75).abs() < 1e-9), "{b:?}");
        // A sleeper pinned beside a burner on the same CPU.
        let c = fair_split(2, &[want(1.0, 0.2, 2), want(1.0, 1.0, 2), want(1.0, 1.0, 0)]);
        assert!((c[0] - 0.2).abs() < 1e-9 && (c[1] - 0.8).abs() < 1e-9 && (c[2] - 1.0).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn cgroups_split_first_by_their_weight_then_among_their_workers() {
        let burner = want(1024.0, 1.0, 0);
        // Four burners in a cgroup of weight 400, four in one of 100, on
        // 2 CPUs: 80% and 20%, evenly inside each.
        let cg: Vec<Option<(usize, u32)>> = (0..8).map(|i| Some(if i < 4 { (0, 400) } else { (1, 100) })).collect();
        let a = cgroup_split(2, &[burner; 8], &cg);
        assert!(a[..4].iter().all(|x| (x - 0.4).abs() < 1e-9) && a[4..].iter().all(|x| (x - 0.1).abs() < 1e-9), "{a:?}");
        // A cgroup with one burner cannot use more than one CPU: the rest
        // goes to the other.
        let cg = [Some((0, 900)), Some((1, 100)), Some((1, 100))];
        let b = cgroup_split(2, &[burner; 3], &cg);
        assert!((b[0] - 1.0).abs() < 1e-9 && (b[1] - 0.5).abs() < 1e-9, "{b:?}");
        // A worker outside any cgroup competes with the cgroups as itself.
        let cg = [None, Some((0, 100)), Some((0, 100))];
        let c = cgroup_split(1, &[burner; 3], &cg);
        assert!((c[0] - 0.5).abs() < 1e-9 && (c[1] - 0.25).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn buckets_read_as_the_ratio_says() {
        let row = |share: f64, fair: f64| Row {
            group: "g/burner".into(),
            kind: Kind::Burner,
            procs: 1,
            cpu_ms: 1.0,
            share,
            fair,
            served: None,
            wait_ms: None,
            runs_per_s: 0.0,
        };
        assert_eq!(vs_fair(&row(50.0, 50.0)), "fair");
        assert_eq!(vs_fair(&row(29.0, 50.0)), "0.5-0.8x");
        assert_eq!(vs_fair(&row(71.0, 50.0)), "1.25-2x");
        assert_eq!(vs_fair(&row(0.1, 50.0)), "nothing");
    }
}
