//! Votes and reads: the tally and its leader, votes kept across a restart or
//! refused by a failing journal, and what the scheduler side observed.

use std::collections::BTreeMap;

use super::*;
use crate::election::view::{LiveMember, Observations, Share};
use crate::journal::Journal;
use crate::stats::Metrics;

#[test]
fn a_vote_returns_the_new_tally_and_get_votes_agrees() {
    let f = start(&["blue", "green"]);
    let r = vote(f.addr(), "green", "ana");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        json!({"votes": {"blue": 0, "green": 1}, "leader": "green", "generation": 2})
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let r = call(f.addr(), "GET", "/votes", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({"votes": {"blue": 0, "green": 1}, "leader": "green", "generation": 2})
    );
    assert_eq!(f.store.standing().generation, 2);
}

#[test]
fn ties_go_to_the_name_first_in_byte_order() {
    let f = start(&["green", "blue", "Red"]);
    assert_eq!(
        call(f.addr(), "GET", "/votes", None).body["leader"],
        Value::Null,
        "no votes, no leader"
    );
    vote(f.addr(), "green", "a");
    assert_eq!(vote(f.addr(), "blue", "b").body["leader"], "blue");
    assert_eq!(vote(f.addr(), "Red", "c").body["leader"], "Red", "uppercase sorts first");
    assert_eq!(vote(f.addr(), "green", "d").body["leader"], "green", "most votes wins");
}

#[test]
fn a_vote_for_an_unknown_candidate_is_404_and_changes_nothing() {
    let f = start(&["blue"]);
    let r = vote(f.addr(), "red", "ana");
    assert_eq!((r.status, r.code()), (404, "unknown_candidate"), "{r:?}");
    assert!(r.body["error"].as_str().expect("a message").contains("red"));
    assert_eq!(f.generation(), 1);
}

#[test]
fn votes_survive_a_restart_on_the_same_journal() {
    let f = start(&["blue", "green"]);
    vote(f.addr(), "green", "a");
    vote(f.addr(), "green", "b");
    vote(f.addr(), "blue", "c");
    call(f.addr(), "POST", "/candidates", Some(json!({"name": "red"})));
    vote(f.addr(), "red", "d");
    let before = call(f.addr(), "GET", "/votes", None).body;
    let Fixture { mut handle, store, journal, _dir, .. } = f;
    handle.shutdown();
    drop(handle);
    drop(store);

    let board = Board::new();
    let initial = vec![("blue".into(), vec![]), ("green".into(), vec![])];
    let (store, warnings) =
        Store::open(Some(&journal), initial, Arc::clone(&board)).expect("reopen");
    assert!(warnings.is_empty(), "{warnings:?}");
    let cfg = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
    let handle = spawn_with(cfg, test_limits(), Arc::new(store), board).expect("spawn");
    let after = call(handle.addr, "GET", "/votes", None).body;
    assert_eq!(after["votes"], before["votes"]);
    assert_eq!(after["votes"], json!({"blue": 1, "green": 2, "red": 1}));
    assert_eq!(after["leader"], "green");
}

#[test]
fn a_journal_that_cannot_be_written_is_500_and_changes_nothing() {
    let f = start(&["blue"]);
    f.store.set_journal_for_test(Journal::failing_for_test(&f.journal.with_extension("ro")));
    let r = vote(f.addr(), "blue", "ana");
    assert_eq!((r.status, r.code()), (500, "journal_error"), "{r:?}");
    assert_eq!(f.generation(), 1);
    assert_eq!(call(f.addr(), "GET", "/votes", None).body["votes"], json!({"blue": 0}));
}

#[test]
fn reads_show_what_the_scheduler_side_observed() {
    let f = start(&["blue", "green"]);
    vote(f.addr(), "green", "ana");
    let metrics = Metrics { nr_online_cpus: 2, nr_user_dispatches: 17, ..Default::default() };
    f.board.observations.store(Arc::new(Observations {
        members: BTreeMap::from([(
            "green".to_owned(),
            vec![
                LiveMember { pid: 42, comm: "stress-ng".into() },
                LiveMember { pid: 43, comm: "yes".into() },
            ],
        )]),
        candidate_shares: BTreeMap::from([(
            "green".to_owned(),
            Share { share: 0.75, cpu_ns: 1_500_000 },
        )]),
        pid_shares: BTreeMap::from([
            (42, Share { share: 0.5, cpu_ns: 1_000_000 }),
            (43, Share { share: 0.25, cpu_ns: 500_000 }),
            (7, Share { share: 0.125, cpu_ns: 250_000 }),
        ]),
        window_ms: 1000,
    }));
    f.board.metrics.store(Arc::new(metrics));
    let r = call(f.addr(), "GET", "/candidates", None);
    assert_eq!(
        r.body[1]["live"],
        json!([{"pid": 42, "comm": "stress-ng"}, {"pid": 43, "comm": "yes"}])
    );
    assert_eq!(r.body[0]["live"], json!([]));
    let r = call(f.addr(), "GET", "/schedule", None);
    assert_eq!(
        r.body,
        json!({
            "window_ms": 1000,
            "leader": "green",
            "candidates": {
                "blue": {"share": 0.0, "cpu_ns": 0},
                "green": {"share": 0.75, "cpu_ns": 1_500_000},
            },
            "pids": {
                "7": {"share": 0.125, "cpu_ns": 250_000, "candidate": null},
                "42": {"share": 0.5, "cpu_ns": 1_000_000, "candidate": "green"},
                "43": {"share": 0.25, "cpu_ns": 500_000, "candidate": "green"},
            },
        })
    );
    let r = call(f.addr(), "GET", "/stats", None);
    assert_eq!(r.body, serde_json::to_value(metrics).expect("serializable"));
}
