"""Rotating a team's token without downtime, through the official SDK: two
tokens at once, a reload that retires the old one, and an expired token."""

import signal
import time

import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAuthenticationError

from conftest import BIN, UPSTREAM_KEY, Process, base_config, sha256

MODEL = "doubao-seedance-1-0-pro-250528"
CONTENT = [{"type": "text", "text": "a new key"}]


def config_text(tmp_path, mock_upstream, tokens):
    return base_config(tmp_path, mock_upstream) + f"""
[[tenant]]
name = "rotating"
operations = ["create", "get", "list", "delete"]
rate_limit = {{ per_second = 100, burst = 100 }}
tokens = [{tokens}]
"""


def test_two_tokens_then_a_reload_retires_the_old_one(tmp_path, mock_upstream):
    old = f'{{ sha256 = "{sha256("sdk-old-token")}", name = "old" }}'
    new = f'{{ sha256 = "{sha256("sdk-new-token")}", name = "new", expires = "2999-12-31T23:59:59+08:00" }}'
    gone = f'{{ sha256 = "{sha256("sdk-expired-token")}", name = "expired", expires = "2021-01-01T00:00:00Z" }}'
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(tmp_path, mock_upstream, f"{old}, {new}, {gone}"))
    proc = Process([BIN, "run", "--config", str(config)], env={"SDK_TEST_ARK_KEY": UPSTREAM_KEY}, ready_marker="tenant listener ready")
    addr = proc.ready_line.split("addr=")[1].split()[0]
    base_url = f"http://{addr}/api/v3"
    try:
        old_client = Ark(base_url=base_url, api_key="sdk-old-token")
        new_client = Ark(base_url=base_url, api_key="sdk-new-token")
        # Both tokens work at once: the team moves its services one by one.
        task = old_client.content_generation.tasks.create(model=MODEL, content=CONTENT)
        assert new_client.content_generation.tasks.get(task_id=task.id).id == task.id
        with pytest.raises(ArkAuthenticationError) as expired:
            Ark(base_url=base_url, api_key="sdk-expired-token").content_generation.tasks.get(task_id=task.id)
        assert "expired" in str(expired.value)

        # The old token is removed from the file; SIGHUP reloads it.
        config.write_text(config_text(tmp_path, mock_upstream, new))
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                old_client.content_generation.tasks.get(task_id=task.id)
            except ArkAuthenticationError:
                break
            assert time.monotonic() < deadline, "the reload never retired the old token"
            time.sleep(0.05)
        # No downtime for the new token, and the team keeps its tasks.
        assert new_client.content_generation.tasks.get(task_id=task.id).id == task.id
        assert task.id in [t.id for t in new_client.content_generation.tasks.list(page_size=10).items]
    finally:
        assert proc.stop() == 0
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"token_name":"old"' in audit and '"token_name":"new"' in audit
    assert "sdk-old-token" not in audit and "sdk-new-token" not in audit
