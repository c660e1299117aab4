//! The scenario file format (TOML) and its parser: errors name the file,
//! the line and the field.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Deserialize;
use toml::Spanned;

use super::{Count, Group, Join, Kind, Mode, Phase, Policy, Scenario, Stop};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    description: String,
    policy: Option<Spanned<Policy>>,
    mode: Option<Spanned<Mode>>,
    min_share: Option<Spanned<f64>>,
    cap: Option<Spanned<bool>>,
    #[serde(default)]
    candidate: Vec<Spanned<CandidateFile>>,
    #[serde(default)]
    outsider: Vec<Spanned<WorkerFile>>,
    /// Workload groups: a scenario without an election.
    #[serde(default)]
    group: Vec<Spanned<GroupFile>>,
    #[serde(default)]
    phase: Vec<Spanned<PhaseFile>>,
    /// Workload scenarios: expectations against EEVDF in the same boot.
    #[serde(default)]
    expect: Vec<Spanned<super::expect::ExpectFile>>,
}


#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: Spanned<String>,
    /// The workers' nice level.
    #[serde(default)]
    nice: i32,
    /// The cpu.weight of a cgroup of the group's own (1..=10000).
    cgroup_weight: Option<u32>,
    #[serde(default)]
    workers: Vec<Spanned<WorkerFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CandidateFile {
    name: Spanned<String>,
    /// false: the candidate is not in the candidates file at start; a
    /// phase registers it.
    #[serde(default = "yes")]
    registered: bool,
    #[serde(default)]
    workers: Vec<Spanned<WorkerFile>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerFile {
    kind: Kind,
    count: Option<u32>,
    per_cpu: Option<u32>,
    #[serde(default)]
    join: Join,
    run_ms: Option<u32>,
    sleep_ms: Option<u32>,
    /// Workload groups: the CPUs the workers may run on (all when absent).
    cpus: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseFile {
    name: String,
    #[serde(default = "default_seconds")]
    seconds: f64,
    #[serde(default = "default_settle_ms")]
    settle_ms: u64,
    #[serde(default)]
    votes: BTreeMap<String, u32>,
    #[serde(default)]
    register: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    stop: BTreeMap<String, StopFile>,
    #[serde(default)]
    restart: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopFile {
    Count(u32),
    Word(String),
}

fn default_seconds() -> f64 {
    4.0
}

fn default_settle_ms() -> u64 {
    1000
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key being assigned at `offset`: the identifier before the last `=`
/// on its line, up to that column (works inside inline tables too).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let before = &text[line_start..offset];
    let eq = before.rfind('=')?;
    let key: String = before[..eq]
        .trim_end()
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// Where `key = ` is written inside `span` (the first time), or the span's
/// start when it is not.
fn key_offset(text: &str, span: std::ops::Range<usize>, key: &str) -> usize {
    let end = span.end.min(text.len());
    let inside = &text[span.start.min(end)..end];
    let mut from = 0;
    while let Some(i) = inside[from..].find(key) {
        let at = from + i;
        let before_ok = at == 0 || !inside[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        let after = inside[at + key.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            return span.start + at;
        }
        from = at + key.len();
    }
    span.start
}

const CANDIDATE_NAME_MAX: usize = 64;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= CANDIDATE_NAME_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Parses and checks one scenario file. `name` is the file stem.
pub fn parse(path: &Path, name: &str, text: &str) -> Result<Scenario> {
    let shown = path.display();
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            let field = key_at(text, at).map(|k| format!(" (field `{k}`)")).unwrap_or_default();
            bail!("{shown}:{}{field}: {}", line_of(text, at), e.message().trim());
        }
    };
    let err = |span: std::ops::Range<usize>, field: &str, what: String| -> anyhow::Error {
        let line = line_of(text, key_offset(text, span, field));
        anyhow::anyhow!("{shown}:{line} (field `{field}`): {what}")
    };

    let workload = !file.group.is_empty();
    let policy = file.policy.as_ref().map_or(Policy::default(), |p| *p.get_ref());
    let mode = file.mode.as_ref().map_or(Mode::default(), |m| *m.get_ref());
    if workload {
        // A workload scenario runs under any scheduler: no election in it.
        let election_fields = [
            (file.policy.as_ref().map(Spanned::span), "policy"),
            (file.mode.as_ref().map(Spanned::span), "mode"),
            (file.min_share.as_ref().map(Spanned::span), "min_share"),
            (file.cap.as_ref().map(Spanned::span), "cap"),
            (file.candidate.first().map(Spanned::span), "candidate"),
            (file.outsider.first().map(Spanned::span), "outsider"),
        ];
        for (span, field) in election_fields {
            if let Some(span) = span {
                return Err(err(
                    span,
                    field,
                    format!("a scenario with [[group]]s runs under any scheduler (vm-test --scheduler) and has no election: `{field}` does not belong in it"),
                ));
            }
        }
    }
    if let Some(share) = &file.min_share {
        let v = *share.get_ref();
        if !(v > 0.0 && v <= 50.0) {
            return Err(err(share.span(), "min_share", format!("{v} is not a percentage in (0, 50]")));
        }
    }
    if let Some(cap) = &file.cap
        && *cap.get_ref()
        && (policy != Policy::Election || mode != Mode::Winner)
    {
        return Err(err(cap.span(), "cap", "cap holds the losers of an election in winner mode only".to_string()));
    }

    let mut candidates = Vec::new();
    let mut unregistered = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    for c in &file.candidate {
        let span = c.span();
        let c = c.get_ref();
        let cname = c.name.get_ref();
        if !valid_name(cname) {
            return Err(err(c.name.span(), "name", format!("{cname:?} is not a candidate name (1..=64 of A-Z a-z 0-9 _ . -)")));
        }
        if candidates.contains(cname) || unregistered.contains(cname) {
            return Err(err(c.name.span(), "name", format!("candidate {cname:?} is declared twice")));
        }
        if c.workers.is_empty() {
            return Err(err(span.clone(), "workers", format!("candidate {cname:?} has no workers")));
        }
        if c.registered { candidates.push(cname.clone()) } else { unregistered.push(cname.clone()) }
        for w in &c.workers {
            let g = group(w, Some(cname), cname, &err)?;
            if g.join == Join::Pid && !c.registered {
                return Err(err(w.span(), "join", format!("candidate {cname:?} is not registered at start, so its workers cannot join by pid")));
            }
            if groups.iter().any(|x| x.id == g.id) {
                return Err(err(w.span(), "kind", format!("candidate {cname:?} has two groups of {} workers", g.kind.name())));
            }
            groups.push(g);
        }
    }
    for w in &file.outsider {
        let g = group(w, None, "outsider", &err)?;
        if groups.iter().any(|x| x.id == g.id) {
            return Err(err(w.span(), "kind", format!("two outsider groups of {} workers", g.kind.name())));
        }
        groups.push(g);
    }
    for g in &file.group {
        let g = g.get_ref();
        let gname = g.name.get_ref();
        if !valid_name(gname) {
            return Err(err(g.name.span(), "name", format!("{gname:?} is not a group name (1..=64 of A-Z a-z 0-9 _ . -)")));
        }
        if groups.iter().any(|x| x.id.split('/').next() == Some(gname.as_str())) {
            return Err(err(g.name.span(), "name", format!("group {gname:?} is declared twice")));
        }
        if !(-20..=19).contains(&g.nice) {
            return Err(err(g.name.span(), "nice", format!("group {gname:?}: nice {} is not in -20..=19", g.nice)));
        }
        if g.workers.is_empty() {
            return Err(err(g.name.span(), "workers", format!("group {gname:?} has no workers")));
        }
        if let Some(w) = g.cgroup_weight
            && !(1..=10_000).contains(&w)
        {
            return Err(err(g.name.span(), "cgroup_weight", format!("group {gname:?}: cgroup_weight {w} is not in 1..=10000 (cpu.weight's range)")));
        }
        for w in &g.workers {
            let mut grp = group(w, None, gname, &err)?;
            grp.nice = g.nice;
            grp.cgroup_weight = g.cgroup_weight;
            if g.cgroup_weight.is_some() && !grp.cpus.is_empty() {
                return Err(err(w.span(), "cpus", format!("group {gname:?}: `cpus` and `cgroup_weight` together are not modelled; use one")));
            }
            if groups.iter().any(|x| x.id == grp.id) {
                return Err(err(w.span(), "kind", format!("group {gname:?} has two sets of {} workers", grp.kind.name())));
            }
            groups.push(grp);
        }
    }
    if groups.is_empty() {
        bail!("{shown}: no candidate, outsider or group workers: there is nothing to measure");
    }
    if file.phase.is_empty() {
        bail!("{shown}: no [[phase]]: there is nothing to measure");
    }

    let election = !workload && policy == Policy::Election;
    let mut known: Vec<String> = candidates.clone();
    let mut phases = Vec::new();
    for p in &file.phase {
        let at = p.span();
        let p = p.get_ref();
        if p.name.trim().is_empty() || phases.iter().any(|x: &Phase| x.name == p.name) {
            return Err(err(at.clone(), "name", format!("phase name {:?} is empty or used twice", p.name)));
        }
        if !(p.seconds >= 0.5 && p.seconds <= 120.0) {
            return Err(err(at.clone(), "seconds", format!("phase {:?}: {} s is not in 0.5..=120", p.name, p.seconds)));
        }
        if p.settle_ms > 30_000 {
            return Err(err(at.clone(), "settle_ms", format!("phase {:?}: {} ms is over 30000", p.name, p.settle_ms)));
        }
        let changes_ballot = !p.votes.is_empty() || !p.register.is_empty() || !p.remove.is_empty();
        if workload && (changes_ballot || !p.stop.is_empty()) {
            return Err(err(at.clone(), "votes", format!("phase {:?}: a scenario with [[group]]s has no election: its phases only run and measure", p.name)));
        }
        if p.restart && !election {
            return Err(err(at.clone(), "restart", format!("phase {:?}: restart (SIGKILL, start again on the votes journal) needs policy = \"election\"", p.name)));
        }
        if changes_ballot && !election {
            return Err(err(at.clone(), "votes", format!("phase {:?} votes or changes candidates, which needs policy = \"election\"", p.name)));
        }
        for r in &p.register {
            if !unregistered.contains(r) {
                return Err(err(at.clone(), "register", format!("phase {:?}: {r:?} is not a candidate declared with registered = false", p.name)));
            }
            if known.contains(r) {
                return Err(err(at.clone(), "register", format!("phase {:?}: {r:?} is already registered", p.name)));
            }
            known.push(r.clone());
        }
        for cand in p.votes.keys() {
            if !known.contains(cand) {
                return Err(err(at.clone(), "votes", format!("phase {:?}: votes for {cand:?}, which is not a registered candidate at this point", p.name)));
            }
        }
        for r in &p.remove {
            if !known.contains(r) {
                return Err(err(at.clone(), "remove", format!("phase {:?}: {r:?} is not a registered candidate at this point", p.name)));
            }
            known.retain(|k| k != r);
        }
        let mut stop = Vec::new();
        for (cand, how) in &p.stop {
            if !groups.iter().any(|g| g.candidate.as_deref() == Some(cand.as_str())) {
                return Err(err(at.clone(), "stop", format!("phase {:?}: {cand:?} is not a candidate with workers", p.name)));
            }
            let how = match how {
                StopFile::Count(n) if *n > 0 => Stop::Some(*n),
                StopFile::Word(w) if w == "all" => Stop::All,
                _ => return Err(err(at.clone(), "stop", format!("phase {:?}: stop {cand:?} takes a count > 0 or \"all\"", p.name))),
            };
            stop.push((cand.clone(), how));
        }
        phases.push(Phase {
            name: p.name.clone(),
            seconds: p.seconds,
            settle_ms: p.settle_ms,
            votes: p.votes.iter().filter(|(_, n)| **n > 0).map(|(c, n)| (c.clone(), *n)).collect(),
            register: p.register.clone(),
            remove: p.remove.clone(),
            stop,
            restart: p.restart,
        });
    }
    let expect = super::expect::expectations(&file.expect, workload, &groups, &err)?;
    Ok(Scenario {
        name: name.to_string(),
        description: file.description.trim().to_string(),
        policy,
        mode,
        min_share: file.min_share.map(|s| *s.get_ref()),
        candidates,
        groups,
        phases,
        mutant: None,
        scheduler_min_share: None,
        cap: file.cap.as_ref().is_some_and(|c| *c.get_ref()),
        scheduler_no_cap: false,
        scheduler_no_journal: false,
        workload,
        under: None,
        expect,
    })
}


/// One set of workers of `owner` (a candidate, `outsider`, or a workload
/// group's name).
fn group(
    w: &Spanned<WorkerFile>,
    candidate: Option<&String>,
    owner: &str,
    err: &dyn Fn(std::ops::Range<usize>, &str, String) -> anyhow::Error,
) -> Result<Group> {
    let at = w.span();
    let w = w.get_ref();
    let count = match (w.count, w.per_cpu) {
        (Some(n), None) if (1..=64).contains(&n) => Count::Fixed(n),
        (None, Some(n)) if (1..=16).contains(&n) => Count::PerCpu(n),
        (Some(_), Some(_)) => return Err(err(at.clone(), "count", format!("{owner}: give `count` or `per_cpu`, not both"))),
        (None, None) => return Err(err(at.clone(), "count", format!("{owner}: workers need `count` (1..=64) or `per_cpu` (1..=16)"))),
        _ => return Err(err(at.clone(), "count", format!("{owner}: `count` must be in 1..=64 and `per_cpu` in 1..=16"))),
    };
    if candidate.is_none() && w.join != Join::Exec {
        return Err(err(at.clone(), "join", format!("{owner}: only a candidate's workers join one")));
    }
    let (run_ms, sleep_ms) = match w.kind {
        Kind::Burner if w.run_ms.is_some() || w.sleep_ms.is_some() => {
            return Err(err(at.clone(), "run_ms", format!("{owner}: burners never sleep; run_ms and sleep_ms are for sleepy workers")));
        }
        Kind::Burner => (0, 0),
        Kind::Forker if w.run_ms.is_some() || w.sleep_ms.is_some() => {
            return Err(err(at.clone(), "run_ms", format!("{owner}: forkers never sleep; run_ms and sleep_ms are for sleepy workers")));
        }
        Kind::Forker => (0, 0),
        Kind::Sleepy => (w.run_ms.unwrap_or(2), w.sleep_ms.unwrap_or(8)),
    };
    let cpus = match (&w.cpus, candidate.is_some() || owner == "outsider") {
        (None, _) => Vec::new(),
        (Some(_), true) => return Err(err(at.clone(), "cpus", format!("{owner}: `cpus` (affinity) is for the workers of a [[group]]"))),
        (Some(c), false) if c.is_empty() || c.iter().any(|&x| x >= 64) => {
            return Err(err(at.clone(), "cpus", format!("{owner}: `cpus` lists CPU numbers 0..=63, at least one")));
        }
        (Some(c), false) => {
            let mut c = c.clone();
            c.sort_unstable();
            c.dedup();
            c
        }
    };
    if w.kind == Kind::Sleepy && !((1..=1000).contains(&run_ms) && (1..=10_000).contains(&sleep_ms)) {
        return Err(err(at.clone(), "run_ms", format!("{owner}: run_ms must be in 1..=1000 and sleep_ms in 1..=10000")));
    }
    Ok(Group {
        id: format!("{owner}/{}", w.kind.name()),
        candidate: candidate.cloned(),
        kind: w.kind,
        count,
        join: w.join,
        run_ms,
        sleep_ms,
        nice: 0,
        cpus,
        cgroup_weight: None,
    })
}

/// Every scenario in `dir` (`*.toml`), sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        match parse(&path, &name, &text) {
            Ok(s) => out.push(s),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!("{} scenario file(s) are malformed:\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(out)
}
