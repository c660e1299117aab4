//! The judge over runs recorded in the VM (`recorded/NAME.trace.json`,
//! copied from `target/vm-test/scenarios/NAME.1/`), as plain `#[test]`s
//! against the scenarios' own stored snapshots: a change to the judge shows
//! without a VM, and `cargo insta test` / `cargo insta review` apply to it
//! as to any insta snapshot.

use std::path::Path;

use crate::scenario::spec::{Policy, Scenario, Under};
use crate::scenario::trace::Trace;
use crate::scenario::{load, snapshot_dir, snapshot_for};

/// The scenario a recording belongs to (`nice-levels@fifo`: the workload
/// scenario `nice-levels` under `fifo`).
fn scenario_of(run: &str) -> Scenario {
    let (name, under) = match run.split_once('@') {
        Some((name, under)) => (name, Some(under)),
        None => (run, None),
    };
    let mut s = load().unwrap().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no scenario {name}"));
    s.under = under.map(|u| match u {
        "eevdf" => Under::Eevdf,
        "fifo" => Under::Ballot(Policy::Fifo),
        "vruntime" => Under::Ballot(Policy::Vruntime),
        other => panic!("recorded run under {other}: only eevdf, fifo and vruntime are recorded"),
    });
    s
}

#[test]
fn recorded_runs_judge_to_their_stored_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scenario/judge/tests/recorded");
    let mut runs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort();
    assert!(runs.len() >= 5, "recordings in {}", dir.display());
    for path in runs {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let run = file.strip_suffix(".trace.json").unwrap_or_else(|| panic!("{file}: not NAME.trace.json"));
        let s = scenario_of(run);
        let t: Trace = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let text = crate::scenario::judge::snapshot(&s, &t);
        let name = snapshot_for(&s, t.cpus);
        insta::with_settings!({
            snapshot_path => snapshot_dir(),
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name, text);
        });
    }
}
