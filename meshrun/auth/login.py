"""Getting tokens from a terminal: client_credentials, and a person's login through the authorization code flow
with PKCE and a loopback redirect (RFC 8252), driven here instead of in a browser.

The flows the `meshrun token` command runs; the command itself only parses flags and prints. Like a careful
browser, they keep the sign-in cookie, send the form's CSRF token back, and check `state` and `iss` (RFC 9207).
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
from meshrun.tls import cleartext_problem

_CSRF_FIELD = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]*)">')


async def discover(session: aiohttp.ClientSession, issuer: str, *, allow_cleartext: bool = False
                   ) -> dict[str, Any]:
    """The issuer's RFC 8414 metadata; its `issuer` must be the one asked for (§3.3), and the endpoints we send
    passwords and secrets to must be https or loopback (unless `allow_cleartext`: a TLS proxy encrypts)."""
    url = f"{issuer.rstrip('/')}/.well-known/oauth-authorization-server"
    _require_tls(issuer, "the issuer", allow_cleartext)
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
    for endpoint in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(metadata.get(endpoint), str):
            raise TokenRequestFailed(f"the metadata at {url} has no {endpoint}")
        _require_tls(metadata[endpoint], f"the {endpoint}", allow_cleartext)
    return metadata


def _require_tls(url: str, what: str, allow_cleartext: bool) -> None:
    problem = None if allow_cleartext else cleartext_problem(url, what)
    if problem:
        raise TokenRequestFailed(f"refusing to send credentials: {problem}")


async def _token(session: aiohttp.ClientSession, url: str, form: list[tuple[str, str]],
                 authorization: str | None = None) -> dict[str, Any]:
    try:
        return await request_token(session, url, form, authorization)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TokenRequestFailed(f"cannot reach the token endpoint {url} ({type(exc).__name__}: {exc}); is the "
                                 "auth service running?") from None


async def client_credentials(issuer: str, client_id: str, secret: str, scope: str | None = None,
                             resources: tuple[str, ...] = (), *, allow_cleartext: bool = False) -> dict[str, Any]:
    """A machine token for `client_id`: the token endpoint's response body."""
    async with aiohttp.ClientSession() as session:
        metadata = await discover(session, issuer, allow_cleartext=allow_cleartext)
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
                     scope: str | None = None, resources: tuple[str, ...] = (), allow_cleartext: bool = False
                     ) -> dict[str, Any]:
    """Sign `username` in as a browser would (authorization request, login form, redirect to a loopback port),
    then exchange the code with the PKCE verifier. Returns the token response (with a refresh token)."""
    issuer = issuer.rstrip("/")
    # The sign-in cookie must be kept even for an IP-address host such as 127.0.0.1 (hence unsafe=True).
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session, _LoopbackRedirect() as loopback:
        metadata = await discover(session, issuer, allow_cleartext=allow_cleartext)
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
            page = await shown.text() if location is None else ""
        if location is None:  # the login form: submit it, as the user would
            csrf = _CSRF_FIELD.search(page)
            form = request + [("username", username), ("password", password)]
            form += [("csrf_token", html.unescape(csrf[1]))] if csrf else []
            async with session.post(endpoint, data=form, allow_redirects=False) as submitted:
                if submitted.status != 302:
                    raise _sign_in_refused(submitted.status, submitted.headers.get("Retry-After"), username,
                                           _page_text(await submitted.text(), "error"))
                location = submitted.headers.get("Location")
                if not location:
                    raise TokenRequestFailed(f"unexpected answer {submitted.status} from {endpoint}")
        if not location.startswith(loopback.uri):
            raise TokenRequestFailed(f"the authorization server redirected to {location!r}, not to {loopback.uri}")
        async with session.get(location) as _:  # follow the redirect to our own listener
            pass
        answer = await asyncio.wait_for(loopback.result, 10)
        if answer.get("state") != state:
            raise TokenRequestFailed("the authorization response carries another state: refusing it (CSRF?)")
        # RFC 9207 §2.4: an issuer that advertises `iss` must send it, and it must be the issuer we asked; a missing
        # or different one means the response may come from another server (a mix-up attack).
        if metadata.get("authorization_response_iss_parameter_supported") is True and "iss" not in answer:
            raise TokenRequestFailed(f"the authorization response has no iss although {issuer} advertises it "
                                     "(RFC 9207): refusing it")
        if "iss" in answer and answer["iss"] != issuer:
            raise TokenRequestFailed(f"the authorization response comes from issuer {answer['iss']!r}, not "
                                     f"{issuer}: refusing it (RFC 9207)")
        if "error" in answer:
            raise TokenRequestFailed(f"sign-in refused: {answer['error']}: {answer.get('error_description', '')}",
                                     error=answer["error"], description=answer.get("error_description"))
        exchange = [("grant_type", "authorization_code"), ("code", answer.get("code", "")),
                    ("redirect_uri", loopback.uri), ("client_id", client_id), ("code_verifier", verifier)]
        return await _token(session, metadata["token_endpoint"], exchange)


def _sign_in_refused(status: int, retry_after: str | None, username: str, said: str) -> TokenRequestFailed:
    """What the login page answered instead of a redirect, as an error a person can act on."""
    if status == 200:
        detail = said.replace("Wrong username or password.", "").strip()
        return TokenRequestFailed(f"sign-in failed for {username!r}: wrong username or password"
                                  + (f" ({detail})" if detail else ""), error="access_denied", status=status)
    if status in (429, 503):
        return TokenRequestFailed(f"sign-in refused for {username!r}: {said} (Retry-After: {retry_after} s)",
                                  error="temporarily_unavailable", status=status)
    return TokenRequestFailed(f"sign-in refused ({status}): {said}", status=status)


def _page_text(page: str, css_class: str | None = None) -> str:
    """The sentence of our error page (or the login form's error line), without its markup."""
    pattern = r'<p class="error" role="alert">(.*?)</p>' if css_class else r"<p>(.*?)</p>"
    paragraphs = re.findall(pattern, page)
    return html.unescape(paragraphs[0]) if paragraphs else ("" if css_class else page[:200])
