//! Running `vng` under a host-side timeout and a boot-stall rule: its
//! output pumped live to the terminal and into the console log, the tail
//! kept, the process group killed when a bound is hit.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::common::reap::{self, kill_group};

use super::{TAIL_LINES, SCRIPT_START};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Echo {
    /// Nothing on the terminal (the KVM probe).
    Silent,
    /// Everything after the guest command starts, plus one line for the boot.
    AfterStart,
    /// Everything.
    All,
}

/// When [`run_bounded`] kills the VM.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// The whole run.
    pub(super) timeout: Duration,
    /// Before the guest command starts: this long without a console line
    /// means the boot is wedged. After the start, silence can be normal (a
    /// guest script measuring quietly), so the rule ends there.
    pub(super) boot_stall: Option<Duration>,
    /// Console lines that mean the VM is dead even though QEMU may linger
    /// (the KVM probe's `KVM internal error`): the run ends at the first.
    pub(super) fatal: &'static [&'static str],
}

/// A boot whose console stopped moving before the guest command started.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// From the run's start to the last console line.
    pub last_output_at: Duration,
    /// How long the console had then been silent.
    pub silent_for: Duration,
    /// The last console line before the silence.
    pub last_line: String,
}

/// The longest pause between console lines before the guest command
/// started (from the run's start, so a VM that prints nothing counts too).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Silence {
    pub secs: f64,
    /// The line before the pause ("" at the run's start).
    pub after_line: String,
}

pub(super) struct Run {
    pub(super) status: Option<i32>,
    pub(super) timed_out: bool,
    pub(super) stall: Option<Stall>,
    pub(super) fatal: Option<String>,
    pub(super) tail: Vec<String>,
    pub(super) boot_time: Option<Duration>,
    pub(super) boot_silence: Silence,
    pub(super) elapsed: Duration,
}

struct Shared {
    log: File,
    tail: VecDeque<String>,
    started: Instant,
    boot_time: Option<Duration>,
    echo: Echo,
    /// When the last line arrived (the start, before the first).
    last_output: Instant,
    boot_silence: Silence,
    fatal_words: &'static [&'static str],
    fatal: Option<String>,
}

/// Runs `command` in its own process group with stdin from /dev/null (so QEMU
/// never touches the terminal), tees its output into `log` and the terminal,
/// and kills the group when `bounds` say so (or on Ctrl-C, see `reap`).
pub(super) fn run_bounded(mut command: Command, log: &Path, bounds: Bounds, echo: Echo) -> Result<Run> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file =
        File::create(log).with_context(|| format!("creating the console log {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = command.spawn().context("starting vng")?;
    let pgid = i32::try_from(child.id()).expect("pids fit in i32");
    let interrupt = reap::kill_on_interrupt(pgid);

    let shared = Arc::new(Mutex::new(Shared {
        log: log_file,
        tail: VecDeque::with_capacity(TAIL_LINES),
        started,
        boot_time: None,
        echo,
        last_output: started,
        boot_silence: Silence::default(),
        fatal_words: bounds.fatal,
        fatal: None,
    }));
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    for (stream, to_stderr) in [
        (Box::new(stdout) as Box<dyn Read + Send>, false),
        (Box::new(stderr), true),
    ] {
        let shared = Arc::clone(&shared);
        let done = done_tx.clone();
        std::thread::spawn(move || {
            pump(stream, to_stderr, &shared);
            let _ = done.send(());
        });
    }
    drop(done_tx);

    let deadline = started + bounds.timeout;
    let mut timed_out = false;
    let mut killed = false;
    let mut stall = None;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for vng")? {
            break status;
        }
        let now = Instant::now();
        {
            let s = shared.lock().expect("reader threads do not panic");
            if s.fatal.is_some() {
                killed = true;
            } else if let Some(limit) = bounds.boot_stall
                && s.boot_time.is_none()
                && now.duration_since(s.last_output) >= limit
            {
                stall = Some(Stall {
                    last_output_at: s.last_output.duration_since(started),
                    silent_for: now.duration_since(s.last_output),
                    last_line: s.tail.back().cloned().unwrap_or_default(),
                });
                killed = true;
            }
        }
        if !killed && now >= deadline {
            timed_out = true;
            killed = true;
        }
        if killed {
            kill_group(pgid);
            break child.wait().context("waiting for the killed vng")?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // virtiofsd or QEMU may outlive vng for a moment; they hold the pipes.
    kill_group(pgid);
    drop(interrupt);
    for _ in 0..2 {
        if done_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    let mut shared = shared.lock().expect("reader threads do not panic");
    Ok(Run {
        status: if killed { None } else { status.code() },
        timed_out,
        stall,
        fatal: shared.fatal.take(),
        tail: shared.tail.iter().cloned().collect(),
        boot_time: shared.boot_time,
        boot_silence: std::mem::take(&mut shared.boot_silence),
        elapsed,
    })
}

fn pump(stream: Box<dyn Read + Send>, to_stderr: bool, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']).to_string();
        let mut s = shared.lock().expect("reader threads do not panic");
        let _ = writeln!(s.log, "{line}");
        let now = Instant::now();
        if s.boot_time.is_none() {
            let pause = now.duration_since(s.last_output).as_secs_f64();
            if pause > s.boot_silence.secs {
                s.boot_silence = Silence {
                    secs: pause,
                    after_line: s.tail.back().cloned().unwrap_or_default(),
                };
            }
        }
        s.last_output = now;
        if s.fatal.is_none() && s.fatal_words.iter().any(|w| line.contains(w)) {
            s.fatal = Some(line.trim().to_string());
        }
        let mut show = match s.echo {
            Echo::Silent => false,
            Echo::All => true,
            Echo::AfterStart => s.boot_time.is_some(),
        };
        if s.boot_time.is_none() && line.contains(SCRIPT_START) {
            let boot = s.started.elapsed();
            s.boot_time = Some(boot);
            if s.echo == Echo::AfterStart {
                println!(
                    "vm: guest command started after {:.1} s of boot",
                    boot.as_secs_f64()
                );
                show = false;
            }
        }
        if show {
            if to_stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        if s.tail.len() == TAIL_LINES {
            s.tail.pop_front();
        }
        s.tail.push_back(line);
    }
}
