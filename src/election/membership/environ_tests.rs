//! Tests of the tracker's environment cache over scans (beside `tests.rs`,
//! which is at its length ceiling).

use super::tests::{fake_proc, marker_in_scan};
use super::tracker::EnvState;

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
