#!/usr/bin/env python3
"""How the gateway's costs grow: tenants, owned tasks, the retention sweep,
the audit file and idle connections. Loopback only; every loop is bounded in
count and time. Writes bench/out-scale/SCALE.md and scale.json (with --save,
bench/SCALE.md and bench/scale.json).

    bench/scale.sh [--only tenants tasks sweep audit idle] [--tasks 1000000] [--audit-mb 1024] [--save] [--smoke]
"""

import argparse
import hashlib
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import KEY, TOKEN, cpu_split, status_kib, wrk  # noqa: E402

CREATE = '{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"x"}]}'
TASKS = "/api/v3/contents/generations/tasks"


def token_of(i):
    return f"scale-tenant-token-{i}"


def tenants_toml(n, governed):
    return "".join(bench.tenant_table(f"team-{i}", hashlib.sha256(token_of(i).encode()).hexdigest(), governed) for i in range(n))


class Gateway:
    """A gateway process whose log is drained into `lines` (with arrival times),
    so that a bench step can wait for a log event without blocking the process."""

    def __init__(self, work, name, mock_url, tenants, store_extra="", audit_extra="", governed=False):
        self.work, self.name = work, name
        self.config = work / f"{name}.toml"
        self.audit = work / f"{name}-audit.jsonl"
        self.config.write_text(f"""
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
base_url = "{mock_url}"
allow_insecure_http = true
api_key_env = "BENCH_ARK_KEY"
max_concurrent = 4096
[audit]
sink = "file"
path = "{self.audit}"
{audit_extra}
[store]
path = "{work / (name + '-ledger.redb')}"
{store_extra}
{bench.GOVERNANCE_PRICING if governed else ""}
{tenants}
""")
        self.start()

    def start(self):
        t0 = time.monotonic()
        self.proc = subprocess.Popen([str(bench.BIN), "run", "--config", str(self.config)],
                                     env={"PATH": "/usr/bin:/bin", "BENCH_ARK_KEY": KEY, "RUST_LOG": "warn,ark_gateway=info"},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.port = self.admin_port = None
        deadline = time.time() + 600
        while time.time() < deadline and self.admin_port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited before it was ready")
            self.lines.append((time.monotonic(), line))
            if "tenant listener ready" in line:
                self.port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
                self.startup_s = time.monotonic() - t0
            if "admin listener ready" in line:
                self.admin_port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
        self.rss_after_start_kib = status_kib([self.proc.pid], "VmRSS")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))

    def wait_log(self, marker, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t, line in self.lines:
                if marker in line:
                    return t, line
            time.sleep(0.2)  # polling the drained log in the bench driver, not a test
        raise RuntimeError(f"{self.name}: no {marker!r} within {timeout}s")

    def metric(self, prefix):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def timed(conn, method, path, token, body=None):
    """One request on a keep-alive connection: (seconds, status, body)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return time.perf_counter() - t0, resp.status, data


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def create_tasks(gw, token, n):
    """n creates: a keep-alive loop for a few, wrk (64 connections) for many."""
    if n <= 5000:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        for _ in range(n):
            _, status, data = timed(conn, "POST", TASKS, token, CREATE)
            assert status == 200, data
        conn.close()
        return n
    done = 0
    started = time.time()
    while done < n and time.time() - started < 3600:
        r = wrk(f"http://127.0.0.1:{gw.port}{TASKS}", 64, 20, script="create.lua", token=token)
        if r["non2xx"] or r["socket_errors"]:
            raise RuntimeError(f"creates: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors")
        done += r["requests"]
        print(f"  {gw.name}: {done} tasks created ({r['rps']:.0f}/s)", flush=True)
    return done


def get_cpu(gw, url, token, seconds, connections=64):
    user0, kernel0 = cpu_split([gw.proc.pid])
    r = wrk(url, connections, seconds, token=token)
    user1, kernel1 = cpu_split([gw.proc.pid])
    if r["non2xx"] or r["socket_errors"]:
        raise RuntimeError(f"{gw.name}: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors")
    r["cpu_s_per_10k"] = (user1 - user0 + kernel1 - kernel0) / r["requests"] * 10_000
    return r


def section_tenants(work, mock_url, args):
    """CPU per GET with 10, 1,000 and 10,000 tenants, the last-listed tenant's token."""
    out = {}
    gws = {}
    for n in (10, 1_000, 10_000):
        gw = Gateway(work, f"tenants-{n}", mock_url, tenants_toml(n, governed=True), governed=True)
        _, status, data = timed(http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30), "POST", TASKS, token_of(n - 1), CREATE)
        assert status == 200, data
        # A token no tenant has is refused at every size.
        _, refused, _ = timed(http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30), "GET", TASKS, "no-such-token")
        assert refused == 401, refused
        gws[n] = (gw, f"http://127.0.0.1:{gw.port}{TASKS}/{json.loads(data)['id']}")
        out[n] = {"startup_s": gw.startup_s, "rss_after_start_kib": gw.rss_after_start_kib, "runs": []}
    try:
        for r in range(args.rounds):
            order = list(gws)
            for n in order[r % 3:] + order[:r % 3]:
                gw, url = gws[n]
                res = get_cpu(gw, url, token_of(n - 1), args.d)
                out[n]["runs"].append({"rps": res["rps"], "cpu_s_per_10k": res["cpu_s_per_10k"], "p99_ms": res["p99"] / 1000})
                print(f"tenants {n:>6}: {res['rps']:.0f} req/s, {res['cpu_s_per_10k']:.3f} CPU s / 10k", flush=True)
    finally:
        for gw, _ in gws.values():
            gw.stop()
    for v in out.values():
        for k in ("rps", "cpu_s_per_10k", "p99_ms"):
            v[k] = statistics.median(x[k] for x in v["runs"])
    return out


def task_probe(gw, token, rounds, seconds):
    """Start-up, RSS, get, list and delete latency, upstream calls per list,
    on a gateway whose ledger holds the tenant's tasks."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
    lists, ids = [], []
    calls0 = gw.metric('ark_gateway_upstream_duration_seconds_count{operation="list"}')
    for page in range(1, 11):
        t, status, data = timed(conn, "GET", f"{TASKS}?page_size=50&page_num={page}", token)
        assert status == 200, data
        body = json.loads(data)
        ids += [item["id"] for item in body["items"]]
        lists.append(t)
    calls = (gw.metric('ark_gateway_upstream_duration_seconds_count{operation="list"}') - calls0) / len(lists)
    total = body["total"]
    gets = []
    for r in range(rounds):
        res = wrk(f"http://127.0.0.1:{gw.port}{TASKS}/{ids[r % len(ids)]}", 16, seconds, token=token)
        assert not res["non2xx"] and not res["socket_errors"], res
        gets.append(res)
    deletes = []
    # A new connection: the gateway closes one left idle past `server.header_read_timeout`.
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
    for task in ids[:300]:
        t, status, data = timed(conn, "DELETE", f"{TASKS}/{task}", token)
        assert status == 200, data
        deletes.append(t)
    conn.close()
    return {
        "list_total": total, "list_p50_ms": statistics.median(lists) * 1000, "list_max_ms": max(lists) * 1000,
        "upstream_calls_per_list": calls,
        "get_p50_ms": statistics.median(g["p50"] for g in gets) / 1000, "get_p99_ms": statistics.median(g["p99"] for g in gets) / 1000,
        "get_rps": statistics.median(g["rps"] for g in gets),
        "delete_p50_ms": statistics.median(deletes) * 1000, "delete_p99_ms": pct(deletes, 0.99) * 1000,
    }


def section_tasks(work, mock_url, args):
    """1,000 against args.tasks owned tasks (one tenant): start-up, RSS, latencies,
    upstream calls per list. Leaves the large gateway's ledger for the sweep.
    The pair is keyed by args.tasks, so that `--save` after a run of another
    size keeps the saved pairs beside it."""
    pair = {}
    # Ungoverned: with prices the reconciler would keep asking about every
    # queued task, and the figures would be its cost, not the ledger's.
    tenants = tenants_toml(1, governed=False)
    small = Gateway(work, "tasks-small", mock_url, tenants)
    large = Gateway(work, "tasks-large", mock_url, tenants)
    try:
        counts = {"small": create_tasks(small, token_of(0), 1_000), "large": create_tasks(large, token_of(0), args.tasks)}
        args.large_ledger_ready = time.monotonic()
        for key, gw in (("small", small), ("large", large)):
            gw.stop()
            gw.start()  # start-up and RSS on the filled ledger
            pair[key] = {"tasks": counts[key], "startup_s": gw.startup_s, "rss_after_start_kib": gw.rss_after_start_kib,
                         "ledger_mib": (work / f"tasks-{key}-ledger.redb").stat().st_size / 2**20}
        for key, gw in (("small", small), ("large", large)):
            pair[key].update(task_probe(gw, token_of(0), args.rounds, args.d))
            print(f"tasks {key}: {json.dumps(pair[key])}", flush=True)
    finally:
        small.stop()
        large.stop()
    pair["date"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return {str(args.tasks): pair}


def section_sweep(work, mock_url, args):
    """Creates with and without a sweep of the large ledger's expired tasks
    running beside them (retention 1 minute: every task older is expired)."""
    gw_name = "tasks-large"
    if not (work / f"{gw_name}-ledger.redb").exists():
        raise RuntimeError("the sweep needs the tasks section's ledger (run --only tasks sweep)")
    tenants = tenants_toml(1, governed=False)
    # Baseline: the same ledger, retention far away, no sweep.
    gw = Gateway(work, gw_name, mock_url, tenants)
    base = wrk(f"http://127.0.0.1:{gw.port}{TASKS}", 16, args.d, script="create.lua", token=token_of(0))
    gw.stop()
    wait = 61 - (time.monotonic() - getattr(args, "large_ledger_ready", 0))
    if wait > 0:
        time.sleep(wait)  # until the last of them is older than the retention
    gw = Gateway(work, gw_name, mock_url, tenants, store_extra='retention = "1m"')
    started = time.monotonic()
    try:
        during = wrk(f"http://127.0.0.1:{gw.port}{TASKS}", 16, args.d, script="create.lua", token=token_of(0))
        ended = time.monotonic()
        t, line = gw.wait_log("ledger sweep", 1800)
    finally:
        gw.stop()
    out = {
        "without_p50_ms": base["p50"] / 1000, "without_p99_ms": base["p99"] / 1000, "without_rps": base["rps"],
        "during_p50_ms": during["p50"] / 1000, "during_p99_ms": during["p99"] / 1000, "during_rps": during["rps"],
        "sweep_s": t - started, "creates_window_s": ended - started, "report": line.split("report=")[-1].strip(),
    }
    print(f"sweep: {json.dumps(out)}", flush=True)
    return out


def timed_command(cmd):
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    return time.monotonic() - t0, res


def section_audit(work, mock_url, args):
    """GET load on two gateways, one rotating its audit file every 64 MiB,
    until the other's file reaches args.audit_mb; then `audit verify` and
    sha256sum over that file, and verify over the rotated chain."""
    tenants = tenants_toml(1, governed=False)
    plain = Gateway(work, "audit-plain", mock_url, tenants)
    rotating = Gateway(work, "audit-rotating", mock_url, tenants, audit_extra=f"rotate_bytes = {64 * 2**20}")
    runs = {"plain": [], "rotating": []}
    try:
        urls = {}
        for key, gw in (("plain", plain), ("rotating", rotating)):
            _, status, data = timed(http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30), "POST", TASKS, token_of(0), CREATE)
            assert status == 200, data
            urls[key] = (gw, f"http://127.0.0.1:{gw.port}{TASKS}/{json.loads(data)['id']}")
        started = time.time()
        r = 0
        while plain.audit.stat().st_size < args.audit_mb * 2**20 and time.time() - started < 1800:
            for key in ("plain", "rotating") if r % 2 == 0 else ("rotating", "plain"):
                gw, url = urls[key]
                res = wrk(url, 64, args.d, token=token_of(0))
                assert not res["non2xx"] and not res["socket_errors"], res
                runs[key].append({"rps": res["rps"], "p99_ms": res["p99"] / 1000, "p999_ms": res["p999"] / 1000})
            r += 1
            print(f"audit: {plain.audit.stat().st_size / 2**20:.0f} MiB", flush=True)
    finally:
        plain.stop()
        rotating.stop()
    size = plain.audit.stat().st_size
    verify_s, verify = timed_command([str(bench.BIN), "audit", "verify", str(plain.audit)])
    sha_s, sha = timed_command(["sha256sum", str(plain.audit)])
    rotated = sorted(work.glob("audit-rotating-audit.jsonl.*")) + [rotating.audit]
    rot_verify = subprocess.run([str(bench.BIN), "audit", "verify", *map(str, rotated)], capture_output=True, text=True)
    out = {
        "file_mib": size / 2**20, "verify_s": verify_s, "verify_mib_s": size / 2**20 / verify_s, "verify": verify.stdout.strip(),
        "verify_ok": verify.returncode == 0, "sha256sum_s": sha_s, "sha256sum_mib_s": size / 2**20 / sha_s,
        "rotated_files": len(rotated), "rotated_verify": rot_verify.stdout.strip(), "rotated_verify_ok": rot_verify.returncode == 0,
    }
    for key, rs in runs.items():
        for k in ("rps", "p99_ms", "p999_ms"):
            out[f"{key}_{k}"] = statistics.median(x[k] for x in rs)
    print(f"audit: {json.dumps(out)}", flush=True)
    return out


def section_idle(work, mock_url, args):
    """RSS at rest, then with idle connections in steps up to what the
    descriptor limit lets one process hold."""
    gw = Gateway(work, "idle", mock_url, tenants_toml(1, governed=False))
    limit = bench.fd_limit() - 500
    limit = min(limit, args.max_idle)
    steps = [n for n in (1_000, 5_000, 10_000, 20_000, 30_000, 40_000, 50_000) if n <= limit] or [limit]
    if steps[-1] < args.max_idle and steps[-1] != limit:
        steps.append(limit)
    out = {"rss_at_rest_kib": gw.rss_after_start_kib, "fd_limit": bench.fd_limit(), "steps": []}
    socks = []
    try:
        for n in steps:
            while len(socks) < n:
                # Source addresses across 127.0.0.0/8, so no ephemeral port range runs out.
                s = bench.socket.socket()
                s.bind((f"127.0.{1 + len(socks) // 20000}.{1 + (len(socks) // 250) % 250}", 0))
                s.connect(("127.0.0.1", gw.port))
                socks.append(s)
            serving = bench.http(gw.port, "GET", TASKS, token_of(0))[0] == 200
            rss = status_kib([gw.proc.pid], "VmRSS")
            out["steps"].append({"connections": n, "rss_kib": rss, "still_serving": serving})
            print(f"idle {n}: {rss / 1024:.1f} MiB (serving: {serving})", flush=True)
    finally:
        for s in socks:
            s.close()
        gw.stop()
    return out


def render(r):
    dates = ", ".join(f"{k} {v}" for k, v in r.get("dates", {}).items())
    lines = ["# Scale", "", f"{r['cores']} cores; `bench/scale.sh` (UTC run times: {dates}). GETs by wrk ({r['d']} s rounds, "
             "medians), the gateway against `ark-gateway mock-upstream` on loopback.", ""]
    if "tenants" in r:
        t = r["tenants"]
        rounds = len(next(iter(t.values()))["runs"])
        lines += ["## Tenants", "", "CPU per proxied GET (64 connections) with the last-listed tenant's token; spend "
                  f"governance on (prices, quota, budget per tenant); {rounds} interleaved rounds.", "",
                  "| tenants | CPU s / 10k GET | req/s | p99 ms | start-up s | RSS after start MiB |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, v in t.items():
            lines.append(f"| {n} | {v['cpu_s_per_10k']:.3f} | {v['rps']:.0f} | {v['p99_ms']:.2f} | {v['startup_s']:.2f} | {v['rss_after_start_kib'] / 1024:.1f} |")
        lines += ["", f"CPU at 10,000 tenants / at 10: {t['10000']['cpu_s_per_10k'] / t['10']['cpu_s_per_10k']:.2f}.", ""]
    if "tasks" in r:
        lines += ["## Owned tasks", "", "One tenant's tasks in the redb ledger, all queued (the mock keeps them so), a pair of gateways (1,000 and many tasks) per run; "
                  "list: `page_size=50`, pages 1–10, served from the ledger's count; get: wrk, 16 connections; "
                  "delete: one keep-alive connection, 300 deletes.", "",
                  "| tasks | run (UTC) | ledger MiB | start-up s | RSS after start MiB | get p50 ms | get p99 ms | get req/s | list p50 ms | "
                  "list max ms | upstream calls / list | delete p50 ms | delete p99 ms |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        rows = [(pair["date"], pair[k]) for _, pair in sorted(r["tasks"].items(), key=lambda p: int(p[0])) for k in ("small", "large")]
        for date, v in rows:
            lines.append(f"| {v['tasks']} | {date} | {v['ledger_mib']:.0f} | {v['startup_s']:.2f} | {v['rss_after_start_kib'] / 1024:.1f} | "
                         f"{v['get_p50_ms']:.2f} | {v['get_p99_ms']:.2f} | {v['get_rps']:.0f} | {v['list_p50_ms']:.1f} | {v['list_max_ms']:.1f} | "
                         f"{v['upstream_calls_per_list']:.1f} | {v['delete_p50_ms']:.2f} | {v['delete_p99_ms']:.2f} |")
        lines.append("")
    if "sweep" in r:
        s = r["sweep"]
        lines += ["## Retention sweep", "", f"Creates (16 connections, {r['d']} s) on the large ledger, first with no sweep, then "
                  "right after a restart with `store.retention = \"1m\"`, so that the sweep of every older task runs beside them.", "",
                  "| | creates/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |",
                  f"| without a sweep | {s['without_rps']:.0f} | {s['without_p50_ms']:.2f} | {s['without_p99_ms']:.2f} |",
                  f"| during the sweep | {s['during_rps']:.0f} | {s['during_p50_ms']:.2f} | {s['during_p99_ms']:.2f} |", "",
                  f"p99 during / without: {s['during_p99_ms'] / s['without_p99_ms']:.2f}. The sweep ended {s['sweep_s']:.1f} s after "
                  f"the start; the creates ran for the first {s['creates_window_s']:.1f} s. Its report: `{s['report']}`.", ""]
    if "audit" in r:
        a = r["audit"]
        lines += ["## Audit file", "", f"`ark-gateway audit verify` over a {a['file_mib']:.0f} MiB file: {a['verify_s']:.1f} s, "
                  f"{a['verify_mib_s']:.0f} MiB/s (`sha256sum` of the same file: {a['sha256sum_mib_s']:.0f} MiB/s); "
                  f"`{a['verify']}`.", "",
                  f"Under the same GET load (64 connections), a gateway rotating every 64 MiB against one that does not: "
                  f"{a['rotating_rps']:.0f} against {a['plain_rps']:.0f} req/s, p99 {a['rotating_p99_ms']:.2f} against "
                  f"{a['plain_p99_ms']:.2f} ms, p99.9 {a['rotating_p999_ms']:.2f} against {a['plain_p999_ms']:.2f} ms; "
                  f"{a['rotated_files']} files, verified as one chain: `{a['rotated_verify']}`.", ""]
    if "idle" in r:
        i = r["idle"]
        lines += ["## Idle connections", "", f"RSS at rest (empty ledger, no connections): {i['rss_at_rest_kib'] / 1024:.1f} MiB. "
                  f"Descriptor limit of this machine: {i['fd_limit']} per process.", "",
                  "| connections | RSS MiB | KiB per connection beyond rest | still serving |", "| ---: | ---: | ---: | --- |"]
        for s in i["steps"]:
            per = (s["rss_kib"] - i["rss_at_rest_kib"]) / s["connections"]
            lines.append(f"| {s['connections']} | {s['rss_kib'] / 1024:.1f} | {per:.2f} | {s['still_serving']} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", default=["tenants", "tasks", "sweep", "audit", "idle"])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--audit-mb", type=int, default=1024)
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--save", action="store_true", help="also write bench/SCALE.md and bench/scale.json")
    ap.add_argument("--smoke", action="store_true", help="seconds, not minutes: small sizes, no sweep (the test command runs it)")
    args = ap.parse_args()
    args.max_idle = 50_000
    if args.smoke:
        args.only = [s for s in args.only if s != "sweep"]
        args.tasks, args.audit_mb, args.d, args.rounds, args.max_idle, args.save = 2_000, 8, 1, 1, 1_000, False
    work = bench.BENCH / "out-scale"
    keep = "sweep" in args.only and "tasks" not in args.only
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    setup = bench.Setup(work)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "cores": bench.os.cpu_count(), "d": args.d, "rounds": args.rounds}
    try:
        setup.start_mock()
        for name in ("tenants", "tasks", "sweep", "audit", "idle"):
            if name in args.only:
                result[name] = globals()[f"section_{name}"](work, setup.mock_url, args)
                result.setdefault("dates", {})[name] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    finally:
        setup.stop()
    result = json.loads(json.dumps(result))
    (work / "scale.json").write_text(json.dumps(result, indent=2))
    if args.save and (bench.BENCH / "scale.json").exists():
        # Sections not run this time keep their last saved figures and dates.
        saved = json.loads((bench.BENCH / "scale.json").read_text())
        dates = {**saved.get("dates", {}), **result.get("dates", {})}
        # Pairs of other sizes stay; a size run again is replaced.
        if "tasks" in result:
            result["tasks"] = {**saved.get("tasks", {}), **result["tasks"]}
        saved.update(result)
        saved["dates"] = dates
        result = saved
    md = render(result)
    (work / "SCALE.md").write_text(md)
    if args.save:
        (bench.BENCH / "scale.json").write_text(json.dumps(result, indent=2))
        shutil.copy(work / "SCALE.md", bench.BENCH / "SCALE.md")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
