#!/usr/bin/env bash
# Fan-out cost and lateness: Baton, SRS, nginx-rtmp and the floor (a bare
# tokio fan-out, `baton-bench floor`) in one sitting.
#
# For each server in turn (pinned to core 0): `baton-bench publish --stamp`
# (core 1) publishes the synthetic ~1 Mbit/s stream with a wall-clock send
# stamp in every frame; then, for each player count and protocol,
# `baton-bench fanout` (core 1) opens the players, which read their socket
# every $READ_EVERY (like clients behind real round trips; 0 = on arrival),
# and reports the server's CPU per delivered GB over the steady window,
# lateness (read time minus send time), players behind, frames lost and
# first-keyframe time. Writes bench/out/peers.md and prints it.
#
# Environment:
#   COUNTS="1000 2000 4000"   players per point
#   PROTOCOLS="rtmp http"     nginx-rtmp only ever runs rtmp
#   SERVERS="baton srs nginx"   and/or floor: a bare tokio HTTP-FLV fan-out
#                             (baton-bench floor), the cost floor
#   READ_EVERY=200ms          player read cadence (0s: on arrival)
#   UNWOKEN=                  1: RTMP players reading on a cadence are not
#                             woken by arrivals between reads (fanout
#                             --unwoken): on loopback that wake-up is
#                             charged to the server's core
#   DECODE_EVERY=1            K: only every K-th player decodes (lateness,
#                             losses, keyframes); the rest discard their
#                             socket undecoded (fanout --decode-every), so
#                             one client core can load a full server core
#   DURATION=32               seconds per point (steady window: the run
#                             minus the ramp minus 1 s)
#   RAMP=2000/s BITRATE=1080k
#   SRS_BIN=/path/to/objs/srs     SRS built from source (its trunk dir is
#                             the binary's ../); configured from its own
#                             conf/http.flv.live.conf (merged-write defaults
#                             untouched), only ports, max_connections and
#                             the pid file changed
#   BATON_VARIANTS="baton=path [label=path ...]"   baton-origin binaries,
#                             each run as its own server (default: this
#                             tree's release build, labelled baton)
#   BATON_ARGS="..."          extra flags for every baton-origin
#   ARGS_<label>="..."        extra flags for the variant <label> only
#   BUILD=1 TAG=              BUILD=0 skips cargo; TAG names the output
#   CPU_QUOTA=                N: each server may use only N % of its core
#                             (CFS bandwidth, 10 ms period, cgroup v1 or
#                             v2): a saturation point at N % of a core
#                             needs only N % of the load, which the one
#                             client core can then still read (at 100 %
#                             the client saturates first on 2 cores)
#
# Needs: nginx + libnginx-mod-rtmp (apt), jq, taskset, 2 cores.
set -euo pipefail

# fanout.sh gives these its own defaults: take ours first.
SERVERS=${SERVERS:-"baton srs nginx"}
DURATION=${DURATION:-32}
# shellcheck source=bench/fanout.sh
source "$(dirname "${BASH_SOURCE[0]}")/fanout.sh"

COUNTS=${COUNTS:-"1000 2000 4000"}
PROTOCOLS=${PROTOCOLS:-"rtmp http"}
READ_EVERY=${READ_EVERY:-200ms}
UNWOKEN=${UNWOKEN:-}
DECODE_EVERY=${DECODE_EVERY:-1}
BITRATE=${BITRATE:-1080k}
SRS_BIN=${SRS_BIN:-/work/peers/srs/trunk/objs/srs}
BATON_VARIANTS=${BATON_VARIANTS:-"baton=$ORIGIN"}
TAG=${TAG:-}
SRS_RTMP=${BENCH_SRS_RTMP:-127.0.0.1:19352}
SRS_HTTP=${BENCH_SRS_HTTP:-127.0.0.1:18082}
FLOOR_HTTP=${BENCH_FLOOR_HTTP:-127.0.0.1:18090}

CPU_QUOTA=${CPU_QUOTA:-}
CGROUP=

# limit_cpu PID: with CPU_QUOTA, the server (and its children: nginx's
# workers) may use CPU_QUOTA % of a core from now on.
limit_cpu() {
    [[ -n $CPU_QUOTA ]] || return 0
    local pid=$1 quota_us=$((CPU_QUOTA * 100)) p
    if [[ -z $CGROUP ]]; then
        if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
            CGROUP=/sys/fs/cgroup/baton-bench-$$
            mkdir -p "$CGROUP"
            echo "$quota_us 10000" >"$CGROUP/cpu.max"
        elif [[ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
            CGROUP=/sys/fs/cgroup/cpu/baton-bench-$$
            mkdir -p "$CGROUP"
            echo 10000 >"$CGROUP/cpu.cfs_period_us"
            echo "$quota_us" >"$CGROUP/cpu.cfs_quota_us"
        else
            die "CPU_QUOTA needs the cgroup cpu controller (v1 or v2) and root"
        fi
        log "servers limited to $CPU_QUOTA % of a core ($CGROUP)"
    fi
    for p in $pid $(pgrep -P "$pid" || true); do
        echo "$p" >"$CGROUP/cgroup.procs"
    done
}

# publish_synth LABEL URL: the stamped synthetic publisher, on core 1.
publish_synth() {
    local label=$1 url=$2
    taskset -c 1 "$BENCH" publish --stamp --bitrate "$BITRATE" --duration 0s --url "$url" \
        >"$OUT/publish-$label.log" 2>&1 &
    PUB_PID=$!
    PIDS+=("$PUB_PID")
}

# points LABEL SERVER_PID RTMP_URL HTTP_URL: every count and protocol.
POINTS=()
points() {
    local label=$1 pid=$2 rtmp=$3 http=$4 n proto url json
    for n in $COUNTS; do
        for proto in $PROTOCOLS; do
            case $proto in
            rtmp) url=$rtmp ;;
            http) url=$http ;;
            *) die "unknown protocol $proto (rtmp, http)" ;;
            esac
            [[ -n $url ]] || continue
            "$BENCH" probe --url "$url" --timeout 15s ||
                die "$label: $url is not playable (publisher log: $OUT/publish-$label.log)"
            json=$OUT/peers${TAG:+-$TAG}-$label-$proto-$n.json
            log "$label $proto: $n players reading every $READ_EVERY for ${DURATION}s (load $(cut -d' ' -f1-3 /proc/loadavg))"
            taskset -c 1 "$BENCH" fanout --url "$url" --players "$n" --duration "${DURATION}s" \
                --ramp "$RAMP" --read-every "$READ_EVERY" --label "$label" \
                ${UNWOKEN:+--unwoken} --decode-every "$DECODE_EVERY" --server-pid "$pid" --json "$json" --quiet
            kill -0 "$pid" 2>/dev/null || die "$label died during the run"
            jq --arg load "$(cut -d' ' -f1 /proc/loadavg)" '. + {load: $load}' "$json" >"$json.tmp" &&
                mv "$json.tmp" "$json"
            POINTS+=("$json")
            sleep 2
        done
    done
}

run_baton_variant() {
    local label=$1 bin=$2 logfile=$OUT/peers-$1.log pid
    log "$label: $bin (core 0)"
    [[ -x $bin ]] || die "$bin is not an executable"
    local extra_var="ARGS_$label"
    # shellcheck disable=SC2086 # BATON_ARGS and ARGS_<label> are lists of extra flags
    taskset -c 0 "$bin" --rtmp "$BATON_RTMP" --http "$BATON_HTTP" --api "$BATON_API" ${BATON_ARGS:-} \
        ${!extra_var:-} >"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$BATON_RTMP" "$pid" "$label" "$logfile"
    wait_port "$BATON_HTTP" "$pid" "$label" "$logfile"
    limit_cpu "$pid"
    publish_synth "$label" "rtmp://$BATON_RTMP/live/bench"
    points "$label" "$pid" "rtmp://$BATON_RTMP/live/bench" "http://$BATON_HTTP/live/bench.flv"
    stop "$PUB_PID"
    stop "$pid"
}

run_srs() {
    local dir=$OUT/srs trunk pid
    [[ -x $SRS_BIN ]] || die "SRS_BIN=$SRS_BIN is not an executable (build SRS, or set SRS_BIN)"
    trunk=$(cd "$(dirname "$SRS_BIN")/.." && pwd)
    [[ -f $trunk/conf/http.flv.live.conf ]] || die "$trunk/conf/http.flv.live.conf missing"
    mkdir -p "$dir"
    # The shipped HTTP-FLV config with our ports, enough connections and
    # our pid file; everything else (merged writes: mw_latency 350 ms,
    # mw_msgs 8 by default) as SRS ships it.
    sed -e "s/^listen .*/listen              ${SRS_RTMP##*:};/" \
        -e "s/^max_connections .*/max_connections     16000;/" \
        -e "s/^\(\s*\)listen\(\s*\)8080;/\1listen\2${SRS_HTTP##*:};/" \
        "$trunk/conf/http.flv.live.conf" >"$dir/srs.conf"
    echo "pid $dir/srs.pid;" >>"$dir/srs.conf"
    grep -q "^listen .*${SRS_RTMP##*:};" "$dir/srs.conf" || die "could not set the SRS RTMP port"
    grep -q "listen .*${SRS_HTTP##*:};" "$dir/srs.conf" || die "could not set the SRS HTTP port"
    log "SRS $("$SRS_BIN" -v 2>&1 | head -n1) (core 0)"
    (cd "$trunk" && exec taskset -c 0 "$SRS_BIN" -c "$dir/srs.conf") >"$dir/srs.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$SRS_RTMP" "$pid" srs "$dir/srs.log"
    wait_port "$SRS_HTTP" "$pid" srs "$dir/srs.log"
    limit_cpu "$pid"
    publish_synth srs "rtmp://$SRS_RTMP/live/bench"
    points srs "$pid" "rtmp://$SRS_RTMP/live/bench" "http://$SRS_HTTP/live/bench.flv"
    stop "$PUB_PID"
    stop "$pid"
}

# The floor: `baton-bench floor`, a bare tokio HTTP-FLV fan-out that
# makes the stamped stream itself (so no publisher runs) and writes every
# frame to every player as it comes. HTTP-FLV points only.
run_floor() {
    local logfile=$OUT/peers-floor.log pid
    log "floor: baton-bench floor (core 0)"
    taskset -c 0 "$BENCH" floor --http "$FLOOR_HTTP" --bitrate "$BITRATE" >"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$FLOOR_HTTP" "$pid" floor "$logfile"
    limit_cpu "$pid"
    points floor "$pid" "" "http://$FLOOR_HTTP/live/bench.flv"
    stop "$pid"
}

run_nginx_peer() {
    local dir=$OUT/nginx pid
    [[ -f $NGINX_RTMP_MODULE ]] ||
        die "$NGINX_RTMP_MODULE missing: apt-get install -y nginx libnginx-mod-rtmp"
    write_nginx_conf "$dir"
    log "nginx-rtmp (core 0)"
    taskset -c 0 nginx -p "$dir/" -c "$dir/nginx.conf" >"$dir/logs/stderr.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$NGINX_RTMP" "$pid" nginx "$dir/logs/error.log"
    limit_cpu "$pid"
    publish_synth nginx-rtmp "rtmp://$NGINX_RTMP/live/bench"
    points nginx-rtmp "$pid" "rtmp://$NGINX_RTMP/live/bench" ""
    stop "$PUB_PID"
    stop "$pid"
}

table() {
    echo "| server | protocol | players ok / asked | steady CPU-s per GB | server CPU % | late p50 / p99 / max (ms) | per-player late p99: p50 / max (ms) | players behind | frames lost | first keyframe p50 / p99 (ms) | video gap p99 (ms) | load |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    jq -r '"| \(.label) | \(.protocol) | \(.players_connected - .players_disconnected_early) / \(.players_requested) | \(.steady_cpu_s_per_gb // 0 | . * 100 | round / 100) | \(.steady_cpu_pct // 0 | round) | \(.late_ms.p50 | round) / \(.late_ms.p99 | round) / \(.late_ms.max | round) | \(.player_late_p99_ms.p50 | round) / \(.player_late_p99_ms.max | round) | \(.players_behind) | \(.frames_lost) | \(.first_keyframe_ms.p50 | round) / \(.first_keyframe_ms.p99 | round) | \(.gap_ms.p99 | round) | \(.load // "?") |"' "$@"
}

peers_main() {
    local s variant
    install_missing
    command -v jq >/dev/null || die "jq not found: apt-get install -y jq"
    prepare_run baton-bench baton-origin
    [[ -x $BENCH ]] || die "$BENCH not built"
    for s in $SERVERS; do
        case $s in
        baton)
            for variant in $BATON_VARIANTS; do
                run_baton_variant "${variant%%=*}" "${variant#*=}"
            done
            ;;
        srs) run_srs ;;
        nginx) run_nginx_peer ;;
        floor) run_floor ;;
        *) die "unknown server '$s' in SERVERS (baton, srs, nginx, floor)" ;;
        esac
    done
    if [[ -n $CGROUP ]]; then
        rmdir "$CGROUP" 2>/dev/null || true
    fi
    log "results"
    {
        echo "# Fan-out with players reading every $READ_EVERY: ${COUNTS// //} players, ${DURATION} s per point"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none); load average at the end of each point in the last column."
        [[ -z $CPU_QUOTA ]] || echo "Each server limited to $CPU_QUOTA % of core 0 (CFS bandwidth, 10 ms period)."
        echo "Server on core 0; publisher (baton-bench publish --stamp, $BITRATE) and players on core 1."
        echo "CPU is the server's own over the steady window (after the ramp), per GB delivered in it."
        echo "Late = when a player's read took a frame out of its socket minus when the publisher sent it (same wall clock)."
        echo
        table "${POINTS[@]}"
    } | tee "$OUT/peers${TAG:+-$TAG}.md"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    peers_main "$@"
fi
