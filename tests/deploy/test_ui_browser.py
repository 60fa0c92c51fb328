"""The usage page (/ui) in a real headless Chromium (Debian's), with
JavaScript disabled: it shows each team with the numbers the mock upstream
reported, only with the admin token, and leaves a screenshot under target/
for a person to look at."""

import base64
import json
import shutil
import urllib.error
import urllib.request

import pytest

from components import ROOT, call, sdk, start_gateway, start_mock

ADMIN_TOKEN = "ui-test-admin-token"
MODEL = "doubao-seedance-1-0-pro-250528"
TOKENS = {"studio": "ui-token-studio", "ads": "ui-token-ads"}
TASKS = "/api/v3/contents/generations/tasks"
CREATE = json.dumps({"model": MODEL, "content": [{"type": "text", "text": "a kite"}]})


def browser_page(url, credentials=None, screenshot=None):
    """Opens `url` in headless Chromium with JavaScript disabled, optionally
    answering the Basic challenge; returns (status, HTML), or (None, the
    error) where the browser gave up on the challenge."""
    from playwright.sync_api import Error, sync_playwright

    binary = shutil.which("chromium")
    assert binary, "chromium is installed by the test command (scripts/test.sh)"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=binary,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            context = browser.new_context(
                java_script_enabled=False,
                http_credentials=credentials,
                viewport={"width": 1100, "height": 1400},
            )
            page = context.new_page()
            try:
                response = page.goto(url)
            except Error as e:
                return None, str(e)
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
            return response.status, page.content()
        finally:
            browser.close()


def config(work, upstream, admin):
    return (
        sdk.base_config(work, upstream, admin_extra=admin)
        + f"""
[pricing]
currency = "CNY"
[[pricing.model]]
model = "{MODEL}"
per_million_tokens = 10.0
reserve_tokens = 1000
"""
        + sdk.tenant("studio", extra=f'models = ["{MODEL}"]\nmax_active_tasks = 4\nbudget = {{ daily_tokens = 100000, monthly_cost = 20.0 }}', token=TOKENS["studio"])
        + sdk.tenant("ads", extra=f'models = ["{MODEL}"]', token=TOKENS["ads"])
    )


@pytest.fixture()
def gateway(tmp_path):
    mock, upstream = start_mock()
    (tmp_path / "gateway.toml").write_text(config(tmp_path, upstream, f'token_sha256 = "{sdk.sha256(ADMIN_TOKEN)}"'))
    gw, addr, admin = start_gateway(tmp_path / "gateway.toml")
    yield {"addr": addr, "admin": admin, "upstream": upstream}
    gw.stop()
    mock.stop()


def test_the_page_shows_each_team_with_the_reported_numbers(gateway):
    addr, root = gateway["addr"], gateway["upstream"].rsplit("/api/v3", 1)[0]
    ids = []
    for _ in range(2):
        status, body = call(addr, "POST", TASKS, TOKENS["studio"], CREATE)
        assert status == 200, body
        ids.append(json.loads(body)["id"])
    # Ark reports the first finished with 12,345 tokens; the gateway settles it on a get.
    report = json.dumps({"status": "succeeded", "total_tokens": 12345}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{root}/_mock/tasks/{ids[0]}", data=report, method="POST"))
    assert call(addr, "GET", f"{TASKS}/{ids[0]}", TOKENS["studio"])[0] == 200
    # ads is refused a task that is not its own.
    assert call(addr, "GET", f"{TASKS}/{ids[1]}", TOKENS["ads"])[0] == 403

    url = f"http://{gateway['admin']}/ui"
    shot = ROOT / "target/ui-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    status, dom = browser_page(url, {"username": "ops", "password": ADMIN_TOKEN}, screenshot=shot)
    assert status == 200
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
    assert '<section class="team" data-tenant="studio">' in dom and 'data-tenant="ads"' in dom, dom[:2000]
    studio = dom.split('data-tenant="studio"')[1].split("</section>")[0]
    ads = dom.split('data-tenant="ads"')[1].split("</section>")[0]
    # One task running of four; 12,345 tokens used plus the running one's reservation of 1,000.
    assert "1 / 4" in studio, studio
    assert "13345 / 100000 tokens" in studio, studio
    # 12,345 tokens at 10 CNY per million, plus the reservation's 0.01.
    assert "0.13 / 20 CNY" in studio, studio
    assert studio.count("<svg") == 3, "bars for the quota and the two budgets"
    assert ids[0] in studio and ids[1] in studio and "succeeded" in studio and "queued" in studio
    assert "task_not_granted" in ads and "<td class=\"n\">1</td>" in ads, ads
    assert "(no limit)" in ads and "<svg" not in ads

    # Without the token the browser gets the challenge, not the page.
    for credentials in [None, {"username": "ops", "password": "not-the-token"}]:
        status, refused = browser_page(url, credentials)
        assert status in (None, 401), (status, refused[:500])
        assert "data-tenant" not in refused
        assert "AuthenticationError" in refused or "ERR_INVALID_AUTH_CREDENTIALS" in refused, refused[:500]
    with pytest.raises(urllib.error.HTTPError) as challenge:
        urllib.request.urlopen(url)
    assert challenge.value.code == 401
    assert challenge.value.headers["WWW-Authenticate"].startswith("Basic ")
    wrong = base64.b64encode(b"ops:not-the-token").decode()
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Basic {wrong}"}))
    assert bad.value.code == 401
    # A script uses the bearer form.
    bearer = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(bearer) as page:
        assert page.status == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_without_an_admin_token_the_page_says_it_needs_one(tmp_path):
    mock, upstream = start_mock()
    (tmp_path / "gateway.toml").write_text(config(tmp_path, upstream, ""))
    gw, _, admin = start_gateway(tmp_path / "gateway.toml")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{admin}/ui")
        assert refused.value.code == 403
        message = json.loads(refused.value.read())["error"]["message"]
        assert "admin.token_sha256" in message
    finally:
        gw.stop()
        mock.stop()
