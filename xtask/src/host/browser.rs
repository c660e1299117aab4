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
//! `target/browser-test/ballot.png`. Every process it starts (scx_ballot,
//! Chromium and its children, two stand-in member processes) runs in a
//! process group of its own, killed when the test ends, fails, panics or is
//! interrupted. Everything listens on 127.0.0.1 only.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};
use xshell::Shell;

use crate::host::vm_test::fresh_dir;
use crate::common::http::{self, Failure};
use crate::common::{compile, reap};
use crate::host::deps;
use crate::project_root;

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

/// A process the test started, in a process group of its own. Dropping it
/// kills the whole group and reaps the process.
struct Started {
    what: &'static str,
    child: Child,
    _interrupt: reap::OnInterrupt,
}

impl Started {
    fn spawn(what: &'static str, mut command: Command) -> Result<Started> {
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pgid = i32::try_from(child.id()).expect("pids fit in i32");
        Ok(Started {
            what,
            child,
            _interrupt: reap::kill_on_interrupt(pgid),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then its exit status once it exits; an error if it does not
    /// within `grace` (it is killed then).
    fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for a child")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                reap::kill_group(self.pid() as i32);
                bail!(
                    "{} did not exit within {grace:?} of SIGTERM (killed)",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        reap::kill_group(self.pid() as i32);
        let _ = self.child.wait();
    }
}

/// Every line scx_ballot printed, over all its runs.
type Log = Arc<Mutex<Vec<String>>>;

/// A running `scx_ballot --no-sched`.
struct Server {
    process: Started,
    addr: SocketAddr,
}

impl Server {
    /// Starts scx_ballot with `args` and waits for the address it prints
    /// ("voting server: http://ADDR/").
    fn start(bin: &Path, args: &[String], log: &Log, run: usize) -> Result<Server> {
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
    fn stop(mut self) -> Result<()> {
        let status = self.process.terminate(SERVER_STOP)?;
        if !status.success() {
            bail!("scx_ballot --no-sched ended with {status} on SIGTERM, expected a clean exit");
        }
        Ok(())
    }
}

/// The address in scx_ballot's "voting server: http://ADDR/" line.
fn parse_server_line(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("voting server: http://")?;
    rest.strip_suffix('/').unwrap_or(rest).parse().ok()
}

/// (port, browser websocket path) from Chromium's `DevToolsActivePort` file,
/// once it is complete.
fn parse_devtools_active_port(text: &str) -> Option<(u16, String)> {
    let mut lines = text.lines();
    let port: u16 = lines.next()?.trim().parse().ok().filter(|&p| p != 0)?;
    let path = lines.next()?.trim();
    path.starts_with("/devtools/browser/")
        .then(|| (port, path.to_string()))
}

/// A DevTools protocol connection to the browser, and the page's session on
/// it once attached (flat mode: page commands carry its `sessionId`).
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    page: Option<String>,
    /// What the page threw and did not catch (`Runtime.exceptionThrown`).
    exceptions: Vec<String>,
    crashed: bool,
}

impl Cdp {
    fn connect(port: u16, path: &str) -> Result<Cdp> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to Chromium's DevTools on {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|e| anyhow!("the websocket handshake with Chromium ({url}) failed: {e}"))?;
        // Short reads from now on, so every wait can keep its own deadline.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Cdp {
            ws,
            next_id: 1,
            page: None,
            exceptions: Vec::new(),
            crashed: false,
        })
    }

    /// A browser-level command.
    fn browser(&mut self, method: &str, params: Value) -> Result<Value> {
        self.call(None, method, params, CALL_TIMEOUT)
    }

    /// A command to the page.
    fn page(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.page.clone().context("no page is attached")?;
        self.call(Some(&session), method, params, CALL_TIMEOUT)
    }

    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(request.to_string()))
            .with_context(|| format!("sending {method} to Chromium"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if self.crashed {
                bail!("the page crashed (Inspector.targetCrashed) while waiting for {method}");
            }
            let message = match self.ws.read() {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(frame)) => {
                    bail!("Chromium closed the DevTools connection: {frame:?}")
                }
                Ok(_) => continue,
                // A short read timeout, or a signal (Ctrl-C is handled by
                // `reap` on its own thread).
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        bail!("Chromium did not answer {method} within {timeout:?}");
                    }
                    continue;
                }
                Err(e) => bail!("reading Chromium's answer to {method}: {e}"),
            };
            let value: Value = serde_json::from_str(message.as_str())
                .with_context(|| format!("Chromium sent something that is not JSON: {message}"))?;
            if value["id"].as_u64() == Some(id) {
                if let Some(error) = value.get("error") {
                    bail!("{method} failed in Chromium: {error}");
                }
                return Ok(value["result"].clone());
            }
            self.note_event(&value);
        }
    }

    fn note_event(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let details = &event["params"]["exceptionDetails"];
                let what = details["exception"]["description"]
                    .as_str()
                    .or_else(|| details["text"].as_str())
                    .unwrap_or("an exception");
                self.exceptions.push(format!(
                    "{what} (line {}, column {})",
                    details["lineNumber"], details["columnNumber"]
                ));
            }
            Some("Inspector.targetCrashed") => self.crashed = true,
            _ => {}
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self.page(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            let what = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("an exception");
            bail!("the page threw {what} evaluating {expression}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Sets the viewport to a phone's.
    fn viewport(&mut self, (width, height): (u32, u32)) -> Result<()> {
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": SCALE, "mobile": true}),
        )?;
        Ok(())
    }

    /// A real left click (mouse moved, pressed, released) at the middle of
    /// the element `selector` matches, after scrolling it into view; an error
    /// if something else covers that point.
    fn click(&mut self, selector: &str) -> Result<()> {
        let at = self.eval(&format!(
            r#"(() => {{
                const e = document.querySelector({selector});
                if (!e) return null;
                e.scrollIntoView({{block: "center"}});
                const r = e.getBoundingClientRect();
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                return {{x, y, hit: !!hit && (hit === e || e.contains(hit)), covered_by: hit ? hit.outerHTML.slice(0, 120) : null}};
            }})()"#,
            selector = json!(selector)
        ))?;
        if at.is_null() {
            bail!("there is no {selector} to click");
        }
        if at["hit"] != json!(true) {
            bail!(
                "{selector} is covered at ({}, {}) by {}",
                at["x"],
                at["y"],
                at["covered_by"]
            );
        }
        let (x, y) = (at["x"].clone(), at["y"].clone());
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            let mut event = json!({"type": kind, "x": x, "y": y, "buttons": buttons});
            if kind != "mouseMoved" {
                event["button"] = json!("left");
                event["clickCount"] = json!(1);
            }
            self.page("Input.dispatchMouseEvent", event)?;
        }
        Ok(())
    }

    /// Polls the page's state (see [`STATE_JS`]) until `ready` accepts it;
    /// an error naming `what` and the last state seen after `timeout`.
    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.eval(STATE_JS)?;
            if ready(&state) {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; the page showed:\n{}",
                    serde_json::to_string_pretty(&state).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport.
    fn screenshot(&mut self) -> Result<Vec<u8>> {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = shot["data"]
            .as_str()
            .context("Page.captureScreenshot returned no data")?;
        data_encoding::BASE64
            .decode(data.as_bytes())
            .map_err(|e| anyhow!("the screenshot is not base64: {e}"))
    }
}

/// What the page shows, as the test reads it: the hooks the page gives its
/// elements (`data-candidate`, `data-tally`, ...), which feed it follows
/// (`data-feed`: "stream", "poll", or "opening" while a new stream has
/// sent nothing yet) and how many requests it has made
/// (every one goes through `fetch`; its event stream does not).
const STATE_JS: &str = r##"(() => {
    const q = (s) => document.querySelector(s);
    const text = (s) => { const e = q(s); return e ? e.textContent : null; };
    const box = (id, textId) => { const e = q(id); return e ? {state: e.dataset.state || e.dataset.kind || "", hidden: e.hidden, text: q(textId).textContent.trim()} : null; };
    const per = (f) => Object.fromEntries([...document.querySelectorAll("button[data-candidate]")].map((b) => [b.dataset.candidate, f(b.dataset.candidate)]));
    return {
        ready: document.readyState,
        buttons: [...document.querySelectorAll("button[data-candidate]")].map((b) => b.dataset.candidate),
        tally: per((n) => text(`[data-tally="${n}"]`)),
        share: per((n) => text(`[data-share-text="${n}"]`)),
        pids: per((n) => [...document.querySelectorAll(`[data-processes="${n}"] li[data-pid]`)].map((li) => ({pid: Number(li.dataset.pid), text: li.textContent}))),
        open: per((n) => !!(q(`[data-processes="${n}"]`) || {}).open),
        leader: (q("li.candidate.leader") || {dataset: {}}).dataset.name || null,
        standing: text("#standing"),
        conn: box("#conn", "#conn"),
        message: box("#message", "#message-text"),
        feed: (document.body || {dataset: {}}).dataset.feed || "",
        requests: performance.getEntriesByType("resource").filter((e) => e.initiatorType === "fetch").length,
    };
})()"##;

/// The processes of one run of the test. Dropping it kills them all.
struct Run<'a> {
    bin: &'a Path,
    out: &'a Path,
    log: Log,
    runs: usize,
    /// scx_ballot's flags but `--listen`.
    args: Vec<String>,
    server: Option<Server>,
    browser: Option<Started>,
    cdp: Option<Cdp>,
    /// Stand-ins for the candidates' processes: blue's burns CPU, red's sleeps.
    burner: Started,
    sleeper: Started,
}

fn run_test(bin: &Path, chromium: &Path, out: &Path) -> Result<PathBuf> {
    let mut burner = Command::new("nice");
    burner
        .args(["-n", "19", "sh", "-c", "while :; do :; done"])
        .stdin(Stdio::null());
    let burner = Started::spawn("blue's CPU burner", burner)?;
    let mut sleeper = Command::new("sleep");
    sleeper.arg("600").stdin(Stdio::null());
    let sleeper = Started::spawn("red's sleeper", sleeper)?;
    let candidates = out.join("candidates.toml");
    std::fs::write(
        &candidates,
        format!(
            "[[candidate]]\nname = \"blue\"\npids = [{}]\n\n[[candidate]]\nname = \"red\"\npids = [{}]\n",
            burner.pid(),
            sleeper.pid()
        ),
    )
    .with_context(|| format!("writing {}", candidates.display()))?;
    let args = [
        "--no-sched".into(),
        "--policy".into(),
        "election".into(),
        "--candidates".into(),
        candidates.display().to_string(),
        "--votes-file".into(),
        out.join("votes.journal").display().to_string(),
        "--vote-interval-ms".into(),
        VOTE_INTERVAL_MS.to_string(),
        // The test's own vote comes from 127.0.0.1 too: it names another
        // address, so that the browser's vote does not use up its interval.
        "--trust-forwarded-for".into(),
    ];
    let mut run = Run {
        bin,
        out,
        log: Log::default(),
        runs: 0,
        args: args.to_vec(),
        server: None,
        browser: None,
        cdp: None,
        burner,
        sleeper,
    };
    let result = run.start_server("127.0.0.1:0").and_then(|()| {
        run.launch_browser(chromium)?;
        run.check()
    });
    match result {
        Ok(shot) => {
            run.finish()?;
            Ok(shot)
        }
        Err(e) => {
            run.report_failure();
            Err(e.context("the browser test failed"))
        }
    }
}

impl Run<'_> {
    fn start_server(&mut self, listen: &str) -> Result<()> {
        self.runs += 1;
        let mut args = self.args.clone();
        args.extend(["--listen".to_string(), listen.to_string()]);
        let server = Server::start(self.bin, &args, &self.log, self.runs)?;
        println!(
            "  scx_ballot --no-sched (run {}): voting server on http://{}/",
            self.runs, server.addr
        );
        self.server = Some(server);
        Ok(())
    }

    fn addr(&self) -> Result<SocketAddr> {
        Ok(self
            .server
            .as_ref()
            .context("scx_ballot is not running")?
            .addr)
    }

    fn cdp(&mut self) -> Result<&mut Cdp> {
        self.cdp.as_mut().context("Chromium is not connected")
    }

    fn launch_browser(&mut self, chromium: &Path) -> Result<()> {
        let profile = self.out.join("chromium-profile");
        std::fs::create_dir_all(&profile)
            .with_context(|| format!("creating {}", profile.display()))?;
        let log_path = self.out.join("chromium.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--password-store=basic",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={},{}", PHONE.0, PHONE.1));
        if deps::is_root() {
            // Chromium's sandbox refuses to run as root.
            command.arg("--no-sandbox");
        }
        command
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log);
        let mut browser = Started::spawn("chromium", command)?;
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_START;
        let (port, path) = loop {
            if let Some(found) = std::fs::read_to_string(&port_file)
                .ok()
                .as_deref()
                .and_then(parse_devtools_active_port)
            {
                break found;
            }
            if let Some(status) = browser.exited() {
                bail!(
                    "{} exited ({status}) before opening its DevTools port; its output:\n{}",
                    chromium.display(),
                    tail(&log_path, 30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not open its DevTools port within {BROWSER_START:?}; its output:\n{}",
                    chromium.display(),
                    tail(&log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        self.browser = Some(browser);
        let mut cdp = Cdp::connect(port, &path)?;
        let version = cdp.browser("Browser.getVersion", json!({}))?;
        println!(
            "  {}: DevTools on 127.0.0.1:{port}",
            version["product"].as_str().unwrap_or("Chromium")
        );
        let target = cdp.browser("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .context("Target.createTarget gave no targetId")?;
        let attached = cdp.browser(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        cdp.page = Some(
            attached["sessionId"]
                .as_str()
                .context("Target.attachToTarget gave no sessionId")?
                .to_string(),
        );
        cdp.page("Runtime.enable", json!({}))?;
        cdp.page("Page.enable", json!({}))?;
        cdp.viewport(PHONE)?;
        self.cdp = Some(cdp);
        Ok(())
    }

    /// The checks, in order; returns the screenshot's path.
    fn check(&mut self) -> Result<PathBuf> {
        let addr = self.addr()?;
        let url = format!("http://{addr}/");
        let cdp = self.cdp()?;
        let navigated = cdp.page("Page.navigate", json!({"url": url}))?;
        if let Some(error) = navigated["errorText"].as_str() {
            bail!("Chromium could not open {url}: {error}");
        }
        let state = cdp.wait_until(
            "a vote button and a tally of 0 for blue and red",
            PAGE_WAIT,
            |s| {
                s["buttons"] == json!(["blue", "red"])
                    && s["tally"] == json!({"blue": "0", "red": "0"})
                    && s["conn"]["state"] == "ok"
                    && s["feed"] == "stream"
            },
        )?;
        if !state["leader"].is_null() {
            bail!(
                "no votes, yet the page marks {} as the leader",
                state["leader"]
            );
        }
        if state["requests"] != json!(0) {
            bail!(
                "the page follows its event stream, yet made {} requests",
                state["requests"]
            );
        }
        println!(
            "  ok: the page shows a vote button for blue and red, each at 0 votes, no leader, \
             from the event stream alone (no request)"
        );

        for size in [NARROW_PHONE, PHONE] {
            cdp.viewport(size)?;
            let fit = cdp.eval(
                r##"(() => {
                    const w = window.innerWidth;
                    const out = [...document.querySelectorAll("body *")]
                        .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && (r.left < -0.5 || r.right > w + 0.5); })
                        .map((e) => e.tagName + (e.id ? "#" + e.id : "") + (e.className ? "." + e.className : ""));
                    return {width: w, scroll: document.documentElement.scrollWidth, out: out.slice(0, 5)};
                })()"##,
            )?;
            if fit["width"] != json!(size.0) {
                bail!(
                    "the viewport is {} px wide, expected {} (the viewport meta tag?)",
                    fit["width"],
                    size.0
                );
            }
            if fit["scroll"].as_u64() > Some(u64::from(size.0)) || fit["out"] != json!([]) {
                bail!("at {} px the page is wider than the screen: {fit}", size.0);
            }
        }
        let foreign = cdp.eval(
            r#"performance.getEntriesByType("resource").map((e) => e.name).filter((n) => !n.startsWith(location.origin + "/"))"#,
        )?;
        if foreign != json!([]) {
            bail!("the page loaded something from elsewhere: {foreign}");
        }
        println!(
            "  ok: fits {} and {} px wide without sideways scrolling; loads nothing from elsewhere",
            NARROW_PHONE.0, PHONE.0
        );

        cdp.click(r#"button[data-candidate="blue"]"#)?;
        cdp.wait_until(
            "blue's tally to go from 0 to 1 after the click",
            PAGE_WAIT,
            |s| s["tally"] == json!({"blue": "1", "red": "0"}) && s["message"]["state"] == "ok",
        )?;
        let tally = get_json(addr, "/votes")?;
        if tally["votes"] != json!({"blue": 1, "red": 0}) || tally["leader"] != "blue" {
            bail!("the page shows blue 1, red 0, but GET /votes answers {tally}");
        }
        let state = cdp.wait_until("blue to be marked as the leader", PAGE_WAIT, |s| {
            s["leader"] == "blue" && s["standing"].as_str().is_some_and(|t| t.contains("blue"))
        })?;
        println!(
            "  ok: a click on blue's button took its tally from 0 to 1, as GET /votes says; {:?}",
            state["standing"].as_str().unwrap_or_default()
        );

        let burner = self.burner.pid();
        let sleeper = self.sleeper.pid();
        let cdp = self.cdp()?;
        cdp.click(r#"[data-processes="blue"] > summary"#)?;
        let has = |s: &Value, who: &str, pid: u32| {
            s["pids"][who]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["pid"] == json!(pid)))
        };
        let busy = |text: &Value| {
            text.as_str()
                .and_then(|t| {
                    t.trim_start_matches("CPU ")
                        .trim_end_matches('%')
                        .parse::<f64>()
                        .ok()
                })
                .is_some_and(|v| v > 0.0)
        };
        let state = cdp.wait_until(
            "blue's process list to show the burner with a CPU share above 0",
            PAGE_WAIT,
            |s| {
                s["open"]["blue"] == json!(true)
                    && has(s, "blue", burner)
                    && has(s, "red", sleeper)
                    && busy(&s["share"]["blue"])
            },
        )?;
        println!(
            "  ok: blue's processes list the burner (pid {burner}); blue's share: {}",
            state["share"]["blue"].as_str().unwrap_or_default()
        );

        cdp.click(r#"button[data-candidate="blue"]"#)?;
        let state = cdp.wait_until(
            "the page to show the 429 of a second vote and the wait",
            PAGE_WAIT,
            |s| {
                s["message"]["state"] == "wait"
                    && s["message"]["hidden"] == json!(false)
                    && s["message"]["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("429") && t.contains(" s before voting again"))
            },
        )?;
        let tally = get_json(addr, "/votes")?;
        if tally["votes"] != json!({"blue": 1, "red": 0}) {
            bail!("a refused vote changed the tally: GET /votes answers {tally}");
        }
        println!(
            "  ok: a second vote within the interval shows {:?}",
            state["message"]["text"].as_str().unwrap_or_default()
        );

        // A vote from elsewhere reaches the page by its stream, unasked.
        let cdp = self.cdp()?;
        let before = cdp.eval(STATE_JS)?;
        let posted = Instant::now();
        post_vote(addr, "blue", "a voter elsewhere", "192.0.2.1")?;
        cdp.wait_until(
            "a vote posted over HTTP to reach the page from its stream",
            STREAM_WAIT,
            |s| s["tally"]["blue"] == "2",
        )?;
        let shown = posted.elapsed();
        if shown > STREAM_WAIT {
            bail!("a vote posted over HTTP took {shown:?} to show on the page");
        }
        std::thread::sleep(QUIET.saturating_sub(posted.elapsed()));
        let after = cdp.eval(STATE_JS)?;
        if after["feed"] != "stream" || after["requests"] != before["requests"] {
            bail!(
                "within {QUIET:?} of a vote the page went from feed {} and {} requests to feed {} and {} requests, \
                 expected its stream alone",
                before["feed"],
                before["requests"],
                after["feed"],
                after["requests"]
            );
        }
        println!(
            "  ok: a vote posted over HTTP showed on the page within {} ms (blue at 2), from the stream: \
             no request in {:.1} s",
            shown.as_millis(),
            QUIET.as_secs_f64()
        );

        self.server
            .take()
            .context("scx_ballot is not running")?
            .stop()?;
        let state =
            self.cdp()?
                .wait_until("the page to say the server is gone", PAGE_WAIT, |s| {
                    s["conn"]["state"] == "gone"
                        && s["conn"]["hidden"] == json!(false)
                        && s["conn"]["text"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("Server gone"))
                        && s["tally"]["blue"] == "2"
                        && s["feed"] == "poll"
                })?;
        println!(
            "  ok: scx_ballot exited 0 on SIGTERM; the page polls and says {:?}",
            state["conn"]["text"].as_str().unwrap_or_default()
        );

        self.start_server(&addr.to_string())?;
        // The restarted tracker lists members after its first window and
        // measures shares after its second.
        self.cdp()?.wait_until(
            "the page to recover once the server is back, with blue's burner measured again",
            Duration::from_secs(20),
            |s| {
                s["conn"]["state"] == "ok"
                    && s["conn"]["hidden"] == json!(true)
                    && s["tally"] == json!({"blue": "2", "red": "0"})
                    && s["feed"] == "stream"
                    && has(s, "blue", burner)
                    && busy(&s["share"]["blue"])
            },
        )?;
        let tally = get_json(addr, "/votes")?;
        if tally["votes"] != json!({"blue": 2, "red": 0}) {
            bail!("after the restart on the same journal GET /votes answers {tally}");
        }
        println!(
            "  ok: after a restart on the same port and journal the page recovered with the journal's \
             tally (blue 2, red 0) and follows the stream again"
        );

        let cdp = self.cdp()?;
        cdp.viewport(PHONE)?;
        cdp.eval("window.scrollTo(0, 0)")?;
        // Let the share bars finish their transition.
        std::thread::sleep(Duration::from_millis(600));
        let png = cdp.screenshot()?;
        let size = png_size(&png).context("the screenshot is not a PNG")?;
        if size != (PHONE.0 * SCALE, PHONE.1 * SCALE) {
            bail!(
                "the screenshot is {}x{} pixels, expected {}x{}",
                size.0,
                size.1,
                PHONE.0 * SCALE,
                PHONE.1 * SCALE
            );
        }
        let shot = self.out.join("ballot.png");
        std::fs::write(&shot, &png).with_context(|| format!("writing {}", shot.display()))?;

        // A vote for a candidate deleted while the page could not learn of
        // it: its GET /candidates and GET /events are blocked and a restart
        // of the server ends its open stream (so its list stays as it was),
        // red is deleted (an admin route, open on loopback), and red's
        // button is clicked.
        let cdp = self.cdp()?;
        cdp.page("Network.enable", json!({}))?;
        cdp.page(
            "Network.setBlockedURLs",
            json!({"urls": ["*/candidates", "*/events"]}),
        )?;
        self.server
            .take()
            .context("scx_ballot is not running")?
            .stop()?;
        self.start_server(&addr.to_string())?;
        let cdp = self.cdp()?;
        cdp.wait_until(
            "the page to notice it cannot refresh its list",
            PAGE_WAIT,
            |s| s["conn"]["state"] == "gone" && s["feed"] == "poll",
        )?;
        request(addr, "DELETE", "/candidates/red")?;
        cdp.click(r#"button[data-candidate="red"]"#)?;
        let state = cdp.wait_until(
            "the page to show the 404 of a vote for a deleted candidate",
            PAGE_WAIT,
            |s| {
                s["message"]["state"] == "error"
                    && s["message"]["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("404 unknown_candidate"))
            },
        )?;
        cdp.page("Network.setBlockedURLs", json!({"urls": []}))?;
        cdp.wait_until(
            "the page to drop red once it can refresh again, and to follow the stream again",
            PAGE_WAIT,
            |s| {
                s["conn"]["state"] == "ok"
                    && s["buttons"] == json!(["blue"])
                    && s["feed"] == "stream"
            },
        )?;
        println!(
            "  ok: a vote for a candidate deleted meanwhile shows {:?}; the page then drops it",
            state["message"]["text"].as_str().unwrap_or_default()
        );

        let exceptions = &self.cdp()?.exceptions;
        if !exceptions.is_empty() {
            bail!(
                "the page threw and did not catch:\n  {}",
                exceptions.join("\n  ")
            );
        }
        Ok(shot)
    }

    /// Closes the browser and stops the server cleanly.
    fn finish(&mut self) -> Result<()> {
        if let Some(mut cdp) = self.cdp.take() {
            let _ = cdp.call(None, "Browser.close", json!({}), Duration::from_secs(5));
        }
        if let Some(mut browser) = self.browser.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while browser.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Dropping it kills whatever of its group is left.
        }
        if let Some(server) = self.server.take() {
            server.stop()?;
        }
        Ok(())
    }

    /// What a failure needs to be understood: what the page showed, what it
    /// threw, what scx_ballot and Chromium printed, and a screenshot.
    fn report_failure(&mut self) {
        let out = self.out.to_path_buf();
        if let Some(cdp) = self.cdp.as_mut() {
            match cdp.eval(
                "document.body ? document.body.innerText : document.documentElement.outerHTML",
            ) {
                Ok(text) => eprintln!(
                    "--- what the page showed ---\n{}",
                    text.as_str().unwrap_or_default()
                ),
                Err(e) => eprintln!("--- what the page showed: cannot tell ({e:#}) ---"),
            }
            if !cdp.exceptions.is_empty() {
                eprintln!("--- what the page threw ---\n{}", cdp.exceptions.join("\n"));
            }
            let shot = out.join("failure.png");
            if let Ok(png) = cdp.screenshot()
                && std::fs::write(&shot, png).is_ok()
            {
                eprintln!("--- the page at the failure: {} ---", shot.display());
            }
        }
        eprintln!("--- scx_ballot's output ---");
        for line in self.log.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            eprintln!("{line}");
        }
        let chromium_log = out.join("chromium.log");
        if chromium_log.exists() {
            eprintln!(
                "--- Chromium's output (last lines of {}) ---",
                chromium_log.display()
            );
            eprintln!("{}", tail(&chromium_log, 20));
        }
    }
}

/// `GET path` from the voting server: the JSON of a 200 answer.
fn get_json(addr: SocketAddr, path: &str) -> Result<Value> {
    request(addr, "GET", path)
}

/// `method path` (no body) to the voting server: the JSON of a 200 answer.
fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Value> {
    send(addr, method, path, "", "")
}

/// `POST /votes` as a client at `from` (by `X-Forwarded-For`): the tally.
fn post_vote(addr: SocketAddr, candidate: &str, voter: &str, from: &str) -> Result<Value> {
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

/// (width, height) from a PNG's header.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let word = |at: usize| Some(u32::from_be_bytes(png.get(at..at + 4)?.try_into().ok()?));
    Some((word(16)?, word(20)?))
}

/// The last `n` lines of Chromium's log, without its complaints about the
/// missing D-Bus (a headless machine has none; they would hide the rest).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(":ERROR:dbus/"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_address_is_read_from_its_line() {
        assert_eq!(
            parse_server_line("voting server: http://127.0.0.1:41123/"),
            Some("127.0.0.1:41123".parse().unwrap())
        );
        assert_eq!(
            parse_server_line("voting server: http://[::1]:80/"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_server_line("warning: no --votes-file"), None);
        assert_eq!(parse_server_line("voting server: http://nowhere/"), None);
    }

    #[test]
    fn the_devtools_port_file_is_used_only_once_complete() {
        assert_eq!(
            parse_devtools_active_port("40321\n/devtools/browser/0a1b-2c\n"),
            Some((40321, "/devtools/browser/0a1b-2c".to_string()))
        );
        assert_eq!(parse_devtools_active_port("40321\n"), None, "half written");
        assert_eq!(parse_devtools_active_port(""), None);
        assert_eq!(parse_devtools_active_port("0\n/devtools/browser/x\n"), None);
        assert_eq!(parse_devtools_active_port("40321\n/json\n"), None);
    }

    #[test]
    fn png_sizes_come_from_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(780u32.to_be_bytes());
        png.extend(1688u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((780, 1688)));
        assert_eq!(png_size(b"GIF89a"), None);
        assert_eq!(png_size(&png[..18]), None);
    }
}
