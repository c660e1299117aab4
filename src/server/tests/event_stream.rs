//! The event stream (`GET /events`): the standing on every change, the
//! shares every second, and a storm of votes folded into its last standing.

use super::*;

#[test]
fn the_event_stream_sends_the_standing_on_every_change_and_the_shares_every_second() {
    let f = start(&["blue", "green"]);
    let mut events = subscribe(f.addr());
    // At once: the standing, the candidates and the shares as they are.
    let (_, data) = next_event(&mut events, |name, _| name == "tally");
    let tally: Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(tally["votes"], json!({"blue": 0, "green": 0}));
    next_event(&mut events, |name, _| name == "candidates");
    next_event(&mut events, |name, _| name == "schedule");
    // A vote reaches the stream without a poll.
    let t = Instant::now();
    assert_eq!(vote(f.addr(), "green", "ana").status, 200);
    let (_, data) = next_event(&mut events, |name, data| {
        name == "tally" && serde_json::from_str::<Value>(data).expect("JSON")["votes"]["green"] == 1
    });
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let tally: Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(tally["leader"], "green");
    // The shares come again within about a second, unasked.
    let t = Instant::now();
    next_event(&mut events, |name, _| name == "schedule");
    assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
}

#[test]
fn a_storm_of_votes_reaches_the_stream_as_its_last_standing() {
    let f = start(&["blue"]);
    let mut events = subscribe(f.addr());
    for i in 0..200 {
        assert_eq!(vote(f.addr(), "blue", &format!("v{i}")).status, 200);
    }
    let mut tallies = 0;
    next_event(&mut events, |name, data| {
        if name != "tally" {
            return false;
        }
        tallies += 1;
        serde_json::from_str::<Value>(data).expect("JSON")["votes"]["blue"] == 200
    });
    assert!(tallies < 200, "every vote was sent on its own: {tallies} tallies");
}
