#!/usr/bin/env bash
# The chaos suite in CI form: every scenario under chaos/scenarios in its
# seconds-long form, one after the other (well under 5 minutes), a summary
# table at the end, non-zero exit if any expectation failed.
# Network: $CHAOS_MODE (default auto: network namespaces and tc when run as
# root with iproute2, as CI is; else loopback and proxies). Scenarios with
# a delay fault run in loopback on kernels without sch_netem.
# Reports: $CHAOS_OUT (default target/chaos)/<scenario>/report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p baton-chaos -p baton-origin -p baton-edge
target="${CARGO_TARGET_DIR:-target}"
exec "$target/debug/baton-chaos" run --ci --mode "${CHAOS_MODE:-auto}" \
    --out "${CHAOS_OUT:-$target/chaos}" chaos/scenarios/*.toml
