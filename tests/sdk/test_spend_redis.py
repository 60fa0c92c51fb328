"""Quotas and budgets through the Python SDK over three gateway replicas
sharing one real redis-server: exactly what the limits allow is created."""

import json
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkRateLimitError

from conftest import BIN, UPSTREAM_KEY, Process, base_config, tenant

MODEL = "doubao-seedance-1-0-pro-250528"
CONTENT = [{"type": "text", "text": "three replicas"}]
TOKENS = {"capped": "sdk-redis-capped", "budgeted": "sdk-redis-budgeted"}


@pytest.fixture()
def redis_url(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is installed by the test command")
    socket = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(socket), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    # Wait for the socket to answer PING (bounded), not a fixed sleep.
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-s", str(socket), "PING"], capture_output=True, text=True).stdout.strip() != "PONG":
        assert time.monotonic() < deadline, "redis-server did not come up"
        time.sleep(0.05)
    yield f"redis+unix://{socket}"
    proc.terminate()
    proc.wait(timeout=10)


def replica(work, mock_upstream, redis_url):
    work.mkdir()
    config = work / "gateway.toml"
    tenants = tenant("capped", extra="max_active_tasks = 3", token=TOKENS["capped"]) + tenant(
        "budgeted", extra="budget = { daily_tokens = 200000 }", token=TOKENS["budgeted"]
    )
    store = f'backend = "redis"\nurl = "{redis_url}"\nkey_prefix = "sdk:"\n\n[rate_limit]\nbackend = "redis"'
    config.write_text(
        base_config(work, mock_upstream, store=store)
        + f"""
[pricing]
[[pricing.model]]
model = "{MODEL}"
reserve_tokens = 100000
"""
        + tenants
    )
    proc = Process([BIN, "run", "--config", str(config)], env={"SDK_TEST_ARK_KEY": UPSTREAM_KEY}, ready_marker="tenant listener ready")
    addr = proc.ready_line.split("addr=")[1].split()[0]
    return proc, f"http://{addr}/api/v3"


def test_three_replicas_admit_exactly_what_the_limits_allow(tmp_path, mock_upstream, redis_url, upstream_requests):
    replicas = [replica(tmp_path / f"r{i}", mock_upstream, redis_url) for i in range(3)]
    try:
        before = sum(1 for r in upstream_requests() if r["method"] == "POST")
        for name, allowed, code in [("capped", 3, "QuotaExceeded"), ("budgeted", 2, "BudgetExceeded")]:
            outcomes = []

            def create(base_url):
                client = Ark(base_url=base_url, api_key=TOKENS[name])
                try:
                    outcomes.append(client.content_generation.tasks.create(model=MODEL, content=CONTENT).id)
                except ArkRateLimitError as e:
                    outcomes.append(e)

            threads = [threading.Thread(target=create, args=(url,)) for _, url in replicas for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            created = [o for o in outcomes if isinstance(o, str)]
            refused = [o for o in outcomes if not isinstance(o, str)]
            assert len(created) == allowed, (name, outcomes)
            assert all(e.code == code for e in refused), [(e.code, e.param) for e in refused]
            # Every replica sees the same tasks and the same counts.
            for _, url in replicas:
                client = Ark(base_url=url, api_key=TOKENS[name])
                assert sorted(t.id for t in client.content_generation.tasks.list(page_size=50).items) == sorted(created)
                usage_url = url.replace("/api/v3", "/gateway/v1/usage")
                request = urllib.request.Request(usage_url, headers={"Authorization": f"Bearer {TOKENS[name]}"})
                report = json.load(urllib.request.urlopen(request))
                assert report["rows"][0]["created"] == allowed
                assert report["tenants"][0]["active_tasks"] == allowed
        after = sum(1 for r in upstream_requests() if r["method"] == "POST")
        assert after - before == 5, "refused creates never reach Ark"
    finally:
        for proc, _ in replicas:
            assert proc.stop() == 0
