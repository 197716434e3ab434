#!/usr/bin/env bash
# Edge benchmarks: what one edge hop costs, in latency and in CPU.
#
#   bench/edge.sh latency   per-frame delivery latency (baton-bench latency),
#                           four paths at once in each run:
#                           a) publish to the origin, play from the origin;
#                           b) publish to the origin, play from edge B;
#                           c) publish to edge A, play from edge B (two hops);
#                           ingest) publish to edge A, play from the origin;
#                           with each --write-coalesce value in $COALESCE, set
#                           on every node.
#   bench/edge.sh cpu       CPU-s per delivered GB (baton-bench fanout):
#                           players on the origin directly vs the same players
#                           on an edge pulling from that origin; only the
#                           serving node's PID is measured.
#   bench/edge.sh           both.
#
# Origin and edges are pinned to core 0 (in the cpu runs the origin serves
# only the edge's one pull), baton-bench and ffmpeg to core 1. Every node
# listens on loopback; everything started is killed on exit.
# Writes bench/out/edge-latency.md, bench/out/edge-cpu.md and the JSON
# reports beside them.
#
# Environment (besides fanout.sh's DURATION, RAMP, BUILD, BATON_ARGS):
#   REPEAT=2                         runs of every measurement
#   LAT_PLAYERS=10 LAT_DURATION=20   latency: players per URL, window (s)
#   COALESCE="20ms 0ms"              latency: --write-coalesce values
#   CPU_CASES="rtmp:1000 rtmp:2000 http:1000"   cpu: protocol:players
#   BENCH_EDGE_A_RTMP=127.0.0.1:19360 BENCH_EDGE_A_HTTP=127.0.0.1:18090
#   BENCH_EDGE_A_API=127.0.0.1:19860 BENCH_EDGE_B_RTMP=127.0.0.1:19370
#   BENCH_EDGE_B_HTTP=127.0.0.1:18100 BENCH_EDGE_B_API=127.0.0.1:19870
#   (the origin uses fanout.sh's BENCH_BATON_* addresses)
#
# Needs: ffmpeg (cpu), jq, taskset, 2 cores.
set -euo pipefail

# shellcheck source=bench/fanout.sh
source "$(dirname "${BASH_SOURCE[0]}")/fanout.sh"

REPEAT=${REPEAT:-2}
LAT_PLAYERS=${LAT_PLAYERS:-10}
LAT_DURATION=${LAT_DURATION:-20}
COALESCE=${COALESCE:-"20ms 0ms"}
CPU_CASES=${CPU_CASES:-"rtmp:1000 rtmp:2000 http:1000"}
EDGE_A_RTMP=${BENCH_EDGE_A_RTMP:-127.0.0.1:19360}
EDGE_A_HTTP=${BENCH_EDGE_A_HTTP:-127.0.0.1:18090}
EDGE_A_API=${BENCH_EDGE_A_API:-127.0.0.1:19860}
EDGE_B_RTMP=${BENCH_EDGE_B_RTMP:-127.0.0.1:19370}
EDGE_B_HTTP=${BENCH_EDGE_B_HTTP:-127.0.0.1:18100}
EDGE_B_API=${BENCH_EDGE_B_API:-127.0.0.1:19870}

# start_origin ARGS...: baton-origin on core 0; its PID in ORIGIN_PID.
ORIGIN_PID=
start_origin() {
    local logfile=$OUT/edge-bench-origin.log
    taskset -c 0 "$ORIGIN" --rtmp "$BATON_RTMP" --http "$BATON_HTTP" --api "$BATON_API" \
        --log warn "$@" >"$logfile" 2>&1 &
    ORIGIN_PID=$!
    PIDS+=("$ORIGIN_PID")
    wait_port "$BATON_RTMP" "$ORIGIN_PID" baton-origin "$logfile"
    wait_port "$BATON_HTTP" "$ORIGIN_PID" baton-origin "$logfile"
}

# start_edge NAME RTMP HTTP API ARGS...: baton-edge on core 0 in front of
# the origin; its PID in EDGE_PID.
EDGE_PID=
start_edge() {
    local name=$1 rtmp=$2 http=$3 api=$4 logfile
    shift 4
    logfile=$OUT/edge-bench-$name.log
    taskset -c 0 "$EDGE" --rtmp "$rtmp" --http "$http" --api "$api" \
        --origin "$BATON_RTMP,api=$BATON_API" --log warn "$@" >"$logfile" 2>&1 &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_port "$rtmp" "$EDGE_PID" "baton-edge $name" "$logfile"
    wait_port "$http" "$EDGE_PID" "baton-edge $name" "$logfile"
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

run_latency() {
    local c r tag a_pid b_pid json
    local jsons=()
    for c in $COALESCE; do
        log "latency: origin + edges A and B on core 0, --write-coalesce $c"
        # shellcheck disable=SC2086 # BATON_ARGS is a list of extra flags
        start_origin --write-coalesce "$c" ${BATON_ARGS:-}
        # shellcheck disable=SC2086
        start_edge a "$EDGE_A_RTMP" "$EDGE_A_HTTP" "$EDGE_A_API" --write-coalesce "$c" ${BATON_ARGS:-}
        a_pid=$EDGE_PID
        # shellcheck disable=SC2086
        start_edge b "$EDGE_B_RTMP" "$EDGE_B_HTTP" "$EDGE_B_API" --write-coalesce "$c" ${BATON_ARGS:-}
        b_pid=$EDGE_PID
        for r in $(seq "$REPEAT"); do
            tag=lat-$c-$r
            json=$OUT/latency-$c-$r.json
            # Two streams in one run, so every path sees the same conditions:
            # $tag-o published to the origin, $tag-e to edge A.
            log "latency coalesce $c run $r (load $(load_avg))"
            taskset -c 1 "$BENCH" latency \
                --publish "rtmp://$BATON_RTMP/live/$tag-o" \
                --publish "rtmp://$EDGE_A_RTMP/live/$tag-e" \
                --play "a:origin=rtmp://$BATON_RTMP/live/$tag-o" \
                --play "b:origin>edgeB=rtmp://$EDGE_B_RTMP/live/$tag-o" \
                --play "c:edgeA>origin>edgeB=rtmp://$EDGE_B_RTMP/live/$tag-e" \
                --play "ingest:edgeA>origin=rtmp://$BATON_RTMP/live/$tag-e" \
                --players "$LAT_PLAYERS" --duration "${LAT_DURATION}s" \
                --label "coalesce $c run $r" --json "$json"
            jsons+=("$c" "$r" "$json")
        done
        stop "$b_pid"
        stop "$a_pid"
        stop "$ORIGIN_PID"
    done

    log "latency results"
    {
        echo "# Edge hop latency: $LAT_PLAYERS RTMP players per path, ${LAT_DURATION} s window, synthetic 1 Mbit/s"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)."
        echo "Origin and edges on core 0, baton-bench (both publishers and all players, one clock) on core 1;"
        echo "the four paths run at once. Latency = arrival - send of every stamped audio and video frame sent in the window."
        echo
        echo "| coalesce | run | path | frames got / expected | p50 ms | p99 ms | max ms | video p99 ms |"
        echo "|---|---|---|---|---|---|---|---|"
        local i
        for ((i = 0; i < ${#jsons[@]}; i += 3)); do
            jq -r --arg c "${jsons[i]}" --arg r "${jsons[i + 1]}" '.targets[] |
                def r2: . * 100 | round / 100;
                "| \($c) | \($r) | \(.name) | \(.frames_received) / \(.frames_expected) | \(.all_ms.p50 | r2) | \(.all_ms.p99 | r2) | \(.all_ms.max | r2) | \(.video_ms.p99 | r2) |"' \
                "${jsons[i + 2]}"
        done
        echo
        echo "Added by the hops (ms), within each run: b-a one edge, c-a two edges (publish via edge A, play via edge B)."
        echo
        echo "| coalesce | run | b-a p50 | b-a p99 | c-a p50 | c-a p99 |"
        echo "|---|---|---|---|---|---|"
        for ((i = 0; i < ${#jsons[@]}; i += 3)); do
            jq -r --arg c "${jsons[i]}" --arg r "${jsons[i + 1]}" '
                def r2: . * 100 | round / 100;
                (.targets | map({(.name | split(":")[0]): .all_ms}) | add) as $t |
                "| \($c) | \($r) | \(($t.b.p50 - $t.a.p50) | r2) | \(($t.b.p99 - $t.a.p99) | r2) | \(($t.c.p50 - $t.a.p50) | r2) | \(($t.c.p99 - $t.a.p99) | r2) |"' \
                "${jsons[i + 2]}"
        done
    } | tee "$OUT/edge-latency.md"
}

run_cpu() {
    local r case proto n url_o url_e path
    local reports=()
    log "cpu: origin on core 0, edge on core 0, ffmpeg and baton-bench on core 1"
    # shellcheck disable=SC2086
    start_origin ${BATON_ARGS:-}
    # shellcheck disable=SC2086
    start_edge cpu "$EDGE_A_RTMP" "$EDGE_A_HTTP" "$EDGE_A_API" ${BATON_ARGS:-}
    publish edge-bench "rtmp://$BATON_RTMP/live/bench"
    for r in $(seq "$REPEAT"); do
        for case in $CPU_CASES; do
            proto=${case%%:*}
            n=${case#*:}
            case $proto in
            rtmp)
                url_o=rtmp://$BATON_RTMP/live/bench
                url_e=rtmp://$EDGE_A_RTMP/live/bench
                ;;
            http)
                url_o=http://$BATON_HTTP/live/bench.flv
                url_e=http://$EDGE_A_HTTP/live/bench.flv
                ;;
            *) die "unknown protocol '$proto' in CPU_CASES (rtmp, http)" ;;
            esac
            [[ $proto == http ]] && path=http-flv || path=rtmp
            log "cpu run $r: $n $proto players, origin then edge (load $(load_avg))"
            PLAYERS=$n load origin "$url_o" "$ORIGIN_PID" "$n-r$r"
            PLAYERS=$n load edge "$url_e" "$EDGE_PID" "$n-r$r"
            reports+=("$r" "$OUT/origin-$path-$n-r$r.json" "$OUT/edge-$path-$n-r$r.json")
        done
    done
    stop "$PUB_PID"
    stop "$EDGE_PID"
    stop "$ORIGIN_PID"

    log "cpu results"
    {
        echo "# Edge vs origin CPU per delivered GB: ${DURATION} s runs, ramp $RAMP"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)."
        echo "Serving node (origin, or edge pulling from the origin) on core 0, its PID measured alone;"
        echo "ffmpeg (~1 Mbit/s H.264/AAC) and baton-bench on core 1. Gaps are between video frame arrivals."
        echo
        echo "| run | protocol | players | origin ok | edge ok | origin CPU-s/GB | edge CPU-s/GB | edge/origin | origin gap p99 / max-per-player p99 (ms) | edge gap p99 / max-per-player p99 (ms) | client CPU origin / edge |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|"
        local i
        for ((i = 0; i < ${#reports[@]}; i += 3)); do
            jq -r --arg r "${reports[i]}" -s '
                def r3: . * 1000 | round / 1000;
                def ok: .players_connected - .players_disconnected_early;
                def cpu: 100 * .client_cpu_s / .elapsed_s | round;
                .[0] as $o | .[1] as $e |
                ($o.players_requested | tostring) as $n |
                "| \($r) | \($o.protocol) | \($n) | \($o | ok) | \($e | ok) | \($o.server_cpu_s_per_gb | r3) | \($e.server_cpu_s_per_gb | r3) | \(($e.server_cpu_s_per_gb / $o.server_cpu_s_per_gb) * 100 | round / 100) | \($o.gap_ms.p99 | round) / \($o.max_gap_per_player_ms.p99 | round) | \($e.gap_ms.p99 | round) / \($e.max_gap_per_player_ms.p99 | round) | \($o | cpu)% / \($e | cpu)% |"' \
                "${reports[i + 1]}" "${reports[i + 2]}"
        done
    } | tee "$OUT/edge-cpu.md"
}

edge_main() {
    local what=${1:-all}
    case $what in
    all | latency | cpu) ;;
    *) die "usage: bench/edge.sh [latency|cpu]" ;;
    esac
    command -v jq >/dev/null || die "jq not found: apt-get install -y jq"
    command -v taskset >/dev/null || die "taskset not found: apt-get install -y util-linux"
    prepare_run baton-bench baton-origin baton-edge
    local bin
    for bin in "$BENCH" "$ORIGIN" "$EDGE"; do
        [[ -x $bin ]] || die "$bin not built"
    done
    if [[ $what != latency ]]; then
        command -v ffmpeg >/dev/null || die "ffmpeg not found: apt-get install -y ffmpeg"
        ensure_media
    fi
    [[ $what == cpu ]] || run_latency
    [[ $what == latency ]] || run_cpu
}

edge_main "$@"
