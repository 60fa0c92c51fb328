#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each):
#   ./scripts/fuzz.sh [SECONDS] [--dev]
# --dev builds without optimizations (the test command's smoke: it compiles
# in half the time, and a few seconds of fuzzing need no speed).
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP
# unlocks them for this build only. Sanitizers need nightly's std and are off.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build=()
[ "${2:-}" = --dev ] && build=(--dev)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in request_target list_query config; do
  echo "==> fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  cargo fuzz run "${build[@]}" --sanitizer none "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=4096
done
