#!/usr/bin/env bash
# The one test command (README.md, "The two commands"): installs what the tests need, then runs
# formatting and lint checks, the Rust unit and integration tests, and the
# end-to-end tests with the official Python Ark SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The hostile-input tests hold 10,000 idle connections: raise the soft fd
# limit to the hard one where it is lower.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Debian packages the tests need: redis-server for the multi-replica tests
# (each test starts its own on a unix socket); curl and a JDK (Java's
# java.net.http client, run as a single-file program) as real HTTP/2
# clients; openssl to make the SDK tests' TLS certificates; tinyproxy as the
# egress proxy; prometheus (with promtool) for the alert rules and the
# dashboard; chromium for the usage page. The benchmark smoke installs wrk,
# h2load, nginx and haproxy itself.
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --all-targets -- -D warnings

step "promtool: the alert rules and their unit tests (deploy/prometheus)"
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts.test.yaml)

step "cargo test (unit and integration tests)"
cargo test --all-targets

step "Python SDK end-to-end tests (volcengine-ark-runtime in .venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
cargo build --quiet --bin ark-gateway
ARK_GATEWAY_BIN="$PWD/target/debug/ark-gateway" .venv/bin/python -m pytest -q tests/sdk tests/deploy

step "fuzz smoke: every fuzz target for a few seconds, unoptimized (scripts/fuzz.sh runs longer)"
./scripts/fuzz.sh 5 --dev

step "benchmark smoke: bench/run.sh --smoke (the full run: bench/run.sh)"
bench/run.sh --smoke

step "scale smoke: bench/scale.sh --smoke (the full run: bench/scale.sh)"
bench/scale.sh --smoke

step "A/B benchmark smoke: bench/ab.py, the test build against itself, one short round"
python3 bench/ab.py target/debug/ark-gateway target/debug/ark-gateway --c 4 --d 1 --rounds 1 --governed
