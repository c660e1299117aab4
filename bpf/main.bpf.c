/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_ballot: the BPF half of the scheduler, a policy-agnostic dispatcher.
 *
 * Runnable SCHED_EXT tasks are sent to the user-space policy through the
 * "queued" ring buffer; the policy answers through the "dispatched" user ring
 * buffer with a CPU (or any CPU), a time slice and a vtime, and the dispatcher
 * carries that out from ops.dispatch().
 *
 * A task sent to user space stays in this program's custody until it is
 * dispatched. Every such task is also noted in the "custody" queue, oldest
 * first; when the oldest has waited longer than starvation_ns (user space is
 * slow, stuck or dead), the dispatcher sends it to the shared queue itself,
 * so no task comes near the kernel watchdog's timeout. A full ring buffer
 * (congestion) is handled the same way, at once.
 *
 * The scheduling loop's thread, per-CPU kernel threads, kswapd and
 * khugepaged never wait for user space: they are dispatched here directly,
 * so the scheduler cannot end up waiting on itself in full mode. The
 * scheduler's other threads (the voting server, the membership scan) are
 * scheduled like every other task.
 *
 * Tasks the dispatcher queues itself (rescued or congested) go to a FIFO
 * queue, not to the policy's vtime-ordered one: with the policy stopped the
 * vtimes stop advancing, and a vtime order would leave the task with the
 * highest one behind the others for ever.
 *
 * In partial mode (the default) only tasks whose policy is SCHED_EXT are
 * ours; everything else stays in the fair class.
 */
#include <scx/common.bpf.h>
#include "intf.h"

char _license[] SEC("license") = "GPL";

UEI_DEFINE(uei);

/* Tunables, set by user space before load. */

/* Default time slice (ns), for dispatches that name none. */
const volatile u64 slice_ns = 5ULL * 1000 * 1000;

/* Longest slice a dispatch may ask for (ns). */
const volatile u64 slice_max_ns = 100ULL * 1000 * 1000;

/*
 * How long (ns) a task may wait for user space before the dispatcher runs
 * it on its own.
 */
const volatile u64 starvation_ns = 1000ULL * 1000 * 1000;

/* The scheduling loop's thread (dispatched directly, not counted). */
const volatile s32 usersched_pid;

/* khugepaged's pid (0: none), dispatched directly like kswapd. */
const volatile s32 khugepaged_pid;

/*
 * When ops.select_cpu() puts a waking task straight on an idle CPU without
 * asking user space (enum ballot_idle).
 */
const volatile u32 idle_dispatch = BALLOT_IDLE_ALWAYS;

/*
 * Testing aid: when set, tasks are queued but never dispatched. The VM tests
 * use it to prove that a scheduler which does not dispatch is caught.
 */
const volatile bool debug_no_dispatch;

/*
 * Counters read by user space. nr_scheduled is written by user space: how
 * many tasks the policy still holds. nr_queued_total counts every task sent
 * to user space so far; user space subtracts the ones it has read to get the
 * backlog (the nr_queued of the Rust API).
 */
u64 nr_online_cpus, nr_running, nr_queued_total, nr_scheduled;
u64 nr_user_dispatches, nr_kernel_dispatches, nr_cancel_dispatches;
u64 nr_bounce_dispatches, nr_failed_dispatches, nr_sched_congested;
u64 nr_rescued;
/*
 * Decisions for any CPU (BALLOT_CPU_ANY) read from the user ring buffer so
 * far: with what user space sent, it tells how many are still in transit.
 */
u64 nr_any_drained;
/* Every decision read from the user ring buffer so far. */
u64 nr_drained;

/* ops.dispatch() calls so far: which queue goes first alternates. */
u64 nr_dispatch_rounds;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BALLOT_MAX_QUEUED * sizeof(struct queued_task));
} queued SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_USER_RINGBUF);
	__uint(max_entries, BALLOT_MAX_QUEUED * sizeof(struct dispatched_task));
} dispatched SEC(".maps");

/* A task in custody: queued to user space at @at, not yet dispatched. */
struct custody {
	s32 pid;
	u32 pad;
	u64 enq_seq;
	u64 at;
};

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 2 * BALLOT_MAX_QUEUED);
	__type(value, struct custody);
} custody SEC(".maps");

struct task_ctx {
	u64 start_ts;		/* last time it started running */
	u64 stop_ts;		/* last time it stopped running */
	u64 exec_runtime;	/* CPU time since it last became runnable */
	u64 start_sum;		/* its sum_exec_runtime when it last started */
	u64 free_runtime;	/* the part of it run on without the policy */
	bool free;		/* runs on without the policy's decision */
	u64 enq_seq;		/* bumped at every enqueue sent to user space */
	u64 done_seq;		/* the last enq_seq dispatched (or dropped) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctx_stor SEC(".maps");

/* Heartbeat: kicks an idle CPU when a task in custody is overdue. */
struct heartbeat {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct heartbeat);
} heartbeat SEC(".maps");

#define HEARTBEAT_NS (50ULL * 1000 * 1000)

/*
 * A CPU whose local queue holds tasks of ours but has started none of them
 * for this many heartbeats (a higher-priority task holds it: in partial mode
 * a fair-class task may run there for ever) gives them back to the policy,
 * which places them elsewhere. Without this, a task placed on a CPU that a
 * fair-class hog then takes would wait there until the watchdog fires.
 */
#define STUCK_BEATS 2
#define BALLOT_MAX_CPUS 512

/*
 * Per CPU: SCHED_EXT tasks started so far, heartbeats without one, and when
 * the task of ours it runs now started (0: none of ours runs there).
 */
struct cpu_progress {
	u64 started;
	u64 seen;
	u32 beats;
	u32 pad;
	u64 running_since;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BALLOT_MAX_CPUS);
	__type(key, u32);
	__type(value, struct cpu_progress);
} progress SEC(".maps");

/* Local queues given back to the policy because their CPU was taken. */
u64 nr_reenqueued;
/* Turns ended early for a decision that must not wait (preempt_longest). */
u64 nr_wake_preempts;

static __always_inline void count(u64 *counter)
{
	__sync_fetch_and_add(counter, 1);
}

static struct task_ctx *lookup_task_ctx(const struct task_struct *p)
{
	return bpf_task_storage_get(&task_ctx_stor, (struct task_struct *)p, 0, 0);
}

static bool is_usersched_task(const struct task_struct *p)
{
	return usersched_pid && p->pid == usersched_pid;
}

/*
 * Tasks that must never wait for user space: the scheduling loop's thread,
 * kernel threads bound to one CPU (ksoftirqd, kworkers, ...), kswapd and
 * khugepaged, on which the scheduler may itself depend.
 */
static bool needs_direct_dispatch(const struct task_struct *p)
{
	if (is_usersched_task(p))
		return true;
	if (!(p->flags & PF_KTHREAD))
		return false;
	if (p->nr_cpus_allowed == 1)
		return true;
	if (khugepaged_pid && p->pid == khugepaged_pid)
		return true;
	return p->comm[0] == 'k' && p->comm[1] == 's' && p->comm[2] == 'w' &&
	       p->comm[3] == 'a' && p->comm[4] == 'p' && p->comm[5] == 'd';
}

/*
 * Whether @since lies at least @ns in the past. Signed: a timestamp taken on
 * another CPU may be slightly ahead of this CPU's clock.
 */
static bool older_than(u64 since, u64 ns)
{
	return (s64)(scx_bpf_now() - since) >= (s64)ns;
}

static u64 clamp_slice(u64 slice)
{
	if (!slice)
		return slice_ns;
	return slice > slice_max_ns ? slice_max_ns : slice;
}

s32 BPF_STRUCT_OPS(ballot_select_cpu, struct task_struct *p, s32 prev_cpu,
		   u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu;

	if (idle_dispatch == BALLOT_IDLE_NEVER || debug_no_dispatch)
		return prev_cpu;
	if (idle_dispatch == BALLOT_IDLE_WHEN_CLEAR &&
	    (nr_scheduled || bpf_ringbuf_query(&queued, BPF_RB_AVAIL_DATA) ||
	     scx_bpf_dsq_nr_queued(BALLOT_SHARED_DSQ) ||
	     scx_bpf_dsq_nr_queued(BALLOT_FALLBACK_DSQ)))
		return prev_cpu;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (is_idle) {
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, 0);
		count(&nr_kernel_dispatches);
	}
	return cpu;
}

/*
 * Fallback path: the dispatcher queues @p itself, in arrival order, and
 * wakes an idle CPU for it.
 */
static void kernel_dispatch(struct task_struct *p, u64 enq_flags)
{
	s32 cpu;

	scx_bpf_dsq_insert(p, BALLOT_FALLBACK_DSQ, slice_ns, enq_flags);
	count(&nr_kernel_dispatches);
	cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	if (cpu >= 0)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
}

static void queue_to_user(struct task_struct *p, u64 enq_flags)
{
	struct custody note = { .pid = p->pid };
	struct queued_task *task;
	struct task_ctx *tctx;
	u64 now = scx_bpf_now();

	tctx = lookup_task_ctx(p);
	if (!tctx) {
		kernel_dispatch(p, enq_flags);
		return;
	}

	task = bpf_ringbuf_reserve(&queued, sizeof(*task), 0);
	if (!task)
		goto congested;

	note.enq_seq = tctx->enq_seq + 1;
	note.at = now;
	if (bpf_map_push_elem(&custody, &note, 0)) {
		bpf_ringbuf_discard(task, BPF_RB_NO_WAKEUP);
		goto congested;
	}
	tctx->enq_seq = note.enq_seq;

	task->pid = p->pid;
	task->tgid = p->tgid;
	task->cpu = scx_bpf_task_cpu(p);
	task->nr_cpus_allowed = p->nr_cpus_allowed;
	task->flags = enq_flags;
	task->wakeup = !!(enq_flags & SCX_ENQ_WAKEUP);
	task->sched_ext = p->policy == BALLOT_SCHED_EXT;
	task->start_ts = tctx->start_ts;
	task->stop_ts = tctx->stop_ts;
	task->exec_runtime = tctx->exec_runtime;
	task->free_runtime = tctx->free_runtime;
	task->weight = p->scx.weight;
	task->vtime = p->scx.dsq_vtime;
	task->enq_seq = tctx->enq_seq;
	bpf_probe_read_kernel_str(task->comm, sizeof(task->comm), p->comm);
	bpf_ringbuf_submit(task, 0);
	count(&nr_queued_total);
	return;

congested:
	count(&nr_sched_congested);
	kernel_dispatch(p, enq_flags);
}

void BPF_STRUCT_OPS(ballot_enqueue, struct task_struct *p, u64 enq_flags)
{
	/*
	 * Its slice ended and nothing else wants this CPU: unless the policy
	 * holds tasks back, let it run on without a round trip to user space.
	 */
	if ((enq_flags & SCX_ENQ_LAST) && !nr_scheduled && !debug_no_dispatch) {
		struct task_ctx *tctx = lookup_task_ctx(p);

		/* Its time from now on is nobody's decision: the policy is told. */
		if (tctx)
			tctx->free = true;
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice_ns, enq_flags);
		count(&nr_kernel_dispatches);
		/* Its CPU may have gone idle meanwhile: make it look again. */
		scx_bpf_kick_cpu(scx_bpf_task_cpu(p), SCX_KICK_IDLE);
		return;
	}
	if (needs_direct_dispatch(p)) {
		scx_bpf_dsq_insert(p, is_usersched_task(p) ? BALLOT_SCHED_DSQ : SCX_DSQ_LOCAL,
				   slice_ns, enq_flags);
		count(&nr_kernel_dispatches);
		return;
	}
	queue_to_user(p, enq_flags);
}

/* The task left our custody without a dispatch (it exited, changed class...). */
void BPF_STRUCT_OPS(ballot_dequeue, struct task_struct *p, u64 deq_flags)
{
	struct task_ctx *tctx = lookup_task_ctx(p);

	if (tctx)
		tctx->done_seq = tctx->enq_seq;
}

/* Carries out one decision of the user-space policy. */
static void dispatch_from_user(const struct dispatched_task *d)
{
	struct task_struct *p;
	struct task_ctx *tctx;
	u64 slice = clamp_slice(d->slice_ns);
	u64 flags = d->flags & ~BALLOT_ENQ_PREEMPT;
	s32 cpu = d->cpu;
	bool ok;

	__sync_fetch_and_add(&nr_drained, 1);
	if (cpu == BALLOT_CPU_ANY)
		__sync_fetch_and_add(&nr_any_drained, 1);
	p = bpf_task_from_pid(d->pid);
	if (!p) {
		count(&nr_cancel_dispatches);
		return;
	}
	tctx = lookup_task_ctx(p);
	/*
	 * Answers an older enqueue (the task was dequeued or enqueued again
	 * since), or a decision already carried out: cancel, never run twice.
	 */
	if (!tctx || tctx->enq_seq != d->enq_seq || tctx->done_seq >= d->enq_seq) {
		count(&nr_cancel_dispatches);
		goto out;
	}
	tctx->done_seq = d->enq_seq;
	tctx->free = false;

	if (cpu == BALLOT_CPU_ANY) {
		ok = scx_bpf_dsq_insert_vtime(p, BALLOT_SHARED_DSQ, slice, d->vtime, flags);
		/*
		 * Claim an idle CPU for it (clearing its idle state, so the policy
		 * does not also put a task there), or wake none: a busy CPU takes
		 * it when it frees up.
		 */
		cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
		count(&nr_user_dispatches);
		if (cpu < 0) {
			if (!ok)
				count(&nr_failed_dispatches);
			goto out;
		}
	} else {
		if (cpu < 0 || !bpf_cpumask_test_cpu(cpu, p->cpus_ptr)) {
			/* Not allowed there (affinity changed): keep its CPU. */
			cpu = scx_bpf_task_cpu(p);
			count(&nr_bounce_dispatches);
		} else {
			count(&nr_user_dispatches);
		}
		/* The kernel's enum values are only known once loaded. */
		if (d->flags & BALLOT_ENQ_PREEMPT)
			flags |= SCX_ENQ_PREEMPT;
		ok = scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL_ON | cpu, slice, flags);
	}
	if (!ok)
		count(&nr_failed_dispatches);
	scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
out:
	bpf_task_release(p);
}

/*
 * ops.dispatch() may insert at most dispatch_max_batch tasks per call: the
 * decisions drained from user space and the rescued tasks together stay
 * below it (the rest wait for the next call, on any CPU).
 */
#define BALLOT_DISPATCH_BATCH	128
#define BALLOT_DRAIN_MAX	64
#define BALLOT_RESCUE_MAX	32

static long drain_one(struct bpf_dynptr *dynptr, void *ctx)
{
	const struct dispatched_task *d;
	u32 *drained = ctx;

	d = bpf_dynptr_data(dynptr, 0, sizeof(*d));
	if (d)
		dispatch_from_user(d);
	return ++*drained >= BALLOT_DRAIN_MAX;
}

/*
 * Dispatches, on its own, the tasks that waited for user space longer than
 * starvation_ns, oldest first; drops notes of tasks already dispatched.
 */
static void rescue_overdue(void)
{
	struct custody note;
	struct task_struct *p;
	struct task_ctx *tctx;
	int i;

	bpf_for(i, 0, BALLOT_RESCUE_MAX) {
		if (bpf_map_pop_elem(&custody, &note))
			return;
		p = bpf_task_from_pid(note.pid);
		if (!p)
			continue;
		tctx = lookup_task_ctx(p);
		if (!tctx || tctx->enq_seq != note.enq_seq || tctx->done_seq >= note.enq_seq) {
			/* Stale: dispatched, dropped, or queued again later. */
			bpf_task_release(p);
			continue;
		}
		if (!older_than(note.at, starvation_ns)) {
			/* The oldest live note is not overdue: put it back. */
			bpf_map_push_elem(&custody, &note, 0);
			bpf_task_release(p);
			return;
		}
		tctx->done_seq = note.enq_seq;
		scx_bpf_dsq_insert(p, BALLOT_FALLBACK_DSQ, slice_ns, 0);
		count(&nr_rescued);
		count(&nr_kernel_dispatches);
		bpf_task_release(p);
	}
}

void BPF_STRUCT_OPS(ballot_dispatch, s32 cpu, struct task_struct *prev)
{
	u32 drained = 0;

	if (debug_no_dispatch)
		return;

	bpf_user_ringbuf_drain(&dispatched, drain_one, &drained, BPF_RB_NO_WAKEUP);
	rescue_overdue();

	if (scx_bpf_dsq_move_to_local(BALLOT_SCHED_DSQ, 0))
		return;
	/*
	 * The policy's queue and the fallback queue take turns going first,
	 * so neither can keep the other waiting.
	 */
	if (__sync_fetch_and_add(&nr_dispatch_rounds, 1) & 1) {
		if (scx_bpf_dsq_move_to_local(BALLOT_FALLBACK_DSQ, 0))
			return;
		if (scx_bpf_dsq_move_to_local(BALLOT_SHARED_DSQ, 0))
			return;
	} else {
		if (scx_bpf_dsq_move_to_local(BALLOT_SHARED_DSQ, 0))
			return;
		if (scx_bpf_dsq_move_to_local(BALLOT_FALLBACK_DSQ, 0))
			return;
	}
	/*
	 * Nothing to run here while the policy holds tasks back: wake it with
	 * an empty record (pid 0), so a CPU going idle gets a decision without
	 * the policy having to poll for it.
	 */
	if (nr_scheduled) {
		struct queued_task *note = bpf_ringbuf_reserve(&queued, sizeof(*note), 0);

		if (note) {
			__builtin_memset(note, 0, sizeof(*note));
			note->cpu = cpu;
			bpf_ringbuf_submit(note, 0);
		}
	}
}

void BPF_STRUCT_OPS(ballot_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tctx = lookup_task_ctx(p);

	if (tctx) {
		tctx->exec_runtime = 0;
		tctx->free_runtime = 0;
		tctx->free = false;
	}
}

void BPF_STRUCT_OPS(ballot_running, struct task_struct *p)
{
	struct task_ctx *tctx = lookup_task_ctx(p);

	/*
	 * The scheduler's own threads are not counted (they are SCHED_EXT
	 * tasks only in full mode): the policy asks how many of its tasks run
	 * while it runs itself, and must not count the CPU it decides on as
	 * taken, or in full mode a held task would wait for the next slice end
	 * while that CPU goes idle, again and again.
	 */
	u32 cpu = bpf_get_smp_processor_id();
	struct cpu_progress *prog = bpf_map_lookup_elem(&progress, &cpu);

	if (!is_usersched_task(p))
		__sync_fetch_and_add(&nr_running, 1);
	if (prog) {
		__sync_fetch_and_add(&prog->started, 1);
		prog->running_since = is_usersched_task(p) ? 0 : scx_bpf_now();
	}
	if (tctx) {
		tctx->start_ts = scx_bpf_now();
		tctx->start_sum = p->se.sum_exec_runtime;
	}
}

void BPF_STRUCT_OPS(ballot_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tctx = lookup_task_ctx(p);
	u64 now = scx_bpf_now();
	u32 cpu = bpf_get_smp_processor_id();
	struct cpu_progress *prog = bpf_map_lookup_elem(&progress, &cpu);

	if (prog)
		prog->running_since = 0;
	if (!is_usersched_task(p))
		__sync_fetch_and_sub(&nr_running, 1);
	if (tctx) {
		/*
		 * What the kernel itself counts as its CPU time (what /proc and
		 * top show), not the clock's distance from start to stop: on an
		 * overcommitted virtual machine the two part ways (a capped task
		 * on 4 vCPUs of 2 host cores ran twice what the clock said).
		 */
		u64 ran = p->se.sum_exec_runtime - tctx->start_sum;

		tctx->stop_ts = now;
		tctx->exec_runtime += ran;
		if (tctx->free)
			tctx->free_runtime += ran;
	}
}

s32 BPF_STRUCT_OPS(ballot_init_task, struct task_struct *p,
		   struct scx_init_task_args *args)
{
	if (!bpf_task_storage_get(&task_ctx_stor, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		return -ENOMEM;
	return 0;
}

/*
 * The select_cpu() of the Rust API: an idle CPU for @pid, or a negative value
 * when none is idle. Where the kernel allows it from here, its own
 * topology-aware choice (scx_bpf_select_cpu_and(), as ops.select_cpu() would
 * make on a wake-up: @prev_cpu if idle, else a fully idle core, the same LLC,
 * the same node, anything); otherwise @prev_cpu if idle, else any idle CPU.
 * @arg->flags is not used. Run by user space through BPF_PROG_TEST_RUN.
 */
SEC("syscall")
int ballot_pick_idle_cpu(struct select_cpu_arg *arg)
{
	struct task_struct *p, *curr;
	s32 prev_cpu = arg->prev_cpu;
	s32 cpu;
	int i;

	p = bpf_task_from_pid(arg->pid);
	if (!p)
		return -ESRCH;
	bpf_rcu_read_lock();
	if (prev_cpu >= 0 && prev_cpu < scx_bpf_nr_cpu_ids() &&
	    __COMPAT_HAS_scx_bpf_select_cpu_and)
		cpu = scx_bpf_select_cpu_and(p, prev_cpu, SCX_WAKE_TTWU, p->cpus_ptr, 0);
	else if (prev_cpu >= 0 && bpf_cpumask_test_cpu(prev_cpu, p->cpus_ptr) &&
		 scx_bpf_test_and_clear_cpu_idle(prev_cpu))
		cpu = prev_cpu;
	else
		cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	/*
	 * The idle mask can still name a CPU that has left idle (it runs a
	 * task again); a decision put there would wait behind that task. Only
	 * a CPU that runs its idle task counts (the claim has cleared the
	 * stale bit either way).
	 */
	for (i = 0; cpu >= 0 && i < 8; i++) {
		curr = __COMPAT_scx_bpf_cpu_curr(cpu);
		if (!curr || !curr->pid)
			break;
		cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	}
	if (i == 8)
		cpu = -EBUSY;
	bpf_rcu_read_unlock();
	bpf_task_release(p);
	return cpu;
}

/*
 * How many tasks wait in the shared queue for a CPU to take them (low 16
 * bits), and in the local queue of the CPU that runs this program, i.e. the
 * caller's (high 16 bits): a task the caller preempted waits there. Run by
 * user space through BPF_PROG_TEST_RUN.
 */
SEC("syscall")
int ballot_shared_depth(void *ctx)
{
	u32 shared = scx_bpf_dsq_nr_queued(BALLOT_SHARED_DSQ);
	u32 local = scx_bpf_dsq_nr_queued(SCX_DSQ_LOCAL);

	return (shared > 0xffff ? 0xffff : shared) | (local > 0xffff ? 0xffff : local) << 16;
}

/*
 * Makes @cpu give up the task it runs at once: the kick ends the slice of
 * the task that is current there. A task of ours that a higher class (this
 * scheduler's own thread, its voting server, any fair-class task in partial
 * mode) took the CPU from waits in the local queue instead, and would resume
 * with the rest of its slice (a lease of several) before the policy's
 * decision, which only a CPU running ops.dispatch() drains: it goes back to
 * the policy now. Returns @cpu.
 */
static s32 preempt_cpu(s32 cpu)
{
	scx_bpf_kick_cpu(cpu, SCX_KICK_PREEMPT);
	if (__COMPAT_has_generic_reenq() &&
	    cpu < nr_online_cpus &&
	    scx_bpf_dsq_nr_queued(SCX_DSQ_LOCAL_ON | cpu))
		scx_bpf_dsq_reenq(SCX_DSQ_LOCAL_ON | cpu, 0);
	return cpu;
}

/*
 * A task of ours that has run less than this is not cut short for a waking
 * one: a turn that short is no slice-long wait, and a workload that wakes
 * all the time (hackbench) would otherwise preempt on every decision.
 */
#define WAKE_PREEMPT_MIN_RUN_NS (1000ULL * 1000)

/*
 * Ends the turn of the task of ours that has run longest on a CPU now, for a
 * decision that must not wait for a slice to end; that CPU then runs
 * ops.dispatch() and takes the decision from the shared queue. Returns that
 * CPU, or -EBUSY when no task of ours has run WAKE_PREEMPT_MIN_RUN_NS yet.
 */
static s32 preempt_longest(void)
{
	struct cpu_progress *prog;
	u64 now = scx_bpf_now(), oldest = 0;
	s32 victim = -EBUSY;
	u32 cpu;

	bpf_for(cpu, 0, BALLOT_MAX_CPUS) {
		if (cpu >= nr_online_cpus)
			break;
		prog = bpf_map_lookup_elem(&progress, &cpu);
		if (!prog)
			break;
		if (!prog->running_since ||
		    (s64)(now - prog->running_since) < (s64)WAKE_PREEMPT_MIN_RUN_NS)
			continue;
		if (!oldest || (s64)(prog->running_since - oldest) < 0) {
			oldest = prog->running_since;
			victim = cpu;
		}
	}
	if (victim >= 0) {
		preempt_cpu(victim);
		count(&nr_wake_preempts);
	}
	return victim;
}

/*
 * Wakes a CPU after user space queued decisions, so that it runs
 * ops.dispatch() and carries them out: @arg->cpu if it is idle (a CPU the
 * policy chose), or any idle CPU. With @arg->preempt, @arg->cpu gives up
 * the task it runs at once (its slice ends, so it goes back to the policy):
 * the standing changed and that CPU runs a class that lost weight. With
 * @arg->preempt and a negative @arg->cpu, a decision that must not wait for
 * a slice to end was queued: when no CPU is idle, preempt_longest() makes
 * room. Run by user space through BPF_PROG_TEST_RUN.
 */
SEC("syscall")
int ballot_kick(struct kick_arg *arg)
{
	const struct cpumask *online;
	s32 cpu = arg->cpu;

	if (arg->preempt && cpu >= 0)
		return preempt_cpu(cpu);
	if (cpu < 0) {
		online = scx_bpf_get_online_cpumask();
		cpu = scx_bpf_pick_idle_cpu(online, 0);
		scx_bpf_put_cpumask(online);
		/* None idle, and a decision must not wait: make room. */
		if (cpu < 0 && arg->preempt)
			return preempt_longest();
	}
	if (cpu >= 0)
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	return cpu;
}

/*
 * Gives back to the policy the tasks waiting in the local queue of a CPU
 * that has started none of ours for STUCK_BEATS heartbeats.
 */
static void unstick_local_queues(void)
{
	struct cpu_progress *prog;
	u32 cpu;

	if (!__COMPAT_has_generic_reenq())
		return;
	bpf_for(cpu, 0, BALLOT_MAX_CPUS) {
		if (cpu >= nr_online_cpus)
			break;
		prog = bpf_map_lookup_elem(&progress, &cpu);
		if (!prog)
			break;
		if (!scx_bpf_dsq_nr_queued(SCX_DSQ_LOCAL_ON | cpu) ||
		    prog->started != prog->seen) {
			prog->seen = prog->started;
			prog->beats = 0;
			continue;
		}
		if (++prog->beats < STUCK_BEATS)
			continue;
		prog->beats = 0;
		scx_bpf_dsq_reenq(SCX_DSQ_LOCAL_ON | cpu, 0);
		count(&nr_reenqueued);
	}
}

static int heartbeat_fn(void *map, int *key, struct bpf_timer *timer)
{
	struct custody note;
	const struct cpumask *online;
	s32 cpu;

	unstick_local_queues();

	/* An overdue task waits: make sure some CPU runs ops.dispatch(). */
	if (!bpf_map_peek_elem(&custody, &note) &&
	    older_than(note.at, starvation_ns)) {
		online = scx_bpf_get_online_cpumask();
		cpu = scx_bpf_pick_idle_cpu(online, 0);
		if (cpu < 0)
			cpu = bpf_cpumask_first(online);
		scx_bpf_put_cpumask(online);
		scx_bpf_kick_cpu(cpu, 0);
	}
	bpf_timer_start(timer, HEARTBEAT_NS, 0);
	return 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(ballot_init)
{
	struct heartbeat *hb;
	const struct cpumask *online;
	u32 key = 0;
	s32 err;

	online = scx_bpf_get_online_cpumask();
	nr_online_cpus = bpf_cpumask_weight(online);
	scx_bpf_put_cpumask(online);

	err = scx_bpf_create_dsq(BALLOT_SHARED_DSQ, -1);
	if (err)
		return err;
	err = scx_bpf_create_dsq(BALLOT_SCHED_DSQ, -1);
	if (err)
		return err;
	err = scx_bpf_create_dsq(BALLOT_FALLBACK_DSQ, -1);
	if (err)
		return err;

	hb = bpf_map_lookup_elem(&heartbeat, &key);
	if (!hb)
		return -ESRCH;
	bpf_timer_init(&hb->timer, &heartbeat, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&hb->timer, heartbeat_fn);
	return bpf_timer_start(&hb->timer, HEARTBEAT_NS, 0);
}

void BPF_STRUCT_OPS(ballot_exit, struct scx_exit_info *ei)
{
	UEI_RECORD(uei, ei);
}

SCX_OPS_DEFINE(ballot_ops,
	       .select_cpu	= (void *)ballot_select_cpu,
	       .enqueue		= (void *)ballot_enqueue,
	       .dequeue		= (void *)ballot_dequeue,
	       .dispatch	= (void *)ballot_dispatch,
	       .runnable	= (void *)ballot_runnable,
	       .running		= (void *)ballot_running,
	       .stopping	= (void *)ballot_stopping,
	       .init_task	= (void *)ballot_init_task,
	       .init		= (void *)ballot_init,
	       .exit		= (void *)ballot_exit,
	       .timeout_ms	= 5000,
	       .dispatch_max_batch = BALLOT_DISPATCH_BATCH,
	       .name		= "scx_ballot");
