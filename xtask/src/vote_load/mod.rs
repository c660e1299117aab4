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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct VoteLoadCmd {
    /// The voting server, e.g. 127.0.0.1:7447.
    #[arg(long, default_value = "127.0.0.1:7447")]
    pub addr: String,
    /// The candidate every vote goes to (must exist).
    #[arg(long, default_value = "blue")]
    pub candidate: String,
    /// Voters: keep-alive connections, each on its own thread, each posting
    /// votes as fast as answers come back (one request in flight per
    /// connection). A list (4,16,64) runs one measurement per count, each
    /// with the same viewers. 0 with --viewers: viewers only.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub connections: Vec<u32>,
    /// How long each measurement runs, in seconds. At its end every
    /// connection is closed and every thread has ended.
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
    /// Viewers: this many more connections, opened beside the voters, that
    /// behave like open ballot pages (see --view). They share one
    /// event-loop thread, so 10,000 are fine; each takes a file descriptor
    /// (the soft limit is raised to the hard one) and a local port. The
    /// report says how many were held, refused and late (not answered within
    /// 1 s), and their answer times.
    #[arg(long, default_value_t = 0)]
    pub viewers: u32,
    /// Votes each voter connection sends at once before it reads their
    /// answers (HTTP/1.1 pipelining); 1: one vote in flight, as a page
    /// does. More lets one connection's votes share a journal sync, so it
    /// measures the server's throughput rather than the round trip.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pipeline: u32,
    /// What each viewer does (needs --viewers) [default: poll]
    #[arg(long, value_enum)]
    pub view: Option<View>,
    /// Viewers' connections opened per millisecond at the start (10,000 at
    /// 250: 40 ms). A server that accepts slower than that overflows its
    /// accept queue and the kernel drops the SYNs, sent again after 1 s,
    /// then 3 s: the report's connect p99. Lower it to open the room more
    /// gently.
    #[arg(long, value_name = "PER_MS", default_value_t = DEFAULT_OPEN_PER_MS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub open_rate: u32,
    /// Also write the figures of every measurement to this JSON file
    /// (rewritten after each one).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// What a viewer does, like the ballot page does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// `GET /votes` once a second on a keep-alive connection (an answer
    /// more than 1 s after it was due is late).
    Poll,
    /// `GET /events`, a Server-Sent Events stream, read for the whole run
    /// (more than 2 s without an event is late).
    Stream,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Poll => "poll",
            View::Stream => "stream",
        }
    }
}

/// What `--json` writes.
#[derive(Serialize)]
struct Report<'a> {
    addr: &'a str,
    candidate: &'a str,
    secs: u64,
    runs: Vec<RoomResult>,
}

impl VoteLoadCmd {
    pub fn run(self) -> Result<()> {
        if self.view.is_some() && self.viewers == 0 {
            bail!("--view says what viewers do: add --viewers N");
        }
        let viewers = Viewers {
            count: self.viewers,
            view: self.view.unwrap_or(View::Poll),
            open_per_ms: self.open_rate,
        };
        let mut report = Report {
            addr: &self.addr,
            candidate: &self.candidate,
            secs: self.secs,
            runs: Vec::new(),
        };
        for &n in &self.connections {
            let load = Load {
                addr: self.addr.clone(),
                candidate: self.candidate.clone(),
                connections: n,
                secs: self.secs,
                pipeline: self.pipeline,
            };
            let room = if self.viewers == 0 {
                let r = load.run()?;
                println!(
                    "{n:>3} connections: {:>8.0} votes/s  (p50 {:.0} us, p99 {:.0} us per vote, {} reconnects)",
                    r.votes_per_s, r.p50_us, r.p99_us, r.reconnects
                );
                RoomResult {
                    connections: n,
                    voters: Some(r),
                    viewers: None,
                }
            } else {
                let room = load.run_with_viewers(&viewers)?;
                if let Some(v) = &room.viewers {
                    println!("{}", v.line());
                }
                if let Some(r) = &room.voters {
                    let busy = if r.busy > 0 {
                        format!(", {} answered 503", r.busy)
                    } else {
                        String::new()
                    };
                    println!(
                        "{n} voters: {:.0} votes/s (p50 {:.0} us, p99 {:.0} us per vote, {} reconnects{busy})",
                        r.votes_per_s, r.p50_us, r.p99_us, r.reconnects
                    );
                }
                room
            };
            report.runs.push(room);
            if let Some(path) = &self.json {
                write_json(path, &report)?;
            }
        }
        Ok(())
    }
}

fn write_json(path: &Path, report: &Report) -> Result<()> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

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

/// File descriptors beyond one per connection (stdio, epoll, the
/// allocator's and the runtime's own).
const FD_MARGIN: u64 = 64;

impl Load {
    /// Every vote must be answered 200 (no rate limit applies to it: the
    /// server under test runs without one); anything else fails the run.
    /// Each connection cycles through [`VOTERS_PER_CONNECTION`] voter ids,
    /// so a long run stays within the ballot's bound on voters under one
    /// vote per voter (a voter voting again is still a vote the server
    /// checks, journals and acknowledges).
    pub fn run(&self) -> Result<LoadResult> {
        if self.connections == 0 || self.secs == 0 {
            bail!("vote load needs at least one connection and one second");
        }
        self.run_with_viewers(&Viewers::new(0, View::Poll))?
            .voters
            .ok_or_else(|| anyhow!("the run had no voters"))
    }

    /// The voters of [`Load::run`] (none if `connections` is 0) and, at the
    /// same time, `viewers` viewers doing `view` (see the module's doc). The
    /// voters connect first, so that a server with a cap on its connections
    /// serves them before the viewers; with viewers, a vote answered 503
    /// (connections full) is counted in [`LoadResult::busy`] and retried on
    /// a new connection instead of failing the run.
    pub fn run_with_viewers(&self, viewers: &Viewers) -> Result<RoomResult> {
        let Viewers {
            count: viewers,
            view,
            open_per_ms,
        } = *viewers;
        if self.secs == 0 {
            bail!("a run needs at least one second (--secs)");
        }
        if self.connections == 0 && viewers == 0 {
            bail!("nothing to run: no voters (--connections) and no viewers (--viewers)");
        }
        let plan = if viewers > 0 {
            let sockets = u64::from(viewers) + u64::from(self.connections);
            raise_fd_limit(sockets + FD_MARGIN, viewers, self.connections)?;
            check_local_ports(sockets)?;
            let addr = self
                .addr
                .to_socket_addrs()
                .with_context(|| format!("resolving {}", self.addr))?
                .next()
                .ok_or_else(|| anyhow!("{} resolves to no address", self.addr))?;
            Some(ViewerPlan {
                addr,
                host: self.addr.clone(),
                count: viewers,
                view,
                open_per_ms: open_per_ms.max(1).into(),
                voters: self.connections > 0,
            })
        } else {
            None
        };
        let firsts = (0..self.connections)
            .map(|_| connect(&self.addr))
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let end = start + Duration::from_secs(self.secs);
        let tolerate_busy = viewers > 0;
        let threads: Vec<_> = firsts
            .into_iter()
            .zip(0..)
            .map(|(first, t)| {
                let (addr, candidate) = (self.addr.clone(), self.candidate.clone());
                let stop = Arc::clone(&stop);
                let pipeline = self.pipeline.max(1);
                std::thread::spawn(move || {
                    let r = one_connection(&addr, &candidate, t, first, end, &stop, tolerate_busy, pipeline);
                    if r.is_err() {
                        // Ends the viewers' loop too: the run has failed.
                        stop.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        let watched = plan.map(|plan| {
            let r = run_viewers(&plan, start, end, &stop);
            if r.is_err() {
                stop.store(true, Ordering::SeqCst);
            }
            r
        });
        let mut tallies = Vec::new();
        let mut voter_error = None;
        for t in threads {
            match t.join() {
                Ok(Ok(tally)) => tallies.push(tally),
                Ok(Err(e)) => {
                    voter_error.get_or_insert(e);
                }
                Err(_) => {
                    voter_error.get_or_insert(anyhow!("a load thread panicked"));
                }
            }
        }
        // A viewer's error (a missing route, say) explains a voter's too.
        let viewers = watched.transpose()?;
        if let Some(e) = voter_error {
            return Err(e);
        }
        let voters = (self.connections > 0).then(|| {
            let mut times = Vec::new();
            let (mut reconnects, mut busy) = (0, 0);
            for mut tally in tallies {
                times.append(&mut tally.times);
                reconnects += tally.reconnects;
                busy += tally.busy;
            }
            times.sort_unstable();
            let pick = |p: f64| percentile(&times, p).map_or(0.0, |ns| ns as f64 / 1000.0);
            LoadResult {
                votes_per_s: times.len() as f64 / self.secs as f64,
                p50_us: pick(0.5),
                p99_us: pick(0.99),
                reconnects,
                votes: times.len() as u64,
                busy,
            }
        });
        Ok(RoomResult {
            connections: self.connections,
            voters,
            viewers,
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one; fails if `needed` file
/// descriptors do not fit under it.
fn raise_fd_limit(needed: u64, viewers: u32, voters: u32) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if needed > hard {
        bail!(
            "{viewers} viewers and {voters} voters need about {needed} open files, over this \
             process's limit of {hard} (RLIMIT_NOFILE, hard): ask for fewer viewers, or raise \
             the limit (`ulimit -Hn` as root, LimitNOFILE= in a systemd unit, limits.conf)"
        );
    }
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        // A hard limit of "unlimited" is over what the kernel takes as a
        // soft one (fs.nr_open): ask for what the run needs.
        if soft < needed {
            setrlimit(Resource::RLIMIT_NOFILE, needed, hard).with_context(|| {
                format!("raising RLIMIT_NOFILE from {soft} to {needed} (hard limit {hard})")
            })?;
        }
    }
    Ok(())
}

/// Every connection to the one server address takes a local port of its
/// own: more than the range holds cannot all connect.
fn check_local_ports(sockets: u64) -> Result<()> {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return Ok(());
    };
    let mut ends = range
        .split_whitespace()
        .filter_map(|p| p.parse::<u64>().ok());
    if let (Some(lo), Some(hi)) = (ends.next(), ends.next())
        && hi >= lo
        && sockets > hi - lo + 1
    {
        bail!(
            "{sockets} connections to one server address need as many local ports, and \
             net.ipv4.ip_local_port_range ({lo}-{hi}) has {}: ask for fewer viewers",
            hi - lo + 1
        );
    }
    Ok(())
}

fn connect(addr: &str) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write per request, sent at once (no Nagle wait).
    stream.set_nodelay(true)?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// What one voter connection did.
struct VoterTally {
    /// The time of each answered vote, in ns.
    times: Vec<u64>,
    /// How often the connection had to be reopened.
    reconnects: u32,
    /// Votes answered 503 (with `tolerate_busy`).
    busy: u32,
}

/// How long a voter answered 503 waits before it connects again.
const BUSY_PAUSE: Duration = Duration::from_millis(10);

/// Votes on `first` (then on new connections as needed) until `end`, or
/// until `stop`: `pipeline` votes sent at once, then their answers read;
/// each vote's time runs from that send to its answer.
#[allow(clippy::too_many_arguments)]
fn one_connection(
    addr: &str,
    candidate: &str,
    t: u32,
    first: (TcpStream, BufReader<TcpStream>),
    end: Instant,
    stop: &AtomicBool,
    tolerate_busy: bool,
    pipeline: u32,
) -> Result<VoterTally> {
    let (mut stream, mut reader) = first;
    let mut times = Vec::new();
    let (mut reconnects, mut busy) = (0u32, 0u32);
    let mut i = 0u64;
    let (mut status, mut line, mut body) = (String::new(), String::new(), Vec::new());
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let mut request = String::new();
        for _ in 0..pipeline {
            let voter = i % VOTERS_PER_CONNECTION;
            let vote = format!("{{\"candidate\":\"{candidate}\",\"voter\":\"load-{t}-{voter}\"}}");
            i += 1;
            request.push_str(&format!(
                "POST /votes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{vote}",
                vote.len()
            ));
        }
        let started = Instant::now();
        // Whether the connection must be opened again, and why.
        let mut reopen = if stream.write_all(request.as_bytes()).is_ok() { None } else { Some(false) };
        for _ in 0..pipeline {
            if reopen.is_some() {
                break;
            }
            status.clear();
            if !matches!(reader.read_line(&mut status), Ok(n) if n > 0) {
                // The server ended the keep-alive connection (closed or
                // reset after its last request).
                reopen = Some(false);
                break;
            }
            let mut len = 0usize;
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().context("a bad Content-Length")?;
                }
            }
            body.resize(len, 0);
            reader.read_exact(&mut body)?;
            if !status.contains(" 200 ") {
                if tolerate_busy && status.contains(" 503 ") {
                    // The viewers hold the server's connections; it closes
                    // this one after its 503.
                    busy += 1;
                    reopen = Some(true);
                    break;
                }
                bail!(
                    "vote answered {}: {}",
                    status.trim(),
                    String::from_utf8_lossy(&body)
                );
            }
            times.push(started.elapsed().as_nanos() as u64);
        }
        match reopen {
            None => {}
            Some(true) => {
                // Busy: wait a moment before connecting again.
                std::thread::sleep(BUSY_PAUSE.min(end.saturating_duration_since(Instant::now())));
                (stream, reader) = connect(addr)?;
            }
            Some(false) => {
                reconnects += 1;
                if reconnects > 10_000 {
                    bail!("the server keeps closing connections");
                }
                (stream, reader) = connect(addr)?;
            }
        }
    }
    Ok(VoterTally {
        times,
        reconnects,
        busy,
    })
}

// ---------------------------------------------------------------------------
// Viewers: one thread, one mio event loop, a state machine per connection.

/// A poll viewer asks this often.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// A poll answered later than this after it was due is late.
const POLL_LATE: Duration = Duration::from_secs(1);
/// A poll viewer connected later than this after its first poll was due
/// waits for its next offset in the second (see [`Ctx::ready`]).
const FIRST_POLL_SLACK: Duration = Duration::from_millis(100);
/// A stream without an event for longer than this is late.
const STREAM_LATE: Duration = Duration::from_secs(2);
/// Viewers' connections opened per millisecond at the start (10,000 in
/// 40 ms).
pub const DEFAULT_OPEN_PER_MS: u32 = 250;
/// The longest answer head read.
const MAX_HEAD: usize = 16 * 1024;

struct ViewerPlan {
    addr: SocketAddr,
    /// `--addr` as given, for the `Host` header and messages.
    host: String,
    count: u32,
    view: View,
    open_per_ms: u128,
    /// Voters are connected (then a refused connect is not "nothing
    /// listens").
    voters: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
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
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// No length: the body ends when the server closes.
    UntilClose,
}

struct Viewer {
    sock: Option<mio::net::TcpStream>,
    phase: Phase,
    /// When the current connection was opened.
    opened_at: Instant,
    /// Poll: when the next (or the current) request is due.
    due: Instant,
    sent_at: Instant,
    /// Bytes of the request not written yet.
    unsent: usize,
    head: Vec<u8>,
    /// Answer bytes came without a request (a 503 at accept, say).
    unsolicited: bool,
    framing: Framing,
    /// The answer announced `Connection: close`.
    close_after: bool,
    answered: u32,
    /// Stream: its head said 200.
    streaming: bool,
    sse: SseSplitter,
    last_event: Option<Instant>,
    late: bool,
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
struct Ctx<'p> {
    plan: &'p ViewerPlan,
    registry: mio::Registry,
    request: Vec<u8>,
    /// Poll viewers' due times (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    connect_ns: Vec<u64>,
    answer_ns: Vec<u64>,
    first_event_ns: Vec<u64>,
    worst_gap: Option<Duration>,
    events: u64,
    event_names: BTreeMap<String, u64>,
    comments: u64,
    refusals: BTreeMap<String, u32>,
    reconnects: u32,
    ever_connected: bool,
    /// Stops the run: the viewers cannot work against this server.
    fatal: Option<anyhow::Error>,
}

/// Runs the viewers from `start` to `end` (or until `stop`), then closes
/// every connection.
fn run_viewers(
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
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "reset by the server".into(),
        ErrorKind::BrokenPipe => "closed by the server".into(),
        ErrorKind::AddrNotAvailable => "no local port left (EADDRNOTAVAIL)".into(),
        ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

impl Ctx<'_> {
    /// Opens `v`'s connection (it completes in [`Ctx::ready`]).
    fn open(&mut self, v: &mut Viewer, i: usize, now: Instant) {
        v.phase = Phase::Connecting;
        v.opened_at = now;
        match mio::net::TcpStream::connect(self.plan.addr) {
            Ok(mut sock) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                match self.registry.register(&mut sock, Token(i), interest) {
                    Ok(()) => v.sock = Some(sock),
                    Err(e) => self.refuse(v, format!("registering a socket: {e}")),
                }
            }
            Err(e) => self.connect_failed(v, &e),
        }
    }

    fn connect_failed(&mut self, v: &mut Viewer, e: &io::Error) {
        if e.kind() == ErrorKind::ConnectionRefused && !self.ever_connected && !self.plan.voters {
            self.fatal.get_or_insert_with(|| {
                anyhow!("nothing listens at {} (connection refused)", self.plan.host)
            });
        }
        self.refuse(v, format!("connect: {}", io_reason(e)));
    }

    fn refuse(&mut self, v: &mut Viewer, reason: String) {
        self.close(v);
        v.phase = Phase::Failed;
        *self.refusals.entry(reason).or_default() += 1;
    }

    fn close(&mut self, v: &mut Viewer) {
        if let Some(mut sock) = v.sock.take() {
            let _ = self.registry.deregister(&mut sock);
        }
    }

    /// A poll viewer's timer.
    fn due(&mut self, v: &mut Viewer, i: usize, due: Instant, now: Instant) {
        if v.due != due {
            return;
        }
        match v.phase {
            Phase::Idle => self.send(v, now),
            Phase::Waiting => {
                self.reconnects += 1;
                self.open(v, i, now);
            }
            _ => {}
        }
    }

    /// `v`'s socket has news.
    fn ready(&mut self, v: &mut Viewer, i: usize, now: Instant, scratch: &mut [u8]) {
        if v.phase == Phase::Connecting {
            let Some(sock) = v.sock.as_ref() else { return };
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.connect_failed(v, &e),
                Ok(None) => {}
            }
            match sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return self.connect_failed(v, &e),
            }
            let _ = sock.set_nodelay(true);
            self.ever_connected = true;
            self.connect_ns.push(ns(now - v.opened_at));
            v.phase = Phase::Idle;
            if v.answered == 0 && v.due + FIRST_POLL_SLACK < now {
                // Connected well after its first poll was due (a server
                // slow to accept: see the connect times): it polls from the
                // next second at its own offset, as the page would once
                // loaded, not all at once with the others that waited.
                let behind = (now - v.due).as_nanos().div_ceil(POLL_EVERY.as_nanos());
                v.due += POLL_EVERY * u32::try_from(behind).unwrap_or(u32::MAX);
            }
            match self.plan.view {
                View::Stream => self.send(v, now),
                View::Poll if v.due <= now => self.send(v, now),
                View::Poll => self.timers.push(Reverse((v.due, i))),
            }
        }
        if v.unsent > 0 {
            self.flush(v);
        }
        self.read(v, i, now, scratch);
    }

    fn send(&mut self, v: &mut Viewer, now: Instant) {
        v.phase = Phase::Head;
        v.head.clear();
        v.unsolicited = false;
        v.sent_at = now;
        v.unsent = self.request.len();
        self.flush(v);
    }

    fn flush(&mut self, v: &mut Viewer) {
        while v.unsent > 0 {
            let Some(sock) = v.sock.as_mut() else { return };
            let from = self.request.len() - v.unsent;
            match sock.write(&self.request[from..]) {
                Ok(0) => return self.refuse(v, "closed by the server".into()),
                Ok(n) => v.unsent -= n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.refuse(v, format!("sending: {}", io_reason(&e))),
            }
        }
    }

    /// Reads what is there (the events are edge-triggered).
    fn read(&mut self, v: &mut Viewer, i: usize, now: Instant, scratch: &mut [u8]) {
        loop {
            let Some(sock) = v.sock.as_mut() else { return };
            match sock.read(scratch) {
                Ok(0) => return self.eof(v, i, now),
                Ok(n) => {
                    self.bytes(v, i, &scratch[..n], now);
                    if v.phase == Phase::Failed {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.refuse(v, format!("reading: {}", io_reason(&e))),
            }
        }
    }

    fn eof(&mut self, v: &mut Viewer, i: usize, now: Instant) {
        let reason = match (v.phase, &v.framing, self.plan.view) {
            (Phase::Body, Framing::UntilClose, View::Poll) => {
                // An answer without a length ends with its connection.
                v.close_after = true;
                return self.answered(v, i, now);
            }
            (Phase::Body, _, View::Stream) => "the server closed the stream",
            (Phase::Idle, _, _) => "closed by the server between polls",
            (Phase::Head, _, _) if v.head.is_empty() => "closed by the server before answering",
            _ => "closed by the server mid-answer",
        };
        self.refuse(v, reason.into());
    }

    fn bytes(&mut self, v: &mut Viewer, i: usize, data: &[u8], now: Instant) {
        match v.phase {
            Phase::Idle => {
                v.phase = Phase::Head;
                v.head.clear();
                v.unsolicited = true;
                self.head_bytes(v, i, data, now);
            }
            Phase::Head => self.head_bytes(v, i, data, now),
            Phase::Body => self.body_bytes(v, i, data, now),
            Phase::Waiting | Phase::Connecting | Phase::Failed => {}
        }
    }

    fn head_bytes(&mut self, v: &mut Viewer, i: usize, data: &[u8], now: Instant) {
        v.head.extend_from_slice(data);
        let Some(end) = find_head_end(&v.head) else {
            if v.head.len() > MAX_HEAD {
                self.refuse(v, "an answer head over 16 KiB".into());
            }
            return;
        };
        let rest = v.head.split_off(end);
        let head = match parse_head(&v.head) {
            Ok(head) => head,
            Err(e) => return self.refuse(v, format!("a malformed answer ({e})")),
        };
        v.head = Vec::new();
        if head.status != 200 {
            if let Some(e) = self.wrong_route(&head, &rest) {
                self.fatal.get_or_insert(e);
            }
            return self.refuse(v, format!("answered {} {}", head.status, head.reason));
        }
        if v.unsolicited {
            return self.refuse(v, "an answer without a request".into());
        }
        if self.plan.view == View::Stream
            && !head
                .content_type
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        {
            self.fatal.get_or_insert_with(|| {
                anyhow!(
                    "GET /events at {} answered 200 but not with an event stream (Content-Type {:?})",
                    self.plan.host,
                    head.content_type
                )
            });
            return self.refuse(v, "not an event stream".into());
        }
        v.close_after = head.close;
        v.framing = if head.chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else if let Some(len) = head.content_length {
            Framing::Length(len)
        } else {
            Framing::UntilClose
        };
        v.phase = Phase::Body;
        v.streaming = self.plan.view == View::Stream;
        if !rest.is_empty() || matches!(v.framing, Framing::Length(0)) {
            self.body_bytes(v, i, &rest, now);
        }
    }

    /// The error that stops the run when a viewer's request is one the
    /// server does not serve at all (no route, a bad request): waiting for
    /// thousands of the same answers says nothing more.
    fn wrong_route(&self, head: &Head, rest: &[u8]) -> Option<anyhow::Error> {
        if !(400..500).contains(&head.status) || matches!(head.status, 408 | 429) {
            return None;
        }
        let body = String::from_utf8_lossy(&rest[..rest.len().min(300)]);
        let body = body.trim();
        let answer = format!("{} {}", head.status, head.reason);
        let host = &self.plan.host;
        Some(match (self.plan.view, head.status) {
            (View::Stream, 404) => anyhow!(
                "the server at {host} has no /events stream: GET /events answered {answer} \
                 ({body}); viewers that poll (--view poll) work without it"
            ),
            (View::Poll, 404) => {
                anyhow!("the server at {host} has no GET /votes: it answered {answer} ({body})")
            }
            (view, _) => anyhow!(
                "the server at {host} refuses the viewers' request: GET {} answered {answer} ({body})",
                if view == View::Stream {
                    "/events"
                } else {
                    "/votes"
                }
            ),
        })
    }

    fn body_bytes(&mut self, v: &mut Viewer, i: usize, data: &[u8], now: Instant) {
        match self.plan.view {
            View::Poll => {
                let done = match &mut v.framing {
                    Framing::Length(left) => {
                        *left -= (*left).min(data.len() as u64);
                        *left == 0
                    }
                    Framing::Chunked(chunks) => match chunks.feed(data, &mut |_| {}) {
                        Ok(done) => done,
                        Err(e) => return self.refuse(v, format!("a malformed answer ({e})")),
                    },
                    Framing::UntilClose => false,
                };
                if done {
                    self.answered(v, i, now);
                }
            }
            View::Stream => {
                let (mut events, mut others) = (0u64, 0u64);
                let names = &mut self.event_names;
                let mut on_item = |item: SseItem| match item {
                    SseItem::Event(name) => {
                        events += 1;
                        *names.entry(name).or_default() += 1;
                    }
                    SseItem::Other => others += 1,
                };
                let sse = &mut v.sse;
                let ended = match &mut v.framing {
                    Framing::Length(left) => {
                        let take = (*left).min(data.len() as u64);
                        sse.feed(&data[..take as usize], &mut on_item);
                        *left -= take;
                        Ok(*left == 0)
                    }
                    Framing::Chunked(chunks) => {
                        chunks.feed(data, &mut |b| sse.feed(b, &mut on_item))
                    }
                    Framing::UntilClose => {
                        sse.feed(data, &mut on_item);
                        Ok(false)
                    }
                };
                self.events += events;
                self.comments += others;
                if events > 0 {
                    let since = v.last_event.unwrap_or(v.sent_at);
                    let gap = now.saturating_duration_since(since);
                    v.late |= gap > STREAM_LATE;
                    if v.last_event.is_some() {
                        self.worst_gap = Some(self.worst_gap.map_or(gap, |w| w.max(gap)));
                    } else {
                        self.first_event_ns.push(ns(now - v.sent_at));
                    }
                    v.last_event = Some(now);
                }
                match ended {
                    Ok(false) => {}
                    Ok(true) => self.refuse(v, "the server ended the stream".into()),
                    Err(e) => self.refuse(v, format!("a malformed stream ({e})")),
                }
            }
        }
    }

    /// A poll viewer's answer is complete.
    fn answered(&mut self, v: &mut Viewer, i: usize, now: Instant) {
        self.answer_ns.push(ns(now - v.sent_at));
        v.late |= now.saturating_duration_since(v.due) > POLL_LATE;
        v.answered += 1;
        let mut next = v.due + POLL_EVERY;
        if next + POLL_LATE < now {
            // Far behind: a page would ask once now, not catch up.
            next = now;
        }
        v.due = next;
        v.phase = Phase::Idle;
        if v.close_after {
            // Announced: the next poll opens a new connection.
            self.close(v);
            v.phase = Phase::Waiting;
        }
        self.timers.push(Reverse((next, i)));
    }
}

// ---------------------------------------------------------------------------
// Parsing answers: heads, chunked bodies, Server-Sent Events.

/// Where an answer's head ends (after its blank line), if it has.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    reason: String,
    content_length: Option<u64>,
    chunked: bool,
    /// The server closes after this answer.
    close: bool,
    content_type: String,
}

/// An answer's head, its blank line included or not.
fn parse_head(bytes: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (Some(status), true) = (status, version.starts_with("HTTP/1.")) else {
        return Err(format!("status line {status_line:?}"));
    };
    let mut head = Head {
        status,
        reason: parts.next().unwrap_or_default().trim().to_string(),
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
        content_type: String::new(),
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line {line:?}"));
        };
        let value = value.trim();
        let has = |token: &str| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let len = value
                    .parse()
                    .map_err(|_| format!("Content-Length {value:?}"))?;
                head.content_length = Some(len);
            }
            "transfer-encoding" => head.chunked = has("chunked"),
            "connection" if has("close") => head.close = true,
            "connection" if has("keep-alive") => head.close = false,
            "content-type" => head.content_type = value.to_string(),
            _ => {}
        }
    }
    Ok(head)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// The line end after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk, up to the blank line.
    Trailer,
    Done,
}

/// Decodes a `Transfer-Encoding: chunked` body as it arrives.
#[derive(Debug, Default)]
struct ChunkedDecoder {
    state: ChunkState,
    line: Vec<u8>,
}

impl ChunkedDecoder {
    /// Feeds the next bytes; `out` gets the data. True once the body is
    /// complete (bytes after it are ignored).
    fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<bool, String> {
        while !data.is_empty() && self.state != ChunkState::Done {
            if let ChunkState::Data(left) = self.state {
                let take = left.min(data.len() as u64);
                out(&data[..take as usize]);
                data = &data[take as usize..];
                self.state = match left - take {
                    0 => ChunkState::DataEnd,
                    left => ChunkState::Data(left),
                };
                continue;
            }
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(data);
                if self.line.len() > 4096 {
                    return Err("a chunk line over 4 KiB".into());
                }
                break;
            };
            self.line.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            self.state = match self.state {
                ChunkState::Size => {
                    let text = String::from_utf8_lossy(line);
                    let size = text.split(';').next().unwrap_or_default().trim();
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => ChunkState::Trailer,
                        Ok(n) => ChunkState::Data(n),
                        Err(_) => return Err(format!("chunk size {text:?}")),
                    }
                }
                ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                ChunkState::DataEnd => return Err("no line end after a chunk".into()),
                ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                state => state,
            };
        }
        Ok(self.state == ChunkState::Done)
    }
}

/// What a Server-Sent Events block (up to a blank line) dispatches.
#[derive(Debug, PartialEq, Eq)]
enum SseItem {
    /// An event (a block with `data`), by its `event` name ("message" by
    /// default).
    Event(String),
    /// A block without data: comments (`: ...`), `retry:`, `id:` alone.
    Other,
}

/// The longest start of a line kept (enough for a field name and an event
/// name; data is only counted).
const SSE_LINE_KEPT: usize = 128;

/// Splits a Server-Sent Events stream into its blocks, as it arrives. Lines
/// end with CRLF, LF or CR.
#[derive(Debug, Default)]
struct SseSplitter {
    line: Vec<u8>,
    line_len: usize,
    /// The last byte was a CR (a LF right after it ends no other line).
    after_cr: bool,
    has_data: bool,
    has_other: bool,
    name: Option<String>,
}

impl SseSplitter {
    fn feed(&mut self, data: &[u8], on_item: &mut dyn FnMut(SseItem)) {
        for &b in data {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(on_item);
                }
                b'\n' => self.end_line(on_item),
                _ => {
                    if self.line.len() < SSE_LINE_KEPT {
                        self.line.push(b);
                    }
                    self.line_len += 1;
                }
            }
        }
    }

    fn end_line(&mut self, on_item: &mut dyn FnMut(SseItem)) {
        if self.line_len == 0 {
            if self.has_data {
                let name = self.name.take().unwrap_or_else(|| "message".into());
                on_item(SseItem::Event(name));
            } else if self.has_other {
                on_item(SseItem::Other);
            }
            self.name = None;
            self.has_data = false;
            self.has_other = false;
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.has_data = true,
            "event" => {
                self.name = Some(value.to_string());
                self.has_other = true;
            }
            // A comment (empty field name), id, retry, unknown fields.
            _ => self.has_other = true,
        }
        self.line.clear();
        self.line_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn percentile_picks_the_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.5), Some(7));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 0.5), Some(51));
        assert_eq!(percentile(&v, 0.99), Some(100));
        assert_eq!(percentile(&v, 1.0), Some(100));
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.99), Some(991));
    }

    #[test]
    fn fmt_ms_scales() {
        assert_eq!(fmt_ms(None), "-");
        assert_eq!(fmt_ms(Some(0.84)), "0.8 ms");
        assert_eq!(fmt_ms(Some(45.4)), "45 ms");
        assert_eq!(fmt_ms(Some(12_345.0)), "12.3 s");
    }

    #[test]
    fn head_end_and_fields() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n{\"a\":1}";
        let end = find_head_end(raw).unwrap();
        assert_eq!(&raw[end..], b"{\"a\":1}");
        let head = parse_head(&raw[..end]).unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                reason: "OK".into(),
                content_length: Some(12),
                chunked: false,
                close: false,
                content_type: "application/json".into(),
            }
        );
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n"), None);
        // LF-only lines, a stream head: no length, chunked, closing.
        let raw = b"HTTP/1.1 503 Service Unavailable\nconnection: close\ntransfer-encoding: chunked\ncontent-type: text/event-stream\n\nrest";
        let end = find_head_end(raw).unwrap();
        assert_eq!(&raw[end..], b"rest");
        let head = parse_head(&raw[..end]).unwrap();
        assert_eq!(head.status, 503);
        assert_eq!(head.reason, "Service Unavailable");
        assert!(head.chunked && head.close);
        assert_eq!(head.content_length, None);
        assert_eq!(head.content_type, "text/event-stream");
        // HTTP/1.0 closes unless it says keep-alive.
        assert!(parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().close);
        assert!(
            !parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
    }

    /// Feeds `data` to `feed` in every split into two pieces and byte by
    /// byte; all must give the same as feeding it whole.
    fn splits(data: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut all = vec![vec![data]];
        for at in 1..data.len() {
            all.push(vec![&data[..at], &data[at..]]);
        }
        all.push(data.chunks(1).collect());
        all
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nextra";
        for pieces in splits(body) {
            let mut dec = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut done = false;
            for piece in pieces {
                // Once complete, what follows is not the body's.
                done = dec.feed(piece, &mut |b| out.extend_from_slice(b)).unwrap();
            }
            assert!(done);
            assert_eq!(out, b"hello world");
        }
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert!(
            !dec.feed(b"3\nabc\n", &mut |b| out.extend_from_slice(b))
                .unwrap()
        );
        assert!(
            dec.feed(b"0\n\n", &mut |b| out.extend_from_slice(b))
                .unwrap()
        );
        assert_eq!(out, b"abc");
        assert!(
            ChunkedDecoder::default()
                .feed(b"zz\r\n", &mut |_| {})
                .is_err()
        );
        assert!(
            ChunkedDecoder::default()
                .feed(b"1\r\nab\r\n", &mut |_| {})
                .is_err()
        );
    }

    #[test]
    fn sse_splits_events_in_any_pieces() {
        let stream = b"event: tally\ndata: {\"blue\":3}\n\n: keep-alive\n\nevent: candidates\r\ndata: [1,\r\ndata: 2]\r\n\r\ndata: plain\r\rretry: 100\n\nevent: lonely\n\nevent: half\ndata: x";
        for pieces in splits(stream) {
            let mut sse = SseSplitter::default();
            let mut items = Vec::new();
            for piece in pieces {
                sse.feed(piece, &mut |item| items.push(item));
            }
            assert_eq!(
                items,
                [
                    SseItem::Event("tally".into()),
                    SseItem::Other,
                    SseItem::Event("candidates".into()),
                    SseItem::Event("message".into()),
                    SseItem::Other,
                    SseItem::Other,
                ],
            );
        }
    }

    #[test]
    fn sse_long_lines_are_counted_not_kept() {
        let mut sse = SseSplitter::default();
        let mut items = Vec::new();
        let long = format!("event: tally\ndata: {}\n\n", "x".repeat(100_000));
        sse.feed(long.as_bytes(), &mut |item| items.push(item));
        assert_eq!(items, [SseItem::Event("tally".into())]);
        assert!(sse.line.capacity() <= 4 * SSE_LINE_KEPT);
    }

    /// A loopback server that gives every connection to `serve` on its own
    /// thread, for `secs`; its port.
    fn tiny_server(secs: u64, serve: fn(TcpStream)) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || serve(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        port
    }

    /// Reads one request head.
    fn read_head(s: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut b = [0u8];
        while find_head_end(&head).is_none() {
            if s.read(&mut b).ok()? == 0 {
                return None;
            }
            head.push(b[0]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    fn viewers_only(port: u16, secs: u64) -> Load {
        Load {
            addr: format!("127.0.0.1:{port}"),
            candidate: "blue".into(),
            connections: 0,
            secs,
            pipeline: 1,
        }
    }

    #[test]
    fn a_server_without_events_stops_the_run_at_once() {
        let port = tiny_server(5, |mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            while read_head(&mut s).is_some() {
                let body = r#"{"error":"no such route","code":"not_found"}"#;
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let e = viewers_only(port, 4)
            .run_with_viewers(&Viewers::new(20, View::Stream))
            .unwrap_err();
        assert!(e.to_string().contains("no /events stream"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn streams_and_polls_are_held() {
        let port = tiny_server(5, |mut s| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            while let Some(head) = read_head(&mut s) {
                if head.starts_with("GET /events ") {
                    // Chunked, one event every 200 ms, a comment between.
                    let mut out = s;
                    let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
                    for _ in 0..20 {
                        let ev = "event: tally\ndata: {}\n\n: ping\n\n";
                        let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                        if out.write_all(chunk.as_bytes()).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    return;
                }
                let body = r#"{"blue":1}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        });
        let r = viewers_only(port, 2)
            .run_with_viewers(&Viewers::new(10, View::Stream))
            .unwrap();
        assert!(r.voters.is_none());
        let v = r.viewers.unwrap();
        assert_eq!((v.held, v.refused, v.late), (10, 0, 0), "{}", v.line());
        assert!(v.events >= 50 && v.comments >= 50, "{}", v.line());
        assert_eq!(v.event_names.keys().collect::<Vec<_>>(), ["tally"]);
        assert!(v.worst_gap_ms.unwrap() < 1000.0, "{}", v.line());

        let v = viewers_only(port, 2)
            .run_with_viewers(&Viewers::new(10, View::Poll))
            .unwrap()
            .viewers
            .unwrap();
        assert_eq!((v.held, v.refused, v.late), (10, 0, 0), "{}", v.line());
        // Each polls at its start and a second later.
        assert_eq!(v.answers, 20, "{}", v.line());
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = viewers_only(port, 2)
            .run_with_viewers(&Viewers::new(5, View::Poll))
            .unwrap_err();
        assert!(e.to_string().contains("nothing listens"), "{e}");
    }
}
