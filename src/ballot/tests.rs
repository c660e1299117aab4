//! The ballot's tests: events, checks, standings.

use super::*;

fn vote(candidate: &str, voter: &str) -> Event {
    Event::Vote { candidate: candidate.into(), voter: voter.into() }
}

fn create(name: &str, members: Vec<Member>) -> Event {
    Event::CreateCandidate { name: name.into(), members }
}

fn comm(c: &str) -> Member {
    Member::Comm { comm: c.into() }
}

fn pid(pid: i32, start_time: Option<u64>) -> Member {
    Member::Pid { pid, start_time, boot_id: None }
}

fn ballot(names: &[&str]) -> Ballot {
    let mut b = Ballot::new();
    for n in names {
        b.apply(&create(n, vec![])).expect("valid candidate");
    }
    b
}

#[test]
fn events_are_tagged_snake_case_json() {
    let e = vote("blue", "ana");
    let json = serde_json::to_string(&e).expect("serializable");
    assert_eq!(json, r#"{"event":"vote","candidate":"blue","voter":"ana"}"#);
    let e = Event::AddMember { candidate: "blue".into(), member: pid(7, Some(42)) };
    let json = serde_json::to_string(&e).expect("serializable");
    assert_eq!(
        json,
        r#"{"event":"add_member","candidate":"blue","member":{"kind":"pid","pid":7,"start_time":42}}"#
    );
    assert_eq!(serde_json::from_str::<Event>(&json).expect("parses"), e);
    let reset: Event = serde_json::from_str(r#"{"event":"reset_votes"}"#).expect("parses");
    assert_eq!(reset, Event::ResetVotes);
    let created: Event =
        serde_json::from_str(r#"{"event":"create_candidate","name":"x"}"#).expect("parses");
    assert_eq!(created, create("x", vec![]));
    assert!(serde_json::from_str::<Event>(r#"{"event":"vote","candidate":"x"}"#).is_err());
    assert!(serde_json::from_str::<Event>(r#"{"event":"elect","name":"x"}"#).is_err());
}

#[test]
fn pid_members_carry_their_boot_and_old_records_still_parse() {
    let boot = "c898f6fb-4e72-4334-9d39-f857fe2b5355";
    let member = Member::Pid { pid: 7, start_time: Some(42), boot_id: Some(boot.into()) };
    let e = Event::AddMember { candidate: "blue".into(), member };
    let json = serde_json::to_string(&e).expect("serializable");
    assert_eq!(
        json,
        format!(
            r#"{{"event":"add_member","candidate":"blue","member":{{"kind":"pid","pid":7,"start_time":42,"boot_id":"{boot}"}}}}"#
        )
    );
    assert_eq!(serde_json::from_str::<Event>(&json).expect("parses"), e);
    // A record written before boot ids were kept.
    let old = r#"{"event":"create_candidate","name":"x","members":[{"kind":"pid","pid":7,"start_time":42}]}"#;
    assert_eq!(
        serde_json::from_str::<Event>(old).expect("parses"),
        create("x", vec![pid(7, Some(42))])
    );
    // The same pid and start time in two boots are two processes; a bare
    // pid removes both.
    let mut b = ballot(&["blue"]);
    let in_boot =
        |id: &str| Member::Pid { pid: 7, start_time: Some(42), boot_id: Some(id.into()) };
    let add = |m| Event::AddMember { candidate: "blue".into(), member: m };
    b.apply(&add(in_boot("aa-1"))).expect("add");
    b.apply(&add(in_boot("bb-2"))).expect("another boot's process");
    assert_eq!(b.apply(&add(in_boot("aa-1"))).map_err(|e| e.code()), Err("duplicate_member"));
    assert_eq!(b.apply(&add(pid(7, Some(42)))).map_err(|e| e.code()), Err("duplicate_member"));
    b.apply(&Event::RemoveMember { candidate: "blue".into(), member: pid(7, None) })
        .expect("remove");
    assert_eq!(b.members("blue"), Some(&[][..]));
    for bad in ["", "not a uuid", &"a".repeat(65)] {
        let m = Member::Pid { pid: 7, start_time: None, boot_id: Some(bad.into()) };
        assert_eq!(validate_member(&m).map_err(|e| e.code()), Err("invalid_member"), "{bad:?}");
    }
}

#[test]
fn one_voter_holds_one_vote_and_moves_it() {
    let mut b = ballot(&["blue", "green"]);
    b.apply(&vote("green", "ana")).expect("vote");
    b.apply(&vote("green", "ana")).expect("the same vote again");
    assert_eq!(b.tally(), BTreeMap::from([("blue".into(), 0), ("green".into(), 1)]));
    b.apply(&vote("blue", "ana")).expect("ana changes her mind");
    b.apply(&vote("blue", "bo")).expect("vote");
    b.apply(&vote("green", "cy")).expect("vote");
    assert_eq!(b.tally(), BTreeMap::from([("blue".into(), 2), ("green".into(), 1)]));
    // A deleted candidate's voters hold no vote until they vote again.
    b.apply(&Event::DeleteCandidate { name: "blue".into() }).expect("delete");
    b.apply(&Event::CreateCandidate { name: "blue".into(), members: vec![] }).expect("create");
    b.apply(&vote("green", "ana")).expect("vote");
    assert_eq!(b.tally(), BTreeMap::from([("blue".into(), 0), ("green".into(), 2)]));
    b.apply(&Event::ResetVotes).expect("reset");
    b.apply(&vote("blue", "cy")).expect("vote");
    assert_eq!(b.tally(), BTreeMap::from([("blue".into(), 1), ("green".into(), 0)]));
}

#[test]
fn voters_are_bounded_and_known_ones_may_always_move() {
    let mut b = ballot(&["blue", "green"]);
    for i in 0..MAX_VOTERS {
        b.apply(&vote("blue", &format!("v{i}"))).expect("room");
    }
    assert_eq!(b.check(&vote("blue", "one too many")), Err(BallotError::TooManyVoters));
    b.apply(&vote("green", "v7")).expect("a known voter moves");
    assert_eq!(b.tally()["green"], 1);
    // The checker of queued changes refuses new voters too.
    assert_eq!(b.checker().check(&vote("blue", "new")), Err(BallotError::TooManyVoters));
    let mut cumulative = Ballot::counting(Counting::Cumulative);
    cumulative.apply(&Event::CreateCandidate { name: "blue".into(), members: vec![] }).expect("create");
    for i in 0..10 {
        cumulative.apply(&vote("blue", &format!("v{i}"))).expect("no voters kept");
    }
    assert!(cumulative.voters.is_empty());
}

#[test]
fn votes_are_counted_and_the_leader_has_the_most() {
    let mut b = ballot(&["blue", "green"]);
    b.counting = Counting::Cumulative;
    assert_eq!(b.leader(), None, "no votes, no leader");
    b.apply(&vote("green", "ana")).expect("vote");
    b.apply(&vote("green", "ana")).expect("the same voter may vote again");
    b.apply(&vote("blue", "bo")).expect("vote");
    assert_eq!(b.tally(), BTreeMap::from([("blue".into(), 1), ("green".into(), 2)]));
    assert_eq!(b.leader(), Some("green"));
}

#[test]
fn ties_go_to_the_name_that_sorts_first_in_byte_order() {
    assert_eq!(leader([("green", 2), ("blue", 2), ("red", 1)]), Some("blue"));
    assert_eq!(leader([("blue", 1), ("Blue", 1)]), Some("Blue"), "uppercase sorts first");
    assert_eq!(leader([("9", 3), ("10", 3)]), Some("10"), "bytes, not numbers");
    assert_eq!(leader([("a", 0), ("b", 0)]), None, "zero votes never lead");
    assert_eq!(leader([("z", 1), ("a", 0)]), Some("z"));
    assert_eq!(leader(std::iter::empty()), None);
}

#[test]
fn errors_are_distinct_and_change_nothing() {
    let mut b = ballot(&["blue"]);
    b.apply(&Event::AddMember { candidate: "blue".into(), member: comm("stress-ng") })
        .expect("add");
    let before = b.clone();
    let cases = [
        (vote("red", "ana"), "unknown_candidate"),
        (create("blue", vec![]), "duplicate_candidate"),
        (create("red", vec![comm("stress-ng")]), "duplicate_member"),
        (create("red", vec![comm("x"), comm("x")]), "duplicate_member"),
        (
            Event::AddMember { candidate: "blue".into(), member: comm("stress-ng") },
            "duplicate_member",
        ),
        (
            Event::RemoveMember { candidate: "blue".into(), member: comm("yes") },
            "absent_member",
        ),
        (Event::DeleteCandidate { name: "red".into() }, "unknown_candidate"),
        (
            Event::AddMember { candidate: "red".into(), member: comm("yes") },
            "unknown_candidate",
        ),
        (create("no spaces", vec![]), "invalid_name"),
        (vote("blue", ""), "invalid_voter"),
        (create("red", vec![pid(0, None)]), "invalid_member"),
    ];
    for (event, code) in cases {
        let err = b.apply(&event).expect_err("must be refused");
        assert_eq!(err.code(), code, "{event:?}: {err}");
        assert_eq!(b, before, "{event:?} changed the ballot");
    }
}

#[test]
fn names_voters_and_members_are_validated() {
    for ok in ["a", "blue-team_2.0", &"x".repeat(64)] {
        assert_eq!(validate_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(65)] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    for ok in ["ana", "ana@example.org", "Zoë Ω", &"é".repeat(128)] {
        assert_eq!(validate_voter(ok), Ok(()), "{ok}");
    }
    for bad in ["", "a\nb", "tab\t", &"v".repeat(129)] {
        assert_eq!(validate_voter(bad), Err(BallotError::InvalidVoter), "{bad:?}");
    }
    for ok in [
        pid(1, None),
        comm("stress-ng"),
        comm(&"c".repeat(15)),
        Member::Cgroup { path: "/demo/blue".into() },
    ] {
        assert_eq!(validate_member(&ok), Ok(()), "{ok:?}");
    }
    for bad in [
        pid(-3, None),
        comm(""),
        comm(&"c".repeat(16)),
        comm("a\0b"),
        Member::Cgroup { path: "demo".into() },
        Member::Cgroup { path: String::new() },
    ] {
        assert!(validate_member(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn deleting_drops_votes_and_recreating_starts_from_zero() {
    let mut b = ballot(&["blue", "green"]);
    b.apply(&vote("blue", "ana")).expect("vote");
    b.apply(&Event::DeleteCandidate { name: "blue".into() }).expect("delete");
    assert_eq!(b.leader(), None);
    b.apply(&create("blue", vec![])).expect("create again");
    assert_eq!(b.tally()["blue"], 0);
    let names: Vec<_> = b.standing(3).candidates.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["green", "blue"], "creation order");
}

#[test]
fn reset_zeroes_every_count_and_keeps_members() {
    let mut b = ballot(&["blue"]);
    b.apply(&Event::AddMember { candidate: "blue".into(), member: comm("yes") }).expect("add");
    b.apply(&vote("blue", "ana")).expect("vote");
    b.apply(&Event::ResetVotes).expect("reset");
    assert_eq!(b.tally()["blue"], 0);
    assert_eq!(b.members("blue"), Some(&[comm("yes")][..]));
}

#[test]
fn pid_rules_match_by_start_time_when_given() {
    let mut b = ballot(&["blue"]);
    let add = |m| Event::AddMember { candidate: "blue".into(), member: m };
    let remove = |m| Event::RemoveMember { candidate: "blue".into(), member: m };
    b.apply(&add(pid(7, Some(100)))).expect("add");
    b.apply(&add(pid(7, Some(200)))).expect("a recycled pid is another process");
    assert_eq!(b.apply(&add(pid(7, Some(100)))).map_err(|e| e.code()), Err("duplicate_member"));
    assert_eq!(b.apply(&remove(pid(7, Some(300)))).map_err(|e| e.code()), Err("absent_member"));
    b.apply(&remove(pid(7, Some(200)))).expect("remove one");
    assert_eq!(b.members("blue"), Some(&[pid(7, Some(100))][..]));
    b.apply(&remove(pid(7, None))).expect("a bare pid removes every start time");
    assert_eq!(b.members("blue"), Some(&[][..]));
}

#[test]
fn the_standing_and_its_tally_agree() {
    let mut b = ballot(&["green", "blue"]);
    b.apply(&vote("green", "a")).expect("vote");
    b.apply(&vote("blue", "b")).expect("vote");
    let standing = b.standing(9);
    assert_eq!(standing.generation, 9);
    assert_eq!(standing_leader(&standing), Some("blue"));
    let tally = tally_of(&standing);
    assert_eq!(tally.leader.as_deref(), Some("blue"));
    assert_eq!(tally.votes, b.tally());
    assert_eq!(
        serde_json::to_value(&tally).expect("serializable"),
        serde_json::json!({"votes": {"blue": 1, "green": 1}, "leader": "blue", "generation": 9})
    );
}

#[test]
fn the_candidate_count_is_bounded() {
    let mut b = Ballot::new();
    for i in 0..MAX_CANDIDATES {
        b.apply(&create(&format!("c{i}"), vec![])).expect("under the limit");
    }
    assert_eq!(b.apply(&create("one-more", vec![])), Err(BallotError::TooManyCandidates));
}
