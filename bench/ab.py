#!/usr/bin/env python3
"""A/B of two ark-gateway binaries: the same mock upstream, both gateways side
by side, interleaved rounds (order alternating) so machine drift hits both
alike. Loopback only; every loop is bounded in count and time.

    python3 bench/ab.py OLD_BINARY NEW_BINARY [--c 16 64 256] [--d 4] [--rounds 6] [--redis]

With --redis both gateways keep their ledger and limits in one redis-server,
and the CPU column adds redis-server's time during each gateway's rounds.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a", help="binary A (e.g. the base commit's target/release/ark-gateway)")
    ap.add_argument("b", help="binary B")
    ap.add_argument("--c", type=int, nargs="+", default=[16, 64, 256], help="connection levels")
    ap.add_argument("--d", type=int, default=4, help="seconds per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--governed", action="store_true", help="both binaries take the spend settings (quota, budgets)")
    ap.add_argument("--redis", action="store_true", help="both binaries on the Redis backend (one shared redis-server)")
    args = ap.parse_args()
    work = bench.BENCH / "out-ab"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    setup = bench.Setup(work, governed=args.governed)
    try:
        # The mock from binary B (the newer one, which has every mock flag),
        # so that no other build needs to exist.
        bench.BIN = Path(args.b)
        setup.start_mock()
        setup.redis_socket = work / "unused.sock"
        if args.redis:
            setup.start_redis()
        urls = {}
        for name, binary in (("A", args.a), ("B", args.b)):
            bench.BIN = Path(binary)
            gateway, port = setup.start_gateway("gateway-" + name, redis=args.redis)
            body = '{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"x"}]}'
            status, answer = bench.http(port, "POST", "/api/v3/contents/generations/tasks", bench.TOKEN, body)
            assert status == 200, answer
            pids = [gateway.pid, setup.redis_proc.pid] if args.redis else [gateway.pid]
            urls[name] = (f"http://127.0.0.1:{port}/api/v3/contents/generations/tasks/{json.loads(answer)['id']}", pids)
        print("| conns | binary | req/s | proxy CPU s / 10k req | p99 ms | req/s per round |")
        print("| ---: | --- | ---: | ---: | ---: | --- |")
        for c in args.c:
            runs = {"A": [], "B": []}
            for r in range(args.rounds):
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    url, pids = urls[name]
                    cpu0 = bench.cpu_seconds(pids)
                    res = bench.wrk(url, c, args.d)
                    if res["non2xx"] or res["socket_errors"]:
                        raise RuntimeError(f"{name} c={c}: {res['non2xx']} non-2xx, {res['socket_errors']} socket errors")
                    cpu = bench.cpu_seconds(pids) - cpu0
                    runs[name].append((res["rps"], cpu / res["requests"] * 10_000, res["p99"] / 1000))
            for name in ("A", "B"):
                v = runs[name]
                mean = [sum(x[i] for x in v) / len(v) for i in range(3)]
                print(f"| {c} | {name} | {mean[0]:.0f} | {mean[1]:.3f} | {mean[2]:.2f} | {' '.join(str(round(x[0])) for x in v)} |", flush=True)
    finally:
        setup.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
