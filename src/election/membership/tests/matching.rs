//! Which candidate a process joins: pid, comm, cgroup and exec-marker rules,
//! creation order, boots, and the uids trusted for the rules a process chooses.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use super::*;
use crate::election::membership::tracker::{EnvState, classify, pid_member_alive};
use crate::election::procfs::{ProcInfo, parse_stat};
use crate::election::view::{CandidateStanding, Member, Standing};

fn standing() -> Standing {
    Standing {
        generation: 3,
        candidates: vec![
            CandidateStanding {
                name: "blue".into(),
                votes: 0,
                members: vec![Member::Pid {
                    pid: 4242,
                    start_time: Some(987654),
                    boot_id: Some(BOOT.into()),
                }],
            },
            CandidateStanding {
                name: "red".into(),
                votes: 0,
                members: vec![
                    Member::Comm {
                        comm: "stress ng".into(),
                    },
                    Member::Cgroup {
                        path: "/demo/red".into(),
                    },
                ],
            },
        ],
    }
}

const BOOT: &str = "5a0c2b7e-0000-4000-8000-000000000001";

/// Root is trusted, in boot [`BOOT`].
fn trust() -> Trust {
    Trust {
        uids: BTreeSet::from([0]),
        per_candidate: HashMap::new(),
        boot_id: Some(BOOT.into()),
    }
}

/// A process's facts beyond its stat; by default a root process in no
/// cgroup and without the marker.
struct Fake {
    cgroup: Option<String>,
    marker: Option<String>,
    uids: Option<(u32, u32)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            cgroup: None,
            marker: None,
            uids: Some((0, 0)),
        }
    }
}

impl ProcFacts for Fake {
    fn cgroup(&mut self) -> Option<String> {
        self.cgroup.clone()
    }
    fn marker(&mut self) -> Option<String> {
        self.marker.clone()
    }
    fn uids(&mut self) -> Option<(u32, u32)> {
        self.uids
    }
}

fn fake() -> Fake {
    Fake::default()
}

fn proc(pid: i32, comm: &str, start_time: u64, policy: i64) -> ProcInfo {
    ProcInfo {
        pid,
        comm: comm.into(),
        start_time,
        policy,
    }
}

#[test]
fn a_pid_member_matches_only_with_its_start_time() {
    let s = standing();
    let t = trust();
    assert_eq!(
        match_candidate(&s, &t, &proc(4242, "x", 987654, 0), &mut fake()),
        Some("blue")
    );
    // The same PID, recycled by a later process: not blue.
    assert_eq!(
        match_candidate(&s, &t, &proc(4242, "x", 999999, 0), &mut fake()),
        None
    );
}

#[test]
fn first_candidate_in_creation_order_wins() {
    let s = standing();
    // PID rule of blue and comm rule of red both match: blue was first.
    let p = proc(4242, "stress ng", 987654, 0);
    assert_eq!(match_candidate(&s, &trust(), &p, &mut fake()), Some("blue"));
}

#[test]
fn comm_cgroup_and_exec_marker() {
    let s = standing();
    let t = trust();
    let by_comm = proc(1, "stress ng", 1, 0);
    assert_eq!(match_candidate(&s, &t, &by_comm, &mut fake()), Some("red"));
    let by_cg = proc(2, "sh", 1, 0);
    let in_red = &mut Fake {
        cgroup: Some("/demo/red/w1".into()),
        ..fake()
    };
    assert_eq!(match_candidate(&s, &t, &by_cg, in_red), Some("red"));
    // The exec marker only counts for SCHED_EXT tasks, and only for a
    // candidate that exists.
    let marked = |name: &str| Fake {
        marker: Some(name.into()),
        ..fake()
    };
    let ext = proc(3, "sh", 1, 7);
    assert_eq!(
        match_candidate(&s, &t, &ext, &mut marked("blue")),
        Some("blue")
    );
    assert_eq!(match_candidate(&s, &t, &ext, &mut marked("gone")), None);
    let fair = proc(4, "sh", 1, 0);
    assert_eq!(match_candidate(&s, &t, &fair, &mut marked("blue")), None);
}

#[test]
fn a_pid_member_of_another_boot_matches_nothing() {
    let s = standing();
    let p = proc(4242, "x", 987654, 0);
    let other_boot = Trust {
        boot_id: Some("5a0c2b7e-0000-4000-8000-000000000002".into()),
        ..trust()
    };
    assert_eq!(match_candidate(&s, &trust(), &p, &mut fake()), Some("blue"));
    assert_eq!(match_candidate(&s, &other_boot, &p, &mut fake()), None);
    let unknown_boot = Trust {
        boot_id: None,
        ..trust()
    };
    assert_eq!(match_candidate(&s, &unknown_boot, &p, &mut fake()), None);
    // ... and is reported gone, though the same (pid, start time) runs.
    let rule = &s.candidates[0].members[0];
    let seen = HashSet::from([(4242, 987654)]);
    assert!(pid_member_alive(rule, &seen, Some(BOOT)));
    assert!(!pid_member_alive(
        rule,
        &seen,
        other_boot.boot_id.as_deref()
    ));
    // A member journaled without a boot id matches by pid and start time.
    let legacy = Member::Pid {
        pid: 4242,
        start_time: Some(987654),
        boot_id: None,
    };
    assert!(pid_member_alive(&legacy, &seen, Some(BOOT)));
}

#[test]
fn comm_rules_and_the_marker_count_only_for_trusted_uids() {
    let s = standing();
    let root = trust();
    let nobody = |marker: Option<&str>| Fake {
        marker: marker.map(str::to_string),
        uids: Some((65534, 65534)),
        ..fake()
    };
    let by_comm = proc(1, "stress ng", 1, 0);
    let ext = proc(3, "sh", 1, 7);
    assert_eq!(
        match_candidate(&s, &root, &by_comm, &mut nobody(None)),
        None
    );
    assert_eq!(
        match_candidate(&s, &root, &ext, &mut nobody(Some("blue"))),
        None
    );
    // Unknown uids (the process is gone) are not trusted either.
    let gone = &mut Fake {
        uids: None,
        ..fake()
    };
    assert_eq!(match_candidate(&s, &root, &by_comm, gone), None);
    // Both the real and the effective uid must be trusted (a setuid
    // program run by nobody, or root acting as nobody, is not).
    for uids in [(65534, 0), (0, 65534)] {
        let f = &mut Fake {
            uids: Some(uids),
            ..fake()
        };
        assert_eq!(match_candidate(&s, &root, &by_comm, f), None, "{uids:?}");
    }
    // Rules the admin sets join nobody's processes all the same.
    let in_red = &mut Fake {
        cgroup: Some("/demo/red".into()),
        ..nobody(None)
    };
    assert_eq!(
        match_candidate(&s, &root, &proc(2, "sh", 1, 0), in_red),
        Some("red")
    );
    assert_eq!(
        match_candidate(&s, &root, &proc(4242, "x", 987654, 0), &mut nobody(None)),
        Some("blue")
    );
    // Trusted for every candidate (--member-uid) ...
    let everywhere = Trust {
        uids: BTreeSet::from([0, 65534]),
        ..trust()
    };
    assert_eq!(
        match_candidate(&s, &everywhere, &by_comm, &mut nobody(None)),
        Some("red")
    );
    assert_eq!(
        match_candidate(&s, &everywhere, &ext, &mut nobody(Some("blue"))),
        Some("blue")
    );
    // ... or for one (the candidates file's `uids`).
    let red_only = Trust {
        per_candidate: HashMap::from([("red".to_string(), BTreeSet::from([65534]))]),
        ..trust()
    };
    assert_eq!(
        match_candidate(&s, &red_only, &by_comm, &mut nobody(None)),
        Some("red")
    );
    assert_eq!(
        match_candidate(&s, &red_only, &ext, &mut nobody(Some("blue"))),
        None
    );
}

/// A child process, killed and reaped on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sleep 30` as `uid` (none: as this process), once it has exec'd.
fn sleeper(uid: Option<u32>) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let child = Child(cmd.spawn().expect("start sleep"));
    let pid = child.0.id() as i32;
    wait_for_stat(pid, |stat| {
        parse_stat(stat).is_some_and(|(comm, ..)| comm == "sleep")
    });
    child
}

#[test]
fn a_live_process_of_an_untrusted_uid_does_not_join_by_comm() {
    let own = Trust::new([], []).expect("this process's uid");
    let me = *own.uids.first().expect("its own uid");
    // As root the stranger is nobody; otherwise it runs as this user,
    // and the trust is root's alone.
    let (stranger, trusting) = if me == 0 {
        (Some(65534), own.clone())
    } else {
        (
            None,
            Trust {
                uids: BTreeSet::from([0]),
                ..own.clone()
            },
        )
    };
    let theirs = sleeper(stranger);
    let mine = sleeper(None);
    let s = Standing {
        generation: 1,
        candidates: vec![CandidateStanding {
            name: "red".into(),
            votes: 0,
            members: vec![Member::Comm {
                comm: "sleep".into(),
            }],
        }],
    };
    let candidate = |child: &Child, trust: &Trust| {
        let pid = child.0.id() as i32;
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let (info, found, _) =
            classify(&dir, pid, &s, trust, &mut EnvState::default()).expect("the child runs");
        assert_eq!(info.comm, "sleep");
        found.map(str::to_string)
    };
    assert_eq!(candidate(&theirs, &trusting), None, "untrusted uid");
    if me == 0 {
        assert_eq!(
            candidate(&mine, &trusting),
            Some("red".into()),
            "root's own"
        );
    }
    let uid = stranger.unwrap_or(me);
    let trusted = Trust {
        uids: trusting.uids.iter().copied().chain([uid]).collect(),
        ..trusting.clone()
    };
    assert_eq!(
        candidate(&theirs, &trusted),
        Some("red".into()),
        "--member-uid"
    );
}
