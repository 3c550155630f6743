"""A resource server's copy of the issuer's public keys: found through RFC 8414 metadata, fetched, kept fresh.

Fetching only; verifying tokens with the keys is `verify`'s job. One fetch runs at a time, whoever asks.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog

from meshrun.auth.verify import VerificationKey, keys_from_jwks
from meshrun.errors import AuthError
from meshrun.tls import cleartext_problem

MAX_DOCUMENT_BYTES = 256 * 1024
# The issuer's max-age is honoured down to this: an issuer announcing 0 must not turn into a fetch per request.
MIN_MAX_AGE = 1.0
_MAX_AGE = re.compile(r"max-age=(\d+)")
log = structlog.get_logger("meshrun.auth.jwks")


class JwksUnavailable(AuthError):
    """The issuer's metadata or JWKS could not be fetched or used; the message is a sentence for /ready."""


class JwksCache:
    """Keeps the issuer's signature keys and hands every new set to `on_keys`.

    - `refresh()` fetches now (joining a fetch already running).
    - `refetch_for_unknown_kid()` fetches for a token naming a key we lack, at most once per `refetch_interval`
      seconds, so a stream of tokens with made-up key ids cannot turn into a stream of requests to the issuer.
    - `refresh_in_background()` renews the set after the `max-age` the issuer sent (how new keys arrive before they
      sign, and removed keys disappear), without making any request wait; if the issuer is down, the keys we have
      stay in use. Made-up key ids cannot delay it: it has a schedule of its own.

    The issuer and the JWKS must be https, or http on a loopback host, unless `allow_cleartext` (a TLS proxy).
    """

    def __init__(self, issuer: str, session: Callable[[], aiohttp.ClientSession],
                 on_keys: Callable[[dict[str, VerificationKey]], None], *, refetch_interval: float = 5.0,
                 default_max_age: float = 300.0, timeout: float = 5.0, allow_cleartext: bool = False,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.issuer = issuer.rstrip("/")
        self.allow_cleartext = allow_cleartext
        self.session = session
        self.on_keys = on_keys
        self.refetch_interval = refetch_interval
        self.default_max_age = default_max_age
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.monotonic = monotonic
        self.jwks_uri: str | None = None
        self.fetched_at: float | None = None
        self.fetches = 0
        self.last_error: str | None = None
        self._max_age = default_max_age
        self._next_background = float("-inf")
        self._last_unknown_kid_fetch = float("-inf")
        self._inflight: asyncio.Task[None] | None = None

    def stale(self) -> bool:
        return self.fetched_at is None or self.monotonic() - self.fetched_at >= self._max_age

    async def refresh(self) -> None:
        """Fetch the keys now; raises JwksUnavailable with a sentence saying what failed."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight.add_done_callback(_retrieve)
        await asyncio.shield(self._inflight)

    async def refetch_for_unknown_kid(self) -> None:
        """Refetch because a token names an unknown key, unless one such refetch ran in the last interval; a fetch
        already under way (the scheduled one, say) is waited for either way, since it may bring the key."""
        now = self.monotonic()
        if now - self._last_unknown_kid_fetch < self.refetch_interval:
            if self._inflight is not None and not self._inflight.done():
                try:
                    await asyncio.shield(self._inflight)
                except JwksUnavailable:
                    pass
            return
        self._last_unknown_kid_fetch = now
        try:
            await self.refresh()
        except JwksUnavailable:
            pass  # logged by _fetch; the token is then refused as signed by an unknown key

    def refresh_in_background(self) -> None:
        now = self.monotonic()
        if now < self._next_background or (self._inflight is not None and not self._inflight.done()):
            return
        self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        self._inflight.add_done_callback(_retrieve)

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            if self.jwks_uri is None:
                self.jwks_uri = await self._discover()
            document, max_age = await self._get(self.jwks_uri)
            try:
                keys, skipped = keys_from_jwks(document)
            except ValueError as exc:
                raise JwksUnavailable(f"issuer {self.issuer} serves an invalid JWKS at {self.jwks_uri}: {exc}")
            if not keys:
                raise JwksUnavailable(f"issuer {self.issuer}'s JWKS at {self.jwks_uri} has no usable signature "
                                      f"key ({'; '.join(skipped) or 'it is empty'})")
        except JwksUnavailable as exc:
            self.last_error = str(exc)
            self._next_background = self.monotonic() + self.refetch_interval  # not a fetch per request while down
            log.warning("jwks_fetch_failed", issuer=self.issuer, problem=str(exc))
            raise
        if skipped:
            log.warning("jwks_keys_skipped", issuer=self.issuer, skipped=skipped)
        self.on_keys(keys)
        self.fetched_at = self.monotonic()
        self._max_age = max_age
        self.last_error = None
        log.debug("jwks_fetched", issuer=self.issuer, kids=sorted(keys), max_age=max_age)

    async def _discover(self) -> str:
        """RFC 8414 §3: the metadata names the JWKS; its `issuer` must be exactly the one we trust (§3.3)."""
        url = f"{self.issuer}/.well-known/oauth-authorization-server"
        self._require_tls(self.issuer, "the issuer")
        metadata, _ = await self._get(url)
        if not isinstance(metadata, dict) or metadata.get("issuer") != self.issuer:
            found = metadata.get("issuer") if isinstance(metadata, dict) else None
            raise JwksUnavailable(f"metadata at {url} names issuer {found!r}, not {self.issuer!r}: check "
                                  "[mesh] issuer in services.toml")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise JwksUnavailable(f"metadata at {url} has no jwks_uri")
        self._require_tls(jwks_uri, "the jwks_uri of the issuer's metadata,")
        return jwks_uri

    def _require_tls(self, url: str, what: str) -> None:
        # Keys fetched in cleartext could be swapped on the way: whoever did so could mint accepted tokens.
        problem = None if self.allow_cleartext else cleartext_problem(url, what)
        if problem:
            raise JwksUnavailable(problem)

    async def _get(self, url: str) -> tuple[Any, float]:
        try:
            async with self.session().get(url, timeout=self.timeout, allow_redirects=False) as response:
                body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                if response.status != 200:
                    raise JwksUnavailable(f"issuer {self.issuer} answered {response.status} for {url}")
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise JwksUnavailable(f"{url} returned more than {MAX_DOCUMENT_BYTES} bytes")
                match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
            raise JwksUnavailable(f"issuer {self.issuer} is unreachable ({reason}) while fetching {url}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksUnavailable(f"{url} did not return JSON") from None
        max_age = float(match[1]) if match else self.default_max_age
        return document, min(max(max_age, MIN_MAX_AGE), 3600.0)

    async def close(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            try:
                await self._inflight
            except (asyncio.CancelledError, JwksUnavailable):
                pass


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a failed background fetch's exception as seen (it was logged already)."""
    if not task.cancelled():
        task.exception()
