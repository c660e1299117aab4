//! The real binary (`scx_ballot --no-sched`) against files that are not its
//! journal, or a journal another instance holds: start-up is refused with a
//! clear message and the file is left exactly as it was.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scx_ballot-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn ballot(votes_file: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scx_ballot"));
    cmd.args(["--no-sched", "--listen", "127.0.0.1:0", "--votes-file"]).arg(votes_file);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Waits at most 20 s for `child`; kills it past that.
fn wait_bounded(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("scx_ballot did not exit within 20 s: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Kills `child` when dropped.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_candidates_file_given_as_votes_file_is_refused_and_left_intact() {
    let dir = scratch("toml");
    let path = dir.join("x.toml");
    let content = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/vm/demo-candidates.toml"))
        .expect("the demo candidates");
    std::fs::write(&path, &content).expect("copy");
    let out = wait_bounded(ballot(&path).spawn().expect("start scx_ballot"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse: {stderr}");
    assert!(stderr.contains("is not a scx_ballot votes journal"), "{stderr}");
    assert_eq!(std::fs::read(&path).expect("read"), content, "the file is untouched");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_symlinked_votes_file_is_refused_and_its_target_left_intact() {
    let dir = scratch("symlink");
    let target = dir.join("precious");
    std::fs::write(&target, "keep me\n").expect("write");
    let link = dir.join("votes.journal");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let out = wait_bounded(ballot(&link).spawn().expect("start scx_ballot"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse: {stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_instance_on_the_same_journal_is_refused_and_writes_nothing() {
    let dir = scratch("lock");
    let path = dir.join("votes.journal");
    let candidates = concat!(env!("CARGO_MANIFEST_DIR"), "/vm/demo-candidates.toml");
    let mut first = ballot(&path);
    first.arg("--candidates").arg(candidates);
    let first = Running(Some(first.spawn().expect("start the first scx_ballot")));
    // The first instance has its journal once the file has its candidates.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("create_candidate") {
            break text;
        }
        assert!(Instant::now() < deadline, "the first scx_ballot never wrote its journal");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut second = ballot(&path);
    second.args(["--candidates", candidates]);
    let out = wait_bounded(second.spawn().expect("start the second scx_ballot"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse: {stderr}");
    assert!(stderr.contains("in use by another scx_ballot"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), before, "nothing written");
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_start_whose_port_is_taken_does_not_touch_the_journal() {
    let dir = scratch("port");
    let path = dir.join("votes.journal");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scx_ballot"));
    cmd.args(["--no-sched", "--listen", &format!("127.0.0.1:{port}"), "--votes-file"])
        .arg(&path)
        .args(["--candidates", concat!(env!("CARGO_MANIFEST_DIR"), "/vm/demo-candidates.toml")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = wait_bounded(cmd.spawn().expect("start scx_ballot"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the port is taken: {stderr}");
    assert!(!path.exists(), "the journal was not even created: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
