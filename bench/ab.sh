#!/usr/bin/env bash
# A/B fan-out: two baton-origin binaries (e.g. before and after a refactor)
# measured alternately in one sitting: A, B, A, B, … Each run is
# fanout.sh's Baton run (origin on core 0, ffmpeg and baton-bench on core 1,
# RTMP then HTTP-FLV players), with the same baton-bench for both.
# Writes bench/out/ab.md and the JSON reports beside it.
#
#   OLD_ORIGIN=/path/to/old/baton-origin bench/ab.sh
#
# To build the pre-refactor origin (31df142) beside this tree:
#   git worktree add ../wt-old 31df142
#   (cd ../wt-old && CARGO_TARGET_DIR=$PWD/target cargo build --release -p baton-origin)
#
# Environment (besides fanout.sh's PLAYERS, DURATION, RAMP, BUILD, BATON_ARGS):
#   OLD_ORIGIN=path    the "old" binary (required)
#   NEW_ORIGIN=path    the "new" binary [default: this tree's release build]
#   ROUNDS=2           old+new pairs
#   PROTOCOLS="rtmp http"
#
# Needs: ffmpeg, jq, taskset, 2 cores.
set -euo pipefail

# shellcheck source=bench/fanout.sh
source "$(dirname "${BASH_SOURCE[0]}")/fanout.sh"

OLD_ORIGIN=${OLD_ORIGIN:-}
NEW_ORIGIN=${NEW_ORIGIN:-$TARGET_DIR/release/baton-origin}
ROUNDS=${ROUNDS:-2}
PROTOCOLS=${PROTOCOLS:-"rtmp http"}

# run_one LABEL BINARY ROUND: one origin run, a fan-out per protocol.
AB_REPORTS=()
run_one() {
    local label=$1 bin=$2 round=$3 logfile=$OUT/ab-$1.log pid p url path
    log "$label origin ($bin), round $round (load $(cut -d' ' -f1-3 /proc/loadavg))"
    # shellcheck disable=SC2086 # BATON_ARGS is a list of extra flags
    taskset -c 0 "$bin" --rtmp "$BATON_RTMP" --http "$BATON_HTTP" --api "$BATON_API" --log warn ${BATON_ARGS:-} \
        >"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$BATON_RTMP" "$pid" "$label origin" "$logfile"
    wait_port "$BATON_HTTP" "$pid" "$label origin" "$logfile"
    publish "$label" "rtmp://$BATON_RTMP/live/bench"
    for p in $PROTOCOLS; do
        case $p in
        rtmp) url=rtmp://$BATON_RTMP/live/bench path=rtmp ;;
        http) url=http://$BATON_HTTP/live/bench.flv path=http-flv ;;
        *) die "unknown protocol '$p' in PROTOCOLS (rtmp, http)" ;;
        esac
        load "$label" "$url" "$pid" "r$round"
        AB_REPORTS+=("$OUT/$label-$path-r$round.json")
    done
    stop "$PUB_PID"
    stop "$pid"
}

ab_main() {
    [[ -n $OLD_ORIGIN ]] || die "set OLD_ORIGIN to the old baton-origin binary"
    command -v jq >/dev/null || die "jq not found: apt-get install -y jq"
    command -v ffmpeg >/dev/null || die "ffmpeg not found: apt-get install -y ffmpeg"
    prepare_run baton-bench baton-origin
    local bin
    for bin in "$BENCH" "$OLD_ORIGIN" "$NEW_ORIGIN"; do
        [[ -x $bin ]] || die "$bin not built"
    done
    ensure_media

    local r
    for r in $(seq "$ROUNDS"); do
        run_one old "$OLD_ORIGIN" "$r"
        run_one new "$NEW_ORIGIN" "$r"
    done

    log "results"
    {
        echo "# A/B fan-out: $PLAYERS players, ${DURATION} s, ramp $RAMP; old, new alternately"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)."
        echo "old: $OLD_ORIGIN ($(git -C "$(dirname "$OLD_ORIGIN")" rev-parse --short HEAD 2>/dev/null || echo '?'))"
        echo "new: $NEW_ORIGIN"
        echo "Origin on core 0, ffmpeg and baton-bench on core 1, runs in the order listed."
        echo
        echo "| run | binary | protocol | players ok | Gbit/s | CPU-s | CPU-s per GB | gap p99 (ms) | client CPU |"
        echo "|---|---|---|---|---|---|---|---|---|"
        local f
        for f in "${AB_REPORTS[@]}"; do
            jq -r --arg run "$(basename "$f" .json | sed 's/.*-r//')" '
                "| \($run) | \(.label) | \(.protocol) | \(.players_connected - .players_disconnected_early) / \(.players_requested) | \(.steady_throughput_gbps * 1000 | round / 1000) | \(.server_cpu_s * 100 | round / 100) | \(.server_cpu_s_per_gb * 1000 | round / 1000) | \(.gap_ms.p99 | round) | \(100 * .client_cpu_s / .elapsed_s | round)% |"' "$f"
        done
        echo
        echo "| protocol | old CPU-s/GB (runs) | new CPU-s/GB (runs) | new/old (means) |"
        echo "|---|---|---|---|"
        jq -r -s '
            def r3: . * 1000 | round / 1000;
            def mean: add / length;
            group_by(.protocol)[] |
            (map(select(.label == "old") | .server_cpu_s_per_gb)) as $o |
            (map(select(.label == "new") | .server_cpu_s_per_gb)) as $n |
            "| \(.[0].protocol) | \($o | map(r3) | join(", ")) | \($n | map(r3) | join(", ")) | \(($n | mean) / ($o | mean) * 1000 | round / 1000) |"' \
            "${AB_REPORTS[@]}"
    } | tee "$OUT/ab.md"
}

ab_main "$@"
