//! A load generator for the voting server, on loopback: voters, and viewers
//! beside them, so that one command measures a room.
//!
//! Voters (`--connections M`): M keep-alive connections, each on its own
//! thread, each sending `POST /votes` as fast as answers come back; the run
//! reports votes/s and the p50/p99 time of one vote. The bench runs them in
//! the VM beside the scheduler ([`Load::run`]); `cargo xtask vote-load` runs
//! them against any server (e.g. `scx_ballot --no-sched` on the host), to
//! tell the server's own cost from the VM's.
//!
//! Viewers (`--viewers N`, [`Load::run_with_viewers`]): N more connections
//! that behave like open ballot pages, at the same time as the voters. With
//! `--view poll` each sends `GET /votes` once a second on a keep-alive
//! connection (their first requests spread over the first second); with
//! `--view stream` each opens `GET /events` (Server-Sent Events) and reads
//! it until the end of the run. They all live in one thread's event loop
//! (mio), opened `--open-rate` per millisecond (250 by default): 10,000
//! viewers take 10,000 sockets, not 10,000 threads. The process's open-file
//! limit is raised to its hard limit first, and a run that would not fit in
//! it is refused.
//!
//! Each viewer ends the run *held* (connected, and every answer a 200, to
//! the end), *refused* (the connect failed, an answer other than 200, the
//! connection closed or reset by the server, a malformed answer) or
//! *unanswered* (still waiting for its first answer); a viewer not refused
//! is also *late* if it was not answered within 1 s: a poll answered more
//! than 1 s after it was due, or a stream that went more than 2 s without an
//! event (its first event counted from its request). The time to connect is
//! not part of that: it is reported on its own (a server slow to accept
//! overflows its accept queue, and a dropped SYN is sent again only after
//! 1 s), and a poll viewer connected well after its first poll was due
//! polls from the next second at its own offset, not at once with every
//! other such viewer. A server that does not have the route the viewers
//! need (404 on `/events`, say) stops the run at its first such answer,
//! with an error that says so.
//!
//! `--json PATH` writes every measurement's figures ([`RoomResult`]) to a
//! file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

mod cmd;
mod voters;
mod viewers;
mod viewer_io;
mod parse;

pub use cmd::{VoteLoadCmd, View};
pub use viewers::DEFAULT_OPEN_PER_MS;

/// The viewers of a run ([`Load::run_with_viewers`]).
#[derive(Debug, Clone, Copy)]
pub struct Viewers {
    /// 0: none.
    pub count: u32,
    pub view: View,
    /// Connections opened per millisecond at the start.
    pub open_per_ms: u32,
}

impl Viewers {
    pub fn new(count: u32, view: View) -> Viewers {
        Viewers {
            count,
            view,
            open_per_ms: DEFAULT_OPEN_PER_MS,
        }
    }
}

pub struct Load {
    pub addr: String,
    pub candidate: String,
    pub connections: u32,
    pub secs: u64,
    /// Votes a connection sends before reading their answers.
    pub pipeline: u32,
}

/// Voter ids each connection cycles through.
pub const VOTERS_PER_CONNECTION: u64 = 1000;

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub votes_per_s: f64,
    /// Request -> answer time of one vote.
    pub p50_us: f64,
    pub p99_us: f64,
    pub reconnects: u32,
    /// Votes answered 200 in the run.
    pub votes: u64,
    /// Votes answered 503 (the server's connections full; only tolerated
    /// with viewers, who compete for them).
    pub busy: u32,
}

/// One measurement: the voters' figures and the viewers'.
#[derive(Debug, Clone, Serialize)]
pub struct RoomResult {
    /// Voters' connections.
    pub connections: u32,
    /// `None` without voters.
    pub voters: Option<LoadResult>,
    /// `None` without viewers.
    pub viewers: Option<ViewerResult>,
}

/// What the viewers saw. Times in ms; `None` where nothing was measured.
#[derive(Debug, Clone, Serialize)]
pub struct ViewerResult {
    pub view: View,
    pub viewers: u32,
    /// Connected, every answer a 200 (a stream: its head), to the end.
    pub held: u32,
    /// Connect failed, non-200, closed or reset by the server, malformed.
    pub refused: u32,
    /// Neither: still waiting for a first answer at the end.
    pub unanswered: u32,
    /// Of those unanswered: not even connected (or not yet opened).
    pub connecting: u32,
    /// Of those not refused: not answered within 1 s (a poll) or without an
    /// event for over 2 s (a stream).
    pub late: u32,
    /// Why viewers were refused, and how many each.
    pub refusals: BTreeMap<String, u32>,
    /// Connections reopened after an answer that announced `Connection:
    /// close` (an unannounced close refuses the viewer).
    pub reconnects: u32,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    /// Poll: answers read, and request sent -> full answer read.
    pub answers: u64,
    pub answer_p50_ms: Option<f64>,
    pub answer_p99_ms: Option<f64>,
    pub answer_max_ms: Option<f64>,
    /// Stream: events (by name) and other blocks (comments, `retry:`).
    pub events: u64,
    pub event_names: BTreeMap<String, u64>,
    pub comments: u64,
    /// Stream: the longest time between two events of one stream.
    pub worst_gap_ms: Option<f64>,
    /// Stream: request sent -> first event.
    pub first_event_p50_ms: Option<f64>,
    pub first_event_p99_ms: Option<f64>,
}

impl ViewerResult {
    /// The report's viewers line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} viewers ({}): {} held, {} refused",
            self.viewers,
            self.view.name(),
            self.held,
            self.refused
        );
        if self.refused > 0 {
            let mut why: Vec<_> = self.refusals.iter().collect();
            why.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let shown: Vec<_> = why
                .iter()
                .take(3)
                .map(|(r, n)| format!("{n} {r}"))
                .collect();
            let more = if why.len() > 3 { ", ..." } else { "" };
            s += &format!(" ({}{more})", shown.join(", "));
        }
        if self.unanswered > 0 {
            s += &format!(", {} unanswered", self.unanswered);
            if self.connecting > 0 {
                s += &format!(" ({} still connecting)", self.connecting);
            }
        }
        s += &format!(", {} late", self.late);
        match self.view {
            View::Poll => {
                s += &format!(
                    "; answer p50 {} p99 {}",
                    fmt_ms(self.answer_p50_ms),
                    fmt_ms(self.answer_p99_ms)
                );
            }
            View::Stream => {
                s += &format!(
                    "; {} events, worst gap {}, first event p50 {} p99 {}",
                    self.events,
                    fmt_ms(self.worst_gap_ms),
                    fmt_ms(self.first_event_p50_ms),
                    fmt_ms(self.first_event_p99_ms)
                );
            }
        }
        if self.reconnects > 0 {
            s += &format!(", {} reconnects", self.reconnects);
        }
        if let Some(ms) = self.connect_p99_ms.filter(|&ms| ms > SLOW_CONNECT_MS) {
            s += &format!("; connect p99 {}", fmt_ms(Some(ms)));
        }
        s
    }
}

/// Connect times worth a mention in the viewers line (over this, the
/// server's accept queue has likely overflowed: a dropped SYN is sent again
/// after 1 s).
const SLOW_CONNECT_MS: f64 = 100.0;

fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.1} ms"),
        Some(ms) if ms < 10_000.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{:.1} s", ms / 1000.0),
    }
}

/// The value at rank `p` (0..=1) of sorted samples: the one at index
/// `len * p`, the last one at most; `None` without samples.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[((sorted.len() as f64 * p) as usize).min(last)])
}

fn percentile_ms(sorted: &[u64], p: f64) -> Option<f64> {
    percentile(sorted, p).map(|ns| ns as f64 / 1e6)
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().try_into().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
