//! Viewers: one thread, one mio event loop, a state machine per
//! connection. The plan, the states, and the loop that drives them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mio::{Events, Poll};

use super::{ViewerResult, percentile_ms};
use super::cmd::View;
use super::parse::{ChunkedDecoder, SseSplitter};

/// A poll viewer asks this often.
pub(super) const POLL_EVERY: Duration = Duration::from_secs(1);
/// A poll answered later than this after it was due is late.
pub(super) const POLL_LATE: Duration = Duration::from_secs(1);
/// A poll viewer connected later than this after its first poll was due
/// waits for its next offset in the second (see [`Ctx::ready`]).
pub(super) const FIRST_POLL_SLACK: Duration = Duration::from_millis(100);
/// A stream without an event for longer than this is late.
pub(super) const STREAM_LATE: Duration = Duration::from_secs(2);
/// Viewers' connections opened per millisecond at the start (10,000 in
/// 40 ms).
pub const DEFAULT_OPEN_PER_MS: u32 = 250;
/// The longest answer head read.
pub(super) const MAX_HEAD: usize = 16 * 1024;

pub(super) struct ViewerPlan {
    pub(super) addr: SocketAddr,
    /// `--addr` as given, for the `Host` header and messages.
    pub(super) host: String,
    pub(super) count: u32,
    pub(super) view: View,
    pub(super) open_per_ms: u128,
    /// Voters are connected (then a refused connect is not "nothing
    /// listens").
    pub(super) voters: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not opened yet, or closed (after `Connection: close`) until its next
    /// poll is due.
    Waiting,
    Connecting,
    /// Connected, no request in flight (poll: until the next is due).
    Idle,
    /// A request sent (or being sent); reading the answer's head.
    Head,
    /// Reading the answer's body (a stream: to the end of the run).
    Body,
    /// Refused: closed, for good.
    Failed,
}

/// How the end of an answer's body is known.
pub(super) enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// No length: the body ends when the server closes.
    UntilClose,
}

pub(super) struct Viewer {
    pub(super) sock: Option<mio::net::TcpStream>,
    pub(super) phase: Phase,
    /// When the current connection was opened.
    pub(super) opened_at: Instant,
    /// Poll: when the next (or the current) request is due.
    pub(super) due: Instant,
    pub(super) sent_at: Instant,
    /// Bytes of the request not written yet.
    pub(super) unsent: usize,
    pub(super) head: Vec<u8>,
    /// Answer bytes came without a request (a 503 at accept, say).
    pub(super) unsolicited: bool,
    pub(super) framing: Framing,
    /// The answer announced `Connection: close`.
    pub(super) close_after: bool,
    pub(super) answered: u32,
    /// Stream: its head said 200.
    pub(super) streaming: bool,
    pub(super) sse: SseSplitter,
    pub(super) last_event: Option<Instant>,
    pub(super) late: bool,
}

impl Viewer {
    fn new(due: Instant) -> Viewer {
        Viewer {
            sock: None,
            phase: Phase::Waiting,
            opened_at: due,
            due,
            sent_at: due,
            unsent: 0,
            head: Vec::new(),
            unsolicited: false,
            framing: Framing::UntilClose,
            close_after: false,
            answered: 0,
            streaming: false,
            sse: SseSplitter::default(),
            last_event: None,
            late: false,
        }
    }
}

/// The event loop's state beside the viewers.
pub(super) struct Ctx<'p> {
    pub(super) plan: &'p ViewerPlan,
    pub(super) registry: mio::Registry,
    pub(super) request: Vec<u8>,
    /// Poll viewers' due times (stale entries are skipped).
    pub(super) timers: BinaryHeap<Reverse<(Instant, usize)>>,
    pub(super) connect_ns: Vec<u64>,
    pub(super) answer_ns: Vec<u64>,
    pub(super) first_event_ns: Vec<u64>,
    pub(super) worst_gap: Option<Duration>,
    pub(super) events: u64,
    pub(super) event_names: BTreeMap<String, u64>,
    pub(super) comments: u64,
    pub(super) refusals: BTreeMap<String, u32>,
    pub(super) reconnects: u32,
    pub(super) ever_connected: bool,
    /// Stops the run: the viewers cannot work against this server.
    pub(super) fatal: Option<anyhow::Error>,
}

/// Runs the viewers from `start` to `end` (or until `stop`), then closes
/// every connection.
pub(super) fn run_viewers(
    plan: &ViewerPlan,
    start: Instant,
    end: Instant,
    stop: &AtomicBool,
) -> Result<ViewerResult> {
    let mut poll = Poll::new().context("creating the viewers' event loop")?;
    let request = match plan.view {
        View::Poll => format!(
            "GET /votes HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            plan.host
        ),
        View::Stream => format!(
            "GET /events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            plan.host
        ),
    };
    let mut ctx = Ctx {
        plan,
        registry: poll.registry().try_clone()?,
        request: request.into_bytes(),
        timers: BinaryHeap::new(),
        connect_ns: Vec::new(),
        answer_ns: Vec::new(),
        first_event_ns: Vec::new(),
        worst_gap: None,
        events: 0,
        event_names: BTreeMap::new(),
        comments: 0,
        refusals: BTreeMap::new(),
        reconnects: 0,
        ever_connected: false,
        fatal: None,
    };
    let n = plan.count as usize;
    // Poll viewers' first requests, spread over the first second.
    let spread = POLL_EVERY / plan.count;
    let mut viewers: Vec<Viewer> = (0..plan.count)
        .map(|i| Viewer::new(start + spread * i))
        .collect();
    let mut opened = 0usize;
    let mut events = Events::with_capacity(4096);
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if now >= end || stop.load(Ordering::Relaxed) || ctx.fatal.is_some() {
            break;
        }
        let ramp = ((now - start).as_micros() * plan.open_per_ms / 1000 + plan.open_per_ms)
            .try_into()
            .unwrap_or(usize::MAX);
        while opened < n.min(ramp) {
            ctx.open(&mut viewers[opened], opened, Instant::now());
            opened += 1;
        }
        while let Some(&Reverse((due, i))) = ctx.timers.peek()
            && due <= now
        {
            ctx.timers.pop();
            ctx.due(&mut viewers[i], i, due, Instant::now());
        }
        let mut wait = end.saturating_duration_since(now);
        if opened < n {
            wait = wait.min(Duration::from_millis(1));
        }
        if let Some(&Reverse((due, _))) = ctx.timers.peek() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("waiting on the viewers' sockets"),
        }
        for event in events.iter() {
            let i = event.token().0;
            ctx.ready(&mut viewers[i], i, Instant::now(), &mut scratch);
        }
    }
    if let Some(e) = ctx.fatal.take() {
        return Err(e);
    }
    let finish = Instant::now();
    let mut r = ViewerResult {
        view: plan.view,
        viewers: plan.count,
        held: 0,
        refused: 0,
        unanswered: 0,
        connecting: 0,
        late: 0,
        refusals: std::mem::take(&mut ctx.refusals),
        reconnects: ctx.reconnects,
        connect_p50_ms: None,
        connect_p99_ms: None,
        answers: ctx.answer_ns.len() as u64,
        answer_p50_ms: None,
        answer_p99_ms: None,
        answer_max_ms: None,
        events: ctx.events,
        event_names: std::mem::take(&mut ctx.event_names),
        comments: ctx.comments,
        worst_gap_ms: ctx.worst_gap.map(|d| d.as_secs_f64() * 1000.0),
        first_event_p50_ms: None,
        first_event_p99_ms: None,
    };
    for (i, v) in viewers.iter().enumerate() {
        if v.phase == Phase::Failed {
            r.refused += 1;
            continue;
        }
        if i >= opened {
            // The run stopped before it opened this one.
            r.unanswered += 1;
            r.connecting += 1;
            continue;
        }
        // What is awaited at the end is late by now, or not (a connect
        // still under way is not: the connect times tell of those).
        let awaited = matches!(v.phase, Phase::Head | Phase::Body);
        let late = v.late
            || awaited
                && match plan.view {
                    View::Poll => finish.saturating_duration_since(v.due) > POLL_LATE,
                    View::Stream => {
                        finish.saturating_duration_since(v.last_event.unwrap_or(v.sent_at))
                            > STREAM_LATE
                    }
                };
        let held = match plan.view {
            View::Poll => v.answered > 0,
            View::Stream => v.streaming,
        };
        if held {
            r.held += 1;
        } else {
            r.unanswered += 1;
            r.connecting += u32::from(matches!(v.phase, Phase::Connecting | Phase::Waiting));
        }
        r.late += u32::from(late);
    }
    // Every connection closes here, before the voters' figures are read.
    drop(viewers);
    for v in [
        &mut ctx.connect_ns,
        &mut ctx.answer_ns,
        &mut ctx.first_event_ns,
    ] {
        v.sort_unstable();
    }
    r.connect_p50_ms = percentile_ms(&ctx.connect_ns, 0.5);
    r.connect_p99_ms = percentile_ms(&ctx.connect_ns, 0.99);
    r.answer_p50_ms = percentile_ms(&ctx.answer_ns, 0.5);
    r.answer_p99_ms = percentile_ms(&ctx.answer_ns, 0.99);
    r.answer_max_ms = percentile_ms(&ctx.answer_ns, 1.0);
    r.first_event_p50_ms = percentile_ms(&ctx.first_event_ns, 0.5);
    r.first_event_p99_ms = percentile_ms(&ctx.first_event_ns, 0.99);
    Ok(r)
}

/// An I/O error in the words of the report.
pub(super) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "reset by the server".into(),
        ErrorKind::BrokenPipe => "closed by the server".into(),
        ErrorKind::AddrNotAvailable => "no local port left (EADDRNOTAVAIL)".into(),
        ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}
