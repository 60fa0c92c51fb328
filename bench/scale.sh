#!/usr/bin/env bash
# How the gateway's costs grow with tenants, owned tasks, the sweep, the audit file and idle connections.
#   bench/scale.sh                      every section (about 15 minutes; 1,000,000 tasks)
#   bench/scale.sh --only tenants idle  some of them
#   bench/scale.sh --save               also writes bench/SCALE.md and bench/scale.json
#   bench/scale.sh --smoke              small sizes, no sweep, seconds (the test command runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq wrk >/dev/null; }
mode=run
for arg in "$@"; do [ "$arg" = --smoke ] && mode=smoke; done
ARK_BENCH_TARGET=$(bench/build.sh "$mode" --bin ark-gateway)
export ARK_BENCH_TARGET
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/scale.py "$@"
