//! One run of the browser test: the server and the browser it starts,
//! how it ends them, and what it prints when a check fails.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::host::deps;

use super::{PHONE, VOTE_INTERVAL_MS, BROWSER_START};
use super::process::Started;
use super::server::{Log, Server};
use super::cdp::{parse_devtools_active_port, Cdp};

/// The processes of one run of the test. Dropping it kills them all.
pub(super) struct Run<'a> {
    bin: &'a Path,
    pub(super) out: &'a Path,
    log: Log,
    runs: usize,
    /// scx_ballot's flags but `--listen`.
    args: Vec<String>,
    pub(super) server: Option<Server>,
    browser: Option<Started>,
    cdp: Option<Cdp>,
    /// Stand-ins for the candidates' processes: blue's burns CPU, red's sleeps.
    pub(super) burner: Started,
    pub(super) sleeper: Started,
}

pub(super) fn run_test(bin: &Path, chromium: &Path, out: &Path) -> Result<PathBuf> {
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
        let shot = run.check()?;
        let report = run.check_report()?;
        println!("scenario report page screenshot: {}", report.display());
        Ok(shot)
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
    pub(super) fn start_server(&mut self, listen: &str) -> Result<()> {
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

    pub(super) fn addr(&self) -> Result<SocketAddr> {
        Ok(self
            .server
            .as_ref()
            .context("scx_ballot is not running")?
            .addr)
    }

    pub(super) fn cdp(&mut self) -> Result<&mut Cdp> {
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
