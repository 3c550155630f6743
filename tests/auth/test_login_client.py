"""The token clients against other authorization servers, over real HTTP: the authorization response's `iss`
(RFC 9207) and cleartext endpoints beyond loopback, refused before any password or secret is sent."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web

from meshrun.auth import login
from meshrun.auth.guard import BearerGuard
from meshrun.config import parse_config
from meshrun.errors import ConfigError, TokenRequestFailed
from tests.conftest import free_port


class OtherIssuer:
    """An authorization server of the test's own: its metadata and its answers are whatever the test says."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metadata: dict[str, Any] = {
            "issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
            "authorization_response_iss_parameter_supported": True}
        self.iss: Callable[[], str | None] = lambda: self.url
        self.token_requests = 0

    async def _metadata(self, _: web.Request) -> web.Response:
        return web.json_response(self.metadata)

    async def _authorize(self, request: web.Request) -> web.Response:
        answer = {"code": "a-code", "state": request.query["state"]}
        iss = self.iss()
        if iss is not None:
            answer["iss"] = iss
        return web.Response(status=302, headers={"Location": f"{request.query['redirect_uri']}?{urlencode(answer)}"})

    async def _token(self, _: web.Request) -> web.Response:
        self.token_requests += 1
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 60})

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/.well-known/oauth-authorization-server", self._metadata)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


@pytest.fixture
async def other() -> AsyncIterator[OtherIssuer]:
    issuer = OtherIssuer()
    runner = await issuer.start()
    yield issuer
    await runner.cleanup()


async def test_an_authorization_response_without_iss_is_refused_when_the_issuer_advertises_it(
        other: OtherIssuer) -> None:
    other.iss = lambda: None
    with pytest.raises(TokenRequestFailed, match="has no iss although"):
        await login.user_login(other.url, "alice", "pw")
    assert other.token_requests == 0, "the code is never exchanged"


async def test_an_authorization_response_from_another_issuer_is_refused(other: OtherIssuer) -> None:
    other.iss = lambda: "https://attacker.example"
    with pytest.raises(TokenRequestFailed, match="comes from issuer 'https://attacker.example'"):
        await login.user_login(other.url, "alice", "pw")
    assert other.token_requests == 0


async def test_without_the_advertisement_a_response_without_iss_is_accepted(other: OtherIssuer) -> None:
    other.metadata["authorization_response_iss_parameter_supported"] = False
    other.iss = lambda: None
    assert (await login.user_login(other.url, "alice", "pw"))["access_token"] == "t"


@pytest.mark.parametrize("endpoint", ["authorization_endpoint", "token_endpoint"])
async def test_cleartext_endpoints_beyond_loopback_are_refused_before_any_credential_is_sent(
        other: OtherIssuer, endpoint: str) -> None:
    other.metadata[endpoint] = "http://auth.example/oauth2/x"
    with pytest.raises(TokenRequestFailed, match="plain http on a non-loopback host"):
        await login.user_login(other.url, "alice", "pw")
    with pytest.raises(TokenRequestFailed, match="trust_proxy_tls"):
        await login.client_credentials(other.url, "c", "secret")
    assert other.token_requests == 0


async def test_a_resource_server_refuses_a_cleartext_jwks_beyond_loopback(other: OtherIssuer) -> None:
    other.metadata["jwks_uri"] = "http://auth.example/oauth2/jwks"
    async with aiohttp.ClientSession() as session:
        guard = BearerGuard(other.url, "orders", session=lambda: session)
        problem = await guard.ready()
        await guard.close()
    assert problem is not None and "jwks_uri" in problem and "plain http on a non-loopback host" in problem


async def test_a_resource_server_refuses_a_cleartext_issuer_beyond_loopback_unless_told_a_proxy_encrypts() -> None:
    async with aiohttp.ClientSession() as session:
        guard = BearerGuard("http://auth.example:9000", "orders", session=lambda: session)
        problem = await guard.ready()
        await guard.close()
        assert problem is not None and "trust_proxy_tls" in problem
        trusting = BearerGuard(f"http://192.0.2.1:{free_port()}", "orders", session=lambda: session,
                               allow_cleartext=True)
        trusting.jwks.timeout = aiohttp.ClientTimeout(total=0.2)
        problem = await trusting.ready()
        await trusting.close()
    assert problem is not None and "unreachable" in problem, "it tried: only the network was missing"


@pytest.mark.parametrize("mesh, refused", [
    ({"issuer": "http://auth.example:9000"}, True),
    ({"issuer": "http://10.0.0.7:9000"}, True),
    ({"host": "0.0.0.0"}, True),  # no issuer: it is the auth service's URL on mesh.host
    ({"issuer": "http://auth.example:9000", "trust_proxy_tls": True}, False),
    ({"issuer": "https://auth.example"}, False),
    ({"issuer": "http://127.0.0.1:9000"}, False),
    ({"issuer": "http://[::1]:9000"}, False),
    ({"issuer": "http://localhost:9000"}, False),
])
def test_a_non_loopback_http_issuer_is_refused_by_the_configuration(mesh: dict[str, Any], refused: bool) -> None:
    data = {"mesh": mesh, "services": {"auth": {"module": "meshrun.services.auth", "port": 9000}}}
    if not refused:
        parse_config(data)
        return
    with pytest.raises(ConfigError) as failure:
        parse_config(data)
    assert "plain http on a non-loopback host" in str(failure.value)
    assert "mesh.trust_proxy_tls = true" in str(failure.value)


async def test_mesh_trust_proxy_tls_reaches_every_resource_servers_guard(start_mesh: Any, tmp_path: Any) -> None:
    from tests.auth.conftest import mesh_data

    strict = await start_mesh()
    assert strict.guard("orders-api").jwks.allow_cleartext is False
    data = mesh_data(tmp_path, free_port())
    data["mesh"]["trust_proxy_tls"] = True
    trusting = await start_mesh(data)
    assert trusting.guard("orders-api").jwks.allow_cleartext is True
    assert trusting.guard("users-api").jwks.allow_cleartext is True
