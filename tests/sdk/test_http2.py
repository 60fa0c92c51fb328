"""The official Python Ark SDK over HTTP/2: an httpx client with http2=True
(the `h2` package) against a TLS gateway, negotiated by ALPN."""

import json

import httpx
import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import ArkAuthenticationError

from conftest import TOKENS, assert_refused_to_another_tenant

MODEL = "doubao-seedance-1-0-pro-250528"
CONTENT = [{"type": "text", "text": "a kite over HTTP/2"}]


def h2_client(tls_gateway, name=None, token=None):
    """An SDK client whose every response records the HTTP version it came over."""
    versions = []
    http = httpx.Client(
        http2=True,
        verify=tls_gateway["ca"],
        event_hooks={"response": [lambda response: versions.append(response.http_version)]},
    )
    return Ark(base_url=tls_gateway["base_url"], api_key=token or TOKENS[name], http_client=http), versions


def test_create_get_list_delete_over_http2(tls_gateway, upstream_requests):
    alpha, versions = h2_client(tls_gateway, "alpha")
    task = alpha.content_generation.tasks.create(model=MODEL, content=CONTENT)
    assert task.id.startswith("cgt-")
    got = alpha.content_generation.tasks.get(task_id=task.id)
    assert (got.id, got.status) == (task.id, "queued")
    listed = alpha.content_generation.tasks.list(page_size=10)
    assert task.id in [t.id for t in listed.items]
    alpha.content_generation.tasks.delete(task.id)
    assert alpha.content_generation.tasks.get(task_id=task.id).status == "cancelled"
    assert versions and set(versions) == {"HTTP/2"}, versions
    assert any(r["method"] == "POST" for r in upstream_requests())


def test_tenants_stay_apart_over_http2(tls_gateway, upstream_requests):
    alpha, _ = h2_client(tls_gateway, "alpha")
    beta, versions = h2_client(tls_gateway, "beta")
    task = alpha.content_generation.tasks.create(model=MODEL, content=CONTENT)
    assert_refused_to_another_tenant(task.id, beta, upstream_requests)
    assert task.id not in [t.id for t in beta.content_generation.tasks.list(page_size=50).items]
    assert set(versions) == {"HTTP/2"}


def test_an_early_refusal_with_a_large_body_arrives_over_http2(tls_gateway):
    bad, versions = h2_client(tls_gateway, token="not-a-gateway-token")
    # A 1 MB prompt: the 401 is answered before the body is read.
    long_text = "x" * (1024 * 1024)
    for _ in range(5):
        with pytest.raises(ArkAuthenticationError) as refused:
            bad.content_generation.tasks.create(model=MODEL, content=[{"type": "text", "text": long_text}])
        assert refused.value.code == "AuthenticationError"
    assert set(versions) == {"HTTP/2"}


def test_every_request_over_http2_is_audited(tls_gateway):
    gamma, versions = h2_client(tls_gateway, "gamma")
    task = gamma.content_generation.tasks.create(model=MODEL, content=CONTENT)
    gamma.content_generation.tasks.get(task_id=task.id)
    records = [json.loads(line) for line in tls_gateway["audit"].read_text().splitlines()]
    mine = [r for r in records if r.get("tenant") == "gamma"]
    assert [r["operation"] for r in mine[-2:]] == ["create", "get"]
    assert set(versions) == {"HTTP/2"}
