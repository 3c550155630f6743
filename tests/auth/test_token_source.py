"""ClientCredentialsTokenSource against the real issuer: one fetch for many callers, cache until shortly before
expiry, a fresh token after a 401."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import jwt as pyjwt
import pytest

from meshrun.auth.token_source import ClientCredentialsTokenSource
from meshrun.errors import TokenRequestFailed
from tests.auth.conftest import NOTIFY_SECRET, REPORTING_SECRET, AuthMesh
from tests.conftest import free_port


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def source(auth: AuthMesh, client_id: str = "notification-service", secret: str = NOTIFY_SECRET,
           scope: str | None = "users.notify", resource: str | None = None,
           clock: Callable[[], float] = time.monotonic) -> ClientCredentialsTokenSource:
    return ClientCredentialsTokenSource(auth.issuer + "/oauth2/token", client_id, secret, scope,
                                        session=lambda: auth.session, resource=resource, clock=clock)


async def test_many_concurrent_callers_share_one_token_request(auth: AuthMesh) -> None:
    tokens = source(auth)
    results = await asyncio.gather(*(tokens.token() for _ in range(50)))
    assert len(set(results)) == 1 and tokens.fetched == 1
    assert await tokens.token() == results[0] and tokens.fetched == 1
    status, _, _ = await auth.call("users-api", "POST", "/notify", results[0])
    assert status == 200


async def test_the_token_is_renewed_shortly_before_it_expires(auth: AuthMesh) -> None:
    clock = Monotonic()
    tokens = source(auth, clock=clock)
    first = await tokens.token()
    clock.now += 300 - 31  # the 300 s token, 31 s before expiry: still cached
    assert await tokens.token() == first and tokens.fetched == 1
    clock.now += 2  # inside the 30 s margin: renewed
    second = await tokens.token()
    assert second != first and tokens.fetched == 2


async def test_invalidate_after_a_401_fetches_once_for_all_who_saw_it(auth: AuthMesh) -> None:
    tokens = source(auth)
    first = await tokens.token()
    for _ in range(5):
        tokens.invalidate(first)
    fresh = await asyncio.gather(*(tokens.token() for _ in range(10)))
    assert len(set(fresh)) == 1 and fresh[0] != first and tokens.fetched == 2
    tokens.invalidate(first)  # a late 401 with the old token changes nothing
    assert await tokens.token() == fresh[0] and tokens.fetched == 2


async def test_authorized_requests_retry_once_with_a_fresh_token_on_401(auth: AuthMesh) -> None:
    tokens = source(auth, "reporting", REPORTING_SECRET, scope=None, resource="orders")
    async with tokens.authorized("GET", auth.url("orders-api", "/refuse-first-token")) as response:
        assert response.status == 200
        assert (await response.json())["client_id"] == "reporting"
    assert tokens.fetched == 2


async def test_resource_selects_the_audience(auth: AuthMesh) -> None:
    tokens = source(auth, "reporting", REPORTING_SECRET, scope="users.notify", resource="users")
    claims = pyjwt.decode(await tokens.token(), options={"verify_signature": False})
    assert claims["aud"] == "users"


async def test_an_unreachable_issuer_raises_what_aiohttp_raises(auth: AuthMesh) -> None:
    tokens = ClientCredentialsTokenSource(f"http://127.0.0.1:{free_port()}/oauth2/token", "notification-service",
                                          NOTIFY_SECRET, None, session=lambda: auth.session)
    with pytest.raises(aiohttp.ClientConnectionError):
        await tokens.token()


async def test_a_refused_request_raises_with_the_servers_reason(auth: AuthMesh) -> None:
    tokens = source(auth, secret="wrong")
    with pytest.raises(TokenRequestFailed) as failure:
        await tokens.token()
    assert failure.value.error == "invalid_client" and failure.value.status == 401
    assert "invalid_client" in str(failure.value)
