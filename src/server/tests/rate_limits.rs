//! Rate limiting of votes: by voter and by address, and the limiter's own
//! bounds.

use super::*;

#[test]
fn votes_of_one_voter_are_rate_limited_when_asked() {
    let f = start_with(&["blue"], test_limits(), |c| c.vote_interval_ms = 60_000);
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200);
    let r = vote(f.addr(), "blue", "ana");
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{r:?}");
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    let other = |n: u8| std::net::Ipv4Addr::new(127, 0, 0, n);
    let r = vote_from(f.addr(), other(2), &[], "blue", "ana");
    assert_eq!(r.status, 429, "a voter is limited from any address: {r:?}");
    assert_eq!(vote_from(f.addr(), other(3), &[], "blue", "bo").status, 200, "other voters are not limited");
    assert_eq!(vote_from(f.addr(), other(4), &[], "nope", "cy").status, 404);
    assert_eq!(vote_from(f.addr(), other(4), &[], "blue", "cy").status, 200, "a refused vote does not count");
    assert_eq!(f.store.standing().candidates[0].votes, 3);

    let f = start(&["blue"]);
    for _ in 0..3 {
        assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "no interval, no limit");
    }
}

#[test]
fn a_script_that_changes_its_voter_id_is_held_by_its_address() {
    let ip = |n: u8| std::net::Ipv4Addr::new(127, 0, 0, n);
    let f = start_with(&["blue"], test_limits(), |c| c.vote_interval_ms = 60_000);
    assert_eq!(vote_from(f.addr(), ip(10), &[], "blue", "v1").status, 200);
    for i in 2..20 {
        let r = vote_from(f.addr(), ip(10), &[], "blue", &format!("v{i}"));
        assert_eq!((r.status, r.code()), (429, "rate_limited"), "voter v{i}: {r:?}");
    }
    // The refusals did not take the new voters' slots: from another
    // address they vote.
    assert_eq!(vote_from(f.addr(), ip(11), &[], "blue", "v2").status, 200);
    // X-Forwarded-For names nobody unless the server is told to trust it.
    let xff = [("X-Forwarded-For", "203.0.113.7")];
    assert_eq!(vote_from(f.addr(), ip(10), &xff, "blue", "v3").status, 429, "not trusted");
    assert_eq!(f.store.standing().candidates[0].votes, 2);

    let f = start_with(&["blue"], test_limits(), |c| {
        c.vote_interval_ms = 60_000;
        c.trust_forwarded_for = true;
    });
    // Behind a proxy every vote comes from the proxy's address; the last
    // X-Forwarded-For entry is the client the proxy saw.
    let from = |a: &'static str| [("X-Forwarded-For", a)];
    assert_eq!(vote_from(f.addr(), ip(10), &from("198.51.100.1"), "blue", "a").status, 200);
    assert_eq!(vote_from(f.addr(), ip(10), &from("10.0.0.9, 198.51.100.2"), "blue", "b").status, 200);
    let r = vote_from(f.addr(), ip(10), &from("198.51.100.9, 198.51.100.1"), "blue", "c");
    assert_eq!(r.status, 429, "only the last entry counts: {r:?}");
    // IPv6 clients count by their /64.
    assert_eq!(vote_from(f.addr(), ip(10), &from("2001:db8:1:2::1"), "blue", "d").status, 200);
    assert_eq!(vote_from(f.addr(), ip(10), &from("2001:db8:1:2::ff"), "blue", "e").status, 429);
    assert_eq!(vote_from(f.addr(), ip(10), &from("2001:db8:1:3::1"), "blue", "f").status, 200);
    assert_eq!(f.store.standing().candidates[0].votes, 4);
}

#[test]
fn the_rate_limiter_forgets_expired_voters_as_it_goes_and_is_capped() {
    let interval = Duration::from_millis(10);
    let mut limiter = RateLimiter::new(1000);
    let t0 = Instant::now();
    // 50,000 distinct voters, one per millisecond: only the last interval's
    // voters are kept, whatever the total, and each vote expires only what
    // fell out of the interval (the queue never holds more than that).
    for i in 0..50_000u64 {
        let now = t0 + Duration::from_millis(i);
        limiter.admit(&format!("v{i}"), now, interval).expect("a new voter");
        assert!(limiter.len() <= 10 && limiter.queued() <= 10, "at {i}: {}", limiter.len());
    }
    // A voter again within the interval is refused, after it is admitted.
    let now = t0 + Duration::from_millis(50_000);
    limiter.admit("ana", now, interval).expect("first vote");
    assert!(matches!(
        limiter.admit("ana", now + Duration::from_millis(3), interval),
        Err(ApiError::RateLimited(_))
    ));
    limiter.admit("ana", now + interval, interval).expect("after the interval");

    // Full of live voters: a new one is refused, a known one still limited.
    let mut full = RateLimiter::new(3);
    let hour = Duration::from_secs(3600);
    for v in ["a", "b", "c"] {
        full.admit(v, t0, hour).expect("room");
    }
    assert!(matches!(full.admit("d", t0, hour), Err(ApiError::TooManyVoters)));
    assert!(matches!(full.admit("a", t0, hour), Err(ApiError::RateLimited(_))));
    assert_eq!(full.len(), 3);
    // Voting again and again keeps the queue bounded too.
    let mut again = RateLimiter::new(2);
    for i in 0..10_000u64 {
        let now = t0 + Duration::from_millis(i);
        again.admit("a", now, Duration::from_millis(1)).expect("one per interval");
        assert!(again.queued() <= 4, "at {i}: {}", again.queued());
    }
}

#[test]
fn a_vote_that_fails_gives_the_voter_its_slot_back() {
    let f = start_with(&["blue"], test_limits(), |c| c.vote_interval_ms = 3_600_000);
    assert_eq!(vote(f.addr(), "nope", "ana").status, 404, "an unknown candidate");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 200, "the failed vote did not count");
    assert_eq!(vote(f.addr(), "blue", "ana").status, 429);
}
