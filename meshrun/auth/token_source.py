"""ClientCredentialsTokenSource: machine tokens for service-to-service calls (RFC 6749 §4.4), cached and shared.

One token is kept until shortly before it expires; however many callers ask at once, one request goes out.
Not a general OAuth client: no user flows here (see `meshrun.auth.login` for those).
"""
from __future__ import annotations

import asyncio
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import orjson

from meshrun.errors import TokenRequestFailed


def basic_credentials(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: both halves form-urlencoded, then joined and base64-encoded."""
    return "Basic " + b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()


async def request_token(session: aiohttp.ClientSession, token_url: str, form: dict[str, str] | list[tuple[str, str]],
                        authorization: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """POST a token request: the RFC 6749 §5.1 body, or TokenRequestFailed saying what the server answered.

    A server that cannot be reached raises what aiohttp raises (aiohttp.ClientError, TimeoutError): callers
    already treat those as transient, like any other call to another service.
    """
    headers = {"Accept": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    async with session.post(token_url, data=form, headers=headers, allow_redirects=False,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        raw = await response.read()
        status = response.status
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        detail = f"{error}: {description}" if error else raw[:200].decode("utf-8", "replace")
        raise TokenRequestFailed(f"token request to {token_url} refused ({status}): {detail}", error=error,
                                 description=description, status=status)
    return body


class ClientCredentialsTokenSource:
    """Access tokens for one client, for calls to other services.

        tokens = ClientCredentialsTokenSource(ctx.issuer + "/oauth2/token", "notification-service", secret,
                                              "users.notify", session=lambda: ctx.http, resource="users")
        async with tokens.authorized("GET", url) as response: ...   # retried once with a new token on 401

    `resource` (RFC 8707) picks one of the client's audiences; without it the token is for all of them.
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None,
                 session: Callable[[], aiohttp.ClientSession], resource: str | None = None, *,
                 refresh_margin: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self.resource = resource
        self.session = session
        self.refresh_margin = refresh_margin
        self.clock = clock
        self.fetched = 0
        self._authorization = basic_credentials(client_id, client_secret)
        self._token: str | None = None
        self._renew_at = 0.0
        self._pending: asyncio.Future[str] | None = None

    async def token(self) -> str:
        """A valid access token: the cached one, or a new one (one request however many callers wait).

        Raises TokenRequestFailed if the issuer refuses (`.error`, `.status`; a 5xx `.status` is worth a retry),
        aiohttp.ClientError or TimeoutError if it cannot be reached.
        """
        if self._token is not None and self.clock() < self._renew_at:
            return self._token
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._fetch())
            self._pending.add_done_callback(self._settled)
        return await asyncio.shield(self._pending)

    def invalidate(self, token: str) -> None:
        """Forget `token` (a resource server refused it with 401); the next `token()` asks for a new one. A caller
        holding an older token than the current one changes nothing, so many 401s cause one new request."""
        if token == self._token:
            self._token = None

    @asynccontextmanager
    async def authorized(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request with the bearer token; on 401, once more with a fresh token."""
        headers = dict(kwargs.pop("headers", None) or {})
        for attempt in (1, 2):
            token = await self.token()
            headers["Authorization"] = f"Bearer {token}"
            response = await self.session().request(method, url, headers=headers, **kwargs)
            if response.status == 401 and attempt == 1:
                response.release()
                self.invalidate(token)
                continue
            try:
                yield response
            finally:
                response.release()
            return

    async def _fetch(self) -> str:
        form = [("grant_type", "client_credentials")]
        if self.scope:
            form.append(("scope", self.scope))
        if self.resource:
            form.append(("resource", self.resource))
        self.fetched += 1
        started = self.clock()
        body = await request_token(self.session(), self.token_url, form, self._authorization)
        token = str(body["access_token"])
        lifetime = body.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 60.0
        # Renew ahead of expiry, by the margin or a fifth of a short lifetime, counted from when we asked.
        self._renew_at = started + lifetime - min(self.refresh_margin, lifetime / 5)
        self._token = token
        return token

    def _settled(self, future: asyncio.Future[str]) -> None:
        self._pending = None
        if not future.cancelled():
            future.exception()  # seen by the callers awaiting it; don't warn "never retrieved"
