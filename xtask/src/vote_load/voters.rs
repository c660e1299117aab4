//! Voters: keep-alive connections, a thread each, posting votes as fast as
//! answers come back; and the process limits a run needs (open files,
//! local ports).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::{Viewers, Load, VOTERS_PER_CONNECTION, LoadResult, RoomResult, percentile};
use super::cmd::View;
use super::viewers::{ViewerPlan, run_viewers};

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
