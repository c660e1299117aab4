#!/bin/bash
# Guest side of `cargo xtask vm-test`: the election checks.
#
# Usage: election.sh SCX_BALLOT_BINARY OUT_DIR WINDOW_SECS
#
# Two candidates, blue and red, each with one CPU burner per vCPU started
# by `scx_ballot exec --candidate` (the simplest workload: the leader has
# exactly as many tasks as there are CPUs). Phases (each measured
# from the kernel's own accounting, /proc/PID/schedstat, over a window):
#   uncontested   no votes
#   blue-leads    winner mode, blue 3 votes, red 1
#   red-leads     red gets 3 more votes: the lead flips
#   proportional  restarted in proportional mode, 30 votes to 10
# then the scheduler is SIGKILLed and restarted on the same votes journal,
# and the tally must come back intact. Facts go to OUT_DIR/result and
# OUT_DIR/PHASE.result; the host judges.
set -u

BIN=$1
OUT=$2
WINDOW=${3:-5}
. "$(dirname "$0")/lib.sh"

PORT=7447
API=http://127.0.0.1:$PORT
RES=$OUT/result
: > "$RES"
fact() { echo "$1=$2" >> "$RES"; }

cat > "$OUT/candidates.toml" <<TOML
[[candidate]]
name = "blue"

[[candidate]]
name = "red"
TOML

api() { # api METHOD PATH [JSON]: prints the body; the status goes to stderr
	local m=$1 p=$2
	if [ $# -ge 3 ]; then
		curl -sS -m 10 -X "$m" -H 'Content-Type: application/json' -d "$3" "$API$p"
	else
		curl -sS -m 10 -X "$m" -H 'Content-Type: application/json' "$API$p"
	fi
}

vote() { # vote CANDIDATE COUNT
	local i
	for ((i = 0; i < $2; i++)); do
		api POST /votes "{\"candidate\":\"$1\",\"voter\":\"guest-$1-$RANDOM-$i\"}" > /dev/null || return 1
	done
}

start() { # start LOG [FLAGS...]
	local log=$1
	shift
	start_scheduler "$log" --policy election --candidates "$OUT/candidates.toml" \
		--votes-file "$OUT/votes.journal" --listen 127.0.0.1:$PORT "$@"
	wait_api
}

burners=()
names=()
per_candidate=$(nproc)
for c in $(for _ in $(seq "$per_candidate"); do echo blue; done) $(for _ in $(seq "$per_candidate"); do echo red; done); do
	"$BIN" exec --candidate "$c" -- sh -c 'while :; do :; done' &
	burners+=($!)
	names+=("$c")
done

measure() { # measure PHASE: per-candidate share of the burners' CPU time
	local phase=$1 i before=() after=() blue=0 red=0 total
	sleep 2 # let the new standing settle (membership scan, slices in flight)
	for i in "${!burners[@]}"; do before[i]=$(cpu_ns "${burners[i]}"); done
	sleep "$WINDOW"
	for i in "${!burners[@]}"; do
		after[i]=$(cpu_ns "${burners[i]}")
		if [ "${names[i]}" = blue ]; then
			blue=$((blue + after[i] - before[i]))
		else
			red=$((red + after[i] - before[i]))
		fi
	done
	total=$((blue + red))
	[ "$total" -gt 0 ] || total=1
	{
		echo "blue_permille=$((blue * 1000 / total))"
		echo "red_permille=$((red * 1000 / total))"
		echo "state=$(sched_state)"
		echo "api_schedule=$(api GET /schedule | tr -d '\n')"
	} > "$OUT/$phase.result"
	say "phase $phase: blue $((blue * 1000 / total))‰ red $((red * 1000 / total))‰, state $(sched_state)"
}

say "election suite: $(nproc) CPUs, window ${WINDOW}s"
start "$OUT/scheduler-winner.log" --mode winner
fact attached "$(sched_state)"
measure uncontested
vote blue 3 && vote red 1
fact votes_after_blue "$(api GET /votes | tr -d '\n')"
measure blue-leads
vote red 3
fact votes_after_red "$(api GET /votes | tr -d '\n')"
measure red-leads
stop_scheduler
fact winner_exit "$SCHED_EXIT"

start "$OUT/scheduler-proportional.log" --mode proportional
api POST /votes/reset '{}' > /dev/null
vote blue 30 && vote red 10
fact votes_proportional "$(api GET /votes | tr -d '\n')"
measure proportional

# Durability: SIGKILL, restart on the same journal, same tally.
before=$(api GET /votes | tr -d '\n')
kill -KILL "$SCHED_BIN_PID"
wait "$SCHED_PID" 2>/dev/null
wait_state disabled 300
start "$OUT/scheduler-restarted.log" --mode proportional
after=$(api GET /votes | tr -d '\n')
fact tally_before_kill "$before"
fact tally_after_restart "$after"
fact state_after_restart "$(sched_state)"
stop_scheduler
fact restarted_exit "$SCHED_EXIT"
kill_all "${burners[@]}"
say "election suite done"
