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
use crate::election::view::{Board, Member, Standing};
use crate::journal::Journal;

mod identity;

use identity::{fill_start_times, without_start_time};

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

#[cfg(test)]
pub(crate) mod tests;
