//! Reading `/proc`: the one place that parses a process's `stat`,
//! `status`, `cgroup` and `environ` files, for the membership tracker and
//! for the ballot (a `pid` member's identity).

use std::path::Path;

use super::membership::CANDIDATE_ENV;

/// Where the kernel tells this boot apart from every other.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Most threads tried when a process's own environment cannot be read.
const ENVIRON_THREADS_TRIED: usize = 8;

/// This boot's id (/proc/sys/kernel/random/boot_id), if readable.
pub fn current_boot_id() -> Option<String> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// What one scan learnt about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub comm: String,
    pub start_time: u64,
    pub policy: i64,
}

/// Parses `/proc/PID/stat`: (comm, start time, scheduling policy).
pub fn parse_stat(text: &str) -> Option<(String, u64, i64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the comm start at field 3 (state).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let start_time = rest.get(22 - 3)?.parse().ok()?;
    let policy = rest.get(41 - 3)?.parse().ok()?;
    Some((comm, start_time, policy))
}

/// The start time of process `pid` (clock ticks after boot, field 22 of
/// `/proc/PID/stat`), or `None` if there is no such process.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start_time, _)| start_time)
}

/// The thread group (process) of thread `pid`, or `None` if there is no
/// such thread.
pub fn proc_tgid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status).map(|s| s.tgid)
}

/// The cgroup v2 path in a `/proc/PID/cgroup` text.
pub fn parse_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The value of `SCX_BALLOT_CANDIDATE` in a `/proc/PID/environ` blob.
pub fn candidate_from_environ(environ: &[u8]) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        entry
            .strip_prefix(CANDIDATE_ENV)?
            .strip_prefix('=')
            .map(str::to_string)
    })
}

/// What `/proc/PID/status` says of a process's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Its thread group (the process a thread belongs to).
    pub tgid: i32,
    /// Real uid.
    pub ruid: u32,
    /// Effective uid.
    pub euid: u32,
}

/// Parses the `Tgid:` and `Uid:` lines of a `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::split_whitespace)
    };
    let tgid = field("Tgid")?.next()?.parse().ok()?;
    let mut uids = field("Uid")?;
    let ruid = uids.next()?.parse().ok()?;
    let euid = uids.next()?.parse().ok()?;
    Some(Status { tgid, ruid, euid })
}

/// What a read of a `/proc/.../environ` file says about the exec marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Environ {
    /// An environment, with the marker's candidate if it has one.
    Read(Option<String>),
    /// Nothing to read: a process in the middle of an exec (its new
    /// environment is not set up yet), or one whose environment is empty.
    Empty,
    /// The read failed: the task is gone (ESRCH: also a process whose main
    /// thread exited while others run on), or not ours to read (EACCES).
    /// Says nothing of an exec.
    Unreadable,
}

/// Classifies the result of reading an `environ` file.
pub fn classify_environ(read: std::io::Result<Vec<u8>>) -> Environ {
    match read {
        Ok(bytes) if bytes.is_empty() => Environ::Empty,
        Ok(bytes) => Environ::Read(candidate_from_environ(&bytes)),
        Err(_) => Environ::Unreadable,
    }
}

/// Reads the environment of the process at `proc_dir`: its own, and when
/// that is empty or unreadable, through one of its other threads (they
/// share its memory, and stay readable when the main thread has exited).
pub fn read_environ(proc_dir: &Path) -> Environ {
    let own = classify_environ(std::fs::read(proc_dir.join("environ")));
    if matches!(own, Environ::Read(_)) {
        return own;
    }
    let leader = proc_dir.file_name();
    let threads = std::fs::read_dir(proc_dir.join("task"))
        .into_iter()
        .flatten()
        .flatten();
    threads
        .filter(|t| Some(t.file_name().as_os_str()) != leader)
        .take(ENVIRON_THREADS_TRIED)
        .map(|t| classify_environ(std::fs::read(t.path().join("environ"))))
        .find(|e| matches!(e, Environ::Read(_)))
        .unwrap_or(own)
}

/// CPU time of all threads of a process (ns), from their schedstat.
pub fn process_cpu_ns(proc_dir: &Path) -> u64 {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_even_with_odd_comms() {
        let stat = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 \
                    10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 7 0 0 0";
        assert_eq!(parse_stat(stat), Some(("a) b) (c".to_string(), 98765, 7)));
        assert_eq!(parse_stat("42 (x) S 1"), None);
        assert!(proc_start_time(std::process::id() as i32).is_some());
        assert_eq!(proc_start_time(i32::MAX), None);
        assert_eq!(proc_tgid(std::process::id() as i32), Some(std::process::id() as i32));
    }
}
