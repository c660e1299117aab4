//! The first-light checks: what `vm/first-light.sh` measured in the guest,
//! and the verdict on it. The guest only records facts (`key=value` lines);
//! every judgement is made here, on the host, where it is unit-tested.

use crate::host::vm_test::facts::{CaseFacts, Verdict};

/// The least share of the window that the SCHED_EXT burner must get while
/// the scheduler is attached. With two vCPUs and one fair burner beside it,
/// a working scheduler gives it close to a whole CPU.
pub const MIN_EXT_SHARE: f64 = 0.25;

/// What went wrong with a case that should have passed; empty when it
/// passed.
pub fn failures(facts: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(facts);
    v.expect("state_after_load", "enabled", "the scheduler did not attach")
        .expect("ext_enabled_ext", "1", "the burner started with `scx_ballot exec` is not in sched_ext")
        .expect("ext_enabled_fair", "0", "the burner started normally is in sched_ext")
        .expect("state_after_window", "enabled", "the scheduler did not stay attached")
        .expect("scheduler_exit", "0", "scx_ballot did not exit cleanly on SIGINT")
        .expect("state_after_unload", "disabled", "the scheduler did not unload");
    match facts.get("ops") {
        Some(ops) if ops.starts_with("scx_ballot") => {}
        other => {
            v.fail(format!("root/ops does not name scx_ballot: {other:?}"));
        }
    }
    match facts.ext_share() {
        Some(share) if share >= MIN_EXT_SHARE => {}
        Some(share) => {
            v.fail(format!(
                "the SCHED_EXT burner got {:.1}% of the window, expected at least {:.0}%",
                share * 100.0,
                MIN_EXT_SHARE * 100.0
            ));
        }
        None => {
            v.fail("the SCHED_EXT burner's CPU time was not recorded".into());
        }
    }
    v.problems
}

/// True when `failures` of the negative-control case (a scheduler that never
/// dispatches) show that the burner was starved: the check can fail.
pub fn starvation_caught(failures: &[String]) -> bool {
    failures.iter().any(|f| f.starts_with("the SCHED_EXT burner got"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "attach_secs=4\nstate_after_load=enabled\nops=scx_ballot_0.1.0_x86_64\n\
        window_ns=5000000000\next_cpu_ns=4800000000\nfair_cpu_ns=4900000000\n\
        ext_enabled_ext=1\next_enabled_fair=0\nstate_after_window=enabled\n\
        scheduler_exit=0\nstate_after_unload=disabled\n";

    fn with(key: &str, value: &str) -> CaseFacts {
        let mut facts = CaseFacts::parse(GOOD);
        facts.set(key, value);
        facts
    }

    #[test]
    fn a_working_scheduler_passes() {
        assert_eq!(failures(&CaseFacts::parse(GOOD)), Vec::<String>::new());
    }

    #[test]
    fn a_starved_burner_fails_and_is_recognised() {
        let f = failures(&with("ext_cpu_ns", "0"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(starvation_caught(&f));
    }

    #[test]
    fn an_ejected_scheduler_fails() {
        let f = failures(&with("state_after_window", "disabled"));
        assert!(f[0].contains("did not stay attached"), "{f:?}");
        assert!(!starvation_caught(&f));
    }

    #[test]
    fn a_fair_burner_in_sched_ext_fails() {
        assert_eq!(failures(&with("ext_enabled_fair", "1")).len(), 1);
    }

    #[test]
    fn another_scheduler_name_fails() {
        assert_eq!(failures(&with("ops", "scx_simple")).len(), 1);
    }

    #[test]
    fn missing_facts_fail() {
        let f = failures(&CaseFacts::parse(""));
        assert!(f.len() >= 7, "{f:?}");
    }
}
