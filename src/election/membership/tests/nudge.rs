//! When the tracker scans sooner: a task not seen as it is asks, through the
//! nudge.

use std::sync::Arc;
use std::time::Instant;

use super::*;

#[test]
fn a_task_asks_for_a_scan_when_its_process_is_not_as_seen() {
    use crate::sched::fake::task;
    let mut m = Membership::default();
    let mut t = task(10, 100, 0, 1); // comm "burn", SCHED_EXT
    assert!(m.lookup(&t).1, "a process the scan never saw");
    m.seen.insert(
        10,
        Seen {
            candidate: None,
            comm: "burn".into(),
            sched_ext: true,
        },
    );
    assert!(!m.lookup(&t).1);
    m.seen.insert(
        10,
        Seen {
            candidate: None,
            comm: "sh".into(),
            sched_ext: true,
        },
    );
    assert!(m.lookup(&t).1, "it exec'd since");
    // Threads may name themselves: only the main thread's comm counts.
    t.pid = 11;
    assert!(!m.lookup(&t).1);
    m.seen.insert(
        10,
        Seen {
            candidate: None,
            comm: "burn".into(),
            sched_ext: false,
        },
    );
    assert!(m.lookup(&t).1, "it switched to SCHED_EXT since");
}

#[test]
fn a_nudge_stays_pending_until_taken() {
    let n = Nudge::default();
    assert!(!n.pending());
    n.ask();
    n.ask();
    let t = Instant::now();
    n.wait(Duration::from_secs(5));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a pending ask ends the wait at once"
    );
    assert!(n.pending());
    n.take();
    assert!(!n.pending());
}

#[test]
fn an_ask_from_another_thread_ends_the_wait() {
    let n = Arc::new(Nudge::default());
    let waiter = {
        let n = n.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            n.wait(Duration::from_secs(30));
            t.elapsed()
        })
    };
    // Until the waiter has registered, an ask stays pending and the
    // wait returns at once; either way it must not sit out 30 s.
    std::thread::sleep(Duration::from_millis(50));
    n.ask();
    let waited = waiter.join().unwrap();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(n.pending());
}
