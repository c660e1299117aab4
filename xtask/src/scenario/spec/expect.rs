//! `[[expect]]` in a workload scenario file: what a group must do under a
//! scheduler relative to its run under EEVDF in the same boot.

use anyhow::Result;
use serde::Deserialize;
use toml::Spanned;

use super::{Expect, Group, Kind};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectFile {
    group: String,
    wait_vs_eevdf: Option<f64>,
    share_vs_eevdf: Option<f64>,
    #[serde(default)]
    schedulers: Vec<String>,
}

/// The `[[expect]]`s of a workload scenario, checked against its groups.
pub(super) fn expectations(
    list: &[Spanned<ExpectFile>],
    workload: bool,
    groups: &[Group],
    err: &dyn Fn(std::ops::Range<usize>, &str, String) -> anyhow::Error,
) -> Result<Vec<Expect>> {
    let mut out = Vec::new();
    for e in list {
        let at = e.span();
        let e = e.get_ref();
        if !workload {
            return Err(err(at, "expect", "[[expect]] compares a [[group]] with EEVDF: it is for scenarios with [[group]]s".into()));
        }
        let mine: Vec<&Group> = groups.iter().filter(|g| g.id.split('/').next() == Some(e.group.as_str())).collect();
        if mine.is_empty() {
            return Err(err(at, "group", format!("[[expect]]: no [[group]] named {:?}", e.group)));
        }
        if e.wait_vs_eevdf.is_none() && e.share_vs_eevdf.is_none() {
            return Err(err(at, "group", "[[expect]] needs `wait_vs_eevdf` and/or `share_vs_eevdf`".into()));
        }
        for (field, v) in [("wait_vs_eevdf", e.wait_vs_eevdf), ("share_vs_eevdf", e.share_vs_eevdf)] {
            if let Some(v) = v
                && !(v > 0.0 && v <= 100.0)
            {
                return Err(err(at.clone(), field, format!("{v} is not a ratio in (0, 100]")));
            }
        }
        if e.wait_vs_eevdf.is_some() && !mine.iter().any(|g| g.kind == Kind::Sleepy) {
            return Err(err(at, "wait_vs_eevdf", format!("group {:?} has no sleepy workers: it has no wake-up wait to compare", e.group)));
        }
        if e.schedulers.iter().any(|s| s == "eevdf") {
            return Err(err(at, "schedulers", "EEVDF is the baseline: it is not compared with itself".into()));
        }
        out.push(Expect {
            group: e.group.clone(),
            wait_vs_eevdf: e.wait_vs_eevdf,
            share_vs_eevdf: e.share_vs_eevdf,
            schedulers: e.schedulers.clone(),
        });
    }
    Ok(out)
}
