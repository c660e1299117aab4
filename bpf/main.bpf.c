/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_ballot: the BPF half of the scheduler.
 *
 * Runnable SCHED_EXT tasks are queued in one shared FIFO dispatch queue and
 * handed to whichever CPU asks for work first; a task waking up on an idle CPU
 * goes straight to that CPU's local queue.
 *
 * In partial mode (the default) only tasks whose policy is SCHED_EXT are ours;
 * everything else stays in the fair class.
 */
#include <scx/common.bpf.h>
#include "intf.h"

char _license[] SEC("license") = "GPL";

UEI_DEFINE(uei);

/*
 * Time slice given to every dispatched task, in nanoseconds. Set by user
 * space before load.
 */
const volatile u64 slice_ns = 5ULL * 1000 * 1000;

/*
 * Testing aid: when set, tasks are queued but never dispatched. The VM tests
 * use it to prove that a scheduler which does not dispatch is caught.
 */
const volatile bool debug_no_dispatch;

/* Counters read by user space (bss: zeroed at load, written only here). */
u64 nr_enqueued;
u64 nr_dispatched;
u64 nr_direct_dispatched;

static __always_inline void count(u64 *counter)
{
	__sync_fetch_and_add(counter, 1);
}

s32 BPF_STRUCT_OPS(ballot_select_cpu, struct task_struct *p, s32 prev_cpu,
		   u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (is_idle && !debug_no_dispatch) {
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
		count(&nr_direct_dispatched);
	}
	return cpu;
}

void BPF_STRUCT_OPS(ballot_enqueue, struct task_struct *p, u64 enq_flags)
{
	count(&nr_enqueued);
	scx_bpf_dsq_insert(p, BALLOT_SHARED_DSQ, slice_ns, enq_flags);
}

void BPF_STRUCT_OPS(ballot_dispatch, s32 cpu, struct task_struct *prev)
{
	if (debug_no_dispatch)
		return;
	if (scx_bpf_dsq_move_to_local(BALLOT_SHARED_DSQ, 0))
		count(&nr_dispatched);
}

s32 BPF_STRUCT_OPS_SLEEPABLE(ballot_init)
{
	return scx_bpf_create_dsq(BALLOT_SHARED_DSQ, -1);
}

void BPF_STRUCT_OPS(ballot_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(ballot_ops,
	       .select_cpu	= (void *)ballot_select_cpu,
	       .enqueue		= (void *)ballot_enqueue,
	       .dispatch	= (void *)ballot_dispatch,
	       .init		= (void *)ballot_init,
	       .exit		= (void *)ballot_exit,
	       .timeout_ms	= 5000,
	       .name		= "scx_ballot");
