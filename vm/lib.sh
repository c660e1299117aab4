#!/bin/bash
# Helpers shared by the guest suites (sourced, not run).

SYS=/sys/kernel/sched_ext

say() { echo "[guest $(date +%T)] $*"; }

cpu_ns() { # cumulative on-CPU time of a task, from /proc/PID/schedstat
	local f
	read -r f _ < "/proc/$1/schedstat" 2>/dev/null && echo "$f" || echo -1
}

ext_enabled() { # the ext.enabled field of /proc/PID/sched
	awk '/^ext\.enabled/ { print $3; found=1 } END { if (!found) print -1 }' "/proc/$1/sched" 2>/dev/null || echo -1
}

sched_state() { cat $SYS/state 2>/dev/null || echo absent; }

wait_state() { # wait_state STATE TENTHS [PID]: until $SYS/state is STATE, or PID dies
	local want=$1 tries=$2 pid=${3:-} i
	for ((i = 0; i < tries; i++)); do
		[ "$(sched_state)" = "$want" ] && return 0
		[ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
		sleep 0.1
	done
	return 1
}

# start_scheduler LOG [FLAGS...]: starts scx_ballot in the background, bounded
# in time, and waits until it is attached. Sets SCHED_PID (the `timeout`
# wrapper, which forwards SIGINT) and SCHED_BIN_PID (scx_ballot itself).
start_scheduler() {
	local log=$1
	shift
	timeout --foreground --preserve-status -s INT -k 10 600 \
		"$BIN" --stats 1 "$@" > "$log" 2>&1 &
	SCHED_PID=$!
	wait_state enabled 900 "$SCHED_PID"
	local rc=$?
	SCHED_BIN_PID=$(cat "/proc/$SCHED_PID/task/$SCHED_PID/children" 2>/dev/null | awk '{ print $1 }')
	return $rc
}

# stop_scheduler: SIGINT, wait for it; sets SCHED_EXIT to its exit status.
stop_scheduler() {
	kill -INT "$SCHED_PID" 2>/dev/null
	wait "$SCHED_PID"
	SCHED_EXIT=$?
	wait_state disabled 300
}

# last_counter LOG NAME: the last value of a counter in the --stats output.
last_counter() {
	grep -oE "$2 [0-9]+" "$1" | tail -n 1 | awk '{ print $2 }'
}

# wait_api: until the voting server at $API answers GET /votes (30 s at most).
wait_api() {
	local i
	for ((i = 0; i < 300; i++)); do
		curl -s -m 2 "$API/votes" > /dev/null && return 0
		sleep 0.1
	done
	return 1
}

burner() { sh -c 'while :; do :; done'; }

# kill_all PID...: SIGKILL and reap.
kill_all() {
	[ $# -gt 0 ] || return 0
	kill -KILL "$@" 2>/dev/null
	wait "$@" 2>/dev/null
}
