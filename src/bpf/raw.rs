//! The BPF side's C structs as bytes: syscall-program arguments and
//! records of the queued-task ring buffer.

use std::ffi::c_char;

use super::{QueuedTask, TASK_COMM_LEN};
use crate::bpf_intf;

/// An argument struct of a syscall program, passed to it as bytes.
///
/// # Safety
///
/// Implement it only for structs of integer fields with no padding: every
/// byte is initialized, and any bytes the program writes back are a valid
/// value (the test `syscall_args_have_no_padding` checks the sizes).
pub(super) unsafe trait SyscallArg: Copy {}

// SAFETY: s32 pid, s32 prev_cpu, u64 flags: 16 bytes, no padding.
unsafe impl SyscallArg for bpf_intf::select_cpu_arg {}
// SAFETY: s32 cpu, u32 preempt: 8 bytes, no padding.
unsafe impl SyscallArg for bpf_intf::kick_arg {}

/// The bytes of a syscall program's argument struct.
pub(super) fn pod_bytes<T: SyscallArg>(value: &mut T) -> &mut [u8] {
    // SAFETY: `value` is a live, exclusively borrowed `T`; the slice covers
    // exactly its size_of::<T>() bytes and borrows it for as long; by
    // `SyscallArg`, each of them is initialized and any bytes are a valid T.
    unsafe { std::slice::from_raw_parts_mut((value as *mut T).cast::<u8>(), size_of::<T>()) }
}

/// Decodes one record of the `queued` ring buffer.
pub(super) fn decode_queued(data: &[u8]) -> Option<QueuedTask> {
    if data.len() < size_of::<bpf_intf::queued_task>() {
        return None;
    }
    // SAFETY: `data` holds at least size_of::<queued_task>() bytes written by
    // the BPF program as a `struct queued_task`; the struct is plain old data
    // (integers and a byte array), so any bit pattern is valid, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    let raw: bpf_intf::queued_task = unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
    let mut comm: [c_char; TASK_COMM_LEN] = [0; TASK_COMM_LEN];
    for (dst, src) in comm.iter_mut().zip(raw.comm.iter()) {
        *dst = *src as c_char;
    }
    Some(QueuedTask {
        pid: raw.pid,
        tgid: raw.tgid,
        cpu: raw.cpu,
        wakeup: raw.wakeup != 0,
        sched_ext: raw.sched_ext != 0,
        nr_cpus_allowed: raw.nr_cpus_allowed,
        flags: raw.flags,
        start_ts: raw.start_ts,
        stop_ts: raw.stop_ts,
        exec_runtime: raw.exec_runtime,
        free_runtime: raw.free_runtime,
        weight: raw.weight,
        vtime: raw.vtime,
        enq_cnt: raw.enq_seq,
        comm,
    })
}
