"""The auth tests' mesh: the real auth service and two resource servers on free ports, a temporary keys dir.

Identities here use a cheaper scrypt cost than the shipped ones so the suite stays fast; one test checks the
shipped services.toml with its demo identities as they are.
"""
from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import aiohttp
import pytest

from meshrun.auth import pkce
from meshrun.auth.guard import BearerGuard
from meshrun.auth.hashing import hash_secret
from meshrun.auth.issuer.server import AuthorizationServer
from meshrun.runtime import Mesh
from meshrun.services.auth import authorization_server
from tests.conftest import free_port, make_config

ALICE_PASSWORD = "alice-password"
NOTIFY_SECRET = "notification-secret"
REPORTING_SECRET = "reporting-secret"
WEB_SECRET = "web-app-secret"
_FAST = {secret: str(hash_secret(secret, log2_n=10))
         for secret in (ALICE_PASSWORD, "bob-password", NOTIFY_SECRET, REPORTING_SECRET, WEB_SECRET)}
CLI_REDIRECT = "http://127.0.0.1/callback"
WEB_REDIRECT = "https://app.example/callback"


def basic(client_id: str, secret: str) -> str:
    """HTTP Basic as RFC 6749 §2.3.1 wants it (each half form-urlencoded), written out independently here."""
    return "Basic " + base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()


def auth_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "keys_dir": str(tmp_path / "keys"),
        "access_token_ttl": 300,
        "users": [{"username": "alice", "password_hash": _FAST[ALICE_PASSWORD]},
                  {"username": "bob", "password_hash": _FAST["bob-password"]}],
        "clients": [
            {"client_id": "notification-service", "secret_hash": _FAST[NOTIFY_SECRET],
             "grant_types": ["client_credentials"], "scopes": ["users.notify"], "audiences": ["users"]},
            {"client_id": "meshrun-cli", "grant_types": ["authorization_code", "refresh_token"],
             "scopes": ["orders.write", "orders.read"], "audiences": ["orders"], "redirect_uris": [CLI_REDIRECT]},
            {"client_id": "reporting", "secret_hash": _FAST[REPORTING_SECRET], "grant_types": ["client_credentials"],
             "scopes": ["orders.read", "orders.write", "users.notify"], "audiences": ["orders", "users"],
             "introspect_audiences": ["orders", "users"]},
            {"client_id": "web-app", "secret_hash": _FAST[WEB_SECRET],
             "grant_types": ["authorization_code", "refresh_token"], "scopes": ["orders.write"],
             "audiences": ["orders"], "redirect_uris": [WEB_REDIRECT]},
        ],
    }
    settings.update(overrides)
    return settings


_CSRF = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]*)">')


def csrf_token(page: str) -> str:
    """The CSRF token of a login form, as a browser would send it back."""
    found = _CSRF.search(page)
    assert found is not None, page[:500]
    return html.unescape(found[1])


def cookie_jar() -> aiohttp.CookieJar:
    """A browser's cookie jar: it keeps the sign-in cookie of an IP-address host such as 127.0.0.1."""
    return aiohttp.CookieJar(unsafe=True)


def session_from(address: str) -> aiohttp.ClientSession:
    """A browser on another machine: its connections leave from `address` (127.0.0.2... are loopback too)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)), cookie_jar=cookie_jar())


def authorization_params(client_id: str = "meshrun-cli", redirect_uri: str | None = None,
                         verifier: str | None = None, state: str = "xyz") -> dict[str, str]:
    """A valid authorization request (with PKCE) of the public CLI client, to GET and then POST."""
    return {"response_type": "code", "client_id": client_id,
            "redirect_uri": redirect_uri or f"http://127.0.0.1:{free_port()}/callback", "state": state,
            "code_challenge": pkce.s256(verifier or pkce.new_verifier()), "code_challenge_method": "S256"}


def distinct_ports(count: int, taken: tuple[int, ...] = ()) -> list[int]:
    """Free ports, none equal to another or to `taken` (the OS may hand the same free port out twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in taken:
            ports.append(port)
    return ports


def mesh_data(tmp_path: Path, auth_port: int, **overrides: Any) -> dict[str, Any]:
    orders_port, users_port = distinct_ports(2, (auth_port,))
    return {
        "mesh": {"issuer": f"http://127.0.0.1:{auth_port}", "grace_period": 2.0},
        "services": {
            "auth": {"module": "meshrun.services.auth", "port": auth_port,
                     "settings": auth_settings(tmp_path, **overrides)},
            "orders-api": {"module": "tests.auth.protected", "port": orders_port, "audience": "orders"},
            "users-api": {"module": "tests.auth.protected", "port": users_port, "audience": "users"},
        },
    }


class Clock:
    """The issuer's clock in a test: real time plus an offset the test moves forward instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class AuthMesh:
    """A running mesh with the auth service, and the HTTP steps of the OAuth flows written out for tests."""

    def __init__(self, mesh: Mesh, session: aiohttp.ClientSession, tmp_path: Path) -> None:
        self.mesh = mesh
        self.session = session
        self.tmp_path = tmp_path
        self.issuer = f"http://127.0.0.1:{mesh.port_of('auth')}"

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.mesh.port_of(service)}{path}"

    @property
    def server(self) -> AuthorizationServer:
        return authorization_server(self.mesh.services["auth"].ctx)

    def guard(self, service: str) -> BearerGuard:
        guard = self.mesh.services[service].ctx.guard
        assert guard is not None
        return guard

    async def post(self, path: str, form: dict[str, str] | list[tuple[str, str]],
                   authorization: str | None = None) -> tuple[int, Any, Any]:
        headers = {"Authorization": authorization} if authorization else {}
        async with self.session.post(self.issuer + path, data=form, headers=headers,
                                     allow_redirects=False) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, response.headers, body

    async def client_token(self, client_id: str = "notification-service", secret: str = NOTIFY_SECRET,
                           **form: str) -> dict[str, Any]:
        status, _, body = await self.post("/oauth2/token", {"grant_type": "client_credentials", **form},
                                          basic(client_id, secret))
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def authorize(self, *, client_id: str = "meshrun-cli", redirect_uri: str | None = None,
                        verifier: str | None = None, username: str = "alice", password: str = ALICE_PASSWORD,
                        scope: str | None = None, state: str = "xyz", extra: dict[str, str] | None = None
                        ) -> dict[str, str]:
        """GET the login page, POST the credentials; returns the query of the redirect back to the client."""
        if redirect_uri is None:
            redirect_uri = f"http://127.0.0.1:{free_port()}/callback" if client_id == "meshrun-cli" else WEB_REDIRECT
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state}
        if verifier is not None:
            params.update(code_challenge=pkce.s256(verifier), code_challenge_method="S256")
        if scope is not None:
            params["scope"] = scope
        params.update(extra or {})
        page = await self.login_page(params)
        status, headers, body = await self.post("/oauth2/authorize", {**params, "username": username,
                                                                      "password": password,
                                                                      "csrf_token": csrf_token(page)})
        assert status == 302, body
        location = headers["Location"]
        assert location.startswith(redirect_uri + "?")
        return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}

    async def login_page(self, params: dict[str, str], session: aiohttp.ClientSession | None = None) -> str:
        """GET the login form (which sets the sign-in cookie in the session's jar)."""
        async with (session or self.session).get(f"{self.issuer}/oauth2/authorize?{urlencode(params)}",
                                                 allow_redirects=False) as page:
            text = await page.text()
            assert page.status == 200, text
            assert 'name="password"' in text
            return text

    async def sign_in(self, params: dict[str, str], username: str, password: str, *,
                      session: aiohttp.ClientSession | None = None, headers: dict[str, str] | None = None,
                      token: str | None = None) -> tuple[int, Any, str]:
        """POST the login form as a browser that loaded it (with `token`, or the one of a fresh GET)."""
        session = session or self.session
        if token is None:
            token = csrf_token(await self.login_page(params, session))
        form = {**params, "username": username, "password": password, "csrf_token": token}
        async with session.post(f"{self.issuer}/oauth2/authorize", data=form, headers=headers or {},
                                allow_redirects=False) as response:
            return response.status, response.headers, await response.text()

    async def user_tokens(self, *, client_id: str = "meshrun-cli", secret: str | None = None,
                          username: str = "alice", scope: str | None = None) -> dict[str, Any]:
        verifier = pkce.new_verifier()
        redirect_uri = f"http://127.0.0.1:{free_port()}/callback" if client_id == "meshrun-cli" else WEB_REDIRECT
        answer = await self.authorize(client_id=client_id, redirect_uri=redirect_uri, verifier=verifier,
                                      username=username, password=f"{username}-password", scope=scope)
        form = {"grant_type": "authorization_code", "code": answer["code"], "redirect_uri": redirect_uri,
                "code_verifier": verifier}
        if secret is None:
            form["client_id"] = client_id
        status, _, body = await self.post("/oauth2/token", form, basic(client_id, secret) if secret else None)
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def call(self, service: str, method: str, path: str, token: str | None) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.request(method, self.url(service, path), headers=headers) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, response.headers, body


StartMesh = Callable[..., Any]


@pytest.fixture
async def start_mesh(tmp_path: Path) -> AsyncIterator[StartMesh]:
    """start_mesh(**auth setting overrides) -> a running AuthMesh; every mesh is stopped after the test."""
    started: list[Mesh] = []
    session = aiohttp.ClientSession(cookie_jar=cookie_jar())

    async def start(data: dict[str, Any] | None = None, **overrides: Any) -> AuthMesh:
        config = make_config(data or mesh_data(tmp_path, free_port(), **overrides),
                             str(tmp_path / "services.toml"))
        mesh = Mesh(config)
        started.append(mesh)
        await mesh.start()
        await mesh.wait_ready(15)
        return AuthMesh(mesh, session, tmp_path)

    yield start
    for mesh in reversed(started):
        await mesh.stop()
    await session.close()


@pytest.fixture
async def auth(start_mesh: StartMesh) -> AuthMesh:
    return await start_mesh()  # type: ignore[no-any-return]
