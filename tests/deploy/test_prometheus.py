"""deploy/prometheus/alerts.yaml and deploy/grafana/ark-gateway.json against a
real Prometheus (Debian's) scraping real gateways in front of the mock: the
traffic below exercises every panel, and every dashboard expression must
return data and every alert rule evaluate without error."""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest

from components import ROOT, call, free_port, sdk, start_gateway, start_mock, wait_until

ADMIN_TOKEN = "prometheus-test-admin-token"
MODEL = "doubao-seedance-1-0-pro-250528"
TOKENS = {"paying": "prom-token-paying", "limited": "prom-token-limited", "dead": "prom-token-dead"}
CREATE = json.dumps({"model": MODEL, "content": [{"type": "text", "text": "a kite"}]})
TASKS = "/api/v3/contents/generations/tasks"


def governed_config(work, upstream, tenants):
    return (
        sdk.base_config(work, upstream, admin_extra=f'token_sha256 = "{sdk.sha256(ADMIN_TOKEN)}"').replace(
            "allow_insecure_http = true", "allow_insecure_http = true\nmax_active_tasks = 50"
        )
        + f"""
[pricing]
currency = "CNY"
[[pricing.model]]
model = "{MODEL}"
per_million_tokens = 15.0
reserve_tokens = 1000

[reconcile]
interval = "1s"
"""
        + tenants
    )


@pytest.fixture()
def stack(tmp_path):
    assert shutil.which("prometheus"), "prometheus is installed by the test command (scripts/test.sh)"
    mock, upstream = start_mock()
    procs = [mock]
    try:
        work = tmp_path / "gw"
        work.mkdir()
        config = work / "gateway.toml"
        config.write_text(
            governed_config(
                work,
                upstream,
                sdk.tenant("paying", extra=f'models = ["{MODEL}"]\nmax_active_tasks = 3\nbudget = {{ daily_tokens = 100000, monthly_cost = 50.0 }}', token=TOKENS["paying"])
                + sdk.tenant("limited", limit="{ per_minute = 1, burst = 1 }", token=TOKENS["limited"]),
            )
        )
        gw, addr, admin = start_gateway(config)
        procs.append(gw)
        # A second gateway whose upstream is gone: upstream errors and 5xx.
        dead_work = tmp_path / "dead"
        dead_work.mkdir()
        dead_config = dead_work / "gateway.toml"
        dead_config.write_text(governed_config(dead_work, f"http://127.0.0.1:{free_port()}/api/v3", sdk.tenant("dead", extra=f'models = ["{MODEL}"]', token=TOKENS["dead"])))
        dead, dead_addr, dead_admin = start_gateway(dead_config)
        procs.append(dead)

        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        (prom_dir / "admin-token").write_text(ADMIN_TOKEN)
        shutil.copy(ROOT / "deploy/prometheus/alerts.yaml", prom_dir / "alerts.yaml")
        (prom_dir / "prometheus.yml").write_text(
            f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yaml]
scrape_configs:
  - job_name: ark-gateway
    authorization:
      type: Bearer
      credentials_file: {prom_dir / "admin-token"}
    static_configs:
      - targets: ["{admin}", "{dead_admin}"]
"""
        )
        port = None
        for _ in range(5):
            port = free_port()
            prom = subprocess.Popen(
                ["prometheus", f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            procs.append(prom)
            try:
                wait_until(lambda: prom.poll() is not None or urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready").status == 200,
                           timeout=60, what="prometheus ready")
            except AssertionError:
                pass
            if prom.poll() is None:
                break
        yield {"addr": addr, "dead_addr": dead_addr, "upstream": upstream, "prometheus": f"http://127.0.0.1:{port}"}
    finally:
        for p in reversed(procs):
            if isinstance(p, sdk.Process):
                p.stop()
            else:
                p.terminate()
                p.wait(timeout=30)


def query(prometheus, expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def drive(stack):
    """One round of traffic touching every panel."""
    addr, token = stack["addr"], TOKENS["paying"]
    created = []
    for _ in range(3):
        status, body = call(addr, "POST", TASKS, token, CREATE)
        if status == 200:
            created.append(json.loads(body)["id"])
    # A fourth is over the quota of three (QuotaExceeded) while those run.
    call(addr, "POST", TASKS, token, CREATE)
    call(addr, "GET", f"{TASKS}?page_num=1&page_size=10", token)
    call(addr, "GET", f"{TASKS}/cgt-not-mine", token)  # 403
    call(addr, "GET", TASKS)  # 401
    for _ in range(3):
        call(addr, "GET", f"{TASKS}?page_size=1", TOKENS["limited"])  # rate limited
    # Ark reports usage; the gateway settles it on the next get.
    root = stack["upstream"].rsplit("/api/v3", 1)[0]
    for task_id in created:
        body = json.dumps({"status": "succeeded", "total_tokens": 20000}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{root}/_mock/tasks/{task_id}", data=body, method="POST"))
        call(addr, "GET", f"{TASKS}/{task_id}", token)
        call(addr, "DELETE", f"{TASKS}/{task_id}", token)
    call(stack["dead_addr"], "POST", TASKS, TOKENS["dead"], CREATE)  # 502


def dashboard_expressions():
    dashboard = json.loads((ROOT / "deploy/grafana/ark-gateway.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # What Grafana substitutes: all teams, a rate window of a few scrapes.
            expr = target["expr"].replace("$__rate_interval", "15s").replace('"$tenant"', '".*"')
            yield panel["title"], expr


def test_every_dashboard_panel_has_data_and_every_alert_evaluates(stack):
    prometheus = stack["prometheus"]
    expressions = list(dashboard_expressions())
    assert len(expressions) >= 12

    def all_have_data():
        drive(stack)
        return all(query(prometheus, expr) for _, expr in expressions)

    try:
        wait_until(all_have_data, timeout=120, what="data for every dashboard expression")
    except AssertionError:
        empty = [(title, expr) for title, expr in expressions if not query(prometheus, expr)]
        raise AssertionError(f"dashboard expressions without data: {empty}")

    # Every rule of alerts.yaml was loaded and evaluated without error.
    def evaluated():
        with urllib.request.urlopen(f"{prometheus}/api/v1/rules") as response:
            groups = json.load(response)["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else None

    rules = wait_until(evaluated, timeout=60, what="every rule evaluated")
    names = {r["name"] for r in rules}
    assert len(names) == 12, names
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken
    # Each alert expression also runs as a query (an empty answer is fine: nothing is wrong).
    for rule in rules:
        query(prometheus, rule["query"])
    # The dead upstream is seen for what it is.
    assert query(prometheus, 'ark_gateway_upstream_errors_total{kind="connect"} > 0')
    assert query(prometheus, 'ark_gateway_component_up{component="audit"} == 1')
