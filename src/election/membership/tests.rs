//! Tests of the membership rules, the nudge, the /proc reader and the tracker's scan.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tracker::{EnvState, ProcDir, classify, pid_member_alive};
use super::*;
use crate::election::procfs::{
    Environ, ProcInfo, candidate_from_environ, classify_environ, parse_cgroup, parse_stat, read_environ,
};
use crate::election::view::{CandidateStanding, Member, Standing};

const STAT: &str = "4242 (stress ng) R 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 \
    987654 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 7 0 0 0";

#[test]
fn a_task_asks_for_a_scan_when_its_process_is_not_as_seen() {
    use crate::sched::fake::task;
    let mut m = Membership::default();
    let mut t = task(10, 100, 0, 1); // comm "burn", SCHED_EXT
    assert!(m.lookup(&t).1, "a process the scan never saw");
    m.seen.insert(
        10,
        Seen {
            candidate: None,
            comm: "burn".into(),
            sched_ext: true,
        },
    );
    assert!(!m.lookup(&t).1);
    m.seen.insert(
        10,
        Seen {
            candidate: None,
            comm: "sh".into(),
            sched_ext: true,
        },
    );
    assert!(m.lookup(&t).1, "it exec'd since");
    // Threads may name themselves: only the main thread's comm counts.
    t.pid = 11;
    assert!(!m.lookup(&t).1);
    m.seen.insert(
        10,
        Seen {
            candidate: None,
            comm: "burn".into(),
            sched_ext: false,
        },
    );
    assert!(m.lookup(&t).1, "it switched to SCHED_EXT since");
}

#[test]
fn a_nudge_stays_pending_until_taken() {
    let n = Nudge::default();
    assert!(!n.pending());
    n.ask();
    n.ask();
    let t = Instant::now();
    n.wait(Duration::from_secs(5));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a pending ask ends the wait at once"
    );
    assert!(n.pending());
    n.take();
    assert!(!n.pending());
}

#[test]
fn an_ask_from_another_thread_ends_the_wait() {
    let n = Arc::new(Nudge::default());
    let waiter = {
        let n = n.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            n.wait(Duration::from_secs(30));
            t.elapsed()
        })
    };
    // Until the waiter has registered, an ask stays pending and the
    // wait returns at once; either way it must not sit out 30 s.
    std::thread::sleep(Duration::from_millis(50));
    n.ask();
    let waited = waiter.join().unwrap();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(n.pending());
}

#[test]
fn stat_fields_are_read_after_the_comm() {
    assert_eq!(parse_stat(STAT), Some(("stress ng".into(), 987654, 7)));
    assert_eq!(parse_stat("garbage"), None);
}

#[test]
fn cgroup_rules_match_the_path_and_below_only() {
    assert_eq!(parse_cgroup("0::/demo/blue\n"), Some("/demo/blue"));
    assert!(cgroup_within("/demo/blue", "/demo/blue"));
    assert!(cgroup_within("/demo/blue/worker", "/demo/blue/"));
    assert!(!cgroup_within("/demo/blueberry", "/demo/blue"));
    assert!(cgroup_within("/anything", "/"));
}

#[test]
fn the_exec_marker_is_found_in_the_environment() {
    let env = b"PATH=/bin\0SCX_BALLOT_CANDIDATE=blue\0HOME=/root\0";
    assert_eq!(candidate_from_environ(env), Some("blue".into()));
    assert_eq!(candidate_from_environ(b"SCX_BALLOT_CANDIDATEX=1\0"), None);
}

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

/// Waits (at most 5 s) until `pid`'s /proc/PID/stat satisfies `ready`.
fn wait_for_stat(pid: i32, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if ready(&stat) {
            return stat;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never got ready: {stat:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
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

#[test]
fn an_unreadable_environment_is_no_exec() {
    use std::io::Error;
    for errno in [libc::ESRCH, libc::EACCES] {
        let read = Err(Error::from_raw_os_error(errno));
        assert_eq!(classify_environ(read), Environ::Unreadable, "errno {errno}");
    }
    assert_eq!(classify_environ(Ok(Vec::new())), Environ::Empty);
    assert_eq!(
        classify_environ(Ok(b"A=1\0SCX_BALLOT_CANDIDATE=blue\0".to_vec())),
        Environ::Read(Some("blue".into()))
    );
    assert_eq!(classify_environ(Ok(b"A=1\0".to_vec())), Environ::Read(None));
}

/// A fake /proc/PID folder: `environ` (`None`: unreadable, a folder)
/// and the environ of its threads, by tid.
pub(super) fn fake_proc(
    dir: &Path,
    pid: i32,
    environ: Option<&[u8]>,
    threads: &[(i32, &[u8])],
) -> PathBuf {
    let proc_dir = dir.join(pid.to_string());
    std::fs::create_dir_all(proc_dir.join("task")).expect("create");
    match environ {
        Some(bytes) => std::fs::write(proc_dir.join("environ"), bytes).expect("write"),
        None => std::fs::create_dir_all(proc_dir.join("environ")).expect("create"),
    }
    for (tid, bytes) in threads {
        let task = proc_dir.join("task").join(tid.to_string());
        std::fs::create_dir_all(&task).expect("create");
        std::fs::write(task.join("environ"), bytes).expect("write");
    }
    proc_dir
}

/// What the scan's marker lookup of the process at `dir` finds in one
/// scan: (marker, in the middle of an exec).
pub(super) fn marker_in_scan(dir: &Path, env: &mut EnvState) -> (Option<String>, bool) {
    let key = (7, 100, "burn".to_string());
    let mut facts = ProcDir {
        dir: dir.to_path_buf(),
        key,
        env,
        mid_exec: false,
    };
    let found = facts.marker();
    let mid_exec = facts.mid_exec;
    env.end_scan(&HashSet::from([(7, 100)]));
    (found, mid_exec)
}

#[test]
fn a_process_without_its_main_thread_is_no_exec() {
    let tmp = crate::ballot::store::tests::TempDir::new("environ");
    let marked: &[u8] = b"SCX_BALLOT_CANDIDATE=blue\0";
    // The main thread exited (its environ fails with ESRCH); another
    // thread shares the memory and has the marker.
    let dir = fake_proc(tmp.path(), 7, None, &[(7, b""), (8, marked)]);
    let mut env = EnvState::default();
    assert_eq!(marker_in_scan(&dir, &mut env), (Some("blue".into()), false));
    // No thread readable: no marker; maybe a read in the middle of an
    // exec, so it is asked again in the next scan, and only then taken
    // as no exec.
    let dir = fake_proc(&tmp.path().join("b"), 7, None, &[]);
    let mut env = EnvState::default();
    assert_eq!(marker_in_scan(&dir, &mut env), (None, true));
    assert_eq!(marker_in_scan(&dir, &mut env), (None, false));
}

/// A process whose main thread has exited while another thread runs
/// on (for at most 20 s); killed and reaped on drop.
struct ZombieLeader(i32);

impl ZombieLeader {
    fn start() -> ZombieLeader {
        extern "C" fn linger(_: *mut libc::c_void) -> *mut libc::c_void {
            // SAFETY: sleep and _exit have no preconditions; _exit ends
            // the child without running the parent's copied state.
            unsafe {
                libc::sleep(20);
                libc::_exit(0)
            }
        }
        // SAFETY: the child only starts a thread and ends its main
        // thread with raw calls, never returning into the test harness
        // it copied; glibc keeps malloc and thread creation usable after
        // fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; `thread` outlives the call, the start
            // routine takes no argument.
            unsafe {
                // Drop the copies of the test process's descriptors (a
                // votes journal's lock among them) that fork made.
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let mut thread: libc::pthread_t = std::mem::zeroed();
                let made = libc::pthread_create(
                    &mut thread,
                    std::ptr::null(),
                    linger,
                    std::ptr::null_mut(),
                );
                if made != 0 {
                    libc::_exit(1);
                }
                // Only this thread exits (exit, not exit_group).
                libc::syscall(libc::SYS_exit, 0);
                libc::_exit(2)
            }
        }
        let leader = ZombieLeader(pid);
        // The state (field 3) of the main thread is Z once it has exited.
        wait_for_stat(pid, |stat| {
            stat.rfind(')')
                .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'))
        });
        leader
    }
}

impl Drop for ZombieLeader {
    fn drop(&mut self) {
        // SAFETY: plain system calls on the child this test started.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn a_live_process_whose_main_thread_exited_has_its_environment_read() {
    let leader = ZombieLeader::start();
    let dir = PathBuf::from(format!("/proc/{}", leader.0));
    let own = classify_environ(std::fs::read(dir.join("environ")));
    assert!(
        !matches!(own, Environ::Read(_)),
        "the kernel gives no environment of an exited main thread: {own:?}"
    );
    // Its other thread shares the memory: the environment (this test's,
    // without the marker) is read through it.
    assert_eq!(read_environ(&dir), Environ::Read(None));
    let mut env = EnvState::default();
    assert_eq!(marker_in_scan(&dir, &mut env), (None, false), "no exec");
}

#[test]
fn an_empty_environment_is_taken_for_an_exec_for_one_scan_only() {
    let tmp = crate::ballot::store::tests::TempDir::new("environ-empty");
    let dir = fake_proc(tmp.path(), 7, Some(b""), &[]);
    let mut env = EnvState::default();
    assert_eq!(
        marker_in_scan(&dir, &mut env),
        (None, true),
        "maybe in an exec"
    );
    assert_eq!(
        marker_in_scan(&dir, &mut env),
        (None, false),
        "an empty environment"
    );
    assert_eq!(marker_in_scan(&dir, &mut env), (None, false), "and cached");
    // An exec that completes by the next scan is read then.
    let dir = fake_proc(&tmp.path().join("b"), 7, Some(b""), &[]);
    let mut env = EnvState::default();
    assert_eq!(marker_in_scan(&dir, &mut env), (None, true));
    std::fs::write(dir.join("environ"), b"SCX_BALLOT_CANDIDATE=red\0").expect("write");
    assert_eq!(marker_in_scan(&dir, &mut env), (Some("red".into()), false));
}

#[test]
fn shares_are_fractions_of_all_cpus() {
    let s = share_of(1_000_000_000, Duration::from_secs(1), 2);
    assert!((s.share - 0.5).abs() < 1e-9);
    assert_eq!(share_of(5, Duration::ZERO, 2).share, 0.0);
}
