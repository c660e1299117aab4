//! The election policy's tests, on the fake dispatcher.

use std::collections::BTreeMap;

use super::*;
use crate::election::membership::Seen;
use crate::election::view::{CandidateStanding, Standing};
use crate::sched::fake::{FakeDispatcher, task};
use crate::sched::{DispatchedTask, RL_CPU_ANY, RL_PREEMPT_CPU};

/// Records `tgid` as a scan sees the process of a fake task (comm
/// "burn", SCHED_EXT), a member of `candidate`.
fn seen(m: &mut Membership, tgid: i32, candidate: Option<&str>) {
    let seen = Seen { candidate: candidate.map(Arc::from), comm: "burn".into(), sched_ext: true };
    m.seen.insert(tgid, seen);
}

/// Inputs in winner mode with a 5 % minimum, votes counted.
fn inputs(board: Arc<Board>, membership: Membership) -> Inputs {
    Inputs {
        board,
        membership: Arc::new(ArcSwap::from_pointee(membership)),
        nudge: Arc::default(),
        mode: Mode::Winner,
        min_share: 0.05,
        cap: false,
        ignore_votes: false,
    }
}

fn standing(generation: u64, votes: &[(&str, u64)]) -> Standing {
    Standing {
        generation,
        candidates: votes
            .iter()
            .map(|(n, v)| CandidateStanding {
                name: n.to_string(),
                votes: *v,
                members: vec![],
            })
            .collect(),
    }
}

#[test]
fn winner_weights_leave_every_loser_its_minimum() {
    let w = weights(&standing(1, &[("blue", 5), ("red", 2)]), Mode::Winner, 0.05);
    // red and the unaffiliated class weigh 1 each: 1 / (18 + 2) = 5%.
    assert_eq!(w["blue"], 18);
    assert_eq!(w["red"], 1);
    assert_eq!(w[UNAFFILIATED], 1);
    let total: u64 = w.values().sum();
    assert!(1.0 / total as f64 >= 0.05);
}

#[test]
fn winner_weights_are_exact_where_floating_point_is_not() {
    // 20%: blue weighs 3 (red and the unaffiliated class 1 each, 20%).
    let w = weights(&standing(1, &[("blue", 5), ("red", 2)]), Mode::Winner, 0.2);
    assert_eq!(w["blue"], 3);
    for m in [0.005, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3] {
        let w = weights(&standing(1, &[("blue", 5), ("red", 2)]), Mode::Winner, m);
        let total: u64 = w.values().sum();
        let share = 1.0 / total as f64;
        assert!(share >= m - 1e-12, "{m}: {w:?}");
        // One more weight for the leader would leave less than m.
        assert!(1.0 / ((total + 1) as f64) < m, "{m}: {w:?}");
    }
}

#[test]
fn a_task_of_a_process_the_last_scan_missed_asks_for_a_scan() {
    let board = Board::new();
    board.standing.store(Arc::new(standing(1, &[("blue", 0)])));
    let mut m = Membership::default();
    seen(&mut m, 1, None);
    let nudge: Arc<Nudge> = Arc::default();
    let inputs = Inputs { nudge: nudge.clone(), ..inputs(board, m) };
    let mut p = Election::new(inputs, 1000);
    let mut d = FakeDispatcher {
        cpus: 2,
        ..Default::default()
    };
    d.queue.push_back(task(1, 100, 0, 1));
    p.schedule(&mut d).expect("schedule");
    assert!(!nudge.pending(), "its process is as the scan saw it");
    d.queue.push_back(task(2, 100, 0, 1));
    p.schedule(&mut d).expect("schedule");
    assert!(nudge.pending(), "pid 2 is new to the scan");
}

#[test]
fn the_ignore_votes_mutant_weighs_everyone_the_same() {
    let board = Board::new();
    board
        .standing
        .store(Arc::new(standing(1, &[("blue", 9), ("red", 1)])));
    let inputs = Inputs { ignore_votes: true, ..inputs(board, Membership::default()) };
    let mut p = Election::new(inputs, 1000);
    p.refresh();
    assert_eq!(p.classes.len(), 3);
    assert!(p.classes.values().all(|c| c.weight == 1));
}

#[test]
fn no_votes_means_equal_weights() {
    let w = weights(&standing(1, &[("blue", 0), ("red", 0)]), Mode::Winner, 0.05);
    assert!(w.values().all(|&x| x == 1));
}

#[test]
fn proportional_weights_are_votes_plus_one() {
    let w = weights(
        &standing(1, &[("blue", 3), ("red", 1)]),
        Mode::Proportional,
        0.05,
    );
    assert_eq!((w["blue"], w["red"], w[UNAFFILIATED]), (4, 2, 1));
}

/// A machine of `cpus` CPUs running burners (never sleeping) of the
/// given candidates, `tasks` each, for `total_ms`: each CPU runs
/// its task for the whole slice it was given, then what was queued
/// behind it, or idles until the policy gives it a task. The policy
/// runs on a CPU of its own, once after every slice end. Returns CPU
/// time (ms) per candidate.
fn simulate(
    votes: &[(&str, u64)],
    mode: Mode,
    cap: bool,
    cpus: usize,
    tasks: usize,
    total_ms: u64,
) -> BTreeMap<String, u64> {
    let board = Board::new();
    board.standing.store(Arc::new(standing(1, votes)));
    let mut m = Membership::default();
    let mut class_of = HashMap::new();
    let mut pids = 0;
    for (name, _) in votes {
        for _ in 0..tasks {
            pids += 1;
            seen(&mut m, pids, Some(name));
            class_of.insert(pids, name.to_string());
        }
    }
    let mut p = Election::new(Inputs { mode, cap, ..inputs(board, m) }, 5_000_000);
    let mut d = FakeDispatcher { cpus: cpus as u64, this_cpu: -1, ..Default::default() };
    for pid in 1..=pids {
        let mut t = task(pid, 100, 0, 0);
        t.wakeup = true;
        d.queue.push_back(t);
    }
    // Per CPU: the decision it runs and when its slice ends; its queue.
    let mut running: Vec<Option<(DispatchedTask, u64)>> = vec![None; cpus];
    let mut local: Vec<VecDeque<DispatchedTask>> = vec![VecDeque::new(); cpus];
    // A slice ends at the first 4 ms tick after it is used up (HZ=250).
    let ticked = |ns: u64| ns.div_ceil(TICK_NS) * TICK_NS;
    // The shared queue: lowest vtime first.
    let mut shared: Vec<DispatchedTask> = Vec::new();
    let take_shared = |shared: &mut Vec<DispatchedTask>, d: &mut FakeDispatcher| {
        let i = (0..shared.len()).min_by_key(|&i| shared[i].vtime)?;
        d.backlog -= 1;
        Some(shared.remove(i))
    };
    let mut runtime: HashMap<i32, u64> = HashMap::new();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let (mut now, mut last) = (0u64, 0u64);
    while now < total_ms * 1_000_000 {
        d.idle_cpus = (0..cpus).filter(|&c| running[c].is_none()).map(|c| c as i32).collect();
        p.last_refill = Some(Instant::now() - Duration::from_nanos(now - last));
        last = now;
        p.schedule(&mut d).unwrap();
        d.in_transit = 0;
        for t in std::mem::take(&mut d.dispatched) {
            match usize::try_from(t.cpu) {
                Ok(cpu) => local[cpu].push_back(t),
                Err(_) => shared.push(t),
            }
        }
        for cpu in 0..cpus {
            if running[cpu].is_none()
                && let Some(t) = local[cpu].pop_front().or_else(|| take_shared(&mut shared, &mut d))
            {
                *got.entry(class_of[&t.pid].clone()).or_default() += ticked(t.slice_ns);
                running[cpu] = Some((t, now + ticked(t.slice_ns)));
            }
        }
        // The next slice to end: its task comes back, its CPU goes on.
        let next = running.iter().enumerate().filter_map(|(c, r)| r.map(|(_, end)| (c, end))).min_by_key(|&(_, end)| end);
        let Some((cpu, end)) = next else {
            now += 1_000_000;
            continue;
        };
        let (t, _) = running[cpu].take().expect("running");
        now = end;
        *runtime.entry(t.pid).or_default() += ticked(t.slice_ns);
        let mut back = task(t.pid, 100, 0, 1);
        back.cpu = cpu as i32;
        back.exec_runtime = runtime[&t.pid];
        back.enq_cnt = t.enq_cnt + 1;
        d.queue.push_back(back);
        if let Some(t) = local[cpu].pop_front().or_else(|| take_shared(&mut shared, &mut d)) {
            *got.entry(class_of[&t.pid].clone()).or_default() += ticked(t.slice_ns);
            running[cpu] = Some((t, now + ticked(t.slice_ns)));
        }
    }
    got.values_mut().for_each(|ns| *ns /= 1_000_000);
    got
}

const TICK_NS: u64 = 4_000_000;

/// Percent of the candidates' CPU time that `name` got.
fn part(got: &BTreeMap<String, u64>, name: &str) -> f64 {
    got.get(name).copied().unwrap_or(0) as f64 * 100.0 / got.values().sum::<u64>().max(1) as f64
}

#[test]
fn the_leader_gets_most_and_the_loser_its_minimum_at_every_size() {
    for (cpus, per_cpu) in [(2, 1), (2, 2), (2, 3), (4, 1), (4, 2)] {
        let got = simulate(&[("blue", 3), ("red", 1)], Mode::Winner, false, cpus, cpus * per_cpu, 4000);
        let red = part(&got, "red");
        assert!((3.0..=8.0).contains(&red), "{cpus} CPUs, {per_cpu} per CPU each: {got:?}");
    }
    let got = simulate(&[("blue", 0), ("red", 0), ("green", 3)], Mode::Winner, false, 2, 2, 4000);
    for loser in ["blue", "red"] {
        assert!((3.0..=8.0).contains(&part(&got, loser)), "{got:?}");
    }
}

#[test]
fn proportional_three_to_one() {
    for per_cpu in [1, 2] {
        let got = simulate(&[("blue", 2), ("red", 0)], Mode::Proportional, false, 2, 2 * per_cpu, 4000);
        let ratio = got["blue"] as f64 / got["red"] as f64;
        assert!((2.55..=3.45).contains(&ratio), "{per_cpu} per CPU each: {got:?}");
    }
}

#[test]
fn no_votes_is_fair() {
    for per_cpu in [1, 2] {
        let got = simulate(&[("blue", 0), ("red", 0)], Mode::Winner, false, 2, 2 * per_cpu, 4000);
        assert!((part(&got, "blue") - 50.0).abs() <= 5.0, "{per_cpu} per CPU each: {got:?}");
    }
}

#[test]
fn no_cpu_idles_while_tasks_wait() {
    // Every slice end finds its next task queued behind it or decided.
    let got = simulate(&[("blue", 0), ("red", 0)], Mode::Winner, false, 2, 4, 4000);
    assert!(got.values().sum::<u64>() >= 2 * 4000, "{got:?}");
    let got = simulate(&[("blue", 3), ("red", 0)], Mode::Winner, false, 2, 2, 4000);
    assert!(got.values().sum::<u64>() >= 2 * 4000, "{got:?}");
}

#[test]
fn a_vote_takes_effect_at_the_next_dispatch() {
    let board = Board::new();
    board
        .standing
        .store(Arc::new(standing(1, &[("blue", 1), ("red", 0)])));
    let mut m = Membership::default();
    seen(&mut m, 1, Some("blue"));
    seen(&mut m, 3, Some("red"));
    let inputs = inputs(board.clone(), m);
    let mut p = Election::new(inputs, 1000);
    let mut d = FakeDispatcher::default();
    d.idle_cpus.push_back(0);
    // Blue has run a lot, both wait; one CPU frees up.
    for _ in 0..50 {
        let _ = p.tag(&Arc::from("blue"));
    }
    p.refresh();
    d.queue.extend([task(1, 100, 0, 1), task(3, 100, 0, 1)]);
    // Red takes the lead before the next schedule.
    board
        .standing
        .store(Arc::new(standing(2, &[("blue", 1), ("red", 2)])));
    p.schedule(&mut d).unwrap();
    assert_eq!(d.dispatched[0].pid, 3, "{:?}", d.dispatched);
}

#[test]
fn tasks_wait_for_a_free_cpu() {
    let board = Board::new();
    board.standing.store(Arc::new(standing(1, &[])));
    let inputs = inputs(board, Membership::default());
    let mut p = Election::new(inputs, 1000);
    // One CPU, busy: the policy runs on it and a task of ours waits
    // there.
    let mut d = FakeDispatcher {
        cpus: 1,
        local_here: 1,
        ..Default::default()
    };
    let mut t = task(9, 100, 0, 0);
    t.wakeup = true;
    d.queue.push_back(t);
    p.schedule(&mut d).unwrap();
    assert!(d.dispatched.is_empty());
    assert_eq!(p.nr_pending(), 1);
    d.idle_cpus.push_back(1);
    p.schedule(&mut d).unwrap();
    assert_eq!(d.dispatched[0].cpu, 1);
    assert_eq!(p.nr_pending(), 0);
}

#[test]
fn a_task_gets_one_slice_while_others_of_its_class_wait() {
    let board = Board::new();
    board.standing.store(Arc::new(standing(1, &[])));
    let mut p = Election::new(inputs(board, Membership::default()), 1000);
    let mut d = FakeDispatcher { cpus: 1, ..Default::default() };
    // Twenty unaffiliated tasks, one CPU: a crowd, no lease of several
    // slices.
    for pid in 10..30 {
        d.queue.push_back(task(pid, 100, 0, 0));
    }
    d.idle_cpus.push_back(0);
    p.schedule(&mut d).unwrap();
    assert!(!d.dispatched.is_empty());
    assert!(d.dispatched.iter().all(|t| t.slice_ns == 1000), "one slice each, not a lease: {:?}", d.dispatched);
    // Alone, a task leases several slices in a row.
    let board = Board::new();
    board.standing.store(Arc::new(standing(1, &[])));
    let mut p = Election::new(inputs(board, Membership::default()), 1000);
    let mut d = FakeDispatcher { cpus: 1, ..Default::default() };
    d.queue.push_back(task(10, 100, 0, 0));
    d.idle_cpus.push_back(0);
    p.schedule(&mut d).unwrap();
    assert!(d.dispatched[0].slice_ns > 1000, "{:?}", d.dispatched);
}

/// Blue leads; red's pids 1 and 2 and blue's pid 3 wait.
fn red_waits_blue_leads() -> (Election, FakeDispatcher) {
    let board = Board::new();
    board.standing.store(Arc::new(standing(1, &[("blue", 1), ("red", 0)])));
    let mut m = Membership::default();
    seen(&mut m, 1, Some("red"));
    seen(&mut m, 2, Some("red"));
    seen(&mut m, 3, Some("blue"));
    let p = Election::new(inputs(board, m), 1000);
    let d = FakeDispatcher {
        cpus: 2,
        ..Default::default()
    };
    (p, d)
}

#[test]
fn the_cpu_the_policy_runs_on_takes_the_best_task_when_nothing_of_ours_waits_there() {
    let (mut p, mut d) = red_waits_blue_leads();
    d.queue.extend([task(1, 100, 0, 1), task(2, 100, 0, 1), task(3, 100, 0, 1)]);
    // No CPU idle; the policy runs on CPU 1 and a decision is still on
    // its way: nothing more is given.
    d.this_cpu = 1;
    d.in_transit = 1;
    p.schedule(&mut d).unwrap();
    assert!(d.dispatched.is_empty());
    // A task of ours waits on CPU 1 (the policy preempted it): nothing.
    d.in_transit = 0;
    d.local_here = 1;
    p.schedule(&mut d).unwrap();
    assert!(d.dispatched.is_empty());
    // CPU 1 is free once the policy sleeps: the leader's task gets it,
    // by number (no other CPU can take it), and only it.
    d.local_here = 0;
    p.schedule(&mut d).unwrap();
    let placed: Vec<(i32, i32)> = d.dispatched.iter().map(|t| (t.pid, t.cpu)).collect();
    assert_eq!(placed, [(3, 1)]);
    assert_eq!(p.nr_pending(), 2);
}

#[test]
fn a_task_queued_as_its_cpu_went_idle_competes_for_that_cpu() {
    let (mut p, mut d) = red_waits_blue_leads();
    // Red's tasks wait; blue's task is running on CPU 0.
    d.queue.extend([task(1, 100, 0, 1), task(2, 100, 0, 1)]);
    d.local_here = 1;
    p.schedule(&mut d).unwrap();
    assert!(d.dispatched.is_empty());
    // Blue's slice ends: it is queued, then CPU 0 goes idle. The policy
    // sees the idle CPU before it has read blue's task.
    let mut back = task(3, 100, 0, 1);
    back.enq_cnt = 2;
    d.late.push_back(back);
    d.idle_cpus.push_back(0);
    p.schedule(&mut d).unwrap();
    assert_eq!(d.dispatched[0].pid, 3, "the leader keeps its CPU: {:?}", d.dispatched);
    assert_eq!(d.dispatched[0].cpu, 0);
}

#[test]
fn a_new_leader_preempts_the_cpus_of_the_old_one() {
    let (mut p, mut d) = red_waits_blue_leads();
    let board = p.board.clone();
    let mut m = Membership::default();
    seen(&mut m, 1, Some("red"));
    seen(&mut m, 3, Some("blue"));
    seen(&mut m, 4, Some("blue"));
    p.membership.store(Arc::new(m));
    // Blue's tasks 3 and 4 run on CPUs 0 and 1; red's 1 waits.
    d.queue.extend([task(3, 100, 0, 1), task(4, 100, 0, 1), task(1, 100, 0, 1)]);
    d.idle_cpus.extend([0, 1]);
    p.schedule(&mut d).unwrap();
    let placed: Vec<(i32, i32)> = d.dispatched.iter().map(|t| (t.pid, t.cpu)).collect();
    assert_eq!(placed[..2], [(3, 0), (4, 1)]);
    // Red's task waits, held by the policy: blue's leases have not
    // ended, so no decision for red is sure yet.
    assert_eq!(placed.len(), 2, "{placed:?}");
    d.local_here = 1;
    p.schedule(&mut d).unwrap();
    assert!(d.preempted.is_empty(), "no change, no preemption");
    // Red takes the lead: one of blue's CPUs gives its task up at once,
    // and red's task is already on its way to that CPU: it runs as soon
    // as blue's task is off, without another round through the policy.
    board.standing.store(Arc::new(standing(2, &[("blue", 1), ("red", 2)])));
    p.schedule(&mut d).unwrap();
    assert_eq!(d.preempted, [0]);
    let last = d.dispatched.last().unwrap();
    assert_eq!((last.pid, last.cpu, last.flags), (1, 0, RL_PREEMPT_CPU));
}

#[test]
fn a_new_leaders_held_task_is_on_its_way_to_the_cpu_it_preempts() {
    let (mut p, mut d) = red_waits_blue_leads();
    let board = p.board.clone();
    let mut m = Membership::default();
    for (pid, c) in [(1, "red"), (5, "red"), (3, "blue"), (4, "blue")] {
        seen(&mut m, pid, Some(c));
    }
    p.membership.store(Arc::new(m));
    d.queue.extend([task(3, 100, 0, 1), task(4, 100, 0, 1), task(1, 100, 0, 1), task(5, 100, 0, 1)]);
    d.idle_cpus.extend([0, 1]);
    d.local_here = 1;
    p.schedule(&mut d).unwrap();
    // Red's first task waits in the shared queue (a sure decision),
    // its second is held.
    if d.dispatched.len() == 2 {
        assert!(p.place(&mut d, RL_CPU_ANY, 0).unwrap());
    }
    let placed: Vec<(i32, i32)> = d.dispatched.iter().map(|t| (t.pid, t.cpu)).collect();
    assert_eq!(placed, [(3, 0), (4, 1), (1, RL_CPU_ANY)], "red's second task is held");
    board.standing.store(Arc::new(standing(2, &[("blue", 1), ("red", 2)])));
    p.schedule(&mut d).unwrap();
    // Both of blue's CPUs give their tasks up: one takes red's held
    // task, sent ahead of it, the other red's from the shared queue.
    assert_eq!(d.preempted, [0, 1]);
    // Red's task is already on its way to that CPU: it runs as soon as
    // blue's task is off, without another round through the policy.
    let last = d.dispatched.last().unwrap();
    assert_eq!((last.pid, last.cpu, last.flags), (5, 0, RL_PREEMPT_CPU));
}

/// One burner per candidate on 2 CPUs, blue leading, for 4 s.
fn simulate_one_each(cap: bool) -> BTreeMap<String, u64> {
    simulate(&[("blue", 3), ("red", 0)], Mode::Winner, cap, 2, 1, 4000)
}

#[test]
fn the_cap_holds_a_loser_to_its_minimum_of_the_machine_with_a_cpu_idle() {
    // One task each on 2 CPUs for 4 s: red may have 5% of 8 CPU-seconds.
    let got = simulate_one_each(true);
    assert!(got["blue"] >= 3900, "the leader runs all the time: {got:?}");
    assert!((340..=460).contains(&got["red"]), "{got:?}");
    // Without the cap the idle CPU is red's.
    let got = simulate_one_each(false);
    assert!(got["red"] >= 3900, "{got:?}");
}

#[test]
fn a_capped_class_with_many_tasks_gets_shorter_slices_so_each_runs_soon() {
    let (p, _) = red_waits_blue_leads();
    let inputs = Inputs { cap: true, ..inputs(p.board.clone(), Membership::default()) };
    let mut p = Election::new(inputs, 5_000_000);
    p.refresh();
    p.tasks.clear();
    for pid in 10..42 {
        p.tasks.insert(pid, (task(pid, 100, 0, 0), Arc::from("red")));
    }
    p.refill(2);
    let (slice, _) = p.allowance(&Arc::from("red"), 2);
    // 32 tasks share 5% of 2 CPUs: each gets its turn within 200 ms.
    assert_eq!(slice, 625_000);
    let (blue_slice, _) = p.allowance(&Arc::from("blue"), 2);
    assert_eq!(blue_slice, 5_000_000, "the leader is not capped");
}
