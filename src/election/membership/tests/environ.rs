//! Reading a process's environment for the exec marker: unreadable, empty or
//! in the middle of an exec, read through another thread, cached over scans.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::*;
use crate::election::membership::tracker::{EnvState, ProcDir};
use crate::election::procfs::{Environ, classify_environ, read_environ};

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
fn fake_proc(
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
fn marker_in_scan(dir: &Path, env: &mut EnvState) -> (Option<String>, bool) {
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
fn an_environment_empty_in_two_scans_is_read_again_later() {
    let tmp = crate::ballot::store::tests::TempDir::new("environ-late");
    // Two scans close together (a nudge) both inside one exec: empty.
    let dir = fake_proc(tmp.path(), 7, Some(b""), &[]);
    let mut env = EnvState::default();
    assert_eq!(marker_in_scan(&dir, &mut env), (None, true));
    assert_eq!(marker_in_scan(&dir, &mut env), (None, false));
    // The exec done, the marker is there: the next scan finds it.
    std::fs::write(dir.join("environ"), b"SCX_BALLOT_CANDIDATE=blue\0").expect("write");
    assert_eq!(marker_in_scan(&dir, &mut env), (Some("blue".into()), false));
}
