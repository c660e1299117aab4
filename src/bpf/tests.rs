//! Unit tests of the connector: argument layout, decoding, held decisions.

use std::ffi::c_char;

use super::init::set_ops_name;
use super::*;

#[test]
fn syscall_args_have_no_padding() {
    assert_eq!(size_of::<bpf_intf::select_cpu_arg>(), 4 + 4 + 8);
    assert_eq!(size_of::<bpf_intf::kick_arg>(), 4 + 4);
}

fn decision(pid: i32) -> DispatchedTask {
    DispatchedTask { pid, cpu: RL_CPU_ANY, flags: 0, slice_ns: 0, vtime: 0, enq_cnt: 1 }
}

#[test]
fn a_new_decision_starts_as_scx_rustland_core_starts_it() {
    let mut task = crate::sched::fake::task(7, 100, 0, 1);
    task.cpu = 3;
    task.flags = 0x1;
    task.vtime = 99;
    task.enq_cnt = 5;
    let d = DispatchedTask::new(&task);
    assert_eq!(
        d,
        DispatchedTask { pid: 7, cpu: 3, flags: 0x1, slice_ns: 0, vtime: 0, enq_cnt: 5 }
    );
}

#[test]
fn comm_str_stops_at_the_nul_and_replaces_invalid_utf8() {
    let mut task = crate::sched::fake::task(1, 100, 0, 1);
    assert_eq!(task.comm_str(), "burn");
    task.comm = [b'x' as c_char; TASK_COMM_LEN];
    assert_eq!(task.comm_str(), "x".repeat(TASK_COMM_LEN));
    task.comm[0] = -1;
    task.comm[1] = 0;
    assert_eq!(task.comm_str(), "\u{fffd}");
}

#[test]
fn the_ops_name_is_the_given_one_with_the_version_suffix() {
    let mut field = [1 as c_char; 128];
    set_ops_name(&mut field, "rlfifo").unwrap();
    let text: String = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8 as char).collect();
    let suffix = scx_utils::build_id::ops_version_suffix(env!("CARGO_PKG_VERSION"));
    assert_eq!(text, format!("rlfifo{suffix}"));
    let mut short = [1 as c_char; 8];
    set_ops_name(&mut short, "a_long_name").unwrap();
    assert_eq!(short[7], 0, "always NUL-terminated");
    assert!(set_ops_name(&mut field, "").is_err());
    assert!(set_ops_name(&mut field, "é").is_err());
}

/// A user ring buffer with room for `room` decisions until drained.
struct Ring {
    room: usize,
    sent: Vec<i32>,
}

impl Ring {
    fn send(&mut self, t: &DispatchedTask) -> Result<(), &'static str> {
        if self.room == 0 {
            return Err("ENOSPC");
        }
        self.room -= 1;
        self.sent.push(t.pid);
        Ok(())
    }
}

#[test]
fn a_full_ring_buffer_delays_decisions_in_order_and_loses_none() {
    let mut ring = Ring { room: 2, sent: Vec::new() };
    let mut held = Held::default();
    for pid in 1..=5 {
        held.send_or_hold(&decision(pid), |t| ring.send(t)).expect("never an error");
    }
    assert_eq!(ring.sent, [1, 2]);
    assert_eq!((held.len(), held.total), (3, 3));
    // The BPF side drains; the next notify sends what was held, oldest
    // first, before anything newer.
    ring.room = 2;
    assert!(!held.flush(|t| ring.send(t)), "one still does not fit");
    held.send_or_hold(&decision(6), |t| ring.send(t)).expect("held behind the others");
    assert_eq!(ring.sent, [1, 2, 3, 4]);
    ring.room = 10;
    assert!(held.flush(|t| ring.send(t)));
    assert_eq!(ring.sent, [1, 2, 3, 4, 5, 6]);
    assert_eq!(held.len(), 0);
}

#[test]
fn a_ring_buffer_never_drained_ends_in_an_error_not_unbounded_memory() {
    let mut ring = Ring { room: 0, sent: Vec::new() };
    let mut held = Held::default();
    for pid in 0..Held::MAX as i32 {
        held.send_or_hold(&decision(pid), |t| ring.send(t)).expect("held");
    }
    assert_eq!(held.send_or_hold(&decision(-1), |t| ring.send(t)), Err("ENOSPC"));
    assert_eq!(held.len(), Held::MAX);
}
