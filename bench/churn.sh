#!/usr/bin/env bash
# Stream churn: does the origin give memory back after many short-lived
# publishers? Starts the release origin (core 0), publishes and unpublishes
# $STREAMS distinct streams with baton-bench churn (core 1), and prints the
# origin's RSS before, during and after, plus its stream count afterwards.
# With ROUNDS=2 (the default) it does that twice with new names: if RSS
# after round 2 is about RSS after round 1, memory is retained by the
# allocator and reused; if it grows again, something leaks per stream.
# Writes bench/out/churn-N.json and bench/out/churn.log.
#
# Environment:
#   STREAMS=100000   streams to publish per round
#   ROUNDS=2         rounds
#   PARALLEL=16      concurrent publishers
#   FRAMES=5         video frames per stream
#   BENCH_BATON_RTMP=127.0.0.1:19350 BENCH_BATON_HTTP=127.0.0.1:18080
#   BENCH_BATON_API=127.0.0.1:19850  listen addresses, if those are taken
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/out
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/baton-bench
ORIGIN=$TARGET_DIR/release/baton-origin

STREAMS=${STREAMS:-100000}
PARALLEL=${PARALLEL:-16}
FRAMES=${FRAMES:-5}
ROUNDS=${ROUNDS:-2}
RTMP=${BENCH_BATON_RTMP:-127.0.0.1:19350}
HTTP=${BENCH_BATON_HTTP:-127.0.0.1:18080}
API=${BENCH_BATON_API:-127.0.0.1:19850}

die() { printf 'churn.sh: error: %s\n' "$*" >&2; exit 1; }

ORIGIN_PID=
cleanup() {
    if [[ -n $ORIGIN_PID ]]; then
        kill "$ORIGIN_PID" 2>/dev/null || true
        wait "$ORIGIN_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd "$ROOT" && cargo build --release -p baton-origin -p baton-bench)

LOG=$OUT/churn-origin.log
taskset -c 0 "$ORIGIN" --rtmp "$RTMP" --http "$HTTP" --api "$API" >"$LOG" 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 100); do
    kill -0 "$ORIGIN_PID" 2>/dev/null || { tail -n 20 "$LOG" >&2; die "baton-origin exited during startup (log: $LOG)"; }
    (exec 3<>"/dev/tcp/${RTMP%:*}/${RTMP#*:}") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/${RTMP%:*}/${RTMP#*:}") 2>/dev/null || die "baton-origin is not listening on $RTMP (log: $LOG)"
sleep 1 # let startup allocations settle before the baseline RSS

: >"$OUT/churn.log"
for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS: $STREAMS streams" | tee -a "$OUT/churn.log"
    taskset -c 1 "$BENCH" churn --url "rtmp://$RTMP/live" --streams "$STREAMS" \
        --first $(((round - 1) * STREAMS)) --parallel "$PARALLEL" --frames "$FRAMES" \
        --api "http://$API" --pid "$ORIGIN_PID" --json "$OUT/churn-$round.json" 2>&1 |
        tee -a "$OUT/churn.log"
    kill -0 "$ORIGIN_PID" 2>/dev/null || die "baton-origin died during the churn (log: $LOG)"
done
