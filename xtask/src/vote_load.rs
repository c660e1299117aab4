//! A load generator for the voting server: N keep-alive connections on
//! loopback, each sending `POST /votes` as fast as answers come back. The
//! bench runs it in the VM beside the scheduler; `cargo xtask vote-load`
//! runs it against any server (e.g. `scx_ballot --no-sched` on the host),
//! to tell the server's own cost from the VM's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct VoteLoadCmd {
    /// The voting server, e.g. 127.0.0.1:7447.
    #[arg(long, default_value = "127.0.0.1:7447")]
    pub addr: String,
    /// The candidate every vote goes to (must exist).
    #[arg(long, default_value = "blue")]
    pub candidate: String,
    /// Keep-alive connections, each on its own thread (one request in
    /// flight per connection). A list runs one measurement per count.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub connections: Vec<u32>,
    #[arg(long, default_value_t = 3)]
    pub secs: u64,
}

impl VoteLoadCmd {
    pub fn run(self) -> Result<()> {
        for &n in &self.connections {
            let load = Load {
                addr: self.addr.clone(),
                candidate: self.candidate.clone(),
                connections: n,
                secs: self.secs,
            };
            let r = load.run()?;
            println!(
                "{n:>3} connections: {:>8.0} votes/s  (p50 {:.0} us, p99 {:.0} us per vote, {} reconnects)",
                r.votes_per_s, r.p50_us, r.p99_us, r.reconnects
            );
        }
        Ok(())
    }
}

pub struct Load {
    pub addr: String,
    pub candidate: String,
    pub connections: u32,
    pub secs: u64,
}

/// Voter ids each connection cycles through.
pub const VOTERS_PER_CONNECTION: u64 = 1000;

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub votes_per_s: f64,
    /// Request -> answer time of one vote.
    pub p50_us: f64,
    pub p99_us: f64,
    pub reconnects: u32,
}

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
        let end = Instant::now() + Duration::from_secs(self.secs);
        let threads: Vec<_> = (0..self.connections)
            .map(|t| {
                let (addr, candidate) = (self.addr.clone(), self.candidate.clone());
                std::thread::spawn(move || one_connection(&addr, &candidate, t, end))
            })
            .collect();
        let mut times = Vec::new();
        let mut reconnects = 0;
        for t in threads {
            let (mut v, r) = t.join().map_err(|_| anyhow!("a load thread panicked"))??;
            times.append(&mut v);
            reconnects += r;
        }
        times.sort_unstable();
        let pick = |p: f64| {
            times
                .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
                .map_or(0.0, |&ns| ns as f64 / 1000.0)
        };
        Ok(LoadResult {
            votes_per_s: times.len() as f64 / self.secs as f64,
            p50_us: pick(0.5),
            p99_us: pick(0.99),
            reconnects,
        })
    }
}

fn connect(addr: &str) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write per request, sent at once (no Nagle wait).
    stream.set_nodelay(true)?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

/// Votes until `end`; the time of each answered vote in ns, and how often
/// the connection had to be reopened.
fn one_connection(addr: &str, candidate: &str, t: u32, end: Instant) -> Result<(Vec<u64>, u32)> {
    let (mut stream, mut reader) = connect(addr)?;
    let mut times = Vec::new();
    let mut reconnects = 0u32;
    let mut i = 0u64;
    let (mut status, mut line, mut body) = (String::new(), String::new(), Vec::new());
    while Instant::now() < end {
        let voter = i % VOTERS_PER_CONNECTION;
        let vote = format!("{{\"candidate\":\"{candidate}\",\"voter\":\"load-{t}-{voter}\"}}");
        i += 1;
        let request = format!(
            "POST /votes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{vote}",
            vote.len()
        );
        let started = Instant::now();
        status.clear();
        let sent = stream.write_all(request.as_bytes()).is_ok();
        if !sent || !matches!(reader.read_line(&mut status), Ok(n) if n > 0) {
            // The server ended the keep-alive connection (closed or reset
            // after its last request): open another.
            reconnects += 1;
            if reconnects > 10_000 {
                bail!("the server keeps closing connections");
            }
            (stream, reader) = connect(addr)?;
            continue;
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
            bail!(
                "vote answered {}: {}",
                status.trim(),
                String::from_utf8_lossy(&body)
            );
        }
        times.push(started.elapsed().as_nanos() as u64);
    }
    Ok((times, reconnects))
}
