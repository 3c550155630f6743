"""Getting tokens from a terminal: client_credentials, and a person's login through the authorization code flow
with PKCE and a loopback redirect (RFC 8252), driven here instead of in a browser.

The flows the `meshrun token` command runs; the command itself only parses flags and prints.
"""
from __future__ import annotations

import asyncio
import html
import re
import secrets
from typing import Any, Self
from urllib.parse import parse_qs, urlencode

import aiohttp
import orjson
from aiohttp import web

from meshrun.auth import pkce
from meshrun.auth.token_source import basic_credentials, request_token
from meshrun.errors import TokenRequestFailed


async def discover(session: aiohttp.ClientSession, issuer: str) -> dict[str, Any]:
    """The issuer's RFC 8414 metadata; its `issuer` must be the one asked for (§3.3)."""
    url = f"{issuer.rstrip('/')}/.well-known/oauth-authorization-server"
    try:
        async with session.get(url, allow_redirects=False) as response:
            raw = await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise TokenRequestFailed(f"cannot reach the issuer {issuer} ({type(exc).__name__}: {exc}); is the auth "
                                 "service running (`meshrun up`), and is [mesh] issuer right?") from None
    try:
        metadata = orjson.loads(raw) if status == 200 else None
    except orjson.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer.rstrip("/"):
        raise TokenRequestFailed(f"{url} did not return this issuer's metadata (status {status})")
    return metadata


async def _token(session: aiohttp.ClientSession, url: str, form: list[tuple[str, str]],
                 authorization: str | None = None) -> dict[str, Any]:
    try:
        return await request_token(session, url, form, authorization)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TokenRequestFailed(f"cannot reach the token endpoint {url} ({type(exc).__name__}: {exc}); is the "
                                 "auth service running?") from None


async def client_credentials(issuer: str, client_id: str, secret: str, scope: str | None = None,
                             resources: tuple[str, ...] = ()) -> dict[str, Any]:
    """A machine token for `client_id`: the token endpoint's response body."""
    async with aiohttp.ClientSession() as session:
        metadata = await discover(session, issuer)
        form = [("grant_type", "client_credentials")] + ([("scope", scope)] if scope else [])
        form += [("resource", r) for r in resources]
        return await _token(session, metadata["token_endpoint"], form, basic_credentials(client_id, secret))


class _LoopbackRedirect:
    """A one-shot HTTP listener on 127.0.0.1 that receives the authorization response (RFC 8252 §7.3)."""

    def __init__(self) -> None:
        self.result: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.runner: web.AppRunner | None = None
        self.uri = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/callback", self._callback)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.uri = f"http://127.0.0.1:{port}/callback"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _callback(self, request: web.Request) -> web.Response:
        if not self.result.done():
            self.result.set_result({k: v[0] for k, v in parse_qs(request.query_string).items()})
        return web.Response(text="Signed in: you can close this window and return to the terminal.")


async def user_login(issuer: str, username: str, password: str, *, client_id: str = "meshrun-cli",
                     scope: str | None = None, resources: tuple[str, ...] = ()) -> dict[str, Any]:
    """Sign `username` in as a browser would (authorization request, login form, redirect to a loopback port),
    then exchange the code with the PKCE verifier. Returns the token response (with a refresh token)."""
    issuer = issuer.rstrip("/")
    async with aiohttp.ClientSession() as session, _LoopbackRedirect() as loopback:
        metadata = await discover(session, issuer)
        verifier, state = pkce.new_verifier(), secrets.token_urlsafe(16)
        request = [("response_type", "code"), ("client_id", client_id), ("redirect_uri", loopback.uri),
                   ("state", state), ("code_challenge", pkce.s256(verifier)), ("code_challenge_method", "S256")]
        request += ([("scope", scope)] if scope else []) + [("resource", r) for r in resources]
        endpoint = metadata["authorization_endpoint"]
        async with session.get(f"{endpoint}?{urlencode(request)}", allow_redirects=False) as shown:
            if shown.status == 400:
                raise TokenRequestFailed(f"the authorization server refused the sign-in request: "
                                         f"{_page_text(await shown.text())}")
            location = shown.headers.get("Location") if shown.status == 302 else None
        if location is None:  # the login form: submit it, as the user would
            form = request + [("username", username), ("password", password)]
            async with session.post(endpoint, data=form, allow_redirects=False) as submitted:
                if submitted.status == 200:
                    raise TokenRequestFailed(f"sign-in failed for {username!r}: wrong username or password",
                                             error="access_denied")
                location = submitted.headers.get("Location")
                if submitted.status != 302 or not location:
                    raise TokenRequestFailed(f"unexpected answer {submitted.status} from {endpoint}")
        if not location.startswith(loopback.uri):
            raise TokenRequestFailed(f"the authorization server redirected to {location!r}, not to {loopback.uri}")
        async with session.get(location) as _:  # follow the redirect to our own listener
            pass
        answer = await asyncio.wait_for(loopback.result, 10)
        if answer.get("state") != state:
            raise TokenRequestFailed("the authorization response carries another state: refusing it (CSRF?)")
        if "iss" in answer and answer["iss"] != issuer:  # RFC 9207: mix-up defence
            raise TokenRequestFailed(f"the authorization response comes from issuer {answer['iss']!r}")
        if "error" in answer:
            raise TokenRequestFailed(f"sign-in refused: {answer['error']}: {answer.get('error_description', '')}",
                                     error=answer["error"], description=answer.get("error_description"))
        exchange = [("grant_type", "authorization_code"), ("code", answer.get("code", "")),
                    ("redirect_uri", loopback.uri), ("client_id", client_id), ("code_verifier", verifier)]
        return await _token(session, metadata["token_endpoint"], exchange)


def _page_text(page: str) -> str:
    """The sentence of our error page, without its markup."""
    paragraphs = re.findall(r"<p>(.*?)</p>", page)
    return html.unescape(paragraphs[0]) if paragraphs else page[:200]
