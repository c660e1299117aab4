//! Tests of the judge: buckets, tables and snapshots of made-up traces, and
//! (`recorded`) of runs recorded in the VM.

use crate::scenario::spec::{Count, Group, Join, Mode, Phase, Policy};
use crate::scenario::trace::{PhaseRecord, Worker};

use super::*;

fn scenario() -> Scenario {
    let g = |id: &str, cand: Option<&str>, kind| Group {
        id: id.into(),
        candidate: cand.map(Into::into),
        kind,
        count: Count::Fixed(1),
        join: Join::Exec,
        run_ms: 2,
        sleep_ms: 8,
        nice: 0,
        cpus: Vec::new(),
        cgroup_weight: None,
    };
    Scenario {
        name: "t".into(),
        description: "test".into(),
        policy: Policy::Election,
        mode: Mode::Winner,
        min_share: None,
        candidates: vec!["blue".into(), "red".into()],
        groups: vec![
            g("blue/burner", Some("blue"), Kind::Burner),
            g("red/burner", Some("red"), Kind::Burner),
            g("red/sleepy", Some("red"), Kind::Sleepy),
            g("outsider/burner", None, Kind::Burner),
        ],
        phases: vec![Phase { name: "p".into(), seconds: 1.0, settle_ms: 0, votes: vec![], register: vec![], remove: vec![], stop: vec![], restart: false }],
        mutant: None,
        scheduler_min_share: None,
        cap: false,
        scheduler_no_cap: false,
        scheduler_no_journal: false,
        workload: false,
        under: None,
        expect: Vec::new(),
    }
}

fn trace(cpu_ms: [u64; 4]) -> Trace {
    let workers = ["blue/burner", "red/burner", "red/sleepy", "outsider/burner"]
        .iter()
        .enumerate()
        .map(|(i, g)| Worker { group: g.to_string(), index: 1, pid: 100 + i as i32, started_ms: 0, stopped_ms: None })
        .collect();
    Trace {
        workers,
        phases: vec![PhaseRecord {
            name: "p".into(),
            start_ms: 0,
            measure_start_ms: 0,
            end_ms: 1000,
            cpu_ns: cpu_ms.iter().map(|m| m * 1_000_000).collect(),
            wait_ns: vec![0; 4],
            runs: vec![1; 4],
            alive: vec![true; 4],
            tally: Some(serde_json::from_value(serde_json::json!({"votes": {"blue": 3, "red": 0}, "leader": "blue", "generation": 4})).expect("a tally")),
            state: "enabled".into(),
            effect: None,
        }],
        scheduler_exit: Some(0),
        state_after: "disabled".into(),
        ..Default::default()
    }
}

#[test]
fn buckets_ranks_and_roles() {
    // blue 900 ms, red's burner 60 ms and sleepy 40 ms of 1 s.
    let t = tables(&scenario(), &trace([900, 60, 40, 990]));
    let rows = &t[0].rows;
    assert_eq!(rows[0].share_bucket(), Some("most"));
    assert_eq!(rows[1].share_bucket(), Some("at minimum"));
    assert_eq!((rows[0].rank, rows[1].rank, rows[2].rank), (Some(1), Some(2), None));
    assert_eq!(rows[2].share, None, "a sleeper's share is not snapshotted");
    // The sleepy worker wants 20% of a CPU and got 4%.
    assert!((rows[2].served.unwrap() - 20.0).abs() < 1e-6);
    assert_eq!(rows[3].share, None);
    assert_eq!(bucket(CPU, rows[3].cpu.unwrap()), "full");
    assert_eq!(t[0].tally, "votes: blue 3; leader: blue; candidates: blue, red");
}

#[test]
fn a_fair_split_ranks_equal_whoever_is_ahead() {
    let a = snapshot(&scenario(), &trace([480, 470, 50, 990]));
    let b = snapshot(&scenario(), &trace([470, 480, 50, 990]));
    assert_eq!(a, b);
    assert!(a.contains("blue/burner        half            1"), "{a}");
}

#[test]
fn a_change_in_behaviour_changes_the_snapshot() {
    let fair = snapshot(&scenario(), &trace([480, 470, 50, 990]));
    let won = snapshot(&scenario(), &trace([900, 60, 40, 990]));
    assert_ne!(fair, won);
    assert!(won.contains("only the minimum: red/burner; nothing: none"), "{won}");
    let mut ejected = trace([900, 60, 40, 990]);
    ejected.phases[0].state = "disabled".into();
    assert_ne!(snapshot(&scenario(), &ejected), won);
}

fn no_leader(mut t: Trace) -> Trace {
    t.phases[0].tally = Some(serde_json::from_value(serde_json::json!({"votes": {"blue": 0, "red": 0}, "leader": null, "generation": 2})).expect("a tally"));
    t
}

fn share_of<'a>(text: &'a str, group: &str) -> &'a str {
    let line = text.lines().find(|l| l.trim_start().starts_with(group)).unwrap();
    line[20..36].trim()
}

#[test]
fn a_loser_off_its_minimum_changes_the_snapshot() {
    // The candidates' burners: blue and red/burner (the sleeper is not
    // counted), 1 s in all.
    let at = snapshot(&scenario(), &trace([950, 50, 40, 990]));
    let starved = snapshot(&scenario(), &trace([990, 10, 40, 990]));
    let generous = snapshot(&scenario(), &trace([880, 120, 40, 990]));
    let kind = snapshot(&scenario(), &trace([900, 100, 40, 990]));
    assert_eq!(share_of(&at, "red/burner"), "at minimum");
    assert_eq!(share_of(&starved, "red/burner"), "below minimum");
    assert_eq!(share_of(&generous, "red/burner"), "quarter");
    assert_eq!(share_of(&kind, "red/burner"), "above minimum");
    for other in [&starved, &generous, &kind] {
        assert_ne!(&at, other);
    }
    assert!(at.contains("only the minimum: red/burner; nothing: none"), "{at}");
    assert!(!at.contains("below the minimum") && !at.contains("above the minimum"), "{at}");
    assert!(starved.contains("only the minimum: none; nothing: none\n  below the minimum: red/burner"), "{starved}");
    assert!(kind.contains("above the minimum: red/burner"), "{kind}");
    let none = snapshot(&scenario(), &trace([1000, 2, 40, 990]));
    assert!(none.contains("nothing: red/burner"), "{none}");
}

#[test]
fn a_leader_at_94_and_a_loser_at_5_5_is_at_the_minimum() {
    let t = tables(&scenario(), &trace([945, 55, 40, 990]));
    assert_eq!(t[0].rows[0].share_bucket(), Some("most"));
    assert_eq!(t[0].rows[1].share_bucket(), Some("at minimum"));
    assert_eq!((t[0].rows[0].rank, t[0].rows[1].rank), (Some(1), Some(2)));
}

#[test]
fn the_minimum_follows_the_scenario() {
    let mut s = scenario();
    s.min_share = Some(10.0);
    let t = tables(&s, &trace([900, 100, 40, 990]));
    assert_eq!(t[0].rows[1].share_bucket(), Some("at minimum"));
    let t = tables(&s, &trace([950, 50, 40, 990]));
    assert_eq!(t[0].rows[1].share_bucket(), Some("below minimum"));
    // The header still shows what the file declares, not the control's.
    s.scheduler_min_share = Some(1.0);
    assert!(snapshot(&s, &trace([990, 10, 40, 990])).contains("min share 10%"));
}

#[test]
fn phases_without_a_leader_keep_the_coarse_buckets() {
    let t = tables(&scenario(), &no_leader(trace([950, 50, 40, 990])));
    assert_eq!(t[0].rows[1].share_bucket(), Some("minimum"));
    let text = snapshot(&scenario(), &no_leader(trace([950, 50, 40, 990])));
    assert!(text.contains("only the minimum: red/burner; nothing: none"), "{text}");
    let mut s = scenario();
    s.mode = Mode::Proportional;
    let t = tables(&s, &trace([950, 50, 40, 990]));
    assert_eq!(t[0].rows[1].share_bucket(), Some("minimum"));
}

#[test]
fn the_time_to_effect_is_shown_in_buckets() {
    assert_eq!(effect_bucket(Some(0)), "< 1 s");
    assert_eq!(effect_bucket(Some(19)), "< 1 s");
    assert_eq!(effect_bucket(Some(999)), "< 1 s");
    assert_eq!(effect_bucket(Some(1000)), "later or never");
    assert_eq!(effect_bucket(None), "later or never");

    let plain = snapshot(&scenario(), &trace([950, 50, 40, 990]));
    assert!(!plain.contains("new leader"), "{plain}");
    let mut t = trace([950, 50, 40, 990]);
    let effect = Effect { leader: "blue".into(), target_pct: 70.0, window_ms: 20, effect_ms: Some(12), limit_ms: 1500, polls: 7 };
    t.phases[0].effect = Some(effect.clone());
    let quick = snapshot(&scenario(), &t);
    assert!(quick.contains("\n  new leader ran within: < 1 s\n"), "{quick}");
    assert!(numbers(&scenario(), &t).contains("new leader blue: its burners at 70.0% of the candidates' burner CPU over 20 ms after 12 ms"));
    t.phases[0].effect = Some(Effect { effect_ms: Some(1400), ..effect.clone() });
    let late = snapshot(&scenario(), &t);
    assert!(late.contains("new leader ran within: later or never"), "{late}");
    assert_ne!(quick, late);
    t.phases[0].effect = Some(Effect { effect_ms: None, ..effect });
    assert!(snapshot(&scenario(), &t).contains("new leader ran within: later or never"));
    assert!(numbers(&scenario(), &t).contains("not within 1500 ms (later or never"));
}

#[test]
fn a_trace_recorded_before_the_time_to_effect_still_reads() {
    let t = trace([950, 50, 40, 990]);
    let mut json = serde_json::to_value(&t).unwrap();
    json["phases"][0].as_object_mut().unwrap().remove("effect");
    let old: Trace = serde_json::from_value(json).unwrap();
    assert_eq!(old.phases[0].effect, None);
    assert_eq!(snapshot(&scenario(), &old), snapshot(&scenario(), &t));
}

#[test]
fn under_cap_a_whole_cpu_reads_the_same_at_any_number_of_cpus() {
    for cpus in [1, 2, 4, 8] {
        let cpu = 100.0 / cpus as f64;
        for base in [share_around(5.0), SHARE.to_vec()] {
            let t = cap_table(&base, cpus);
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "{cpus}: {t:?}");
            assert_eq!(bucket(&t, cpu), "one CPU", "{cpus}: {t:?}");
            assert_eq!(bucket(&t, 0.6 * cpu), "under one CPU", "{cpus}: {t:?}");
            assert_eq!(bucket(&t, 0.1), "nothing");
        }
        assert_eq!(bucket(&cap_table(&share_around(5.0), cpus), 5.0), "at minimum", "{cpus}");
    }
    assert_eq!(bucket(&cap_table(SHARE, 4), 50.0), "two CPUs");
}

#[test]
fn bucket_bounds_are_ordered() {
    for t in [SHARE, SERVED, CPU] {
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(t[0].0, 0.0);
    }
    for m in [0.5, 1.0, 3.5, 4.0, 5.0, 9.0, 10.0, 20.0, 50.0] {
        let t = share_around(m);
        assert!(t.windows(2).all(|w| w[0].0 < w[1].0), "{m}: {t:?}");
        assert_eq!(t[0], (0.0, "nothing"));
        assert_eq!(bucket(&t, m), "at minimum", "{m}: {t:?}");
        assert_eq!(bucket(&t, m + 3.5), "above minimum", "{m}: {t:?}");
        assert_eq!(bucket(&t, 100.0), "most");
    }
    let t = share_around(5.0);
    let names: Vec<&str> = t.iter().map(|x| x.1).collect();
    assert_eq!(names[..5], ["nothing", "below minimum", "at minimum", "above minimum", "quarter"]);
    assert_eq!((bucket(&t, 1.99), bucket(&t, 2.0), bucket(&t, 7.99), bucket(&t, 8.0)), ("below minimum", "at minimum", "at minimum", "above minimum"));
    assert_eq!(bucket(&t, 12.0), "quarter");
    assert_eq!(bucket(SHARE, 0.1), "nothing");
    assert_eq!(bucket(SHARE, 75.0), "three-quarters");
    assert_eq!(bucket(SHARE, 100.0), "most");
}

mod recorded;
