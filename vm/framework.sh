#!/bin/bash
# Guest side of `cargo xtask vm-test`: the user-space framework checks.
#
# Usage: framework.sh SCX_BALLOT_BINARY OUT_DIR STRESS_SECS
#
# Cases (each writes OUT_DIR/CASE/result as key=value lines and keeps the
# scheduler's output in OUT_DIR/CASE/scheduler.log; the host judges):
#   stress-fifo, stress-vruntime  partial mode under stress-ng CPU + memory load
#   full-vruntime                 full mode under the same load, with a
#                                 responsiveness probe
#   share-fifo                    4 equal SCHED_EXT burners on the vCPUs
#   share-vruntime                2 nice-0 and 2 nice-10 SCHED_EXT burners
#   sigkill                       the scheduler is SIGKILLed under load
#   sigstop                       the scheduler is stopped past the watchdog
#                                 timeout under 16 burners per CPU
#   full-threads                  full mode: the scheduler's threads other than
#                                 its loop wait their turn
set -u

BIN=$1
OUT=$2
STRESS=${3:-30}
. "$(dirname "$0")/lib.sh"

case_dir() { mkdir -p "$OUT/$1"; : > "$OUT/$1/result"; }
fact() { echo "$2=$3" >> "$OUT/$1/result"; }

# stress CASE SECS: stress-ng CPU + memory load, bounded, as SCHED_EXT unless
# in full mode (where every task is ours anyway).
stress_load() {
	timeout -k 5 $(($2 + 30)) "$BIN" exec -- stress-ng --cpu 4 --vm 2 --vm-bytes 96M \
		--timeout "${2}s" --temp-path "$OUT/$1" --quiet > "$OUT/$1/stress.log" 2>&1
	fact "$1" stress_exit $?
}

run_stress() { # run_stress CASE SECS [FLAGS...]
	local c=$1 secs=$2
	shift 2
	case_dir "$c"
	say "case $c: scx_ballot $* under ${secs}s of stress-ng"
	start_scheduler "$OUT/$c/scheduler.log" "$@"
	fact "$c" state_after_load "$(sched_state)"
	local worst=0
	stress_load "$c" "$secs" &
	local load=$!
	if [[ " $* " == *" --full "* ]]; then
		# Responsiveness: a short command must complete promptly meanwhile.
		local t0 t1 ms
		while kill -0 "$load" 2>/dev/null; do
			t0=$(date +%s%N)
			timeout 20 sh -c 'ls / > /dev/null; echo ok > /dev/null'
			t1=$(date +%s%N)
			ms=$(((t1 - t0) / 1000000))
			[ "$ms" -gt "$worst" ] && worst=$ms
			sleep 2
		done
		fact "$c" worst_command_ms "$worst"
	fi
	wait "$load"
	fact "$c" state_after_load_ended "$(sched_state)"
	stop_scheduler
	fact "$c" scheduler_exit "$SCHED_EXIT"
	fact "$c" state_after_unload "$(sched_state)"
	fact "$c" user_dispatches "$(last_counter "$OUT/$c/scheduler.log" user)"
	fact "$c" rescued "$(last_counter "$OUT/$c/scheduler.log" rescued)"
	say "case $c: done, $(tail -n 3 "$OUT/$c/scheduler.log" | head -n 1)"
}

# share CASE NICE... : one SCHED_EXT burner per NICE value; their CPU time
# over a window, in per mille of the total.
run_share() {
	local c=$1 policy=$2
	shift 2
	case_dir "$c"
	say "case $c: --policy $policy, burners at nice $*"
	start_scheduler "$OUT/$c/scheduler.log" --policy "$policy"
	local pids=() n
	for n in "$@"; do
		"$BIN" exec -- nice -n "$n" sh -c 'while :; do :; done' &
		pids+=($!)
	done
	sleep 2
	local before=() after=() i total=0
	for i in "${!pids[@]}"; do before[i]=$(cpu_ns "${pids[i]}"); done
	sleep 8
	for i in "${!pids[@]}"; do
		after[i]=$(cpu_ns "${pids[i]}")
		total=$((total + after[i] - before[i]))
	done
	for i in "${!pids[@]}"; do
		fact "$c" "burner${i}_nice" "${@:i+1:1}"
		fact "$c" "burner${i}_permille" $(((after[i] - before[i]) * 1000 / (total > 0 ? total : 1)))
	done
	fact "$c" state_after_window "$(sched_state)"
	stop_scheduler
	fact "$c" scheduler_exit "$SCHED_EXIT"
	fact "$c" user_dispatches "$(last_counter "$OUT/$c/scheduler.log" user)"
	kill_all "${pids[@]}"
	say "case $c: $(tr '\n' ' ' < "$OUT/$c/result")"
}

run_sigkill() {
	local c=sigkill
	case_dir $c
	say "case $c: SIGKILL the scheduler while SCHED_EXT burners run"
	start_scheduler "$OUT/$c/scheduler.log"
	local pids=()
	"$BIN" exec -- sh -c 'while :; do :; done' &
	pids+=($!)
	"$BIN" exec -- sh -c 'while :; do :; done' &
	pids+=($!)
	sleep 2
	fact $c killed_pid "${SCHED_BIN_PID:-none}"
	kill -KILL "${SCHED_BIN_PID:-$SCHED_PID}"
	wait "$SCHED_PID" 2>/dev/null
	wait_state disabled 300
	fact $c state_after_kill "$(sched_state)"
	local b0 b1
	b0=$(cpu_ns "${pids[0]}")
	sleep 3
	b1=$(cpu_ns "${pids[0]}")
	fact $c window_ns 3000000000
	fact $c burner_cpu_ns_after_kill $((b1 - b0))
	fact $c burner_ext_enabled "$(ext_enabled "${pids[0]}")"
	fact $c burner_alive "$(kill -0 "${pids[0]}" 2>/dev/null && echo 1 || echo 0)"
	kill_all "${pids[@]}"
	say "case $c: $(tr '\n' ' ' < "$OUT/$c/result")"
}

# A stopped policy (SIGSTOP: a debugger, a long page fault) must not get the
# scheduler ejected: the BPF side runs every waiting task by itself, each in
# turn. 16 SCHED_EXT burners per CPU, the scheduler stopped for four times the
# watchdog timeout, then continued.
run_sigstop() {
	local c=sigstop
	case_dir $c
	say "case $c: SIGSTOP the scheduler for 8 s (watchdog 2 s) under 16 burners per CPU"
	# vruntime: the vtimes the policy gave differ from task to task and stop
	# advancing while it is stopped. Short slices and starvation limit fill
	# the queue to user space within seconds; from then on every enqueue
	# is dispatched by the BPF side at once (congestion), and only a fair
	# order among those keeps every burner running.
	start_scheduler "$OUT/$c/scheduler.log" --policy vruntime --timeout-ms 2000 \
		--starvation-ms 10 --slice-us 1000
	local pids=() i n=$(($(nproc) * 16))
	for ((i = 0; i < n; i++)); do
		"$BIN" exec -- sh -c 'while :; do :; done' &
		pids+=($!)
	done
	sleep 2
	local before=() least=-1 d
	for i in "${!pids[@]}"; do before[i]=$(cpu_ns "${pids[i]}"); done
	kill -STOP "$SCHED_BIN_PID"
	sleep 8
	fact $c state_while_stopped "$(sched_state)"
	for i in "${!pids[@]}"; do
		d=$(($(cpu_ns "${pids[i]}") - before[i]))
		if [ "$least" -lt 0 ] || [ "$d" -lt "$least" ]; then least=$d; fi
	done
	kill -CONT "$SCHED_BIN_PID"
	sleep 2
	fact $c burners "$n"
	fact $c cpus "$(nproc)"
	fact $c window_ns 8000000000
	fact $c least_burner_cpu_ns_while_stopped "$least"
	fact $c state_after_cont "$(sched_state)"
	stop_scheduler
	fact $c scheduler_exit "$SCHED_EXIT"
	fact $c rescued "$(last_counter "$OUT/$c/scheduler.log" rescued)"
	fact $c congested "$(last_counter "$OUT/$c/scheduler.log" congested)"
	kill_all "${pids[@]}"
	say "case $c: $(tr '\n' ' ' < "$OUT/$c/result")"
}

# In full mode only the scheduling loop's thread may jump the queue: the
# scheduler's other threads (here the membership scan, which wakes every
# 50 ms) wait their turn like every other task. 16 burners per CPU, the
# election policy in full mode; the scan thread's wait per run is recorded
# (/proc/PID/task/TID/schedstat), with the loop thread's beside it.
run_full_threads() {
	local c=full-threads
	case_dir $c
	say "case $c: full mode, election policy, 16 burners per CPU: do the scheduler's other threads wait their turn?"
	start_scheduler "$OUT/$c/scheduler.log" --full --policy election --listen 127.0.0.1:7449
	local pids=() i n=$(($(nproc) * 16)) tid="" f
	for ((i = 0; i < n; i++)); do
		sh -c 'while :; do :; done' &
		pids+=($!)
	done
	sleep 2
	for f in /proc/"$SCHED_BIN_PID"/task/*/comm; do
		[ "$(cat "$f" 2>/dev/null)" = membership ] && tid=$(basename "$(dirname "$f")")
	done
	local a0 w0 r0 a1 w1 r1 la0 lw0 lr0 la1 lw1 lr1
	read -r a0 w0 r0 < "/proc/$SCHED_BIN_PID/task/${tid:-none}/schedstat" 2>/dev/null
	read -r la0 lw0 lr0 < "/proc/$SCHED_BIN_PID/task/$SCHED_BIN_PID/schedstat"
	sleep 4
	read -r a1 w1 r1 < "/proc/$SCHED_BIN_PID/task/${tid:-none}/schedstat" 2>/dev/null
	read -r la1 lw1 lr1 < "/proc/$SCHED_BIN_PID/task/$SCHED_BIN_PID/schedstat"
	fact $c membership_thread "${tid:-none}"
	fact $c membership_runs $((${r1:-0} - ${r0:-0}))
	fact $c membership_wait_us_per_run $(((${w1:-0} - ${w0:-0}) / 1000 / ((${r1:-0} - ${r0:-0}) > 0 ? (${r1:-0} - ${r0:-0}) : 1)))
	fact $c loop_wait_us_per_run $(((lw1 - lw0) / 1000 / ((lr1 - lr0) > 0 ? (lr1 - lr0) : 1)))
	fact $c state_after_window "$(sched_state)"
	kill_all "${pids[@]}"
	stop_scheduler
	fact $c scheduler_exit "$SCHED_EXIT"
	say "case $c: $(tr '\n' ' ' < "$OUT/$c/result")"
}

say "framework suite: kernel $(uname -r), $(nproc) CPUs, stress ${STRESS}s"
run_stress stress-fifo "$STRESS" --policy fifo
run_stress stress-vruntime "$STRESS" --policy vruntime
run_stress full-vruntime $((STRESS * 2 / 3)) --policy vruntime --full
run_share share-fifo fifo 0 0 0 0
run_share share-vruntime vruntime 0 0 10 10
run_sigkill
run_sigstop
run_full_threads
say "framework suite done"
