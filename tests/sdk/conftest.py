"""Starts the mock Ark upstream and an ark-gateway process for the SDK tests.

Both bind 127.0.0.1:0 and report their address; nothing here sleeps to wait.
"""

import hashlib
import json
import os
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

BIN = os.environ.get("ARK_GATEWAY_BIN", str(Path(__file__).resolve().parents[2] / "target/debug/ark-gateway"))
UPSTREAM_KEY = "sk-sdk-test-upstream-key"

TOKENS = {
    "alpha": "sdk-token-alpha",
    "beta": "sdk-token-beta",
    "gamma": "sdk-token-gamma",
    "delta": "sdk-token-delta",
    "limited": "sdk-token-limited",
}


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def tenant(name, operations='["create", "get", "list", "delete"]', extra="", limit="{ per_second = 100, burst = 100 }", token=None):
    """A [[tenant]] table; its token is `token`, or the shared test token of `name`."""
    return f"""
[[tenant]]
name = "{name}"
token_sha256 = "{sha256(token or TOKENS[name])}"
operations = {operations}
rate_limit = {limit}
{extra}
"""


class Process:
    """A child process whose output is collected by a thread."""

    def __init__(self, args, env=None, ready_stream="stderr", ready_marker=""):
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.lines = {"stdout": [], "stderr": []}
        stream = getattr(self.proc, ready_stream)
        self.ready_line = None
        for line in stream:
            self.lines[ready_stream].append(line)
            if ready_marker in line:
                self.ready_line = line
                break
        if self.ready_line is None:
            raise RuntimeError(f"{args[1]} exited before it was ready: {''.join(self.lines[ready_stream])}")
        self.threads = [
            threading.Thread(target=self._drain, args=(name,), daemon=True) for name in ("stdout", "stderr")
        ]
        for t in self.threads:
            t.start()

    def _drain(self, name):
        for line in getattr(self.proc, name):
            self.lines[name].append(line)

    def stop(self):
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        for t in self.threads:
            t.join(timeout=10)
        return code


@pytest.fixture(scope="session")
def mock_upstream():
    proc = Process(
        [BIN, "mock-upstream", "--listen", "127.0.0.1:0", "--api-key", UPSTREAM_KEY, "--queued-for", "1h"],
        ready_stream="stdout",
        ready_marker="listening on",
    )
    base_url = proc.ready_line.rsplit(" ", 1)[1].strip()
    yield base_url
    proc.stop()


def base_config(work, mock_upstream, server_extra="", admin_extra="", store=None):
    """The listeners (port 0), the mock as upstream, the store and the audit
    file in `work`: every test gateway's config before its tenants."""
    store = store or 'path = "{}"'.format(work / "ledger.redb")
    return f"""
[server]
listen = "127.0.0.1:0"
{server_extra}

[admin]
listen = "127.0.0.1:0"
{admin_extra}

[upstream]
base_url = "{mock_upstream}"
api_key_env = "SDK_TEST_ARK_KEY"
allow_insecure_http = true

[store]
{store}

[audit]
sink = "file"
path = "{work / 'audit.jsonl'}"
"""


def start_gateway(work, mock_upstream, server_extra=""):
    """A gateway process in `work` in front of the mock, with the test tenants."""
    config = work / "gateway.toml"
    config.write_text(
        base_config(work, mock_upstream, server_extra)
        + tenant("alpha", extra='models = ["doubao-seedance-1-0-pro-250528"]')
        + tenant("beta")
        + tenant("gamma")
        + tenant("delta", operations='["get", "list"]')
        + tenant("limited", limit="{ per_minute = 1, burst = 1 }")
    )
    proc = Process([BIN, "run", "--config", str(config)], env={"SDK_TEST_ARK_KEY": UPSTREAM_KEY}, ready_marker="tenant listener ready")
    addr = proc.ready_line.split("addr=")[1].split()[0]
    return proc, addr


def stop_gateway(proc, work):
    assert proc.stop() == 0, "the gateway must drain and exit 0 on SIGTERM"
    assert UPSTREAM_KEY not in "".join(proc.lines["stderr"]), "the Ark key reached the gateway's log"
    assert UPSTREAM_KEY not in (work / "audit.jsonl").read_text(), "the Ark key reached the audit trail"


@pytest.fixture(scope="session")
def gateway(mock_upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateway")
    proc, addr = start_gateway(work, mock_upstream)
    yield {"base_url": f"http://{addr}/api/v3", "process": proc, "audit": work / "audit.jsonl"}
    stop_gateway(proc, work)


def make_certificates(work):
    """A CA and a server certificate for localhost and 127.0.0.1, made with the openssl CLI."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=work)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=ark-gateway SDK test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (work / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return work / "server.pem", work / "server.key", work / "ca.pem"


@pytest.fixture(scope="session")
def tls_gateway(mock_upstream, tmp_path_factory):
    """A gateway serving TLS (ALPN h2 and http/1.1) on localhost."""
    work = tmp_path_factory.mktemp("tls-gateway")
    cert, key, ca = make_certificates(work)
    proc, addr = start_gateway(work, mock_upstream, f'[server.tls]\ncert = "{cert}"\nkey = "{key}"')
    port = addr.rsplit(":", 1)[1]
    yield {"base_url": f"https://localhost:{port}/api/v3", "ca": str(ca), "audit": work / "audit.jsonl"}
    stop_gateway(proc, work)


def assert_refused_to_another_tenant(task_id, other, upstream_requests):
    """`other` (an SDK client of another tenant) can neither get, delete nor
    list `task_id`, and none of its attempts reaches Ark."""
    from volcenginesdkarkruntime._exceptions import ArkPermissionDeniedError

    before = len(upstream_requests())
    with pytest.raises(ArkPermissionDeniedError) as refused:
        other.content_generation.tasks.get(task_id=task_id)
    assert refused.value.code == "AccessDenied"
    with pytest.raises(ArkPermissionDeniedError):
        other.content_generation.tasks.delete(task_id)
    listed = other.content_generation.tasks.list(task_ids=[task_id])
    assert listed.total == 0 and listed.items == []
    assert len(upstream_requests()) == before, "a refused call reached Ark"


@pytest.fixture()
def upstream_requests(mock_upstream):
    """Returns a function listing what the mock received so far."""
    root = mock_upstream.rsplit("/api/v3", 1)[0]

    def received():
        with urllib.request.urlopen(f"{root}/_mock/requests") as response:
            return json.load(response)

    return received
