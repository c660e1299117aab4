//! The store: the ballot, its journal, and the standing published for the
//! scheduler, changed only by [`Store::submit`]. The mutex inside is taken by
//! request threads only; the scheduling loop reads `Board::standing`.
//!
//! Group commit: concurrent submissions share one journal write and one
//! `fsync`. Each submission is checked against the ballot as it will be once
//! everything already accepted is on disk, and queued. The first submitter
//! that finds no flush under way writes the whole queue with one write and
//! one sync, without holding the mutex; the others wait on a condition
//! variable. A submission is answered only once its record is on disk, and
//! the standing is published only from what is on disk.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;

use super::{Ballot, BallotError, Counting, Event};
use crate::election::procfs::{current_boot_id, proc_start_time, proc_tgid};
use crate::election::view::{Board, Member, Standing};
use crate::journal::Journal;

/// A callback run after every publish (e.g. to wake the scheduler).
type OnPublish = Box<dyn Fn(&Standing) + Send + Sync>;

/// What a [`Store::submit_then`] calls with its outcome.
pub type Then = Box<dyn FnOnce(Result<Arc<Standing>, StoreError>) + Send>;

/// The ballot with its journal, publishing a new [`Standing`] on the board
/// after every acknowledged change.
pub struct Store {
    inner: Mutex<Inner>,
    /// Signalled when a flush ends.
    flushed: Condvar,
    /// Signalled when something is queued for [`Store::run_flusher`].
    queued: Condvar,
    board: Arc<Board>,
    on_publish: Mutex<Vec<OnPublish>>,
}

struct Inner {
    /// What is on disk (and published).
    ballot: Ballot,
    /// Absent while a flush is writing it, outside the lock.
    journal: Option<Journal>,
    /// Whether the store journals at all.
    durable: bool,
    generation: u64,
    /// Accepted, not yet on disk: each with its sequence number.
    queue: Vec<(u64, Event)>,
    /// `ballot` with `queue` applied: what new submissions are checked
    /// against. `None` while the queue is empty.
    ahead: Option<Ballot>,
    /// The sequence number of the last accepted submission.
    last_seq: u64,
    /// Every submission up to this one is on disk or in `failed`.
    done_seq: u64,
    /// Submissions that failed, by sequence number, until their submitter
    /// picks the error up.
    failed: HashMap<u64, StoreError>,
    /// Submissions answered through a callback, by sequence number, in
    /// order.
    then: Vec<(u64, Then)>,
    /// Flushes so far (for tests and the bench: how many syncs were shared).
    flushes: u64,
    /// Tests: the next flush waits for a message here before it writes.
    #[cfg(test)]
    hold_next_flush: Option<std::sync::mpsc::Receiver<()>>,
}

/// Why a submitted event was not acknowledged. Nothing changed.
#[derive(Debug)]
pub enum StoreError {
    /// The event does not apply to the ballot.
    Ballot(BallotError),
    /// The journal could not record it.
    Journal(std::io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Ballot(e) => e.fmt(f),
            StoreError::Journal(e) => write!(f, "writing the votes journal: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Ballot(e) => Some(e),
            StoreError::Journal(e) => Some(e),
        }
    }
}

impl From<BallotError> for StoreError {
    fn from(e: BallotError) -> Self {
        StoreError::Ballot(e)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("standing", &self.board.standing.load()).finish()
    }
}

impl Store {
    /// Replays the journal at `votes_file` (none: votes live in memory only),
    /// creates the `initial` candidates that do not exist yet (journaling
    /// those creations), and publishes the first standing (generation 1).
    /// Returns the warnings of the replay, for the caller to print.
    ///
    /// Fails on I/O errors, on an invalid initial candidate and on an initial
    /// `pid` member that names no live process.
    pub fn open(
        votes_file: Option<&Path>,
        initial: Vec<(String, Vec<Member>)>,
        board: Arc<Board>,
    ) -> anyhow::Result<(Store, Vec<String>)> {
        Store::open_counting(votes_file, initial, board, Counting::default())
    }

    /// [`Store::open`], counting votes as `counting` says (the journal
    /// holds every vote with its voter, so it replays under either).
    pub fn open_counting(
        votes_file: Option<&Path>,
        initial: Vec<(String, Vec<Member>)>,
        board: Arc<Board>,
        counting: Counting,
    ) -> anyhow::Result<(Store, Vec<String>)> {
        let mut warnings = Vec::new();
        let mut ballot = Ballot::counting(counting);
        let journal = match votes_file {
            Some(path) => {
                let (journal, replay) = Journal::open(path)
                    .with_context(|| format!("opening the votes journal {}", path.display()))?;
                warnings.extend(replay.warnings);
                for event in replay.events {
                    if let Err(e) = ballot.apply(&event) {
                        warnings
                            .push(format!("{}: replaying {event:?}: {e}; skipped", path.display()));
                    }
                }
                Some(journal)
            }
            None => None,
        };
        let durable = journal.is_some();
        let mut inner = Inner {
            ballot,
            journal,
            durable,
            generation: 0,
            queue: Vec::new(),
            ahead: None,
            last_seq: 0,
            done_seq: 0,
            failed: HashMap::new(),
            then: Vec::new(),
            flushes: 0,
            #[cfg(test)]
            hold_next_flush: None,
        };
        for (name, members) in initial {
            if let Some(existing) = inner.ballot.members(&name) {
                let wanted: Vec<Member> = members.iter().map(without_start_time).collect();
                let journaled: Vec<Member> = existing.iter().map(without_start_time).collect();
                if wanted != journaled {
                    warnings.push(format!(
                        "candidate {name:?} exists in the votes journal; its members in the \
                         candidates file are ignored"
                    ));
                }
                continue;
            }
            let event = fill_start_times(Event::CreateCandidate { name: name.clone(), members })
                .and_then(|e| inner.ballot.check(&e).map(|()| e))
                .with_context(|| format!("creating candidate {name:?}"))?;
            if let Some(journal) = &mut inner.journal {
                journal.append(&event).with_context(|| {
                    format!("writing the votes journal {}", journal.path().display())
                })?;
            }
            inner.ballot.apply(&event).expect("checked just above");
        }
        inner.generation = 1;
        board.standing.store(Arc::new(inner.ballot.standing(inner.generation)));
        let store = Store {
            inner: Mutex::new(inner),
            flushed: Condvar::new(),
            queued: Condvar::new(),
            board,
            on_publish: Mutex::new(Vec::new()),
        };
        Ok((store, warnings))
    }

    /// Validates `event`, appends it to the journal (synced, possibly in one
    /// write and one sync with concurrent submissions), applies it and
    /// publishes the new standing, which it returns. Any error leaves the
    /// ballot, the journal and the board as they were.
    ///
    /// A `pid` member of an added or created candidate gets its start time
    /// from `/proc` and this boot's id (given ones must match the live
    /// process); a thread id is refused, with the id of its process.
    pub fn submit(&self, event: Event) -> Result<Arc<Standing>, StoreError> {
        let event = fill_start_times(event)?;
        let mut inner = self.lock();
        if !inner.durable {
            inner.ballot.check(&event)?;
            inner.ballot.apply(&event).expect("checked just above, under the same lock");
            inner.generation += 1;
            let standing = self.publish(&inner);
            drop(inner);
            self.after_publish(&standing);
            return Ok(standing);
        }
        let inner_ref = &mut *inner;
        let ahead = inner_ref.ahead.get_or_insert_with(|| inner_ref.ballot.checker());
        ahead.check(&event)?;
        ahead.apply(&event).expect("checked just above, under the same lock");
        inner.last_seq += 1;
        let seq = inner.last_seq;
        inner.queue.push((seq, event));
        loop {
            if let Some(e) = inner.failed.remove(&seq) {
                return Err(e);
            }
            if inner.done_seq >= seq {
                return Ok(self.board.standing.load_full());
            }
            if inner.journal.is_some() {
                inner = self.flush(inner);
            } else {
                inner = self.flushed.wait(inner).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// [`Store::submit`] without waiting: `then` gets the outcome, on this
    /// thread when the event is refused or nothing is journaled, otherwise
    /// on the thread that syncs it: [`Store::run_flusher`], which must run
    /// while this is used on a journaled store (or a later [`Store::submit`]
    /// that flushes it along). `then` must be quick: it runs outside the
    /// ballot's lock but before the next sync starts.
    pub fn submit_then(&self, event: Event, then: Then) {
        let event = match fill_start_times(event) {
            Ok(e) => e,
            Err(e) => return then(Err(e.into())),
        };
        let mut inner = self.lock();
        if !inner.durable {
            let result = inner.ballot.check(&event).map_err(StoreError::from).map(|()| {
                inner.ballot.apply(&event).expect("checked just above, under the same lock");
                inner.generation += 1;
                self.publish(&inner)
            });
            drop(inner);
            if let Ok(standing) = &result {
                self.after_publish(standing);
            }
            return then(result);
        }
        let inner_ref = &mut *inner;
        let ahead = inner_ref.ahead.get_or_insert_with(|| inner_ref.ballot.checker());
        if let Err(e) = ahead.check(&event) {
            drop(inner);
            return then(Err(e.into()));
        }
        ahead.apply(&event).expect("checked just above, under the same lock");
        inner.last_seq += 1;
        let seq = inner.last_seq;
        inner.queue.push((seq, event));
        inner.then.push((seq, then));
        drop(inner);
        self.queued.notify_one();
    }

    /// Syncs what [`Store::submit_then`] queues, as soon as it is queued
    /// (everything queued meanwhile shares the next sync), until `stop`.
    /// Checks `stop` at least every 100 ms.
    pub fn run_flusher(&self, stop: &AtomicBool) {
        let mut inner = self.lock();
        while !stop.load(Ordering::SeqCst) {
            if !inner.queue.is_empty() && inner.journal.is_some() {
                inner = self.flush(inner);
                continue;
            }
            inner = match self.queued.wait_timeout(inner, Duration::from_millis(100)) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Wakes [`Store::run_flusher`] (e.g. to see its stop flag).
    pub fn wake_flusher(&self) {
        self.queued.notify_all();
    }

    /// The callbacks whose submissions are settled, with their outcomes.
    fn settled(&self, inner: &mut Inner) -> Vec<(Then, Result<Arc<Standing>, StoreError>)> {
        if inner.then.is_empty() {
            return Vec::new();
        }
        let mut settled = Vec::new();
        let mut standing = None;
        for (seq, then) in std::mem::take(&mut inner.then) {
            if let Some(e) = inner.failed.remove(&seq) {
                settled.push((then, Err(e)));
            } else if seq <= inner.done_seq {
                let standing = standing.get_or_insert_with(|| self.board.standing.load_full());
                settled.push((then, Ok(Arc::clone(standing))));
            } else {
                inner.then.push((seq, then));
            }
        }
        settled
    }

    /// Writes everything queued with one write and one sync, with the lock
    /// released meanwhile; then publishes, or on failure answers the batch
    /// with the error and checks what was queued behind it again.
    fn flush<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        let batch = std::mem::take(&mut inner.queue);
        let mut journal = inner.journal.take().expect("the caller saw the journal");
        #[cfg(test)]
        let hold = inner.hold_next_flush.take();
        drop(inner);
        #[cfg(test)]
        if let Some(hold) = hold {
            let _ = hold.recv();
        }
        let mut lines = String::new();
        for (_, event) in &batch {
            lines.push_str(&crate::journal::encode(event));
        }
        let result = journal.append_records(lines.as_bytes());
        let mut inner = self.lock();
        inner.journal = Some(journal);
        inner.flushes += 1;
        let last = batch.last().map_or(inner.done_seq, |(seq, _)| *seq);
        let mut published = None;
        match result {
            Ok(()) => {
                for (_, event) in &batch {
                    inner.ballot.apply(event).expect("checked against the ballot ahead");
                }
                inner.generation += batch.len() as u64;
                if inner.queue.is_empty() {
                    inner.ahead = None;
                }
                published = Some(self.publish(&inner));
            }
            Err(e) => {
                for (seq, _) in &batch {
                    let e = std::io::Error::new(e.kind(), e.to_string());
                    inner.failed.insert(*seq, StoreError::Journal(e));
                }
                // What was queued behind the batch was checked against a
                // ballot that included it: check it again.
                let queued = std::mem::take(&mut inner.queue);
                let mut ahead = inner.ballot.checker();
                for (seq, event) in queued {
                    match ahead.check(&event) {
                        Ok(()) => {
                            ahead.apply(&event).expect("checked just above");
                            inner.queue.push((seq, event));
                        }
                        Err(e) => {
                            inner.failed.insert(seq, StoreError::Ballot(e));
                        }
                    }
                }
                inner.ahead = (!inner.queue.is_empty()).then_some(ahead);
            }
        }
        inner.done_seq = last;
        self.flushed.notify_all();
        if !inner.queue.is_empty() {
            self.queued.notify_one();
        }
        let settled = self.settled(&mut inner);
        if published.is_some() || !settled.is_empty() {
            drop(inner);
            if let Some(standing) = published {
                self.after_publish(&standing);
            }
            for (then, result) in settled {
                then(result);
            }
            inner = self.lock();
        }
        inner
    }

    fn publish(&self, inner: &Inner) -> Arc<Standing> {
        let standing = Arc::new(inner.ballot.standing(inner.generation));
        self.board.standing.store(Arc::clone(&standing));
        standing
    }

    fn after_publish(&self, standing: &Standing) {
        for f in &*self.on_publish.lock().unwrap_or_else(|p| p.into_inner()) {
            f(standing);
        }
    }

    /// How many journal flushes (write + sync) have run.
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// Runs `f` after every publish, outside the ballot lock (e.g. to wake
    /// the scheduler so a new leader runs without waiting for a poll, or to
    /// tell the event streams). Every `f` given runs, in the order given.
    pub fn on_publish(&self, f: impl Fn(&Standing) + Send + Sync + 'static) {
        self.on_publish.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(f));
    }

    /// The last published standing.
    pub fn standing(&self) -> Arc<Standing> {
        self.board.standing.load_full()
    }

    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Swaps the journal (tests of the error path).
    #[cfg(test)]
    pub(crate) fn set_journal_for_test(&self, journal: Journal) {
        let mut inner = self.lock();
        inner.journal = Some(journal);
        inner.durable = true;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock with the ballot half-changed
        // (apply runs only after check), so a poisoned lock is still sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn without_start_time(member: &Member) -> Member {
    match member {
        Member::Pid { pid, .. } => Member::Pid { pid: *pid, start_time: None, boot_id: None },
        other => other.clone(),
    }
}

/// Pins the identity of the `pid` members a create or an add brings in.
fn fill_start_times(event: Event) -> Result<Event, BallotError> {
    Ok(match event {
        Event::CreateCandidate { name, members } => Event::CreateCandidate {
            name,
            members: members.into_iter().map(fill_start_time).collect::<Result<_, _>>()?,
        },
        Event::AddMember { candidate, member } => {
            Event::AddMember { candidate, member: fill_start_time(member)? }
        }
        other => other,
    })
}

fn fill_start_time(member: Member) -> Result<Member, BallotError> {
    fill_identity(member, proc_tgid, proc_start_time, current_boot_id())
}

/// [`fill_start_time`] with the `/proc` lookups given: `tgid` and
/// `start_time` of a pid (`None`: no such task), and this boot's id.
fn fill_identity(
    member: Member,
    tgid: impl Fn(i32) -> Option<i32>,
    start_time: impl Fn(i32) -> Option<u64>,
    this_boot: Option<String>,
) -> Result<Member, BallotError> {
    match member {
        Member::Pid { pid, start_time: given, boot_id } if pid > 0 => {
            // /proc/TID exists for every thread, though /proc lists only
            // processes: a thread id would be taken for a process that is
            // never seen, and dropped as exited.
            match tgid(pid) {
                None => return Err(BallotError::NoSuchProcess(pid)),
                Some(tgid) if tgid != pid => {
                    return Err(BallotError::InvalidMember(format!(
                        "pid {pid} is a thread of process {tgid}; a pid member is a whole \
                         process: add pid {tgid}"
                    )));
                }
                Some(_) => {}
            }
            let live = start_time(pid).ok_or(BallotError::NoSuchProcess(pid))?;
            if given.is_some_and(|t| t != live) || boot_id.is_some() && boot_id != this_boot {
                return Err(BallotError::NoSuchProcess(pid));
            }
            Ok(Member::Pid { pid, start_time: Some(live), boot_id: this_boot })
        }
        // Invalid pids are refused by validation with a better message.
        other => Ok(other),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

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
}
