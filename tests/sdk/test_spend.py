"""Spend governance through the official Python SDK: quotas and budgets as a
tenant meets them, settlement from what Ark (the mock) reports, the usage
reports (admin API, the tenant's own, the CLI) agreeing, and callback hosts."""

import json
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkPermissionDeniedError, ArkRateLimitError

from conftest import BIN, UPSTREAM_KEY, Process, base_config, sha256
from conftest import tenant as shared_tenant

MODEL = "doubao-seedance-1-0-pro-250528"
CONTENT = [{"type": "text", "text": "a lighthouse at dusk"}]
ADMIN_TOKEN = "sdk-admin-token"
TOKENS = {"quota": "sdk-token-quota", "budget": "sdk-token-budget", "hooks": "sdk-token-hooks"}


def tenant(name, extra):
    return shared_tenant(name, extra=extra, token=TOKENS[name])


@pytest.fixture()
def governed(mock_upstream, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        base_config(tmp_path, mock_upstream, admin_extra=f'token_sha256 = "{sha256(ADMIN_TOKEN)}"')
        + f"""
[pricing]
currency = "CNY"
[[pricing.model]]
model = "{MODEL}"
per_million_tokens = 15.0
reserve_tokens = 100000
"""
        + tenant("quota", "max_active_tasks = 2")
        + tenant("budget", f'models = ["{MODEL}"]\nbudget = {{ daily_tokens = 250000, monthly_cost = 1000.0 }}')
        + tenant("hooks", 'callback_hosts = ["hooks.example", "*.cb.example"]')
    )
    env = {"SDK_TEST_ARK_KEY": UPSTREAM_KEY}
    # The admin listener is announced right after the tenant listener.
    proc = Process([BIN, "run", "--config", str(config)], env=env, ready_marker="admin listener ready")
    tenant_line = next(line for line in proc.lines["stderr"] if "tenant listener ready" in line)
    addr = tenant_line.split("addr=")[1].split()[0]
    admin = proc.ready_line.split("addr=")[1].split()[0]
    yield {"base_url": f"http://{addr}/api/v3", "addr": addr, "admin": admin, "config": config, "proc": proc, "dir": tmp_path}
    if proc.proc.poll() is None:
        assert proc.stop() == 0


def client(gateway, name):
    return Ark(base_url=gateway["base_url"], api_key=TOKENS[name])


def get_json(url, token):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def set_task(mock_upstream, task_id, status, tokens):
    root = mock_upstream.rsplit("/api/v3", 1)[0]
    body = json.dumps({"status": status, "total_tokens": tokens}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{root}/_mock/tasks/{task_id}", data=body, method="POST"))


def audit_records(gateway):
    return [json.loads(line) for line in (gateway["dir"] / "audit.jsonl").read_text().splitlines()]


def test_a_quota_admits_exactly_its_slots_and_the_sdk_does_not_retry(governed, upstream_requests):
    quota = client(governed, "quota")
    before = sum(1 for r in upstream_requests() if r["method"] == "POST")
    outcomes = []

    def create():
        try:
            outcomes.append(quota.content_generation.tasks.create(model=MODEL, content=CONTENT).id)
        except ArkRateLimitError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    created = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if not isinstance(o, str)]
    assert len(created) == 2 and len(refused) == 4
    assert all(e.code == "QuotaExceeded" and e.param == "max_active_tasks" for e in refused)
    assert sum(1 for r in upstream_requests() if r["method"] == "POST") - before == 2
    # x-should-retry: false: the SDK sent each refused create once.
    creates = [r for r in audit_records(governed) if r.get("operation") == "create"]
    assert len(creates) == 6, creates
    assert sum(1 for r in creates if r.get("reason") == "active_task_quota") == 4
    # A cancel frees a slot.
    quota.content_generation.tasks.delete(created[0])
    quota.content_generation.tasks.create(model=MODEL, content=CONTENT)


def test_reserve_refuse_settle_admit_and_the_reports_agree(governed, mock_upstream):
    budget = client(governed, "budget")
    first = budget.content_generation.tasks.create(model=MODEL, content=CONTENT).id
    budget.content_generation.tasks.create(model=MODEL, content=CONTENT)
    with pytest.raises(ArkRateLimitError) as refused:
        budget.content_generation.tasks.create(model=MODEL, content=CONTENT)
    assert refused.value.code == "BudgetExceeded"
    assert refused.value.param == "budget.daily_tokens"
    # Ark reports 40,000 tokens: the 100,000 reservation is replaced.
    set_task(mock_upstream, first, "succeeded", 40000)
    assert budget.content_generation.tasks.get(task_id=first).status == "succeeded"
    budget.content_generation.tasks.list(page_size=10)  # seen again: counted once
    budget.content_generation.tasks.create(model=MODEL, content=CONTENT)

    admin = get_json(f"http://{governed['admin']}/usage", ADMIN_TOKEN)
    own = get_json(f"http://{governed['addr']}/gateway/v1/usage", TOKENS["budget"])
    rows = [r for r in admin["rows"] if r["tenant"] == "budget"]
    assert own["rows"] == rows
    assert rows[0]["tokens"] == 40000 and rows[0]["succeeded"] == 1 and rows[0]["created"] == 3
    assert abs(rows[0]["cost"] - 0.6) < 1e-9
    assert [t["tenant"] for t in own["tenants"]] == ["budget"]
    daily = next(w for w in own["tenants"][0]["windows"] if w["window"] == "daily_tokens")
    assert (daily["limit"], daily["used"], daily["reserved"]) == (250000, 40000, 200000)
    # Another tenant sees none of it.
    theirs = get_json(f"http://{governed['addr']}/gateway/v1/usage", TOKENS["quota"])
    assert "budget" not in json.dumps(theirs)

    # The CLI, while the gateway holds the store: it asks the admin API.
    cli = subprocess.run(
        [BIN, "usage", "--config", str(governed["config"]), "--format", "json", "--admin-addr", governed["admin"]],
        env={"ARK_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "SDK_TEST_ARK_KEY": UPSTREAM_KEY},
        capture_output=True, text=True, check=True,
    )
    assert json.loads(cli.stdout)["rows"] == admin["rows"]
    # And after the gateway stopped: from the store itself, the same rows.
    assert governed["proc"].stop() == 0
    cli = subprocess.run(
        [BIN, "usage", "--config", str(governed["config"]), "--format", "json"],
        env={"SDK_TEST_ARK_KEY": UPSTREAM_KEY}, capture_output=True, text=True, check=True,
    )
    assert json.loads(cli.stdout)["rows"] == admin["rows"]
    table = subprocess.run(
        [BIN, "usage", "--config", str(governed["config"]), "--tenant", "budget"],
        env={"SDK_TEST_ARK_KEY": UPSTREAM_KEY}, capture_output=True, text=True, check=True,
    )
    assert "budget" in table.stdout and "40000" in table.stdout


def test_the_admin_api_needs_the_admin_token(governed):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://{governed['admin']}/usage")
    assert refused.value.code == 401
    assert json.load(refused.value)["error"]["code"] == "AuthenticationError"
    with pytest.raises(urllib.error.HTTPError):
        get_json(f"http://{governed['admin']}/metrics", "not-the-token")
    assert 'ark_gateway_active_tasks{tenant="quota"} 0' in urllib.request.urlopen(
        urllib.request.Request(f"http://{governed['admin']}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    ).read().decode()


def test_callback_urls_are_held_to_the_tenants_hosts(governed, upstream_requests):
    hooks = client(governed, "hooks")
    before = len(upstream_requests())
    for url in ["https://evil.example/hook", "http://hooks.example/hook", "https://cb.example/hook"]:
        with pytest.raises(ArkPermissionDeniedError) as refused:
            hooks.content_generation.tasks.create(model=MODEL, content=CONTENT, callback_url=url)
        assert refused.value.param == "callback_url"
    assert len(upstream_requests()) == before
    assert hooks.content_generation.tasks.create(model=MODEL, content=CONTENT, callback_url="https://a.cb.example/x").id
