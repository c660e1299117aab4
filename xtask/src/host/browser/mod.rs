//! `cargo xtask browser-test`: the ballot page in a real browser.
//!
//! It builds `scx_ballot` and runs it with `--no-sched` (the election alone,
//! no BPF, so any machine will do) on a free loopback port, opens the page it
//! serves at `GET /` in Debian's Chromium, headless, and drives it over the
//! DevTools protocol (a websocket to `--remote-debugging-port`): real mouse
//! clicks at the buttons' coordinates, then checks of what the page shows
//! against what the server answers. What it checks:
//!
//! - the page shows a vote button and a tally for each candidate, fits a
//!   phone's width (360 and 390 CSS px) and loads nothing from elsewhere;
//! - it gets the standing from the event stream (`GET /events`), without a
//!   request of its own;
//! - a click on a candidate's button takes its tally from 0 to 1, the same
//!   as `GET /votes` says, and marks it as the leader;
//! - the per-process list shows the candidate's member process and a CPU
//!   share measured from /proc;
//! - a second vote within `--vote-interval-ms` shows the 429 and the wait;
//! - a vote the test posts over HTTP shows within a second, from the
//!   stream: the page polls nothing meanwhile;
//! - when the server stops the page says it is gone and falls back to
//!   polling, and when it comes back (same port, same journal) the page
//!   recovers, with the journal's tally, and follows the stream again.
//!
//! Then it saves a screenshot at a phone's size in
//! `target/browser-test/ballot.png`. Last, it opens an example of the VM
//! scenarios' report page (`report.html`, made from made-up runs) from disk
//! and checks its timelines, A/B table, snapshot diff and links
//! (`target/browser-test/report.png`). Every process it starts (scx_ballot,
//! Chromium and its children, two stand-in member processes) runs in a
//! process group of its own, killed when the test ends, fails, panics or is
//! interrupted. Everything listens on 127.0.0.1 only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use xshell::Shell;

use crate::host::vm_test::fresh_dir;
use crate::common::compile;
use crate::host::deps;
use crate::project_root;

mod process;
mod server;
mod cdp;
mod run;
mod checks;
mod report;

use run::run_test;

/// The phone-like viewport of the checks and the screenshot, in CSS pixels.
const PHONE: (u32, u32) = (390, 844);
/// The narrowest phone the page must fit without scrolling sideways.
const NARROW_PHONE: (u32, u32) = (360, 740);
/// Device pixels per CSS pixel in the screenshot.
const SCALE: u32 = 2;
/// The server's rate limit, long enough that a second vote is refused.
const VOTE_INTERVAL_MS: u64 = 60_000;

/// How long scx_ballot may take to print its address.
const SERVER_START: Duration = Duration::from_secs(20);
/// How long scx_ballot may take to exit after SIGTERM.
const SERVER_STOP: Duration = Duration::from_secs(10);
/// How long Chromium may take to open its DevTools port (a first start with
/// a fresh profile on a busy 2-CPU machine is slow).
const BROWSER_START: Duration = Duration::from_secs(60);
/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the page may take to show something it should (it polls the
/// server every second when it has no event stream).
const PAGE_WAIT: Duration = Duration::from_secs(15);
/// How long a vote may take to reach the page through the event stream.
const STREAM_WAIT: Duration = Duration::from_secs(1);
/// How long the page must go without a request while its stream is live:
/// two and a half of its poll periods.
const QUIET: Duration = Duration::from_millis(2500);

/// Run the ballot page in headless Chromium against `scx_ballot --no-sched`
/// and check what it shows; saves target/browser-test/ballot.png.
#[derive(Args, Debug)]
pub struct BrowserTestCmd {
    /// The Chromium (or Chrome) binary to drive. Without it, Debian's
    /// `chromium` package is installed if missing and used.
    #[arg(long, value_name = "PATH")]
    pub chromium: Option<PathBuf>,
}

impl BrowserTestCmd {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let started = Instant::now();
        let chromium = match self.chromium {
            Some(path) => path,
            None => {
                deps::ensure_browser_deps(sh)?;
                PathBuf::from("chromium")
            }
        };
        let bin = compile::build_scheduler(sh)?;
        let out = fresh_dir(&project_root().join("target/browser-test"))?;
        println!(
            "==> browser test: the ballot page of `scx_ballot --no-sched` in headless Chromium"
        );
        let test_started = Instant::now();
        let shot = run_test(&bin, &chromium, &out)?;
        println!(
            "screenshot ({}x{} CSS px, {SCALE}x): {}",
            PHONE.0,
            PHONE.1,
            shot.display()
        );
        println!(
            "browser test passed in {:.1} s ({:.1} s with installing and building)",
            test_started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
