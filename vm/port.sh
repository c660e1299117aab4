#!/bin/bash
# Guest side of the port check (`cargo xtask vm-test port`): scx_rlfifo from
# crates.io, ported by the guide (xtask/src/host/vm_test/port.rs builds it), runs here.
#
# Usage: port.sh SCX_RLFIFO_BINARY OUT_DIR STRESS_SECS
#
# Writes OUT_DIR/result as key=value lines and keeps the scheduler's output
# in OUT_DIR/scheduler.log; the host judges. scx_rlfifo has no partial mode:
# every task is its own, the burners and stress-ng included.
set -u

RL=$1
OUT=$2
STRESS=${3:-30}
. "$(dirname "$0")/lib.sh"

: > "$OUT/result"
fact() { echo "$1=$2" >> "$OUT/result"; }

say "port: starting $RL"
timeout --foreground --preserve-status -s INT -k 10 600 "$RL" > "$OUT/scheduler.log" 2>&1 &
SCHED_PID=$!
wait_state enabled 900 "$SCHED_PID"
fact state_after_load "$(sched_state)"
fact ops "$(cat $SYS/root/ops 2>/dev/null || echo none)"

say "port: ${STRESS}s of stress-ng (CPU + memory)"
timeout -k 5 $((STRESS + 30)) stress-ng --cpu 4 --vm 2 --vm-bytes 96M \
	--timeout "${STRESS}s" --temp-path "$OUT" --quiet > "$OUT/stress.log" 2>&1
fact stress_exit $?
fact state_after_stress "$(sched_state)"

say "port: two equal burners"
pids=()
for i in 0 1; do
	# Not the `burner` function: its $! would be a subshell, not the loop.
	sh -c 'while :; do :; done' &
	pids+=($!)
done
sleep 2
before=() after=()
total=0
for i in "${!pids[@]}"; do before[i]=$(cpu_ns "${pids[i]}"); done
sleep 8
for i in "${!pids[@]}"; do
	after[i]=$(cpu_ns "${pids[i]}")
	total=$((total + after[i] - before[i]))
done
fact window_ns 8000000000
fact burners_cpu_ns "$total"
for i in "${!pids[@]}"; do
	fact "burner${i}_permille" $(((after[i] - before[i]) * 1000 / (total > 0 ? total : 1)))
done
fact state_after_window "$(sched_state)"
kill_all "${pids[@]}"

stop_scheduler
fact scheduler_exit "$SCHED_EXIT"
fact state_after_unload "$(sched_state)"
fact exit_report "$(grep -m 1 '^EXIT: ' "$OUT/scheduler.log")"
say "port: $(tr '\n' ' ' < "$OUT/result")"
