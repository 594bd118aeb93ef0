#!/usr/bin/env bash
# kill -9 cycles under upload load: runs the `kill9_cycles` test of tests/crash_kill.rs with
# N cycles (default 100; CI runs the test's own default of 10) inside a wall-clock cap.
# Each cycle: 6 uploaders (ByteStream and batch uploads of 100 B .. 1 MiB, plus AC updates),
# SIGKILL after a pseudo-random 5..40 acknowledgements, restart on the same data dir, then a
# check that every blob and action result acknowledged in any earlier cycle reads back exact.
#
# Usage: tests/reliability/kill9_cycles.sh [CYCLES] [MAX_SECS]
# Prints: cycles, acknowledged blobs and actions, restart min/median/max (spawn to `ready`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CYCLES="${1:-100}"
MAX_SECS="${2:-1800}"
export KILN_KILL_CYCLES="$CYCLES" KILN_KILL_MAX_SECS="$MAX_SECS" RUST_BACKTRACE=0
# The outer timeout is a backstop a little past the test's own cap (build time included).
exec timeout --kill-after=30 "$((MAX_SECS + 600))" \
    cargo test --locked --test crash_kill kill9_cycles -- --nocapture --test-threads=1
