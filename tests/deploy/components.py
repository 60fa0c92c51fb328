"""Helpers for the tests that run real platform components (Prometheus,
Chromium) against a real gateway: the SDK tests' process and config helpers,
loaded under a name of their own, and free-port selection for servers that
cannot bind port 0 and report it."""

import importlib.util
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sdk_helpers", ROOT / "tests/sdk/conftest.py")
sdk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sdk)


def free_port():
    """A port the kernel just gave out and took back (for a server that must be told one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout=90, what="condition"):
    """Polls `condition` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def start_mock():
    proc = sdk.Process(
        [sdk.BIN, "mock-upstream", "--listen", "127.0.0.1:0", "--api-key", sdk.UPSTREAM_KEY, "--queued-for", "1h"],
        ready_stream="stdout",
        ready_marker="listening on",
    )
    return proc, proc.ready_line.rsplit(" ", 1)[1].strip()


def start_gateway(config):
    """`ark-gateway run`; returns (process, tenant address, admin address)."""
    proc = sdk.Process(
        [sdk.BIN, "run", "--config", str(config)],
        env={"SDK_TEST_ARK_KEY": sdk.UPSTREAM_KEY},
        ready_marker="admin listener ready",
    )
    tenant_line = next(line for line in proc.lines["stderr"] if "tenant listener ready" in line)
    return proc, tenant_line.split("addr=")[1].split()[0], proc.ready_line.split("addr=")[1].split()[0]


def call(addr, method, path, token=None, body=None):
    """One request; returns (status, body text)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body.encode() if body is not None else None
    request = urllib.request.Request(f"http://{addr}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
