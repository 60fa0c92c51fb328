#!/usr/bin/env python3
"""ark-gateway benchmark: direct vs nginx vs ark-gateway, interleaved, loopback only.

Reads no network but 127.0.0.1; every loop is bounded in count and time.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# bench/run.sh and bench/scale.sh set this: target/release for a run,
# target/debug (the test build) for a smoke.
TARGET = ROOT / os.environ.get("ARK_BENCH_TARGET", "target/release")
BIN = TARGET / "ark-gateway"
FLOOR = TARGET / "examples/passthrough"
KEY = "sk-bench-upstream-key"
TOKEN = "bench-tenant-token"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def fd_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def haproxy_maxconn():
    # HAProxy reserves two descriptors per connection (client and server side).
    return (fd_limit() - 200) // 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_split(pids):
    """(user, kernel) CPU seconds of the processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            kernel += int(fields[12])
        except FileNotFoundError:
            pass
    return user / tick, kernel / tick


def cpu_seconds(pids):
    return sum(cpu_split(pids))


def status_kib(pids, field):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def wait_line(proc, stream, marker, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = getattr(proc, stream).readline()
        if not line:
            raise RuntimeError(f"process exited before {marker!r}")
        if marker in line:
            return line
    raise RuntimeError(f"no {marker!r} within {timeout}s")


def http(port, method, path, token=None, body=None):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        headers = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if token:
            headers += f"Authorization: Bearer {token}\r\n"
        data = (body or "").encode()
        headers += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        s.sendall(headers.encode() + data)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def wrk(url, connections, seconds, script="report.lua", token=TOKEN):
    threads = min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
           "-H", f"Authorization: Bearer {token}", "-s", str(BENCH / script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_DIR": str(BENCH)}, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("RESULT "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


# Spend governance as a production config has it: prices, a quota and budgets
# (far above what a run reaches), so creates pay for the admission check.
GOVERNANCE_PRICING = """
[pricing]
currency = "CNY"
default_per_million_tokens = 15.0
"""
GOVERNANCE_TENANT = """
max_active_tasks = 1000000000
budget = { daily_tokens = 9000000000000000, monthly_cost = 900000000000.0 }
"""


def tenant_table(name, token_hash, governed=True):
    return f"""
[[tenant]]
name = "{name}"
token_sha256 = "{token_hash}"
operations = ["create", "get", "list", "delete"]
rate_limit = {{ per_second = 10000000, burst = 10000000 }}
{GOVERNANCE_TENANT if governed else ""}
"""


class Setup:
    def __init__(self, work, governed=True):
        self.work = work
        self.procs = []
        # Off for A/B runs against binaries that predate governance.
        self.governed = governed

    def start_mock(self, tls=None):
        """The mock upstream; with `tls` (cert, key), over TLS with ALPN h2 and
        http/1.1, as Ark is reached. Returns (process, base URL, port)."""
        cmd = [str(BIN), "mock-upstream", "--listen", "127.0.0.1:0", "--api-key", KEY, "--queued-for", "1h", "--no-record"]
        if tls:
            cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        mock = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(mock)
        line = wait_line(mock, "stdout", "listening on")
        url = line.rsplit(" ", 1)[1].strip()
        port = int(url.split(":")[2].split("/")[0])
        if tls:
            # The certificate names localhost, as Ark's names its host.
            url = url.replace("127.0.0.1", "localhost", 1)
        else:
            self.mock_url, self.mock_port, self.mock = url, port, mock
        return mock, url, port

    def make_tls(self):
        """A CA and a certificate for localhost and 127.0.0.1 it signed (openssl)."""
        d = self.work / "tls"
        d.mkdir(exist_ok=True)
        ext = d / "san.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
        run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(d / "ca.key"),
            "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=bench-ca")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(d / "leaf.key"),
            "-out", str(d / "leaf.csr"), "-subj", "/CN=localhost")
        run("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
            "-out", str(d / "leaf.pem"), "-days", "2", "-extfile", str(ext))
        self.ca = d / "ca.pem"
        return d / "leaf.pem", d / "leaf.key"

    def start_redis(self):
        self.redis_socket = self.work / "redis.sock"
        redis = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(self.redis_socket),
                                  "--unixsocketperm", "700", "--dir", str(self.work), "--appendonly", "yes",
                                  "--appendfsync", "always", "--save", ""],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(redis)
        self.redis_proc = redis
        deadline = time.time() + 20
        while time.time() < deadline:
            ok = subprocess.run(["redis-cli", "-s", str(self.redis_socket), "PING"], capture_output=True, text=True).stdout.strip()
            if ok == "PONG":
                return
            time.sleep(0.05)  # startup poll in the bench driver, not a test
        raise RuntimeError("redis-server did not start")

    def start_gateway(self, name="gateway", redis=False, upstream=None, tenants=None):
        """`upstream`: (base URL, protocols) of a TLS mock, trusted through
        `upstream.ca_file`; `tenants`: the [[tenant]] tables (default: one)."""
        token_hash = hashlib.sha256(TOKEN.encode()).hexdigest()
        config = self.work / f"{name}.toml"
        store = (f'backend = "redis"\nurl = "redis+unix://{self.redis_socket}"\n[rate_limit]\nbackend = "redis"'
                 if redis else f'path = "{self.work / (name + "-ledger.redb")}"')
        if upstream:
            upstream_keys = f'base_url = "{upstream[0]}"\nca_file = "{self.ca}"\nprotocols = {json.dumps(upstream[1])}'
        else:
            upstream_keys = f'base_url = "{self.mock_url}"\nallow_insecure_http = true'
        if tenants is None:
            tenants = tenant_table("bench", token_hash, self.governed)
        config.write_text(f"""
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
{upstream_keys}
api_key_env = "BENCH_ARK_KEY"
max_concurrent = 4096
[audit]
sink = "file"
path = "{self.work / (name + '-audit.jsonl')}"
[store]
{store}
{GOVERNANCE_PRICING if self.governed else ""}
{tenants}
""")
        gw = subprocess.Popen([str(BIN), "run", "--config", str(config)], env={**os.environ, "BENCH_ARK_KEY": KEY, "RUST_LOG": "warn,ark_gateway=info"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(gw)
        line = wait_line(gw, "stderr", "tenant listener ready")
        port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
        return gw, port

    def start_floor(self, config):
        """examples/passthrough.rs on the gateway's config: hyper + tokio + the pool, no layers."""
        floor = subprocess.Popen([str(FLOOR), str(config)], env={**os.environ, "BENCH_ARK_KEY": KEY},
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(floor)
        line = wait_line(floor, "stdout", "passthrough listening")
        self.floor = floor
        self.floor_port = int(line.split("addr=")[1].strip().rsplit(":", 1)[1])

    def start_nginx(self, tls_port=None):
        """One nginx, two servers: to the plain mock, and (with `tls_port`) to
        the TLS mock through `proxy_pass https://`, a keep-alive pool and
        verification against the bench CA."""
        port, self.nginx_tls_port = free_port(), free_port()
        prefix = self.work / "nginx"
        for d in ("logs", "tmp"):
            (prefix / d).mkdir(parents=True, exist_ok=True)

        def server(listen, upstream, extra=""):
            return f"""
  server {{
    listen 127.0.0.1:{listen} backlog=4096;
    keepalive_requests 1000000;
    location /api/v3/ {{
      if ($tenant = "") {{ return 401; }}
      limit_req zone=tenants burst=10000000 nodelay;
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {KEY}";{extra}
      access_log {prefix}/logs/access.jsonl audit;
    }}
  }}"""
        tls = ""
        if tls_port:
            tls = f"""
  upstream ark_tls {{
    server 127.0.0.1:{tls_port};
    keepalive 512;
  }}""" + server(self.nginx_tls_port, "https://ark_tls", f"""
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {self.ca};
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;""")
        conf = prefix / "nginx.conf"
        conf.write_text(f"""
user root root;
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
worker_rlimit_nofile {fd_limit()};
events {{ worker_connections {fd_limit() // 2}; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  log_format audit escape=json '{{"ts":"$time_iso8601","request_id":"$request_id","tenant":"$tenant","method":"$request_method","uri":"$request_uri","status":$status,"upstream_status":"$upstream_status","duration":$request_time,"remote_addr":"$remote_addr"}}';
  map $http_authorization $tenant {{
    default "";
    "Bearer {TOKEN}" bench;
  }}
  limit_req_zone $tenant zone=tenants:10m rate=10000000r/s;
  upstream ark {{
    server 127.0.0.1:{self.mock_port};
    keepalive 512;
  }}{server(port, "http://ark")}{tls}
}}
""")
        ng = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(ng)
        wait_port(port)
        self.nginx_port = port
        self.nginx = ng

    def start_haproxy(self, tls_port=None):
        """HAProxy with the nearest policy to nginx's and the gateway's: token →
        tenant map, a per-tenant stick-table rate, `set-header Authorization`
        with the key, connection reuse to the upstream, and an access log
        (JSON lines on stdout, into a file). Two frontends, like nginx's two
        servers: the plain mock, and the TLS mock verified against the bench CA."""
        port, self.haproxy_tls_port = free_port(), free_port()
        d = self.work / "haproxy"
        d.mkdir(exist_ok=True)
        (d / "tokens.map").write_text(f"{TOKEN} bench\n")

        def frontend(name, listen, backend):
            return f"""
frontend {name}
  bind 127.0.0.1:{listen}
  # The token after "Bearer " (7 bytes), looked up in the map.
  http-request set-var(txn.tenant) req.hdr(authorization),bytes(7),map_str({d / "tokens.map"})
  http-request deny deny_status 401 unless {{ var(txn.tenant) -m found }}
  http-request track-sc0 var(txn.tenant) table rates
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 10000000 }}
  http-request set-header Authorization "Bearer {KEY}"
  default_backend {backend}
"""
        tls = ""
        if tls_port:
            tls = frontend("tenants_tls", self.haproxy_tls_port, "ark_tls") + f"""
backend ark_tls
  server ark 127.0.0.1:{tls_port} ssl verify required ca-file {self.ca} sni str(localhost) alpn http/1.1
"""
        conf = d / "haproxy.cfg"
        conf.write_text(f"""
global
  # As many connections as the descriptor limit allows (idle ones hold one each).
  ulimit-n {fd_limit()}
  maxconn {haproxy_maxconn()}
  nbthread {os.cpu_count()}
  log stdout format raw local0
defaults
  mode http
  log global
  log-format '{{"ts":"%t","tenant":"%[var(txn.tenant)]","method":"%HM","uri":"%HU","status":%ST,"duration_ms":%Ta,"remote_addr":"%ci"}}'
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
  maxconn {haproxy_maxconn()}
backend rates
  stick-table type string len 64 size 100k expire 10s store http_req_rate(1s)
{frontend("tenants", port, "ark")}
backend ark
  server ark 127.0.0.1:{self.mock_port}
{tls}""")
        check = subprocess.run([HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config: {check.stdout}{check.stderr}")
        log = open(d / "access.jsonl", "w")
        hp = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=log, stderr=subprocess.DEVNULL)
        self.procs.append(hp)
        wait_port(port)
        self.haproxy_port = port
        self.haproxy = hp

    def nginx_pids(self):
        return [self.nginx.pid] + children(self.nginx.pid)

    def haproxy_pids(self):
        return [self.haproxy.pid] + children(self.haproxy.pid)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_port(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # startup poll in the bench driver, not a test
    raise RuntimeError(f"nothing listens on {port}")


def idle_connections_rss(port, pid_list, n):
    before = status_kib(pid_list(), "VmRSS")
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        # Prove the proxy still serves while they are open.
        alive = http_status_ok(port)
        after = status_kib(pid_list(), "VmRSS")
    finally:
        for s in socks:
            s.close()
    return {"connections": n, "rss_before_kib": before, "rss_with_idle_kib": after, "still_serving": alive}


def http_status_ok(port):
    return http(port, "GET", "/api/v3/contents/generations/tasks", TOKEN)[0] == 200


def h2load(url, connections, seconds, token=TOKEN):
    """HTTP/2 clients (h2c with prior knowledge), one stream in flight per
    connection like wrk's connections; the same figures as `wrk`, the
    percentiles from h2load's per-request log."""
    threads = min(2, connections)
    log = BENCH / "out" / f"h2load-{connections}.log"
    cmd = ["h2load", f"-c{connections}", "-m1", f"-t{threads}", f"-D{seconds}", "--warm-up-time=0",
           "-H", f"authorization: Bearer {token}", "--log-file", str(log), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out.stdout)
    codes = re.search(r"status codes: (\d+) 2xx", out.stdout)
    if out.returncode != 0 or not done or not codes:
        raise RuntimeError(f"h2load failed: {out.stdout}\n{out.stderr}")
    times = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") == 2)
    log.unlink()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] if times else 0
    requests = int(done.group(2))
    return {
        "requests": requests, "duration_us": seconds * 1e6, "rps": requests / seconds,
        "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99), "p999": pick(0.999),
        "non2xx": requests - int(codes.group(1)), "socket_errors": int(done.group(5)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a few seconds, writes only bench/out/")
    # Five short rounds rather than two long ones: the figures are medians over
    # rounds, so one round that a noisy neighbour slowed moves no path's result.
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    levels = [16] if args.smoke else [16, 64, 256]
    duration = 1 if args.smoke else args.duration
    rounds = 1 if args.smoke else args.rounds
    idle_n = 500 if args.smoke else 10_000

    work = BENCH / "out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    setup = Setup(work)
    try:
        setup.start_mock()
        tls_mock, tls_url, tls_port = setup.start_mock(tls=setup.make_tls())
        setup.start_redis()
        setup.gateway, setup.gateway_port = setup.start_gateway("gateway")
        setup.redis_gateway, setup.redis_gateway_port = setup.start_gateway("gateway-redis", redis=True)
        # Ark's shape: the upstream over TLS, HTTP/1.1 pinned or HTTP/2 by ALPN.
        tls_h1, tls_h1_port = setup.start_gateway("gateway-tls-h1", upstream=(tls_url, ["http/1.1"]))
        tls_h2, tls_h2_port = setup.start_gateway("gateway-tls-h2", upstream=(tls_url, ["h2", "http/1.1"]))
        setup.start_nginx(tls_port=tls_port)
        setup.start_haproxy(tls_port=tls_port)
        setup.start_floor(work / "gateway.toml")
        create_body = '{"model":"doubao-seedance-1-0-pro-250528","content":[{"type":"text","text":"x"}]}'
        paths = {}
        for port in (setup.gateway_port, setup.redis_gateway_port, tls_h1_port, tls_h2_port):
            status, body = http(port, "POST", "/api/v3/contents/generations/tasks", TOKEN, create_body)
            assert status == 200, body
            paths[port] = f"/api/v3/contents/generations/tasks/{json.loads(body)['id']}"
        path, tls_path = paths[setup.gateway_port], paths[tls_h1_port]
        for port, token, p in ((setup.mock_port, KEY, path), (setup.nginx_port, TOKEN, path), (setup.floor_port, TOKEN, path),
                               (setup.haproxy_port, TOKEN, path), (setup.nginx_tls_port, TOKEN, tls_path),
                               (setup.haproxy_tls_port, TOKEN, tls_path), (tls_h2_port, TOKEN, paths[tls_h2_port]),
                               (setup.gateway_port, TOKEN, path), (setup.redis_gateway_port, TOKEN, paths[setup.redis_gateway_port])):
            s, b = http(port, "GET", p, token)
            assert s == 200, (port, s, b)
        # The policy holds on the peers too: a wrong token is refused, never forwarded.
        for port in (setup.nginx_port, setup.haproxy_port, setup.gateway_port):
            s, _ = http(port, "GET", path, "wrong-token")
            assert s == 401, (port, s)

        # Idle connections first, on fresh processes, so that the figure is the
        # cost of the connections, not of memory the allocator kept from load.
        idle = {
            "ark-gateway": idle_connections_rss(setup.gateway_port, lambda: [setup.gateway.pid], idle_n),
            "nginx": idle_connections_rss(setup.nginx_port, setup.nginx_pids, idle_n),
            "haproxy": idle_connections_rss(setup.haproxy_port, setup.haproxy_pids, min(idle_n, haproxy_maxconn() - 100)),
        }
        for name, v in idle.items():
            print(f"idle         {name:12} {v['connections']} connections: {v['rss_with_idle_kib']/1024:.1f} MiB RSS (serving: {v['still_serving']})", flush=True)

        targets = {
            "direct": (f"http://127.0.0.1:{setup.mock_port}{path}", KEY, lambda: [setup.mock.pid]),
            "nginx": (f"http://127.0.0.1:{setup.nginx_port}{path}", TOKEN, setup.nginx_pids),
            "haproxy": (f"http://127.0.0.1:{setup.haproxy_port}{path}", TOKEN, setup.haproxy_pids),
            "floor": (f"http://127.0.0.1:{setup.floor_port}{path}", TOKEN, lambda: [setup.floor.pid]),
            "ark-gateway": (f"http://127.0.0.1:{setup.gateway_port}{path}", TOKEN, lambda: [setup.gateway.pid]),
            # The same gateway and task, the clients on HTTP/2 (h2load, h2c).
            "ark-gateway h2": (f"http://127.0.0.1:{setup.gateway_port}{path}", TOKEN, lambda: [setup.gateway.pid]),
            "ark-gateway+redis": (f"http://127.0.0.1:{setup.redis_gateway_port}{paths[setup.redis_gateway_port]}", TOKEN,
                                  # The gateway and redis-server: the cost of sharing state.
                                  lambda: [setup.redis_gateway.pid, setup.redis_proc.pid]),
            # TLS upstream: clients on plain HTTP/1.1 (a sidecar), the proxy to the mock over TLS.
            "direct tls": (f"https://127.0.0.1:{tls_port}{tls_path}", KEY, lambda: [tls_mock.pid]),
            "nginx tls": (f"http://127.0.0.1:{setup.nginx_tls_port}{tls_path}", TOKEN, setup.nginx_pids),
            "haproxy tls": (f"http://127.0.0.1:{setup.haproxy_tls_port}{tls_path}", TOKEN, setup.haproxy_pids),
            "ark-gateway tls h1": (f"http://127.0.0.1:{tls_h1_port}{tls_path}", TOKEN, lambda: [tls_h1.pid]),
            "ark-gateway tls h2": (f"http://127.0.0.1:{tls_h2_port}{paths[tls_h2_port]}", TOKEN, lambda: [tls_h2.pid]),
        }
        runs = {name: {c: [] for c in levels} for name in targets}
        order = list(targets)
        for c in levels:
            for r in range(rounds):
                # Interleaved, with the order rotated each round, so drift hits all alike.
                for name in order[r % len(order):] + order[:r % len(order)]:
                    url, token, pids = targets[name]
                    (user0, kernel0) = cpu_split(pids())
                    client = h2load if name.endswith(" h2") else wrk
                    res = client(url, c, duration, token=token)
                    (user1, kernel1) = cpu_split(pids())
                    res["proxy_user_s"], res["proxy_kernel_s"] = user1 - user0, kernel1 - kernel0
                    res["proxy_cpu_s"] = res["proxy_user_s"] + res["proxy_kernel_s"]
                    if res["non2xx"] or res["socket_errors"]:
                        raise RuntimeError(f"{name} c={c}: {res['non2xx']} non-2xx, {res['socket_errors']} socket errors")
                    runs[name][c].append(res)
                    print(f"{name:12} c={c:<4} {res['rps']:>9.0f} req/s  p50 {res['p50']/1000:6.2f} ms  p99 {res['p99']/1000:6.2f} ms", flush=True)

        summary = {}
        for name, per_level in runs.items():
            summary[name] = {}
            for c, rs in per_level.items():
                median = statistics.median
                summary[name][c] = {
                    # Medians over the rounds (each round's own figures are in "raw").
                    "rps": median([r["rps"] for r in rs]),
                    "p50_ms": median([r["p50"] for r in rs]) / 1000,
                    "p90_ms": median([r["p90"] for r in rs]) / 1000,
                    "p99_ms": median([r["p99"] for r in rs]) / 1000,
                    "p999_ms": median([r["p999"] for r in rs]) / 1000,
                    "cpu_s_per_10k": median([r["proxy_cpu_s"] / r["requests"] * 10_000 for r in rs]) if not name.startswith("direct") else None,
                    # Split, per request: where the proxies differ (user space) and where they do not (the kernel).
                    "user_us_per_req": median([r["proxy_user_s"] / r["requests"] * 1e6 for r in rs]),
                    "kernel_us_per_req": median([r["proxy_kernel_s"] / r["requests"] * 1e6 for r in rs]),
                    "rps_per_round": [round(r["rps"]) for r in rs],
                    "requests": sum(r["requests"] for r in rs),
                }
        peak = {
            "nginx": status_kib(setup.nginx_pids(), "VmHWM"),
            "haproxy": status_kib(setup.haproxy_pids(), "VmHWM"),
            "ark-gateway": status_kib([setup.gateway.pid], "VmHWM"),
        }

        # Durable creates through the ledger.
        cpu0 = cpu_seconds([setup.gateway.pid])
        creates = wrk(f"http://127.0.0.1:{setup.gateway_port}/api/v3/contents/generations/tasks", 64, duration * 2 if not args.smoke else 1, script="create.lua")
        if creates["non2xx"] or creates["socket_errors"]:
            raise RuntimeError(f"creates: {creates['non2xx']} non-2xx, {creates['socket_errors']} socket errors")
        creates["cpu_s_per_10k"] = (cpu_seconds([setup.gateway.pid]) - cpu0) / creates["requests"] * 10_000
        print(f"creates      c=64   {creates['rps']:>9.0f} creates/s (durable ledger writes)", flush=True)
        creates_redis = wrk(f"http://127.0.0.1:{setup.redis_gateway_port}/api/v3/contents/generations/tasks", 64,
                            duration * 2 if not args.smoke else 1, script="create.lua")
        if creates_redis["non2xx"] or creates_redis["socket_errors"]:
            raise RuntimeError(f"redis creates: {creates_redis['non2xx']} non-2xx, {creates_redis['socket_errors']} socket errors")
        print(f"creates+redis c=64  {creates_redis['rps']:>9.0f} creates/s (Redis ledger, appendfsync always)", flush=True)

        audit_lines = sum(1 for _ in open(work / "gateway-audit.jsonl"))
        creates["redis"] = creates_redis
    finally:
        setup.stop()

    verify = subprocess.run([str(BIN), "audit", "verify", str(work / "gateway-audit.jsonl")], capture_output=True, text=True)
    result = {
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release, "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())},
        "mode": "smoke" if args.smoke else "full",
        "duration_s": duration, "rounds": rounds, "levels": levels,
        "summary": summary, "peak_rss_kib": peak, "creates": creates, "idle": idle,
        "audit": {"lines": audit_lines, "verify": verify.stdout.strip()},
        "raw": runs,
    }
    (work / "results.json").write_text(json.dumps(result, indent=2))
    md = render(result)
    (work / "RESULTS.md").write_text(md)
    if not args.smoke:
        shutil.copy(work / "results.json", BENCH / "results.json")
        shutil.copy(work / "RESULTS.md", BENCH / "RESULTS.md")
    print(md)
    if verify.returncode != 0:
        print("the gateway's audit chain did not verify", file=sys.stderr)
        return 1
    return 0


PLAIN = ("direct", "nginx", "haproxy", "floor", "ark-gateway", "ark-gateway h2", "ark-gateway+redis")
TLS = ("direct tls", "nginx tls", "haproxy tls", "ark-gateway tls h1", "ark-gateway tls h2")


def path_rows(r, names):
    rows = [
        "| path | conns | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | proxy CPU s / 10k req | user µs / req | kernel µs / req | req/s per round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in names:
        for c in r["levels"]:
            v = r["summary"][name][c]
            cpu = "-" if v["cpu_s_per_10k"] is None else f"{v['cpu_s_per_10k']:.3f}"
            rows.append(f"| {name} | {c} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {v['p999_ms']:.2f} | {cpu} | "
                        f"{v['user_us_per_req']:.1f} | {v['kernel_us_per_req']:.1f} | {' '.join(str(x) for x in v['rps_per_round'])} |")
    return rows


def render(r):
    s = r["summary"]
    lines = [
        "# Benchmark results",
        "",
        f"{r['machine']['date']} UTC, {r['machine']['cores']} cores, kernel {r['machine']['kernel']}; "
        f"{r['mode']} run: {r['rounds']} interleaved rounds of {r['duration_s']} s per path and level, the order rotated "
        "each round; every figure is the median over the rounds (each round's req/s in the last column). "
        "wrk, the proxies and the mock upstream share the machine.",
        "",
        "GET task (`GET /api/v3/contents/generations/tasks/{id}`), answered from memory by `ark-gateway mock-upstream`.",
        "nginx: token → tenant `map`, `limit_req` per tenant, `proxy_set_header Authorization` with the key, "
        "keep-alive upstream pool, JSON access log to a file. HAProxy: token → tenant map, a per-tenant stick-table "
        "rate, `set-header Authorization`, `http-reuse always`, JSON access log to a file, one thread per core. "
        "ark-gateway: full policy (auth, limits, ledger "
        "ownership check, key injection), hash-chained audit file, each record written before its response.",
        "floor: `examples/passthrough.rs`, the gateway's own workers, hyper server, upstream pool and allocator with "
        "no layer at all (it checks nothing): what hyper + tokio cost before any policy.",
        "",
        "CPU columns: the CPU time of the proxy's processes (for `direct`, the mock upstream; for `+redis`, the gateway "
        "and redis-server) over wrk's request count, from /proc; user space and kernel apart. Lower is better.",
        "",
        "## TLS upstream (Ark's shape)",
        "",
        "Clients on plain HTTP/1.1 to the proxy (a sidecar); the proxy to the mock over TLS (ECDSA P-256 "
        "certificate for localhost, verified against the bench CA). nginx: `proxy_pass https://`, keep-alive pool, "
        "session reuse; HAProxy: `ssl verify required`, ALPN http/1.1; ark-gateway: `upstream.ca_file`, "
        "`upstream.protocols = [\"http/1.1\"]` (tls h1) or the default `[\"h2\", \"http/1.1\"]` (tls h2: "
        "requests multiplexed on one connection per worker). `direct tls`: wrk to the mock over TLS.",
        "",
    ]
    lines += path_rows(r, TLS)
    lines += ["", "| conns | gateway tls h1 / nginx req/s | h1 CPU / nginx CPU | gateway tls h2 / nginx req/s | h2 CPU / nginx CPU | "
              "haproxy / nginx req/s | haproxy CPU / nginx CPU |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in r["levels"]:
        n, h1, h2, hp = (s[k][c] for k in ("nginx tls", "ark-gateway tls h1", "ark-gateway tls h2", "haproxy tls"))
        lines.append(f"| {c} | {h1['rps']/n['rps']:.2f} | {h1['cpu_s_per_10k']/n['cpu_s_per_10k']:.2f} | {h2['rps']/n['rps']:.2f} | "
                     f"{h2['cpu_s_per_10k']/n['cpu_s_per_10k']:.2f} | {hp['rps']/n['rps']:.2f} | {hp['cpu_s_per_10k']/n['cpu_s_per_10k']:.2f} |")
    lines += ["", "## Plain-HTTP upstream", ""]
    lines += path_rows(r, PLAIN)
    lines += ["", "| conns | gateway/nginx req/s | gateway/haproxy req/s | gateway CPU / nginx CPU | gateway/direct req/s | "
              "gateway p99 / nginx p99 | floor/nginx req/s | policy CPU µs/req (gateway − floor) | gateway − floor kernel µs/req | "
              "Redis backends: p50 added, ms | Redis backends: req/s ratio |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in r["levels"]:
        g, n, h, d, gr, f = (s[k][c] for k in ("ark-gateway", "nginx", "haproxy", "direct", "ark-gateway+redis", "floor"))
        lines.append(f"| {c} | {g['rps']/n['rps']:.2f} | {g['rps']/h['rps']:.2f} | {g['cpu_s_per_10k']/n['cpu_s_per_10k']:.2f} | "
                     f"{g['rps']/d['rps']:.2f} | {g['p99_ms']/n['p99_ms']:.2f} | "
                     f"{f['rps']/n['rps']:.2f} | {(g['cpu_s_per_10k'] - f['cpu_s_per_10k']) * 100:.1f} | "
                     f"{g['kernel_us_per_req'] - f['kernel_us_per_req']:+.1f} | "
                     f"{gr['p50_ms'] - g['p50_ms']:+.2f} | {gr['rps']/g['rps']:.2f} |")
    idle = r["idle"]
    lines += [
        "",
        f"Peak RSS during the runs: ark-gateway {r['peak_rss_kib']['ark-gateway']/1024:.1f} MiB, nginx (all processes) "
        f"{r['peak_rss_kib']['nginx']/1024:.1f} MiB, HAProxy {r['peak_rss_kib']['haproxy']/1024:.1f} MiB.",
        "",
        "Idle connections (opened before any load, held open): "
        + ", ".join(f"{k} {v['rss_with_idle_kib']/1024:.1f} MiB RSS with {v['connections']} (from {v['rss_before_kib']/1024:.1f})"
                    for k, v in idle.items())
        + f"; all still served new clients: {all(v['still_serving'] for v in idle.values())}.",
        "",
        f"Durable creates through the ledger (64 connections): {r['creates']['rps']:.0f} creates/s, "
        f"p99 {r['creates']['p99']/1000:.2f} ms, {r['creates']['cpu_s_per_10k']:.3f} CPU s / 10k; "
        f"with the Redis ledger and limits (appendfsync always): {r['creates']['redis']['rps']:.0f} creates/s, "
        f"p99 {r['creates']['redis']['p99']/1000:.2f} ms.",
        "",
        "`ark-gateway h2`: the same gateway and task, the clients on HTTP/2 (h2load, plain-text HTTP/2 with prior "
        "knowledge, one stream in flight per connection like wrk's connections; percentiles from h2load's request log).",
        "",
        "`ark-gateway+redis`: the same gateway with `store.backend = \"redis\"` and `rate_limit.backend = \"redis\"` "
        "(redis-server on a unix socket, appendonly yes, appendfsync always): one GCRA script per GET, the owner from the replica's tracked cache.",
        "",
        f"Audit: {r['audit']['lines']} records; `ark-gateway audit verify`: {r['audit']['verify']}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
