"""The official Python Ark SDK against ark-gateway, as a tenant uses it."""

import pytest
from volcenginesdkarkruntime import Ark
from volcenginesdkarkruntime._exceptions import (
    ArkAuthenticationError,
    ArkBadRequestError,
    ArkPermissionDeniedError,
    ArkRateLimitError,
)

from conftest import TOKENS, UPSTREAM_KEY, assert_refused_to_another_tenant

MODEL = "doubao-seedance-1-0-pro-250528"
CONTENT = [{"type": "text", "text": "a red kite over the sea"}]


def client(gateway, name=None, token=None):
    return Ark(base_url=gateway["base_url"], api_key=token or TOKENS[name])


def test_create_get_list_delete_as_one_tenant(gateway, upstream_requests):
    alpha = client(gateway, "alpha")
    task = alpha.content_generation.tasks.create(model=MODEL, content=CONTENT)
    assert task.id.startswith("cgt-")

    got = alpha.content_generation.tasks.get(task_id=task.id)
    assert got.id == task.id
    assert got.status == "queued"
    assert got.model == MODEL

    listed = alpha.content_generation.tasks.list(page_size=10)
    assert task.id in [t.id for t in listed.items]

    alpha.content_generation.tasks.delete(task.id)  # queued: a cancel
    assert alpha.content_generation.tasks.get(task_id=task.id).status == "cancelled"

    # What Ark received carried the real key, never the tenant's token.
    sent = [r for r in upstream_requests() if task.id in r["path_and_query"] or r["method"] == "POST"]
    assert sent
    for r in sent:
        headers = {k.lower(): v for k, v in r["headers"]}
        assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert TOKENS["alpha"] not in str(r)


def test_another_tenant_is_refused_and_nothing_reaches_ark(gateway, upstream_requests):
    task = client(gateway, "alpha").content_generation.tasks.create(model=MODEL, content=CONTENT)
    assert_refused_to_another_tenant(task.id, client(gateway, "beta"), upstream_requests)
    # A read-only tenant may not create.
    with pytest.raises(ArkPermissionDeniedError):
        client(gateway, "delta").content_generation.tasks.create(model=MODEL, content=CONTENT)


def test_a_bad_token_is_an_authentication_error(gateway):
    with pytest.raises(ArkAuthenticationError) as refused:
        client(gateway, token="not-a-gateway-token").content_generation.tasks.list()
    assert refused.value.code == "AuthenticationError"


def test_models_are_checked(gateway):
    alpha = client(gateway, "alpha")
    with pytest.raises(ArkPermissionDeniedError):
        alpha.content_generation.tasks.create(model="some-other-model", content=CONTENT)
    with pytest.raises(ArkBadRequestError):
        alpha.content_generation.tasks.create(model="", content=CONTENT)


def test_the_rate_limit_is_an_ark_rate_limit_error(gateway):
    limited = client(gateway, "limited")
    limited.content_generation.tasks.list()
    with pytest.raises(ArkRateLimitError) as limited_error:
        limited.content_generation.tasks.list()
    assert limited_error.value.code == "RateLimitExceeded"


def test_list_totals_and_pages_per_tenant(gateway):
    gamma, beta_owned = client(gateway, "gamma"), []
    mine = [gamma.content_generation.tasks.create(model=MODEL, content=CONTENT).id for _ in range(5)]
    beta = client(gateway, "beta")
    before = beta.content_generation.tasks.list(page_size=100).total
    beta_owned = [beta.content_generation.tasks.create(model=MODEL, content=CONTENT).id for _ in range(3)]

    first = gamma.content_generation.tasks.list(page_size=2, page_num=1)
    second = gamma.content_generation.tasks.list(page_size=2, page_num=2)
    third = gamma.content_generation.tasks.list(page_size=2, page_num=3)
    assert first.total == second.total == third.total == 5
    pages = [t.id for t in first.items + second.items + third.items]
    assert sorted(pages) == sorted(mine)
    assert not set(pages) & set(beta_owned)
    assert beta.content_generation.tasks.list(page_size=100).total == before + 3
    queued = gamma.content_generation.tasks.list(status="queued", page_size=100)
    assert queued.total == 5
