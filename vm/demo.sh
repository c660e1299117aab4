#!/bin/bash
# The demo behind `cargo xtask run`: scx_ballot plus CPU burners, with a
# line a second saying which task got how much CPU. Runs on a sched_ext host
# (as root) or as the guest command of the VM.
#
# Usage: demo.sh SCX_BALLOT_BINARY SECONDS [SCHEDULER FLAGS...]
set -u

BIN=$1
SECS=$2
shift 2
. "$(dirname "$0")/lib.sh"
pids=()

cleanup() {
	[ -n "${sched:-}" ] && kill -INT "$sched" 2>/dev/null && wait "$sched"
	[ ${#pids[@]} -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
	echo "demo: state $(sched_state), everything stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "demo: kernel $(uname -r), $(nproc) CPUs; starting scx_ballot $*"
timeout --foreground --preserve-status -s INT -k 10 $((SECS + 120)) "$BIN" "$@" &
sched=$!
if ! wait_state enabled 900 "$sched"; then
	echo "demo: scx_ballot exited or did not attach within 90 s"
	kill_all "$sched"
	sched=
	exit 1
fi
echo "demo: sched_ext state $(sched_state), ops $(cat $SYS/root/ops)"

names=("burner-ext-1 (SCHED_EXT)" "burner-ext-2 (SCHED_EXT)" "burner-fair (fair class)")
"$BIN" exec -- sh -c 'while :; do :; done' & pids+=($!)
"$BIN" exec -- sh -c 'while :; do :; done' & pids+=($!)
sh -c 'while :; do :; done' & pids+=($!)

declare -a last total
for i in "${!pids[@]}"; do last[i]=$(cpu_ns "${pids[i]}"); total[i]=0; done
for ((t = 1; t <= SECS; t++)); do
	sleep 1
	line="t=${t}s"
	for i in "${!pids[@]}"; do
		now=$(cpu_ns "${pids[i]}")
		d=$((now - last[i])); last[i]=$now; total[i]=$((total[i] + d))
		line+="  ${names[i]%% *} $((d / 10000000))%"
	done
	echo "$line   [state $(sched_state)]"
done
echo "demo: CPU time over ${SECS}s:"
for i in "${!pids[@]}"; do
	printf "  %-28s %6d ms  (pid %d, ext.enabled=%s)\n" "${names[i]}" $((total[i] / 1000000)) "${pids[i]}" "$(ext_enabled "${pids[i]}")"
done
