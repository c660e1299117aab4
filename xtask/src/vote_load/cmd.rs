//! `cargo xtask vote-load`: its options, the run, and the report it prints
//! and writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{Viewers, Load, RoomResult};
use super::viewers::DEFAULT_OPEN_PER_MS;

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
    pub(super) fn name(self) -> &'static str {
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
