#!/bin/bash
# Guest side of `cargo xtask vm-test`: the first-light checks.
#
# Usage: first-light.sh SCX_BALLOT_BINARY OUT_DIR [WINDOW_SECS]
#
# For each case (a working scheduler, and one started with
# --debug-no-dispatch as a negative control) it starts scx_ballot, starts a
# CPU burner in SCHED_EXT and one in the fair class, measures their CPU time
# from the kernel's own accounting over a window while the scheduler is
# attached, then stops the scheduler. Facts go to OUT_DIR/CASE/result as
# key=value lines; the host decides what passes. Every step is bounded in
# time, and every process started here is killed before the script ends.
set -u

BIN=$1
OUT=$2
WINDOW=${3:-5}
. "$(dirname "$0")/lib.sh"

run_case() { # run_case NAME [SCHEDULER FLAGS...]
	local name=$1
	shift
	local dir="$OUT/$name"
	mkdir -p "$dir"
	local res="$dir/result"
	: > "$res"
	say "case $name: starting scx_ballot $*"

	local t_start=$SECONDS
	if start_scheduler "$dir/scheduler.log" "$@"; then
		echo "attach_secs=$((SECONDS - t_start))" >> "$res"
	fi
	echo "state_after_load=$(sched_state)" >> "$res"
	echo "ops=$(cat $SYS/root/ops 2>/dev/null)" >> "$res"
	say "case $name: state $(sched_state), ops $(cat $SYS/root/ops 2>/dev/null)"

	"$BIN" exec -- sh -c 'while :; do :; done' &
	local ext=$!
	sh -c 'while :; do :; done' &
	local fair=$!
	sleep 1

	local ext0 fair0 ext1 fair1
	ext0=$(cpu_ns $ext)
	fair0=$(cpu_ns $fair)
	sleep "$WINDOW"
	ext1=$(cpu_ns $ext)
	fair1=$(cpu_ns $fair)
	{
		echo "window_ns=$((WINDOW * 1000000000))"
		echo "ext_cpu_ns=$((ext1 - ext0))"
		echo "fair_cpu_ns=$((fair1 - fair0))"
		echo "ext_enabled_ext=$(ext_enabled $ext)"
		echo "ext_enabled_fair=$(ext_enabled $fair)"
		echo "state_after_window=$(sched_state)"
	} >> "$res"
	say "case $name: burner CPU time over ${WINDOW}s: sched_ext $((ext1 - ext0)) ns, fair $((fair1 - fair0)) ns"

	# Stop the scheduler first: under a scheduler that does not dispatch, the
	# SCHED_EXT burner cannot even run to take its SIGKILL until it is gone.
	stop_scheduler
	echo "scheduler_exit=$SCHED_EXIT" >> "$res"
	echo "state_after_unload=$(sched_state)" >> "$res"
	kill -KILL "$ext" "$fair" 2>/dev/null
	wait "$ext" "$fair" 2>/dev/null
	say "case $name: done, state $(sched_state)"
}

say "kernel $(uname -r), $(nproc) CPUs"
run_case working
# A watchdog timeout longer than the window, so that what the window shows
# is the missing dispatch itself, not the ejection that would follow it.
SCX_TIMEOUT_MS=30000 run_case no-dispatch --debug-no-dispatch

say "all cases done"
