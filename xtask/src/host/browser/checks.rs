//! The checks of the ballot page, in order, against what the server
//! answers; ends with the screenshot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{PHONE, NARROW_PHONE, SCALE, PAGE_WAIT, STREAM_WAIT, QUIET};
use super::run::Run;
use super::server::{get_tally, request, post_vote};

/// What the page shows, as the test reads it: the hooks the page gives its
/// elements (`data-candidate`, `data-tally`, ...), which feed it follows
/// (`data-feed`: "stream", "poll", or "opening" while a new stream has
/// sent nothing yet) and how many requests it has made
/// (every one goes through `fetch`; its event stream does not).
pub(super) const STATE_JS: &str = r##"(() => {
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

impl Run<'_> {
    /// The checks, in order; returns the screenshot's path.
    pub(super) fn check(&mut self) -> Result<PathBuf> {
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
        let tally = get_tally(addr)?;
        if tally.votes != votes(1, 0) || tally.leader.as_deref() != Some("blue") {
            bail!("the page shows blue 1, red 0, but GET /votes answers {tally:?}");
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
        let tally = get_tally(addr)?;
        if tally.votes != votes(1, 0) {
            bail!("a refused vote changed the tally: GET /votes answers {tally:?}");
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
        let tally = get_tally(addr)?;
        if tally.votes != votes(2, 0) {
            bail!("after the restart on the same journal GET /votes answers {tally:?}");
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
}

/// (width, height) from a PNG's header.
pub(super) fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let word = |at: usize| Some(u32::from_be_bytes(png.get(at..at + 4)?.try_into().ok()?));
    Some((word(16)?, word(20)?))
}

/// Blue's and red's votes, as a tally holds them.
fn votes(blue: u64, red: u64) -> std::collections::BTreeMap<String, u64> {
    [("blue".to_owned(), blue), ("red".to_owned(), red)].into()
}
