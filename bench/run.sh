#!/usr/bin/env bash
# The benchmark: ark-gateway (HTTP/1.1 and HTTP/2 clients) vs nginx vs direct, on loopback only.
#   bench/run.sh           full run (a few minutes); writes bench/RESULTS.md and bench/results.json
#   bench/run.sh --smoke   a few seconds; writes only bench/out/ (the test command runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v redis-server >/dev/null || need+=(redis-server)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The gateway, and the floor under it (examples/passthrough.rs: the same server and pool, no layers).
mode=run
for arg in "$@"; do [ "$arg" = --smoke ] && mode=smoke; done
ARK_BENCH_TARGET=$(bench/build.sh "$mode" --bin ark-gateway --example passthrough)
export ARK_BENCH_TARGET
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 bench/bench.py "$@"
