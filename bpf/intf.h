/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The contract between the BPF dispatcher (main.bpf.c) and the Rust side:
 * only the constants and structs that both sides read live here.
 */
#ifndef __SCX_BALLOT_INTF_H
#define __SCX_BALLOT_INTF_H

#ifndef __VMLINUX_H__
typedef unsigned char u8;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64;
typedef long long s64;
#endif

#ifndef TASK_COMM_LEN
#define TASK_COMM_LEN 16
#endif

/* The scheduling policy number of SCHED_EXT. */
#define BALLOT_SCHED_EXT 7

/*
 * dispatched_task.flags: put the task at the head of its CPU's local queue
 * and make that CPU give up the task it runs (the kernel's SCX_ENQ_PREEMPT).
 * For BALLOT_CPU_ANY, user space instead asks ballot_kick to make room when
 * no CPU is idle (the flag itself is not passed to the kernel).
 */
#define BALLOT_ENQ_PREEMPT (1ULL << 32)

/* How many task records the queued/dispatched ring buffers hold. */
#define BALLOT_MAX_QUEUED 4096

enum ballot_consts {
	/* Dispatch queue of tasks that may run on any CPU, ordered by vtime. */
	BALLOT_SHARED_DSQ = 0,
	/* Dispatch queue of the scheduling loop's thread (full mode). */
	BALLOT_SCHED_DSQ = 1,
	/*
	 * First-in first-out queue of the tasks the BPF side dispatches on its
	 * own (user space too slow, stopped or congested): every one of them
	 * runs in turn, whatever vtime the policy last gave it.
	 */
	BALLOT_FALLBACK_DSQ = 2,
	/* dispatched_task.cpu: no CPU chosen, the first free CPU takes it. */
	BALLOT_CPU_ANY = -1,
};

/* When ops.select_cpu() may put a waking task on an idle CPU by itself. */
enum ballot_idle {
	/* Never: the policy decides every dispatch. */
	BALLOT_IDLE_NEVER = 0,
	/*
	 * Only while nothing waits: the policy holds no task, none is on its
	 * way to it and the shared queue is empty. The policy would give the
	 * idle CPU to this task anyway; the round trip is saved.
	 */
	BALLOT_IDLE_WHEN_CLEAR = 1,
	/* Always (cheapest; the policy sees fewer decisions). */
	BALLOT_IDLE_ALWAYS = 2,
};

/*
 * A runnable task, sent from BPF to user space (ring buffer "queued").
 */
struct queued_task {
	s32 pid;
	s32 tgid;		/* its process (thread group) */
	s32 cpu;		/* CPU the task last ran on */
	u32 wakeup;		/* 1: it woke up; 0: it left a CPU (its slice ended, or
				 * it was preempted), which now needs another task */
	u32 sched_ext;		/* 1: its policy is SCHED_EXT (always, in partial mode) */
	u32 pad;
	u64 nr_cpus_allowed;	/* how many CPUs its affinity allows */
	u64 flags;		/* enqueue flags */
	u64 start_ts;		/* when it last started running (ns) */
	u64 stop_ts;		/* when it last stopped running (ns) */
	u64 exec_runtime;	/* CPU time since it last slept (ns) */
	u64 free_runtime;	/* the part of exec_runtime it ran on past a slice by
				 * itself, while the policy held nothing (ns) */
	u64 weight;		/* 1..10000, 100 for nice 0 */
	u64 vtime;		/* its current dsq_vtime */
	u64 enq_seq;		/* which enqueue of this task this is */
	char comm[TASK_COMM_LEN];
};

/*
 * A scheduling decision, sent from user space to BPF (user ring buffer
 * "dispatched").
 */
struct dispatched_task {
	s32 pid;
	s32 cpu;		/* target CPU, or BALLOT_CPU_ANY */
	u64 flags;		/* enqueue flags for the dispatch */
	u64 slice_ns;		/* time slice; 0: the default slice */
	u64 vtime;		/* order in the shared DSQ (lower runs first) */
	u64 enq_seq;		/* the enqueue this decision answers */
};

/* Argument of the select_cpu syscall program. */
struct select_cpu_arg {
	s32 pid;
	s32 prev_cpu;
	u64 flags;		/* not used (as in scx_rustland_core) */
};

/* Argument of the kick syscall program. */
struct kick_arg {
	s32 cpu;		/* the CPU to wake if idle; negative: any idle CPU */
	u32 preempt;		/* 1: make @cpu (>= 0) give up its current task now */
};

#endif /* __SCX_BALLOT_INTF_H */
