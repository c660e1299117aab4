//! Tests of the in-VM scenario runner's arithmetic: leaders, effect targets, samples.

use std::process::Command;
use std::time::Duration;

use crate::scenario::spec::Mode;

use super::*;

#[test]
fn a_new_leader_is_one_that_was_not_leading() {
    assert_eq!(new_leader(None, Some("blue")), Some("blue"));
    assert_eq!(new_leader(Some("blue"), Some("red")), Some("red"));
    assert_eq!(new_leader(Some("blue"), Some("blue")), None);
    assert_eq!(new_leader(Some("blue"), None), None);
    assert_eq!(new_leader(None, None), None);
}

#[test]
fn the_effect_counts_from_the_answer_that_made_the_leader() {
    // Landslide: blue leads from its first vote on.
    assert_eq!(led_since(&[Some("blue"), Some("blue"), Some("blue")], "blue"), 0);
    assert_eq!(led_since(&[None, Some("blue"), Some("blue")], "blue"), 1);
    // Red took the lead, then blue took it back.
    assert_eq!(led_since(&[Some("blue"), Some("red"), Some("blue")], "blue"), 2);
}

#[test]
fn the_target_is_halfway_to_the_aim() {
    // Two candidates, min share 5: from 50% to 95%.
    assert_eq!(effect_target(Mode::Winner, 5.0, 10, &[1]), Some(72.5));
    // Three: from 33.3% to 90%.
    let t = effect_target(Mode::Winner, 5.0, 8, &[5, 0]).unwrap();
    assert!((t - (100.0 / 3.0 + 90.0) / 2.0).abs() < 1e-9, "{t}");
    // Proportional 11:3 weighs 12:4: from 50% to 75%.
    assert_eq!(effect_target(Mode::Proportional, 5.0, 11, &[3]), Some(62.5));
    // Nothing to compare with, or no change worth timing.
    assert_eq!(effect_target(Mode::Winner, 5.0, 3, &[]), None);
    assert_eq!(effect_target(Mode::Proportional, 5.0, 1, &[1]), None);
    assert_eq!(effect_target(Mode::Proportional, 5.0, 2, &[1]), Some(55.0));
    assert_eq!(effect_target(Mode::Winner, 50.0, 2, &[1]), None);
}

#[test]
fn the_share_is_judged_over_the_trailing_window() {
    let ms = |t: u64| t * 1000;
    // Too short a window just after the vote.
    assert!(!reached(&[(0, 0, 0), (ms(4), 4, 4)], 70.0));
    // 10 ms, all the leader's.
    assert!(reached(&[(0, 0, 0), (ms(10), 10, 10)], 70.0));
    // Even for 20 ms, then all the leader's for 20 ms: only the last
    // 20 ms count.
    let mut s = vec![(0, 0, 0), (ms(20), 10, 20)];
    assert!(!reached(&s, 70.0));
    s.push((ms(30), 20, 30));
    assert!(!reached(&s, 70.0));
    s.push((ms(40), 30, 40));
    assert!(reached(&s, 70.0));
    // No CPU at all is no effect.
    assert!(!reached(&[(0, 5, 5), (ms(30), 5, 5)], 70.0));
}

#[test]
fn the_cpu_clock_of_a_process_is_its_cpu_time() {
    let me = std::process::id() as i32;
    let mut x = 0u64;
    for i in 0..2_000_000u64 {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
    let own = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
    let read = nix::time::clock_gettime(cpu_clock(me)).unwrap();
    let (own, read) = (own.tv_sec() as u64 * 1_000_000_000 + own.tv_nsec() as u64, read.tv_sec() as u64 * 1_000_000_000 + read.tv_nsec() as u64);
    assert!(read >= own && read - own < 1_000_000_000, "{read} {own}");

    // Another process: the count of its schedstat.
    let mut child = Command::new("sleep").arg("5").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = child.id() as i32;
    let clock = nix::time::clock_gettime(cpu_clock(pid)).map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64);
    let stat = schedstat(pid).map(|s| s.0);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(clock.ok(), stat);
}
