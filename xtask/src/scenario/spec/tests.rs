//! Tests of the scenario file parser.

use std::path::Path;

use anyhow::Result;

use super::*;
use super::file::{parse, load_dir};

fn p(text: &str) -> Result<Scenario> {
    parse(Path::new("vm/scenarios/t.toml"), "t", text)
}

const GOOD: &str = r#"
description = "two candidates"
mode = "winner"

[[candidate]]
name = "blue"
workers = [{ kind = "burner", per_cpu = 2 }]

[[candidate]]
name = "green"
registered = false
workers = [{ kind = "sleepy", count = 1, run_ms = 3 }]

[[outsider]]
kind = "burner"
count = 1

[[phase]]
name = "quiet"

[[phase]]
name = "green arrives"
register = ["green"]
votes = { green = 3, blue = 0 }
stop = { blue = "all" }
"#;

#[test]
fn a_good_file_parses() {
    let s = p(GOOD).unwrap();
    assert_eq!(s.candidates, vec!["blue"]);
    let ids: Vec<_> = s.groups.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["blue/burner", "green/sleepy", "outsider/burner"]);
    assert_eq!(s.groups[0].count.resolve(4), 8);
    assert_eq!((s.groups[1].run_ms, s.groups[1].sleep_ms), (3, 8));
    assert_eq!(s.phases[0].seconds, 4.0);
    assert_eq!(s.phases[1].votes, vec![("green".to_string(), 3)]);
    assert_eq!(s.phases[1].stop, vec![("blue".to_string(), Stop::All)]);
}

fn error_of(text: &str) -> String {
    format!("{:#}", p(text).unwrap_err())
}

#[test]
fn errors_name_file_line_and_field() {
    let e = error_of(&GOOD.replace("per_cpu = 2", "per_cpu = \"two\""));
    assert!(e.starts_with("vm/scenarios/t.toml:7 (field `per_cpu`)"), "{e}");

    let e = error_of(&GOOD.replace("mode = \"winner\"", "mode = \"loudest\""));
    assert!(e.starts_with("vm/scenarios/t.toml:3 (field `mode`)"), "{e}");

    let e = error_of(&GOOD.replace("name = \"quiet\"", "name = \"quiet\"\nsecods = 3"));
    assert!(e.contains("unknown field `secods`"), "{e}");
}

#[test]
fn references_are_checked() {
    let e = error_of(&GOOD.replace("votes = { green = 3", "votes = { purple = 3"));
    assert!(e.contains("(field `votes`)") && e.contains("\"purple\""), "{e}");
    // Voting for green before it is registered.
    let e = error_of(&GOOD.replace("name = \"quiet\"", "name = \"quiet\"\nvotes = { green = 1 }"));
    assert!(e.contains(":20 (field `votes`)"), "{e}");
    let e = error_of(&GOOD.replace("stop = { blue = \"all\" }", "stop = { blue = \"most\" }"));
    assert!(e.contains("(field `stop`)"), "{e}");
    let e = error_of(&GOOD.replace("register = [\"green\"]", "register = [\"blue\"]"));
    assert!(e.contains("registered = false"), "{e}");
}

#[test]
fn workers_are_checked() {
    let e = error_of(&GOOD.replace("per_cpu = 2", "per_cpu = 2, count = 1"));
    assert!(e.contains(":7 (field `count`)") && e.contains("not both"), "{e}");
    let e = error_of(&GOOD.replace("kind = \"burner\", per_cpu = 2", "kind = \"burner\", per_cpu = 2, run_ms = 4"));
    assert!(e.contains("burners never sleep"), "{e}");
    let e = error_of(&GOOD.replace("count = 1, run_ms = 3", "count = 1, join = \"pid\""));
    assert!(e.contains("cannot join by pid"), "{e}");
    let e = error_of(&GOOD.replace("policy", "x").replace("mode = \"winner\"", "policy = \"fifo\""));
    assert!(e.contains("needs policy = \"election\""), "{e}");
}

#[test]
fn the_shipped_scenarios_parse() {
    let dir = crate::project_root().join("vm/scenarios");
    let all = load_dir(&dir).unwrap();
    assert!(all.len() >= 9, "{} scenarios", all.len());
}

const WORKLOAD: &str = r#"
description = "no election"

[[group]]
name = "interactive"
nice = -2
workers = [{ kind = "sleepy", count = 1, cpus = [1, 0, 1] }]

[[group]]
name = "burners"
cgroup_weight = 300
workers = [{ kind = "burner", per_cpu = 2 }]

[[phase]]
name = "run"

[[expect]]
group = "interactive"
wait_vs_eevdf = 2.0
schedulers = ["vruntime"]
"#;

#[test]
fn a_workload_file_parses_with_nice_affinity_and_expectations() {
    let s = p(WORKLOAD).unwrap();
    assert!(s.workload && !s.is_election());
    assert_eq!((s.groups[0].id.as_str(), s.groups[0].nice, s.groups[0].cpus.clone()), ("interactive/sleepy", -2, vec![0, 1]));
    assert!(s.groups[1].cpus.is_empty());
    assert_eq!((s.groups[0].cgroup_weight, s.groups[1].cgroup_weight), (None, Some(300)));
    assert_eq!(s.expect.len(), 1);
    assert_eq!((s.expect[0].wait_vs_eevdf, s.expect[0].schedulers.clone()), (Some(2.0), vec!["vruntime".to_string()]));
}

#[test]
fn a_workload_file_refuses_election_keys_and_bad_expectations() {
    let e = error_of(&WORKLOAD.replace("description = \"no election\"", "description = \"x\"\nmode = \"winner\""));
    assert!(e.contains(":3 (field `mode`)") && e.contains("no election"), "{e}");
    let e = error_of(&WORKLOAD.replace("group = \"interactive\"\nwait", "group = \"nobody\"\nwait"));
    assert!(e.contains("no [[group]] named \"nobody\""), "{e}");
    let e = error_of(&WORKLOAD.replace("group = \"interactive\"\nwait_vs_eevdf", "group = \"burners\"\nwait_vs_eevdf"));
    assert!(e.contains("no sleepy workers"), "{e}");
    let e = error_of(&WORKLOAD.replace("wait_vs_eevdf = 2.0", "wait_vs_eevdf = -1.0"));
    assert!(e.contains("(field `wait_vs_eevdf`)") && e.contains("not a ratio"), "{e}");
    let e = error_of(&WORKLOAD.replace("schedulers = [\"vruntime\"]", "schedulers = [\"eevdf\"]"));
    assert!(e.contains("baseline"), "{e}");
    let e = error_of(&WORKLOAD.replace("cpus = [1, 0, 1]", "cpus = []"));
    assert!(e.contains("(field `cpus`)"), "{e}");
    let e = error_of(&WORKLOAD.replace("cgroup_weight = 300", "cgroup_weight = 0"));
    assert!(e.contains("(field `cgroup_weight`)") && e.contains("1..=10000"), "{e}");
    let e = error_of(&WORKLOAD.replace("kind = \"burner\", per_cpu = 2", "kind = \"burner\", per_cpu = 2, cpus = [0]"));
    assert!(e.contains("not modelled"), "{e}");
    // Affinity and expectations are for workload groups only.
    let e = error_of(&GOOD.replace("per_cpu = 2 }", "per_cpu = 2, cpus = [0] }"));
    assert!(e.contains(":7 (field `cpus`)"), "{e}");
    let e = error_of(&format!("{GOOD}\n[[expect]]\ngroup = \"blue\"\nshare_vs_eevdf = 1.0\n"));
    assert!(e.contains("(field `expect`)"), "{e}");
}

#[test]
fn a_restart_is_read_and_needs_an_election() {
    let s = p(&format!("{GOOD}\n[[phase]]\nname = \"after a restart\"\nrestart = true\n")).unwrap();
    assert_eq!(s.phases.iter().map(|p| p.restart).collect::<Vec<_>>(), [false, false, true]);
    let fifo = "description = \"d\"\npolicy = \"fifo\"\n\n[[candidate]]\nname = \"blue\"\nworkers = [{ kind = \"burner\", count = 1 }]\n\n[[phase]]\nname = \"again\"\nrestart = true\n";
    let e = format!("{:#}", p(fifo).unwrap_err());
    assert!(e.contains("restart") && e.contains("election"), "{e}");
}
