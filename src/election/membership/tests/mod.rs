//! Tests of the membership rules, the nudge, the /proc reader and the tracker's
//! scan, by topic; here the wait on a child process's /proc entry they share.

use std::time::{Duration, Instant};

use super::*;

mod environ;
mod matching;
mod nudge;
mod parse;

/// Waits (at most 5 s) until `pid`'s /proc/PID/stat satisfies `ready`.
fn wait_for_stat(pid: i32, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if ready(&stat) {
            return stat;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never got ready: {stat:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
