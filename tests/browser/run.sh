#!/usr/bin/env bash
# The real-browser test of the viewer page (GET /): headless Chromium plays
# a live stream from a real baton-origin (and through a baton-edge) with
# mpegts.js, across a publisher reconnect and an origin SIGKILL. Kept out
# of `cargo test` because it needs Chromium, Node and network access to npm.
#
#   tests/browser/run.sh [OUT_DIR]
#
# Needs: chromium (Debian: apt-get install -y chromium; never downloaded
# here), node + npm, ffmpeg. mpegts.js and playwright-core are installed
# from npm into a temp dir at each run (nothing vendored). Builds the debug
# binaries unless BATON_ORIGIN_BIN / BATON_EDGE_BIN name them.
# SCENARIOS=republish|edge picks scenarios (default both). Output (logs,
# screenshots, samples, summary.json) goes to OUT_DIR, by default
# $CARGO_TARGET_DIR/browser-test (target/browser-test).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
out="${1:-$target/browser-test}"
chromium="${CHROMIUM:-/usr/bin/chromium}"

for tool in node npm ffmpeg "$chromium"; do
    command -v "$tool" >/dev/null || { echo "browser test: $tool not found" >&2; exit 1; }
done

if [[ -z "${BATON_ORIGIN_BIN:-}" || -z "${BATON_EDGE_BIN:-}" ]]; then
    (cd "$root" && cargo build --quiet -p baton-origin -p baton-edge)
    export BATON_ORIGIN_BIN="${BATON_ORIGIN_BIN:-$target/debug/baton-origin}"
    export BATON_EDGE_BIN="${BATON_EDGE_BIN:-$target/debug/baton-edge}"
fi

npm_dir="$(mktemp -d -t baton-browser-npm.XXXXXX)"
trap 'rm -rf "$npm_dir"' EXIT
(cd "$npm_dir" && npm init -y >/dev/null &&
    npm install --no-audit --no-fund --loglevel=error mpegts.js@1.8 playwright-core@1 >/dev/null)

rm -rf "$out"
mkdir -p "$out"
echo "browser test: $("$chromium" --version 2>/dev/null | head -n 1)," \
    "mpegts.js $(node -p "require('$npm_dir/node_modules/mpegts.js/package.json').version")," \
    "playwright-core $(node -p "require('$npm_dir/node_modules/playwright-core/package.json').version")"

NODE_PATH="$npm_dir/node_modules" \
    CHROMIUM="$chromium" \
    MPEGTS_JS="$npm_dir/node_modules/mpegts.js/dist/mpegts.js" \
    OUT_DIR="$out" \
    timeout 220 node "$here/viewer.cjs"
