//! The election checks: what `vm/election.sh` recorded in the guest, and
//! the verdict on it. Shares are per mille of the burners' CPU time, from
//! the kernel's accounting.

use std::path::Path;

use crate::host::vm_test::facts::{CaseFacts, Verdict};

/// The leader's burners get at least this much (per mille) in winner mode.
pub const LEADER_MIN: i64 = 800;
/// The others get at most this much: their minimum, not a fair share.
pub const LOSER_MAX: i64 = 150;
/// ... and at least this much: they are never starved.
pub const LOSER_MIN: i64 = 10;
/// Without votes the two candidates get within this much of half each.
pub const FAIR_SLACK: i64 = 150;
/// 30:10 votes in proportional mode (weights 31:11): the CPU ratio must be
/// within this range.
pub const PROPORTIONAL_RATIO: std::ops::RangeInclusive<f64> = 2.0..=4.5;

/// (title, problems) for each check.
pub fn judge(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    let run = CaseFacts::read(dir);
    let phase = |name: &str| CaseFacts::parse(&std::fs::read_to_string(dir.join(format!("{name}.result"))).unwrap_or_default());
    vec![
        ("election: no votes, both candidates share the CPU fairly", uncontested(&phase("uncontested"))),
        ("election: winner mode, the leader's burners get most, the other only its minimum", leads(&phase("blue-leads"), "blue", "red")),
        ("election: after the lead changes, the shares flip", leads(&phase("red-leads"), "red", "blue")),
        ("election: proportional mode, 30:10 votes give about 3:1 CPU", proportional(&phase("proportional"))),
        ("election: after SIGKILL and restart the tally is intact; clean exits", durable(&run)),
    ]
}

fn attached(v: &mut Verdict<'_>) {
    v.expect("state", "enabled", "the scheduler did not stay attached (ejected?)");
}

pub fn uncontested(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    attached(&mut v);
    v.expect_in("blue_permille", 500 - FAIR_SLACK..=500 + FAIR_SLACK, "no votes should mean fair shares");
    v.problems
}

pub fn leads(f: &CaseFacts, leader: &str, other: &str) -> Vec<String> {
    let mut v = Verdict::new(f);
    attached(&mut v);
    v.expect_in(&format!("{leader}_permille"), LEADER_MIN..=1000, "the leader did not get most of the CPU")
        .expect_in(&format!("{other}_permille"), LOSER_MIN..=LOSER_MAX, "the other candidate did not get just its minimum");
    v.problems
}

pub fn proportional(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    attached(&mut v);
    match (f.num("blue_permille"), f.num("red_permille")) {
        (Some(b), Some(r)) if r > 0 && PROPORTIONAL_RATIO.contains(&(b as f64 / r as f64)) => {}
        (b, r) => {
            v.fail(format!("blue:red CPU was {b:?}:{r:?} per mille, expected a ratio in {PROPORTIONAL_RATIO:?}"));
        }
    }
    v.problems
}

/// The votes and the leader of a `GET /votes` body (its generation grows
/// with every change, a restart included).
fn tally(body: &str) -> Option<(std::collections::BTreeMap<String, u64>, Option<String>)> {
    let t: scx_ballot_api::Tally = serde_json::from_str(body).ok()?;
    Some((t.votes, t.leader))
}

pub fn durable(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    v.expect("attached", "enabled", "the election scheduler did not attach")
        .expect("winner_exit", "0", "scx_ballot did not exit cleanly on SIGINT")
        .expect("state_after_restart", "enabled", "the restarted scheduler did not attach")
        .expect("restarted_exit", "0", "the restarted scheduler did not exit cleanly");
    let before = f.get("tally_before_kill").and_then(tally);
    let after = f.get("tally_after_restart").and_then(tally);
    match (&before, &after) {
        (Some(b), Some(a)) if a == b && b.0.get("blue").copied() == Some(30) => {}
        _ => {
            v.fail(format!(
                "the tally did not survive SIGKILL and restart: before {:?}, after {:?}",
                f.get("tally_before_kill"),
                f.get("tally_after_restart")
            ));
        }
    }
    v.problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(blue: i64, red: i64) -> CaseFacts {
        CaseFacts::parse(&format!("blue_permille={blue}\nred_permille={red}\nstate=enabled\n"))
    }

    #[test]
    fn shares_are_judged() {
        assert!(uncontested(&phase(480, 520)).is_empty());
        assert_eq!(uncontested(&phase(900, 100)).len(), 1);
        assert!(leads(&phase(950, 50), "blue", "red").is_empty());
        assert_eq!(leads(&phase(600, 400), "blue", "red").len(), 2);
        // A starved loser fails too.
        assert_eq!(leads(&phase(1000, 0), "blue", "red").len(), 1);
        assert!(proportional(&phase(740, 260)).is_empty());
        assert_eq!(proportional(&phase(500, 500)).len(), 1);
    }

    #[test]
    fn the_tally_must_survive() {
        let body = r#"{"votes":{"blue":30,"red":10},"leader":"blue","generation":44}"#;
        let later = r#"{"votes":{"blue":30,"red":10},"leader":"blue","generation":3}"#;
        let ok = format!(
            "attached=enabled\nwinner_exit=0\nstate_after_restart=enabled\nrestarted_exit=0\n\
             tally_before_kill={body}\ntally_after_restart={later}\n"
        );
        assert!(durable(&CaseFacts::parse(&ok)).is_empty());
        let lost = ok.replace(r#"tally_after_restart={"votes":{"blue":30"#, r#"tally_after_restart={"votes":{"blue":29"#);
        assert_eq!(durable(&CaseFacts::parse(&lost)).len(), 1);
    }
}
