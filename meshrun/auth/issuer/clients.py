"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3).

`client_secret_basic`, `client_secret_post`, and public clients (`none`, client_id only) where allowed. Failed
authentications are throttled per client id and address; credentials verified recently skip both hash and throttle.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from urllib.parse import unquote_plus

from meshrun.auth.hashing import SecretChecker, SecretHash
from meshrun.auth.issuer.errors import invalid_client, invalid_request
from meshrun.auth.issuer.params import Params
from meshrun.auth.issuer.settings import Client
from meshrun.auth.issuer.throttle import Throttle

_FAILED = "client authentication failed: unknown client_id or wrong client_secret"


class VerifiedCredentials:
    """Client credentials that passed the slow hash recently, so a busy client is not re-hashed per request.

    Keyed by HMAC-SHA256(per-process random key, client_id NUL secret): the plaintext secret is never kept, and
    the keys are useless outside this process. Entries live `ttl` seconds; only successes are remembered. An hour:
    secrets change only with a restart, which forgets them, and a client that refreshes its token every few
    minutes then never meets the throttle that an attacker at its address may have set off.
    """

    def __init__(self, ttl: float = 3600.0, max_entries: int = 4096,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.monotonic = monotonic
        self._key = os.urandom(32)
        self._entries: dict[bytes, float] = {}

    def fingerprint(self, client_id: str, secret: str) -> bytes:
        return hmac.new(self._key, f"{client_id}\0{secret}".encode(), hashlib.sha256).digest()

    def __contains__(self, fingerprint: bytes) -> bool:
        expires = self._entries.get(fingerprint)
        return expires is not None and self.monotonic() < expires

    def add(self, fingerprint: bytes) -> None:
        now = self.monotonic()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: e for k, e in self._entries.items() if e > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[fingerprint] = now + self.ttl


class ClientAuthenticator:
    """Finds out which registered client sent a request, checking its secret when it is a confidential one."""

    def __init__(self, clients: dict[str, Client], checker: SecretChecker, throttle: Throttle,
                 verified: VerifiedCredentials | None = None) -> None:
        self.clients = clients
        self.checker = checker
        self.throttle = throttle
        self.verified = verified or VerifiedCredentials()
        self._checking: dict[bytes, asyncio.Future[bool]] = {}

    async def authenticate(self, authorization: str | None, params: Params, *, address: str,
                           allow_public: bool = True) -> Client:
        """The client that sent the request; raises OAuthError (invalid_client...), Throttled or HashQueueFull."""
        client_id, secret = _credentials(authorization, params)
        client = self.clients.get(client_id)
        if client is None:
            # No hash to spend, but counted: probing for client ids from one address is throttled too.
            await (await self.throttle.admit(client_id, address)).failed()
            raise invalid_client(_FAILED)
        if secret is None:
            if client.confidential:
                raise invalid_client(f"client {client_id!r} is confidential: authenticate with client_secret_basic "
                                     "(HTTP Basic) or client_secret_post")
            if not allow_public:
                raise invalid_client("this endpoint needs client authentication: public clients cannot use it")
            return client
        hashed = client.secret_hash
        if hashed is None:
            raise invalid_client(f"client {client_id!r} is public: it has no secret; send only client_id")
        if not await self._secret_matches(client_id, secret, hashed, address):
            raise invalid_client(_FAILED)
        return client

    async def _secret_matches(self, client_id: str, secret: str, hashed: SecretHash, address: str) -> bool:
        fingerprint = self.verified.fingerprint(client_id, secret)
        if fingerprint in self.verified:
            return True  # known good: costs no hash, and an attacker next door must not lock the client out
        pending = self._checking.get(fingerprint)
        if pending is None:  # many concurrent requests with the same credentials hash them once, counted once
            pending = asyncio.ensure_future(self._check(client_id, secret, hashed, address))
            self._checking[fingerprint] = pending
            pending.add_done_callback(lambda _: self._checking.pop(fingerprint, None))
        matched = await asyncio.shield(pending)
        if matched:
            self.verified.add(fingerprint)
        return matched

    async def _check(self, client_id: str, secret: str, hashed: SecretHash, address: str) -> bool:
        attempt = await self.throttle.admit(client_id, address)
        try:
            matched = await self.checker.matches(hashed, secret, suspect=attempt.suspect)
        except BaseException:
            attempt.abandoned()
            raise
        if matched:
            await attempt.succeeded()
        else:
            await attempt.failed()
        return matched


def _credentials(authorization: str | None, params: Params) -> tuple[str, str | None]:
    """(client_id, secret or None) from the Authorization header or the form; both at once is invalid_request."""
    form_id, form_secret = params.get("client_id"), params.get("client_secret")
    if authorization is not None:
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise invalid_client("unsupported Authorization scheme at this endpoint: use HTTP Basic with "
                                 "client_id:client_secret")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_client("malformed HTTP Basic credentials") from None
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            raise invalid_client("malformed HTTP Basic credentials: expected client_id:client_secret")
        # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if form_secret is not None:
            raise invalid_request("use one client authentication method: HTTP Basic or client_secret in the body")
        if form_id is not None and form_id != client_id:
            raise invalid_request("client_id in the body differs from the one in HTTP Basic")
        return client_id, secret
    if form_id is None:
        raise invalid_client("no client authentication: send HTTP Basic credentials, or client_id (and "
                             "client_secret for a confidential client)")
    return form_id, form_secret
