//! What loading does to the process besides the BPF side: the Ctrl-C
//! handler, SCHED_EXT for the loop's thread, and memory kept resident.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

use super::SCHED_EXT;

/// Set by the SIGINT/SIGTERM handler that `init` installs; read by
/// [`BpfScheduler::exited`](super::BpfScheduler::exited).
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Whether the handler is ours (true) or the program had its own (false).
static SIGNAL_HANDLER: OnceLock<bool> = OnceLock::new();

/// Installs, once per process, a Ctrl-C (SIGINT, SIGTERM, SIGHUP) handler
/// after which [`BpfScheduler::exited`](super::BpfScheduler::exited) is
/// true. A program that installed its own handler first keeps it (only one
/// is allowed): it then stops its loop itself, as [`crate::sched::run`]
/// does with its `shutdown` flag.
pub(super) fn catch_signals() -> Result<()> {
    if SIGNAL_HANDLER.get().is_some() {
        return Ok(());
    }
    match ctrlc::set_handler(|| SHUTDOWN.store(true, Ordering::Relaxed)) {
        Ok(()) => {
            let _ = SIGNAL_HANDLER.set(true);
            Ok(())
        }
        Err(ctrlc::Error::MultipleHandlers) => {
            let _ = SIGNAL_HANDLER.set(false);
            Ok(())
        }
        Err(e) => Err(e).context("installing the SIGINT/SIGTERM handler"),
    }
}

/// Whether the Ctrl-C handler that `init` installed has fired.
pub fn shutdown_requested() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

/// Switches the calling thread to SCHED_EXT; the raw OS error on refusal.
pub fn set_sched_ext() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0
    // names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, SCHED_EXT, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Size of the heap kept faulted in and never returned to the kernel, so
/// that the scheduler's allocations in full mode do not page-fault.
const HEAP_RESERVE: usize = 16 << 20;

/// Keeps the scheduler's memory resident, for full mode: there every task,
/// kswapd aside, waits for this process, so a page fault that needs reclaim
/// or I/O to be served could stall the whole machine.
///
/// glibc is told to use one arena, never to give heap back and never to
/// serve allocations with fresh mmaps; a heap reserve is faulted in once;
/// then every current and future page is locked as it is touched.
pub fn lock_memory() -> std::io::Result<()> {
    // SAFETY: mallopt only changes glibc's allocator tunables; these values
    // are documented as valid for these parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let mut reserve = vec![0u8; HEAP_RESERVE];
    for page in reserve.chunks_mut(4096) {
        // Touch every page so that it is really backed, then give the block
        // back to the allocator (which keeps it: trimming is off).
        page[0] = 1;
    }
    std::hint::black_box(&reserve);
    drop(reserve);
    // SAFETY: mlockall takes only flags and has no memory-safety effects.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
