//! The scenario report page (`vm-test`'s `report.html`) in the browser: an
//! example page from made-up runs ([`scenario::page::write_example`])
//! opened from disk, checked for its timelines, the A/B table, the
//! snapshot diff and for loading nothing but itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::scenario;

use super::run::Run;

const REPORT_JS: &str = r##"(() => ({
    ready: document.readyState,
    runs: document.querySelectorAll(".run").length,
    timelines: document.querySelectorAll(".run svg").length,
    axis: [...document.querySelectorAll(".run svg text")].some((t) => t.textContent === "0 s"),
    legend: [...document.querySelectorAll(".run svg text")].some((t) => t.textContent === "of one CPU"),
    ab: (document.querySelector("#ab") || {}).textContent || "",
    added: document.querySelectorAll(".diff .add").length,
    removed: document.querySelectorAll(".diff .del").length,
    perfetto: [...document.querySelectorAll("a")].filter((a) => a.getAttribute("href").endsWith("perfetto.json")).length,
    loaded: performance.getEntriesByType("resource").length,
    width: document.querySelector(".run svg") ? document.querySelector(".run svg").getBoundingClientRect().width : 0,
}))()"##;

impl Run<'_> {
    /// Opens the example report and checks what it shows; its screenshot.
    pub(super) fn check_report(&mut self) -> Result<PathBuf> {
        let dir = self.out.join("report");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let page = scenario::page::write_example(&dir)?;
        let url = format!("file://{}", page.display());
        let cdp = self.cdp()?;
        cdp.viewport((1200, 900))?;
        let navigated = cdp.page("Page.navigate", json!({"url": url}))?;
        if let Some(error) = navigated["errorText"].as_str() {
            bail!("Chromium could not open {url}: {error}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let state: Value = loop {
            let state = cdp.eval(REPORT_JS)?;
            if state["ready"] == "complete" {
                break state;
            }
            if Instant::now() >= deadline {
                bail!("the report page did not finish loading in 10 s: {state}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let want = |ok: bool, what: &str| if ok { Ok(()) } else { Err(anyhow::anyhow!("the report page {what}; it showed:\n{state:#}")) };
        want(state["runs"] == 2 && state["timelines"] == 2, "should show two runs, each with its timeline")?;
        want(state["axis"] == true && state["legend"] == true, "should give each timeline a time axis and a legend")?;
        want(state["ab"].as_str().is_some_and(|t| t.contains("fair-burners") && t.contains("x)")), "should show the A/B table against EEVDF")?;
        want(state["added"].as_u64() > Some(0) && state["removed"].as_u64() > Some(0), "should show the differing run's snapshot diff")?;
        want(state["perfetto"] == 2, "should link each run's Perfetto trace")?;
        want(state["loaded"] == 0, "should load nothing besides itself")?;
        want(state["width"].as_f64().is_some_and(|w| w > 300.0), "should draw the timelines at a readable width")?;
        println!("  ok: the scenario report page shows both runs' timelines (time axis, legend), the A/B table, the snapshot diff and the Perfetto links, and loads nothing else");
        let png = cdp.screenshot()?;
        let shot = self.out.join("report.png");
        std::fs::write(&shot, &png).with_context(|| format!("writing {}", shot.display()))?;
        Ok(shot)
    }
}
