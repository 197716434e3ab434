#!/usr/bin/env bash
# Fan-out benchmark: Baton vs nginx-rtmp, side by side, in one run.
#
# For each server in turn (pinned to core 0): publish a real ~1 Mbit/s
# H.264/AAC file with ffmpeg, then open $PLAYERS players with baton-bench
# (pinned to core 1) for $DURATION seconds, measuring delivery, video
# arrival gaps and the server's CPU time during the load. Baton is measured
# over RTMP and HTTP-FLV, nginx-rtmp over RTMP (it has no HTTP-FLV).
# Writes bench/out/fanout.md and prints it.
#
# Environment:
#   PLAYERS=1000      players per run
#   DURATION=20       seconds per run
#   RAMP=2000/s       connection rate
#   SERVERS="baton nginx"   which servers to run (e.g. SERVERS=nginx)
#   BUILD=1           0 skips `cargo build --release` (binaries must exist)
#   BENCH_BATON_RTMP=127.0.0.1:19350 BENCH_BATON_HTTP=127.0.0.1:18080
#   BENCH_BATON_API=127.0.0.1:19850 BENCH_NGINX_RTMP=127.0.0.1:19351
#                     listen addresses, if those ports are taken
#   BATON_ARGS="--write-coalesce 20ms"   extra flags for baton-origin
#   BATON_ORIGIN_BIN=path   another baton-origin binary (e.g. an older build)
#
# bench/edge.sh and bench/ab.sh source this file for its helpers (main only
# runs when it is executed).
#
# Needs: ffmpeg, nginx, libnginx-mod-rtmp, taskset (util-linux), 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/bench/out
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET_DIR/release/baton-bench
ORIGIN=${BATON_ORIGIN_BIN:-$TARGET_DIR/release/baton-origin}
EDGE=$TARGET_DIR/release/baton-edge
MEDIA=$OUT/test-1mbps.mp4
NGINX_RTMP_MODULE=/usr/lib/nginx/modules/ngx_rtmp_module.so

PLAYERS=${PLAYERS:-1000}
DURATION=${DURATION:-20}
RAMP=${RAMP:-2000/s}
SERVERS=${SERVERS:-"baton nginx"}

BATON_RTMP=${BENCH_BATON_RTMP:-127.0.0.1:19350}
BATON_HTTP=${BENCH_BATON_HTTP:-127.0.0.1:18080}
BATON_API=${BENCH_BATON_API:-127.0.0.1:19850}
NGINX_RTMP=${BENCH_NGINX_RTMP:-127.0.0.1:19351}

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Every background process we start, killed on exit whatever happens.
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: ends one process we started, and forgets it.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local kept=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# wait_port HOST:PORT PID NAME LOG: until something listens, or PID dies.
wait_port() {
    local hostport=$1 pid=$2 name=$3 logfile=$4
    for _ in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during startup (log: $logfile)"
        fi
        if (exec 3<>"/dev/tcp/${hostport%:*}/${hostport#*:}") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "$name is not listening on $hostport after 10 s (log: $logfile)"
}

# publish NAME URL: ffmpeg publishes the test file in a loop, in real time.
PUB_PID=
publish() {
    local name=$1 url=$2
    taskset -c 1 ffmpeg -hide_banner -nostdin -loglevel warning -re -stream_loop -1 \
        -i "$MEDIA" -c copy -f flv "$url" >"$OUT/ffmpeg-$name.log" 2>&1 &
    PUB_PID=$!
    PIDS+=("$PUB_PID")
}

# load LABEL URL SERVER_PID [TAG]: one fan-out run, report in
# $OUT/LABEL-PROTO[-TAG].json.
REPORTS=()
load() {
    local label=$1 url=$2 server_pid=$3 tag=${4:-} proto json
    proto=${url%%://*}
    [[ $proto == http ]] && proto=http-flv
    json=$OUT/$label-$proto${tag:+-$tag}.json
    "$BENCH" probe --url "$url" --timeout 15s ||
        die "$label: stream $url is not playable (publisher log: $OUT/ffmpeg-$label.log)"
    log "$label $proto: $PLAYERS players for ${DURATION}s"
    taskset -c 1 "$BENCH" fanout --url "$url" --players "$PLAYERS" --duration "${DURATION}s" \
        --ramp "$RAMP" --label "$label" --server-pid "$server_pid" --json "$json" --quiet
    kill -0 "$server_pid" 2>/dev/null || die "$label died during the run"
    REPORTS+=("$json")
    sleep 2 # let the server close the players before the next run
}

run_baton() {
    local logfile=$OUT/baton-origin.log pid
    log "Baton origin (core 0)"
    # shellcheck disable=SC2086 # BATON_ARGS is a list of extra flags
    taskset -c 0 "$ORIGIN" --rtmp "$BATON_RTMP" --http "$BATON_HTTP" --api "$BATON_API" ${BATON_ARGS:-} \
        >"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$BATON_RTMP" "$pid" baton-origin "$logfile"
    wait_port "$BATON_HTTP" "$pid" baton-origin "$logfile"
    publish baton "rtmp://$BATON_RTMP/live/bench"
    load baton "rtmp://$BATON_RTMP/live/bench" "$pid"
    load baton "http://$BATON_HTTP/live/bench.flv" "$pid"
    stop "$PUB_PID"
    stop "$pid"
}

# nginx-rtmp's config for the benches (one worker, 20000 connections) in
# DIR/nginx.conf, logs under DIR/logs.
write_nginx_conf() {
    local dir=$1
    mkdir -p "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
load_module $NGINX_RTMP_MODULE;
user root;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 20000;
}
rtmp {
    server {
        listen $NGINX_RTMP;
        chunk_size 4096;
        application live {
            live on;
        }
    }
}
EOF
}

run_nginx() {
    local dir=$OUT/nginx pid
    log "nginx-rtmp (core 0)"
    [[ -f $NGINX_RTMP_MODULE ]] ||
        die "$NGINX_RTMP_MODULE missing: apt-get install -y nginx libnginx-mod-rtmp"
    write_nginx_conf "$dir"
    # taskset applies to the master and is inherited by its worker.
    taskset -c 0 nginx -p "$dir/" -c "$dir/nginx.conf" >"$dir/logs/stderr.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$NGINX_RTMP" "$pid" nginx "$dir/logs/error.log"
    publish nginx-rtmp "rtmp://$NGINX_RTMP/live/bench"
    load nginx-rtmp "rtmp://$NGINX_RTMP/live/bench" "$pid"
    stop "$PUB_PID"
    stop "$pid"
}

# On a fresh machine, as root, install what the comparison needs.
install_missing() {
    local packages=()
    command -v ffmpeg >/dev/null || packages+=(ffmpeg)
    command -v taskset >/dev/null || packages+=(util-linux)
    if [[ " $SERVERS " == *" nginx "* ]] && { ! command -v nginx >/dev/null || [[ ! -e $NGINX_RTMP_MODULE ]]; }; then
        packages+=(nginx libnginx-mod-rtmp)
    fi
    if [[ ${#packages[@]} -gt 0 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${packages[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
}

# ensure_media: the ~1 Mbit/s H.264/AAC test file ffmpeg publishes.
ensure_media() {
    if [[ ! -s $MEDIA ]]; then
        log "generating $MEDIA (640x360@30, H.264 900k + AAC 64k, 60 s)"
        ffmpeg -hide_banner -nostdin -loglevel error -y \
            -f lavfi -i "testsrc2=size=640x360:rate=30" \
            -f lavfi -i "sine=frequency=440:sample_rate=44100" -t 60 \
            -map 0:v -map 1:a \
            -c:v libx264 -preset veryfast -profile:v high -pix_fmt yuv420p \
            -b:v 900k -maxrate 900k -bufsize 1800k -g 60 -keyint_min 60 -sc_threshold 0 \
            -c:a aac -b:a 64k -ac 2 -movflags +faststart "$MEDIA.tmp.mp4"
        mv "$MEDIA.tmp.mp4" "$MEDIA"
    fi
}

# prepare_run PACKAGE...: what every bench script checks and does before
# it measures: two cores, the output directory, enough open files, and
# (unless BUILD=0) a release build of the given cargo packages.
prepare_run() {
    [[ $(nproc) -ge 2 ]] || die "needs at least 2 cores (server on core 0, load on core 1)"
    mkdir -p "$OUT"
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    if [[ ${BUILD:-1} != 0 ]]; then
        log "building (release)"
        local package packages=()
        for package in "$@"; do packages+=(-p "$package"); done
        (cd "$ROOT" && cargo build --release "${packages[@]}")
    fi
}

main() {
    local s
    install_missing
    command -v ffmpeg >/dev/null || die "ffmpeg not found: apt-get install -y ffmpeg"
    command -v taskset >/dev/null || die "taskset not found: apt-get install -y util-linux"
    for s in $SERVERS; do
        case $s in
        baton) ;;
        nginx) command -v nginx >/dev/null || die "nginx not found: apt-get install -y nginx libnginx-mod-rtmp" ;;
        *) die "unknown server '$s' in SERVERS (baton, nginx)" ;;
        esac
    done
    local packages=(baton-bench)
    [[ " $SERVERS " == *" baton "* ]] && packages+=(baton-origin)
    prepare_run "${packages[@]}"
    [[ -x $BENCH ]] || die "$BENCH not built"

    ensure_media

    for s in $SERVERS; do
        "run_$s"
    done

    log "results"
    {
        echo "# Fan-out: $PLAYERS players, ${DURATION} s, ramp $RAMP"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)."
        echo "Server pinned to core 0, load (baton-bench) and publisher (ffmpeg -re, ~1 Mbit/s H.264/AAC) to core 1."
        echo "Gbit/s is after the ramp; CPU-s is the server's user+system CPU over the whole run;"
        echo "per GB divides it by all bytes the players received. Gaps are between video frame arrivals."
        echo
        "$BENCH" table --baseline nginx-rtmp "${REPORTS[@]}"
    } | tee "$OUT/fanout.md"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
