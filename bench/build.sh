#!/usr/bin/env bash
# Builds what a benchmark script runs and prints the directory it lands in:
#   bench/build.sh smoke|run CARGO_TARGET_ARGS...
# A smoke checks the harness, not speed: it takes the test build
# (target/debug), so the test command compiles no release build.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=$1
shift
if [ "$mode" = smoke ]; then
  cargo build --quiet "$@"
  echo target/debug
else
  cargo build --release --quiet "$@"
  echo target/release
fi
