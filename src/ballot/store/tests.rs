//! The store's tests, and the temporary folder other tests share.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::identity::fill_identity;
use super::*;
use crate::election::procfs::{current_boot_id, proc_start_time};

/// A fresh folder under the system temporary folder, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "scx_ballot-test-{label}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vote(candidate: &str, voter: &str) -> Event {
    Event::Vote { candidate: candidate.into(), voter: voter.into() }
}

fn bare_pid(pid: i32) -> Member {
    Member::Pid { pid, start_time: None, boot_id: None }
}

fn initial(names: &[&str]) -> Vec<(String, Vec<Member>)> {
    names.iter().map(|n| (n.to_string(), vec![])).collect()
}

fn votes(store: &Store) -> Vec<(String, u64)> {
    store.standing().candidates.iter().map(|c| (c.name.clone(), c.votes)).collect()
}

#[test]
fn open_publishes_the_initial_candidates_and_submit_bumps_the_generation() {
    let board = Board::new();
    let (store, warnings) =
        Store::open(None, initial(&["blue", "green"]), Arc::clone(&board)).expect("open");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(board.standing.load().generation, 1);
    let standing = store.submit(vote("green", "ana")).expect("vote");
    assert_eq!(standing.generation, 2);
    assert_eq!(**board.standing.load(), *standing);
    assert_eq!(votes(&store), [("blue".into(), 0), ("green".into(), 1)]);
}

#[test]
fn a_refused_event_changes_nothing() {
    let board = Board::new();
    let (store, _) = Store::open(None, initial(&["blue"]), Arc::clone(&board)).expect("open");
    let err = store.submit(vote("red", "ana")).expect_err("unknown");
    assert!(matches!(err, StoreError::Ballot(BallotError::UnknownCandidate(_))), "{err}");
    assert_eq!(board.standing.load().generation, 1);
}

#[test]
fn pid_members_get_their_start_time_and_dead_pids_are_refused() {
    let (store, _) = Store::open(None, initial(&["blue"]), Board::new()).expect("open");
    let me = std::process::id() as i32;
    let add = |member| Event::AddMember { candidate: "blue".into(), member };
    store.submit(add(bare_pid(me))).expect("live pid");
    let members = &store.standing().candidates[0].members;
    let boot_id = current_boot_id();
    assert!(boot_id.is_some(), "this boot has an id");
    assert_eq!(members, &[Member::Pid { pid: me, start_time: proc_start_time(me), boot_id }]);
    let err = store.submit(add(bare_pid(i32::MAX)));
    assert!(matches!(err, Err(StoreError::Ballot(BallotError::NoSuchProcess(_)))), "{err:?}");
    let stale =
        Member::Pid { pid: me, start_time: proc_start_time(me).map(|t| t + 1), boot_id: None };
    let err = store.submit(add(stale));
    assert!(matches!(err, Err(StoreError::Ballot(BallotError::NoSuchProcess(_)))), "{err:?}");
}

#[test]
fn a_thread_id_is_refused_with_the_id_of_its_process() {
    let (store, _) = Store::open(None, initial(&["blue"]), Board::new()).expect("open");
    let me = std::process::id() as i32;
    // A thread of this process that lives until the end of the test;
    // /proc/thread-self names it PID/task/TID.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let tid = link.file_name().and_then(|t| t.to_str()?.parse::<i32>().ok());
        tid_tx.send(tid.expect("a thread id")).expect("the test waits for it");
        rx.recv()
    });
    let tid = tid_rx.recv().expect("the thread says its id");
    assert_ne!(tid, me);
    let add = |member| Event::AddMember { candidate: "blue".into(), member };
    let err = store.submit(add(bare_pid(tid)));
    drop(tx);
    let _ = thread.join();
    let Err(StoreError::Ballot(BallotError::InvalidMember(why))) = err else {
        panic!("a thread id must be refused, got {err:?}");
    };
    assert_eq!(
        why,
        format!(
            "pid {tid} is a thread of process {me}; a pid member is a whole process: add pid {me}"
        )
    );
    assert_eq!(store.standing().candidates[0].members, [], "nothing added");
}

#[test]
fn a_pid_member_is_pinned_to_this_boot() {
    let ok = |_| Some(7);
    let start = |_| Some(100);
    let boot = || Some("aaaa-1".to_string());
    let filled = fill_identity(bare_pid(7), ok, start, boot()).expect("live");
    assert_eq!(filled, Member::Pid { pid: 7, start_time: Some(100), boot_id: boot() });
    let given = Member::Pid { pid: 7, start_time: Some(100), boot_id: boot() };
    assert_eq!(fill_identity(given.clone(), ok, start, boot()), Ok(given.clone()));
    // Another boot's pid 7 is not this one's, whatever its start time.
    let other = Some("bbbb-2".to_string());
    assert_eq!(fill_identity(given, ok, start, other), Err(BallotError::NoSuchProcess(7)));
}

#[test]
fn votes_survive_reopening_the_journal() {
    let dir = TempDir::new("store-reopen");
    let path = dir.path().join("votes.journal");
    {
        let (store, _) =
            Store::open(Some(&path), initial(&["blue", "green"]), Board::new()).expect("open");
        store.submit(vote("green", "ana")).expect("vote");
        store.submit(vote("green", "bo")).expect("vote");
        store.submit(vote("blue", "cy")).expect("vote");
    }
    let board = Board::new();
    let (store, warnings) = Store::open(
        Some(&path),
        vec![
            ("blue".into(), vec![Member::Comm { comm: "other".into() }]),
            ("red".into(), vec![]),
        ],
        Arc::clone(&board),
    )
    .expect("reopen");
    assert_eq!(votes(&store), [("blue".into(), 1), ("green".into(), 2), ("red".into(), 0)]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"blue\" exists in the votes journal"), "{warnings:?}");
    drop(store);
    let (store, warnings) = Store::open(Some(&path), vec![], Board::new()).expect("reopen");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(votes(&store).len(), 3, "red's creation was journaled");
}

#[test]
fn concurrent_votes_share_one_flush_and_each_is_on_disk_before_its_answer() {
    let dir = TempDir::new("store-group-commit");
    let path = dir.path().join("votes.journal");
    let (store, _) = Store::open(Some(&path), initial(&["blue"]), Board::new()).expect("open");
    let store = Arc::new(store);
    let before = store.flushes();
    let (release, hold) = std::sync::mpsc::channel();
    store.lock().hold_next_flush = Some(hold);
    let submit = |voter: String| {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.submit(vote("blue", &voter)).map(|s| s.generation))
    };
    // The first vote's flush is held; ten more queue up behind it.
    let first = submit("v0".into());
    let wait_until = |what: &str, cond: &dyn Fn(&Inner) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond(&store.lock()) {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_until("the first flush", &|i| i.journal.is_none());
    let rest: Vec<_> = (1..=10).map(|i| submit(format!("v{i}"))).collect();
    wait_until("ten queued votes", &|i| i.queue.len() == 10);
    assert_eq!(votes(&store), [("blue".into(), 0)], "nothing is published before the sync");
    let on_disk = std::fs::read_to_string(&path).expect("read");
    assert!(!on_disk.contains("\"v0\""), "the held flush has not written yet");
    release.send(()).expect("release the flush");
    // The first vote's answer shows it (and maybe the next batch too).
    assert!(first.join().expect("no panic").expect("acknowledged") >= 2);
    for t in rest {
        assert_eq!(t.join().expect("no panic").expect("acknowledged"), 12);
    }
    assert_eq!(store.flushes() - before, 2, "one flush for the first, one for the ten");
    assert_eq!(votes(&store), [("blue".into(), 11)]);
    drop(store);
    let (store, _) = Store::open(Some(&path), vec![], Board::new()).expect("reopen");
    assert_eq!(votes(&store), [("blue".into(), 11)]);
}

#[test]
fn a_failed_shared_flush_fails_every_vote_in_it_and_checks_the_ones_behind_again() {
    let dir = TempDir::new("store-group-fail");
    let board = Board::new();
    let (store, _) = Store::open(None, initial(&["blue"]), Arc::clone(&board)).expect("open");
    store.set_journal_for_test(Journal::failing_for_test(&dir.path().join("votes.journal")));
    let store = Arc::new(store);
    let results: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.submit(vote("blue", &format!("v{i}"))))
        })
        .collect();
    for r in results {
        let err = r.join().expect("no panic").expect_err("the write fails");
        assert!(matches!(err, StoreError::Journal(_)), "{err}");
    }
    assert_eq!(board.standing.load().generation, 1);
    assert_eq!(votes(&store), [("blue".into(), 0)]);
    assert!(store.lock().queue.is_empty() && store.lock().failed.is_empty());
}

#[test]
fn a_failed_journal_write_changes_nothing() {
    let dir = TempDir::new("store-fail");
    let board = Board::new();
    let (store, _) = Store::open(None, initial(&["blue"]), Arc::clone(&board)).expect("open");
    store.set_journal_for_test(Journal::failing_for_test(&dir.path().join("votes.journal")));
    let err = store.submit(vote("blue", "ana")).expect_err("the write fails");
    assert!(matches!(err, StoreError::Journal(_)), "{err}");
    assert_eq!(board.standing.load().generation, 1);
    assert_eq!(votes(&store), [("blue".into(), 0)]);
}

#[test]
fn an_invalid_initial_candidate_fails_open() {
    let err = Store::open(None, initial(&["no spaces"]), Board::new()).expect_err("invalid");
    assert!(format!("{err:#}").contains("invalid candidate name"), "{err:#}");
    let dead = vec![("blue".into(), vec![bare_pid(i32::MAX)])];
    let err = Store::open(None, dead, Board::new()).expect_err("dead pid");
    assert!(format!("{err:#}").contains("no process with pid"), "{err:#}");
}

#[test]
fn on_publish_runs_after_every_change() {
    let (store, _) = Store::open(None, initial(&["blue"]), Board::new()).expect("open");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    store.on_publish(move |s| sink.lock().expect("not poisoned").push(s.generation));
    store.submit(vote("blue", "a")).expect("vote");
    let _ = store.submit(vote("red", "a"));
    store.submit(Event::ResetVotes).expect("reset");
    assert_eq!(*seen.lock().expect("not poisoned"), [2, 3]);
}
