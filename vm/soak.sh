#!/bin/bash
# Guest side of `cargo xtask soak` (and of the short form, the `soak` suite
# of `cargo xtask vm-test`): rounds of stress for every policy, in partial
# and full mode.
#
# Usage: soak.sh SCX_BALLOT_BINARY OUT_DIR ROUNDS ROUND_SECS
#
# Each round (OUT_DIR/POLICY-MODE-N/result, key=value; the host judges):
#   - the scheduler is started (election: on a journal kept across the
#     configuration's rounds);
#   - stress-ng runs the stressors that broke user-space schedulers upstream
#     (cpu, vm, fork, exec, switch, affinity), as SCHED_EXT in partial mode;
#     exec runs as nobody (stress-ng refuses it as root);
#   - election: a vote storm (every acknowledged vote is counted) and
#     candidates whose processes live for milliseconds (fork/exit churn,
#     PID reuse);
#   - full mode: a shell command is timed every second;
#   - every third round overall, the scheduler is SIGKILLed halfway;
#   - ejections: the kernel's "disabled (REASON)" lines other than the
#     scheduler leaving on its own, and the state while it should be attached;
#   - election: after the round, the journal is replayed (`--no-sched`) and
#     the tally compared with every vote acknowledged so far.
set -u

BIN=$1
OUT=$2
ROUNDS=${3:-1}
SECS=${4:-10}
. "$(dirname "$0")/lib.sh"

PORT=7448
API=http://127.0.0.1:$PORT

cat > "$OUT/candidates.toml" <<TOML
[[candidate]]
name = "blue"

[[candidate]]
name = "red"
TOML

# The sum of the tally, from GET /votes ({"votes":{"blue":N,"red":M},...}).
tally_total() {
	curl -s -m 10 "$API/votes" | grep -oE '"votes":\{[^}]*\}' | grep -oE ':[0-9]+' | tr -d ':' |
		awk '{ s += $1 } END { print s + 0 }'
}

# vote_storm ACKS_FILE TAG: votes until killed; one line per acknowledged vote.
vote_storm() {
	local acks=$1 tag=$2 i=0 code c
	while :; do
		i=$((i + 1))
		c=blue
		[ $((i % 3)) -eq 0 ] && c=red
		code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
			-d "{\"candidate\":\"$c\",\"voter\":\"soak-$tag-$i\"}" "$API/votes")
		[ "$code" = 200 ] && echo "$i" >> "$acks"
		[ "$code" = 000 ] && sleep 0.2 # no server (killed, restarting)
	done
}

# churn: candidates' processes that live for milliseconds, one after another.
churn() {
	local c
	while :; do
		for c in blue red; do
			"$BIN" exec --candidate "$c" -- sh -c 'i=0; while [ $i -lt 300 ]; do i=$((i + 1)); done' 2>/dev/null
		done
	done
}

# disable_reasons FROM_LINE: the reasons of the kernel's sched_ext
# "disabled (...)" lines after line FROM_LINE of dmesg.
disable_reasons() {
	dmesg | tail -n +"$(($1 + 1))" | grep -oE 'sched_ext: BPF scheduler .* disabled \(.*\)' |
		sed -E 's/.* disabled \((.*)\)$/\1/'
}

round=0
# eevdf: the same rounds with no sched_ext scheduler, in full mode only (the
# whole system in the kernel's fair class): the baseline of the shell
# command's time. Not judged, not counted for the SIGKILL rounds.
for policy in eevdf fifo vruntime election; do
	modes="partial full"
	[ "$policy" = eevdf ] && modes=full
	for mode in $modes; do
		journal=$OUT/votes-$mode.journal
		acks=$OUT/acks-$mode
		[ "$policy" = election ] && : > "$acks" && rm -f "$journal"
		for ((r = 1; r <= ROUNDS; r++)); do
			[ "$policy" = eevdf ] || round=$((round + 1))
			c=$policy-$mode-$r
			d=$OUT/$c
			mkdir -p "$d"
			res=$d/result
			: > "$res"
			kill_mid=0
			[ "$policy" != eevdf ] && [ $((round % 3)) -eq 0 ] && kill_mid=1
			{
				echo "policy=$policy"
				echo "mode=$mode"
				echo "round=$r"
				echo "killed=$kill_mid"
			} >> "$res"
			flags=(--policy "$policy")
			[ "$mode" = full ] && flags+=(--full)
			[ "$policy" = election ] && flags+=(--candidates "$OUT/candidates.toml" --votes-file "$journal" --listen 127.0.0.1:$PORT)
			say "soak $c: ${SECS}s of stress$([ $kill_mid = 1 ] && echo ', SIGKILL halfway')"
			dmesg_from=$(dmesg | wc -l)
			SCHED_PID=
			if [ "$policy" != eevdf ]; then
				start_scheduler "$d/scheduler.log" "${flags[@]}"
				echo "state_after_load=$(sched_state)" >> "$res"
			fi
			helpers=()
			if [ "$policy" = election ]; then
				wait_api
				# A few votes before the load, each of which must be
				# acknowledged; then the storm, which under full-mode load
				# gets few answers (the server's threads wait their turn).
				for i in 1 2 3 4 5; do
					code=$(curl -s -m 30 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
						-d "{\"candidate\":\"blue\",\"voter\":\"soak-first-$mode-$r-$i\"}" "$API/votes")
					[ "$code" = 200 ] && echo "first-$r-$i" >> "$acks"
				done
				echo "first_votes_acknowledged=$(grep -c "^first-$r-" "$acks")" >> "$res"
				# In partial mode the storm runs as SCHED_EXT too: in the fair
				# class it would run ahead of every SCHED_EXT task (the
				# kernel's class order), whatever the policy.
				if [ "$mode" = partial ]; then
					"$BIN" exec -- bash -c "$(declare -f vote_storm); API=$API; vote_storm '$acks' '$mode-$r'" &
				else
					vote_storm "$acks" "$mode-$r" &
				fi
				helpers+=($!)
				churn &
				helpers+=($!)
			fi
			wrap=()
			[ "$mode" = partial ] && wrap=("$BIN" exec --)
			timeout -k 5 $((SECS + 30)) "${wrap[@]}" stress-ng --cpu 2 --vm 1 --vm-bytes 64M --fork 1 \
				--switch 1 --affinity 1 --timeout "${SECS}s" --temp-path "$d" --quiet > "$d/stress.log" 2>&1 &
			stress=$!
			timeout -k 5 $((SECS + 30)) "${wrap[@]}" setpriv --reuid=65534 --regid=65534 --clear-groups \
				stress-ng --exec 1 --timeout "${SECS}s" --temp-path /tmp --quiet > "$d/stress-exec.log" 2>&1 &
			stress_exec=$!
			t_start=$(date +%s)
			worst=0
			state_during=enabled
			while kill -0 "$stress" 2>/dev/null || kill -0 "$stress_exec" 2>/dev/null; do
				if [ "$kill_mid" = 1 ] && [ $(($(date +%s) - t_start)) -ge $((SECS / 2)) ] && [ -n "${SCHED_PID:-}" ]; then
					kill -KILL "${SCHED_BIN_PID:-$SCHED_PID}" 2>/dev/null
					wait "$SCHED_PID" 2>/dev/null
					SCHED_PID=
					wait_state disabled 300
					echo "state_after_kill=$(sched_state)" >> "$res"
				fi
				if [ -n "${SCHED_PID:-}" ] && [ "$(sched_state)" != enabled ]; then
					state_during=$(sched_state)
				fi
				if [ "$mode" = full ]; then
					t0=$(date +%s%N)
					timeout 20 sh -c 'ls / > /dev/null; echo ok > /dev/null'
					ms=$((($(date +%s%N) - t0) / 1000000))
					[ "$ms" -gt "$worst" ] && worst=$ms
				fi
				sleep 1
			done
			if [ "$kill_mid" = 1 ] && [ -n "${SCHED_PID:-}" ]; then
				# The load ended before the loop came to the kill (a slow
				# shell probe): kill now, and say so.
				echo "killed_after_stress=1" >> "$res"
				kill -KILL "${SCHED_BIN_PID:-$SCHED_PID}" 2>/dev/null
				wait "$SCHED_PID" 2>/dev/null
				SCHED_PID=
				wait_state disabled 300
				echo "state_after_kill=$(sched_state)" >> "$res"
			fi
			wait "$stress"
			echo "stress_exit=$?" >> "$res"
			wait "$stress_exec"
			echo "stress_exec_exit=$?" >> "$res"
			echo "state_during=$state_during" >> "$res"
			[ "$mode" = full ] && echo "worst_command_ms=$worst" >> "$res"
			kill_all "${helpers[@]}"
			if [ -n "${SCHED_PID:-}" ]; then
				echo "state_after_stress=$(sched_state)" >> "$res"
				stop_scheduler
				echo "scheduler_exit=$SCHED_EXIT" >> "$res"
			fi
			echo "state_after_round=$(sched_state)" >> "$res"
			echo "ejections=$(disable_reasons "$dmesg_from" | grep -cv '^unregistered from user space$')" >> "$res"
			disable_reasons "$dmesg_from" | sed 's/^/disabled_reason=/' | tail -n 1 >> "$res"
			if [ "$policy" = election ]; then
				# Replay the journal with the voting server alone.
				timeout -s INT -k 5 60 "$BIN" --no-sched --candidates "$OUT/candidates.toml" \
					--votes-file "$journal" --listen 127.0.0.1:$PORT > "$d/replay.log" 2>&1 &
				replay=$!
				wait_api
				echo "votes_acknowledged=$(wc -l < "$acks")" >> "$res"
				echo "votes_replayed=$(tally_total)" >> "$res"
				kill -INT "$replay" 2>/dev/null
				wait "$replay" 2>/dev/null
			fi
			say "soak $c: $(tr '\n' ' ' < "$res")"
		done
	done
done
echo "rounds=$round" > "$OUT/result"
dmesg > "$OUT/dmesg.txt"
