"""BearerGuard: how a resource server checks the `Authorization: Bearer` token of a request (RFC 6750).

The runtime builds one per service with authenticated routes; the checks themselves are `verify.TokenVerifier`'s.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import aiohttp
import orjson
from aiohttp import web

from meshrun.auth.claims import Claims
from meshrun.auth.jwks import JwksCache, JwksUnavailable
from meshrun.auth.verify import (
    DEFAULT_PROFILES,
    InsufficientScope,
    InvalidToken,
    TokenVerifier,
    UnknownSigningKey,
)

__all__ = ["BearerGuard", "Claims"]


def _json(body: dict[str, str]) -> str:
    return orjson.dumps(body).decode()


def _quoted(text: str) -> str:
    """RFC 6750 §3: error_description is ASCII without quote or backslash."""
    return "".join(c if " " <= c <= "~" and c not in "\"\\" else "?" for c in text)


class BearerGuard:
    """Verifies bearer tokens for one audience against the issuer's JWKS (fetched, cached, refreshed).

    `token_typ` names the token profiles accepted: ("at+jwt",) unless the service declares others (("JWT",)
    behind Spring Authorization Server, whose tokens carry no typ).

    `authorize` is the HTTP face (raises aiohttp 401/403 with RFC 6750 headers and a JSON body); `verify` is the
    same check without aiohttp, for unit tests and benchmarks. Tokens are remembered once verified (see
    TokenVerifier), so a repeated token costs microseconds.
    """

    def __init__(self, issuer: str, audience: str, session: Callable[[], aiohttp.ClientSession], *,
                 clock: Callable[[], float] = time.time, leeway: float = 5.0, cache_size: int = 10_000,
                 refetch_interval: float = 5.0, allow_cleartext: bool = False,
                 token_typ: tuple[str, ...] = DEFAULT_PROFILES) -> None:
        self.issuer = issuer.rstrip("/")
        self.audience = audience
        self.verifier = TokenVerifier(self.issuer, audience, clock=clock, leeway=leeway, cache_size=cache_size,
                                      token_typ=token_typ)
        self.jwks = JwksCache(self.issuer, session, self.verifier.set_keys, refetch_interval=refetch_interval,
                              allow_cleartext=allow_cleartext)
        self._realm = f'Bearer realm="{_quoted(audience)}"'

    @property
    def clock(self) -> Callable[[], float]:
        return self.verifier.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.verifier.clock = clock

    def verify(self, token: str, scope: str | None = None) -> Claims:
        """Check a token with the keys fetched so far: the claims, or InvalidToken / InsufficientScope."""
        return self.verifier.verify(token, scope)

    async def authorize(self, request: web.Request, scope: str | None) -> Claims:
        """The claims of the request's bearer token if it is valid here and has `scope`; else 401/403 (or 503
        while the issuer's keys have never been fetched)."""
        header = request.headers.get("Authorization")
        if header is None or header[:7].lower() != "bearer ":
            # RFC 6750 §3.1: a request without bearer credentials gets a challenge with no error code.
            raise self._unauthorized("no bearer token: send 'Authorization: Bearer <access token>' (get one with "
                                     "`meshrun token`)", challenge_error=False)
        token = header[7:].strip()
        if self.jwks.stale():
            self.jwks.refresh_in_background()
        try:
            try:
                return self.verifier.verify(token, scope)
            except UnknownSigningKey:
                await self.jwks.refetch_for_unknown_kid()  # a rotation: the issuer may have a new key
                if not self.verifier.keys:
                    raise self._unavailable()
                return self.verifier.verify(token, scope)
        except InvalidToken as exc:
            raise self._unauthorized(exc.description) from None
        except InsufficientScope as exc:
            raise self._forbidden(exc) from None

    async def ready(self) -> str | None:
        """None once the issuer's keys have been fetched; otherwise try now and say why it failed."""
        if self.jwks.fetched_at is not None:
            return None
        try:
            await self.jwks.refresh()
        except JwksUnavailable as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        await self.jwks.close()

    def _unauthorized(self, description: str, *, challenge_error: bool = True) -> web.HTTPUnauthorized:
        challenge = self._realm
        if challenge_error:
            challenge += f', error="invalid_token", error_description="{_quoted(description)}"'
        return web.HTTPUnauthorized(headers={"WWW-Authenticate": challenge}, content_type="application/json",
                                    text=_json({"error": "invalid_token", "error_description": description}))

    def _forbidden(self, exc: InsufficientScope) -> web.HTTPForbidden:
        challenge = (f'{self._realm}, error="insufficient_scope", error_description="{_quoted(exc.description)}", '
                     f'scope="{_quoted(exc.scope)}"')
        return web.HTTPForbidden(headers={"WWW-Authenticate": challenge}, content_type="application/json",
                                 text=_json({"error": "insufficient_scope", "error_description": exc.description,
                                                    "scope": exc.scope}))

    def _unavailable(self) -> web.HTTPServiceUnavailable:
        description = (f"cannot verify tokens yet: {self.jwks.last_error or 'the issuer keys are not fetched'}")
        return web.HTTPServiceUnavailable(headers={"Retry-After": "5"}, content_type="application/json",
                                          text=_json({"error": "temporarily_unavailable",
                                                             "error_description": description}))
