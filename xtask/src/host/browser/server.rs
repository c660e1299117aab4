//! The `scx_ballot --no-sched` under test: starting it, reading its
//! address, stopping it, and the requests the test sends it (through
//! [`crate::common::http`]).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::common::http::{self, Failure};

use super::{SERVER_START, SERVER_STOP};
use super::process::Started;

/// Every line scx_ballot printed, over all its runs.
pub(super) type Log = Arc<Mutex<Vec<String>>>;

/// A running `scx_ballot --no-sched`.
pub(super) struct Server {
    process: Started,
    pub(super) addr: SocketAddr,
}

impl Server {
    /// Starts scx_ballot with `args` and waits for the address it prints
    /// ("voting server: http://ADDR/").
    pub(super) fn start(bin: &Path, args: &[String], log: &Log, run: usize) -> Result<Server> {
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Started::spawn("scx_ballot", command)?;
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = process.child.stdout.take().expect("stdout is piped");
        let stderr = process.child.stderr.take().expect("stderr is piped");
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let (log, addr_tx) = (Arc::clone(log), addr_tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr) = parse_server_line(&line) {
                        let _ = addr_tx.send(addr);
                    }
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("[run {run}] {line}"));
                }
            });
        }
        drop(addr_tx);
        let deadline = Instant::now() + SERVER_START;
        loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) if addr.ip().is_loopback() => return Ok(Server { process, addr }),
                Ok(addr) => bail!("scx_ballot listens on {addr}, not on loopback"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = process.child.wait().context("waiting for scx_ballot")?;
                    bail!(
                        "scx_ballot exited ({status}) without printing its voting server's address"
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = process.exited() {
                        bail!("scx_ballot exited ({status}) before its voting server was up");
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "scx_ballot did not print \"voting server: http://ADDR/\" within {SERVER_START:?}"
                        );
                    }
                }
            }
        }
    }

    /// SIGTERM: `--no-sched` must stop cleanly, with status 0.
    pub(super) fn stop(mut self) -> Result<()> {
        let status = self.process.terminate(SERVER_STOP)?;
        if !status.success() {
            bail!("scx_ballot --no-sched ended with {status} on SIGTERM, expected a clean exit");
        }
        Ok(())
    }
}

/// The address in scx_ballot's "voting server: http://ADDR/" line.
pub(super) fn parse_server_line(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("voting server: http://")?;
    rest.strip_suffix('/').unwrap_or(rest).parse().ok()
}
/// `GET path` from the voting server: the JSON of a 200 answer.
pub(super) fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    request(addr, "GET", path)
}

/// `GET /votes`, read as the API's tally.
pub(super) fn get_tally(addr: SocketAddr) -> Result<scx_ballot_api::Tally> {
    let v = get_json(addr, "/votes")?;
    serde_json::from_value(v.clone()).with_context(|| format!("GET /votes answered {v}, not a tally"))
}

/// `method path` (no body) to the voting server: the JSON of a 200 answer.
pub(super) fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Value> {
    send(addr, method, path, "", "")
}

/// `POST /votes` as a client at `from` (by `X-Forwarded-For`): the tally.
pub(super) fn post_vote(addr: SocketAddr, candidate: &str, voter: &str, from: &str) -> Result<Value> {
    let body = json!({"candidate": candidate, "voter": voter}).to_string();
    send(
        addr,
        "POST",
        "/votes",
        &format!(
            "X-Forwarded-For: {from}\r\nContent-Length: {}\r\n",
            body.len()
        ),
        &body,
    )
}

/// `method path` with `headers` (each ending in CRLF) and `content`: the
/// JSON of a 200 answer.
fn send(addr: SocketAddr, method: &str, path: &str, headers: &str, content: &str) -> Result<Value> {
    let answer = http::send(addr, method, path, headers, content, Duration::from_secs(5)).map_err(|failure| match failure {
        Failure::Connect(e) => anyhow::Error::new(e).context(format!("connecting to the voting server on {addr}")),
        Failure::Read(e) => anyhow::Error::new(e).context(format!("reading the answer to {method} {path}")),
        Failure::NotHttp(answer) => anyhow!("{method} {path}: no HTTP answer: {answer:?}"),
        Failure::Send(e) => anyhow::Error::new(e),
    })?;
    let body = &answer.body;
    if answer.status() != Some(200) {
        bail!("{method} {path} answered {}: {body}", answer.status_line());
    }
    serde_json::from_str(body)
        .with_context(|| format!("{method} {path} answered something that is not JSON: {body}"))
}
