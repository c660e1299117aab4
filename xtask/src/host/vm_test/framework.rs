//! The framework checks: what `vm/framework.sh` recorded in the guest, and
//! the verdict on it.

use std::path::Path;

use crate::host::vm_test::facts::{CaseFacts, Verdict};

/// The longest a shell command may take in the guest while full mode is
/// under stress (TCG is slow; a stuck scheduler takes forever).
pub const MAX_COMMAND_MS: i64 = 5000;
/// Equal burners under `fifo`: the least-served gets at least this fraction
/// of the best-served one's CPU time.
pub const MIN_EQUAL_RATIO: f64 = 0.6;
/// Under `vruntime`, nice-0 burners get at least this many times the CPU
/// time of nice-10 burners.
pub const MIN_NICE_RATIO: f64 = 1.5;

/// A case's judge: its problems, none when it passed.
pub type Judge = fn(&CaseFacts) -> Vec<String>;

/// The cases of the suite, each with its title and judge.
pub const CASES: &[(&str, &str, Judge)] = &[
    ("stress-fifo", "fifo, partial mode, under CPU + memory stress: never ejected, user-space path used", stress),
    ("stress-vruntime", "vruntime, partial mode, under CPU + memory stress: never ejected, user-space path used", stress),
    ("full-vruntime", "vruntime, full mode, under stress: never ejected, a shell command stays prompt", full),
    ("share-fifo", "fifo: equal SCHED_EXT burners get roughly equal CPU time", share_fifo),
    ("share-vruntime", "vruntime: nice 0 burners get clearly more than nice 10 burners", share_vruntime),
    ("sigkill", "SIGKILL of the scheduler: SCHED_EXT tasks keep running, state back to disabled", sigkill),
    ("sigstop", "SIGSTOP of the scheduler past the watchdog timeout: still attached, every burner ran", sigstop),
    ("full-threads", "full mode: only the scheduling loop jumps the queue; the scheduler's other threads wait their turn", full_threads),
];

/// In `full-threads`, the membership thread's least average wait per run:
/// behind 16 burners per CPU on 5 ms slices a task waits tens of
/// milliseconds; dispatched ahead of everyone it waits for one slice end.
pub const MIN_OTHER_THREAD_WAIT_US: i64 = 15_000;

pub fn stress(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    v.expect("state_after_load", "enabled", "the scheduler did not attach")
        .expect("stress_exit", "0", "stress-ng did not complete")
        .expect("state_after_load_ended", "enabled", "the scheduler did not stay attached (ejected?)")
        .expect("scheduler_exit", "0", "scx_ballot did not exit cleanly on SIGINT")
        .expect("state_after_unload", "disabled", "the scheduler did not unload")
        .expect_in("user_dispatches", 1..=i64::MAX, "the user-space path was not used");
    v.problems
}

pub fn full(f: &CaseFacts) -> Vec<String> {
    let mut problems = stress(f);
    let mut v = Verdict::new(f);
    v.expect_in("worst_command_ms", 0..=MAX_COMMAND_MS, "the system was not responsive");
    problems.append(&mut v.problems);
    problems
}

/// The per-mille shares of the burners, with their nice values.
fn shares(f: &CaseFacts) -> Vec<(i64, i64)> {
    (0..)
        .map_while(|i| Some((f.num(&format!("burner{i}_nice"))?, f.num(&format!("burner{i}_permille"))?)))
        .collect()
}

fn share_common(f: &CaseFacts) -> Verdict<'_> {
    let mut v = Verdict::new(f);
    v.expect("state_after_window", "enabled", "the scheduler did not stay attached")
        .expect("scheduler_exit", "0", "scx_ballot did not exit cleanly on SIGINT")
        .expect_in("user_dispatches", 1..=i64::MAX, "the user-space path was not used");
    v
}

pub fn share_fifo(f: &CaseFacts) -> Vec<String> {
    let mut v = share_common(f);
    let s = shares(f);
    let (min, max) = (s.iter().map(|x| x.1).min(), s.iter().map(|x| x.1).max());
    match (min, max) {
        (Some(min), Some(max)) if s.len() >= 2 && min as f64 >= MIN_EQUAL_RATIO * max as f64 => {}
        _ => {
            v.fail(format!("equal burners got unequal CPU time (per mille): {s:?}"));
        }
    }
    v.problems
}

pub fn share_vruntime(f: &CaseFacts) -> Vec<String> {
    let mut v = share_common(f);
    let s = shares(f);
    let avg = |nice: i64| {
        let of: Vec<i64> = s.iter().filter(|x| x.0 == nice).map(|x| x.1).collect();
        (!of.is_empty()).then(|| of.iter().sum::<i64>() as f64 / of.len() as f64)
    };
    match (avg(0), avg(10)) {
        (Some(n0), Some(n10)) if n0 >= MIN_NICE_RATIO * n10 => {}
        _ => {
            v.fail(format!(
                "nice 0 did not get {MIN_NICE_RATIO}x the CPU time of nice 10 (nice, per mille): {s:?}"
            ));
        }
    }
    v.problems
}

pub fn sigkill(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    v.expect("state_after_kill", "disabled", "the kernel did not unload the killed scheduler")
        .expect("burner_alive", "1", "the SCHED_EXT burner died with the scheduler");
    let window = f.num("window_ns").unwrap_or(0);
    v.expect_in(
        "burner_cpu_ns_after_kill",
        window / 4..=i64::MAX,
        "the SCHED_EXT burner did not keep running in the fair class",
    );
    v.problems
}

pub fn sigstop(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    v.expect("state_while_stopped", "enabled", "the stopped scheduler was ejected")
        .expect("state_after_cont", "enabled", "the scheduler did not survive being stopped")
        .expect("scheduler_exit", "0", "scx_ballot did not exit cleanly on SIGINT")
        .expect_in("rescued", 1..=i64::MAX, "the BPF side rescued nothing while the policy was stopped");
    // Every burner gets at least a quarter of an equal share meanwhile.
    let fair = f.num("window_ns").unwrap_or(0) * f.num("cpus").unwrap_or(0)
        / f.num("burners").unwrap_or(1).max(1);
    v.expect_in(
        "least_burner_cpu_ns_while_stopped",
        (fair / 4).max(1)..=i64::MAX,
        "a burner got (almost) no CPU while the policy was stopped",
    );
    v.problems
}

pub fn full_threads(f: &CaseFacts) -> Vec<String> {
    let mut v = Verdict::new(f);
    v.expect("state_after_window", "enabled", "the scheduler did not stay attached")
        .expect("scheduler_exit", "0", "scx_ballot did not exit cleanly on SIGINT")
        .expect_in("membership_runs", 5..=i64::MAX, "the membership thread was not seen running")
        .expect_in(
            "membership_wait_us_per_run",
            MIN_OTHER_THREAD_WAIT_US..=i64::MAX,
            "the scheduler's membership thread jumped the queue (dispatched ahead of every task)",
        );
    v.problems
}

/// Judges every case found under `dir`; a case that left no facts fails.
pub fn judge(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    CASES
        .iter()
        .map(|(case, title, judge)| {
            let facts = CaseFacts::read(&dir.join(case));
            let mut problems = judge(&facts);
            if facts.get("scheduler_exit").is_none() && facts.get("state_after_kill").is_none() {
                problems.insert(0, format!("case {case} recorded nothing (did the guest run it?)"));
            }
            (*title, problems)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRESS_OK: &str = "state_after_load=enabled\nstress_exit=0\nstate_after_load_ended=enabled\n\
        scheduler_exit=0\nstate_after_unload=disabled\nuser_dispatches=5135\nrescued=0\n";

    #[test]
    fn a_clean_stress_run_passes() {
        assert!(stress(&CaseFacts::parse(STRESS_OK)).is_empty());
    }

    #[test]
    fn an_ejection_under_stress_fails() {
        let text = STRESS_OK.replace("state_after_load_ended=enabled", "state_after_load_ended=disabled");
        assert_eq!(stress(&CaseFacts::parse(&text)).len(), 1);
    }

    #[test]
    fn no_user_dispatch_fails() {
        let text = STRESS_OK.replace("user_dispatches=5135", "user_dispatches=0");
        assert_eq!(stress(&CaseFacts::parse(&text)).len(), 1);
    }

    #[test]
    fn a_slow_shell_in_full_mode_fails() {
        let ok = format!("{STRESS_OK}worst_command_ms=724\n");
        assert!(full(&CaseFacts::parse(&ok)).is_empty());
        let slow = format!("{STRESS_OK}worst_command_ms=9000\n");
        assert_eq!(full(&CaseFacts::parse(&slow)).len(), 1);
    }

    fn share_text(pairs: &[(i64, i64)]) -> String {
        let mut t = String::from("state_after_window=enabled\nscheduler_exit=0\nuser_dispatches=10\n");
        for (i, (nice, pm)) in pairs.iter().enumerate() {
            t += &format!("burner{i}_nice={nice}\nburner{i}_permille={pm}\n");
        }
        t
    }

    #[test]
    fn fifo_shares() {
        let even = share_text(&[(0, 248), (0, 256), (0, 248), (0, 245)]);
        assert!(share_fifo(&CaseFacts::parse(&even)).is_empty());
        let skewed = share_text(&[(0, 400), (0, 400), (0, 100), (0, 100)]);
        assert_eq!(share_fifo(&CaseFacts::parse(&skewed)).len(), 1);
    }

    #[test]
    fn vruntime_shares() {
        let good = share_text(&[(0, 332), (0, 324), (10, 173), (10, 168)]);
        assert!(share_vruntime(&CaseFacts::parse(&good)).is_empty());
        let flat = share_text(&[(0, 250), (0, 250), (10, 250), (10, 250)]);
        assert_eq!(share_vruntime(&CaseFacts::parse(&flat)).len(), 1);
    }

    #[test]
    fn sigstop_needs_every_burner_to_run_and_no_ejection() {
        let ok = "state_while_stopped=enabled\nstate_after_cont=enabled\nscheduler_exit=0\nrescued=40\n\
            burners=8\ncpus=2\nwindow_ns=4000000000\nleast_burner_cpu_ns_while_stopped=900000000\n";
        assert!(sigstop(&CaseFacts::parse(ok)).is_empty());
        for least in ["0", "190000000"] {
            let starved = ok.replace("=900000000", &format!("={least}"));
            assert_eq!(sigstop(&CaseFacts::parse(&starved)).len(), 1, "{least}");
        }
        let ejected = ok.replace("state_while_stopped=enabled", "state_while_stopped=disabled");
        assert!(!sigstop(&CaseFacts::parse(&ejected)).is_empty());
    }

    #[test]
    fn full_threads_needs_the_other_threads_to_wait_their_turn() {
        let ok = "state_after_window=enabled\nscheduler_exit=0\nmembership_runs=80\n\
            membership_wait_us_per_run=70000\nloop_wait_us_per_run=900\n";
        assert!(full_threads(&CaseFacts::parse(ok)).is_empty());
        let jumped = ok.replace("=70000", "=2500");
        assert_eq!(full_threads(&CaseFacts::parse(&jumped)).len(), 1);
    }

    #[test]
    fn sigkill_needs_the_burner_running_after() {
        let ok = "state_after_kill=disabled\nwindow_ns=3000000000\nburner_cpu_ns_after_kill=3021327613\nburner_alive=1\n";
        assert!(sigkill(&CaseFacts::parse(ok)).is_empty());
        let stuck = ok.replace("state_after_kill=disabled", "state_after_kill=enabled");
        assert_eq!(sigkill(&CaseFacts::parse(&stuck)).len(), 1);
    }
}
