//! What is parsed out of /proc (a stat line, a cgroup, the exec marker), and
//! CPU shares.

use super::*;
use crate::election::procfs::{candidate_from_environ, parse_cgroup, parse_stat};

const STAT: &str = "4242 (stress ng) R 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 \
    987654 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 7 0 0 0";

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

#[test]
fn shares_are_fractions_of_all_cpus() {
    let s = share_of(1_000_000_000, Duration::from_secs(1), 2);
    assert!((s.share - 0.5).abs() < 1e-9);
    assert_eq!(share_of(5, Duration::ZERO, 2).share, 0.0);
}
