#!/bin/bash
# Guest command of `cargo xtask vm-test`: runs the suites one after the
# other in one boot, then saves the kernel log.
#
# Usage: guest-tests.sh SCX_BALLOT_BINARY OUT_DIR WINDOW_SECS STRESS_SECS XTASK SUITE...
# (XTASK: the xtask binary, which runs the scenarios from
# OUT_DIR/scenarios/plan.json.)
set -u
BIN=$1
OUT=$2
WINDOW=$3
STRESS=$4
XTASK=$5
shift 5
here=$(dirname "$0")
for suite in "$@"; do
	mkdir -p "$OUT/$suite"
	case $suite in
	first-light) "$here/first-light.sh" "$BIN" "$OUT/$suite" "$WINDOW" ;;
	framework) "$here/framework.sh" "$BIN" "$OUT/$suite" "$STRESS" ;;
	port) "$here/port.sh" "$OUT/$suite/scx_rlfifo" "$OUT/$suite" "$STRESS" ;;
	soak) "$here/soak.sh" "$BIN" "$OUT/$suite" 1 8 ;;
	scenarios) "$XTASK" guest-scenarios "$OUT/$suite/plan.json" "$BIN" "$OUT/$suite" ;;
	*) echo "unknown suite $suite"; exit 2 ;;
	esac
done
dmesg > "$OUT/dmesg.txt"
