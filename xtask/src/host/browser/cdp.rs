//! A DevTools protocol client: the websocket to headless Chromium, its
//! commands, events and screenshots.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::{SCALE, CALL_TIMEOUT};
use super::checks::STATE_JS;

/// (port, browser websocket path) from Chromium's `DevToolsActivePort` file,
/// once it is complete.
pub(super) fn parse_devtools_active_port(text: &str) -> Option<(u16, String)> {
    let mut lines = text.lines();
    let port: u16 = lines.next()?.trim().parse().ok().filter(|&p| p != 0)?;
    let path = lines.next()?.trim();
    path.starts_with("/devtools/browser/")
        .then(|| (port, path.to_string()))
}

/// A DevTools protocol connection to the browser, and the page's session on
/// it once attached (flat mode: page commands carry its `sessionId`).
pub(super) struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    pub(super) page: Option<String>,
    /// What the page threw and did not catch (`Runtime.exceptionThrown`).
    pub(super) exceptions: Vec<String>,
    crashed: bool,
}

impl Cdp {
    pub(super) fn connect(port: u16, path: &str) -> Result<Cdp> {
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
    pub(super) fn browser(&mut self, method: &str, params: Value) -> Result<Value> {
        self.call(None, method, params, CALL_TIMEOUT)
    }

    /// A command to the page.
    pub(super) fn page(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.page.clone().context("no page is attached")?;
        self.call(Some(&session), method, params, CALL_TIMEOUT)
    }

    pub(super) fn call(
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
    pub(super) fn eval(&mut self, expression: &str) -> Result<Value> {
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
    pub(super) fn viewport(&mut self, (width, height): (u32, u32)) -> Result<()> {
        self.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": SCALE, "mobile": true}),
        )?;
        Ok(())
    }

    /// A real left click (mouse moved, pressed, released) at the middle of
    /// the element `selector` matches, after scrolling it into view; an error
    /// if something else covers that point.
    pub(super) fn click(&mut self, selector: &str) -> Result<()> {
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
    pub(super) fn wait_until(
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
    pub(super) fn screenshot(&mut self) -> Result<Vec<u8>> {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = shot["data"]
            .as_str()
            .context("Page.captureScreenshot returned no data")?;
        data_encoding::BASE64
            .decode(data.as_bytes())
            .map_err(|e| anyhow!("the screenshot is not base64: {e}"))
    }
}
