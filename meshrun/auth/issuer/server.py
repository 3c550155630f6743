"""AuthorizationServer: the issuer's state and operations, one method per endpoint, without HTTP.

`meshrun.services.auth` maps requests onto it; tests may drive it directly. `clock` is an attribute so a test can
move time forward instead of sleeping.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshrun.auth.claims import Claims
from meshrun.auth.hashing import SecretChecker, SecretHash, decoy
from meshrun.auth.issuer.authorize import AuthorizationRequest, parse_authorization_request
from meshrun.auth.issuer.clients import ClientAuthenticator
from meshrun.auth.issuer.codes import AuthorizationCode, AuthorizationCodes
from meshrun.auth.issuer.csrf import LoginCsrf
from meshrun.auth.issuer.failures import MemoryFailureStore
from meshrun.auth.issuer.grants import grant
from meshrun.auth.issuer.params import Params
from meshrun.auth.issuer.refresh import RefreshFamily, RefreshTokens
from meshrun.auth.issuer.settings import GRANT_TYPES, AuthSettings, Client, with_identities_file
from meshrun.auth.issuer.throttle import Throttle
from meshrun.auth.issuer.tokens import AccessTokens
from meshrun.auth.keys import RETENTION_MARGIN, KeyRing, KeyStore
from meshrun.errors import SettingsError


@dataclass(frozen=True, slots=True)
class LoginResult:
    """How a sign-in went: the redirect carrying a new code, or None for a wrong user name or password, with the
    seconds this name must then wait before it is tried again from this address (0: it need not)."""

    location: str | None
    wait: int = 0


def can_see(client: Client, claims: Claims) -> bool:
    """RFC 7662 §4: a client may introspect its own tokens, and those of the resource servers it speaks for."""
    return claims.client_id == client.client_id or not set(claims.aud).isdisjoint(client.introspect_audiences)


class AuthorizationServer:
    """Clients, users, keys, codes and refresh-token families of one issuer process."""

    def __init__(self, issuer: str, settings: AuthSettings, keys: KeyRing, checker: SecretChecker, *,
                 csrf_secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer.rstrip("/")
        self.settings = settings
        self.keys = keys
        self.checker = checker
        self.clock = clock
        self.clients = {c.client_id: c for c in settings.clients}
        self.users = {u.username: u for u in settings.users}
        # An unknown name is checked against a hash as slow as the real users' (the settings allow one cost).
        self.decoy = decoy(settings.users[0].password_hash.cost) if settings.users else decoy()
        failures = MemoryFailureStore(settings.throttle.forget_after)
        self.login_throttle = Throttle(failures, settings.throttle, "login", clock=lambda: self.clock())
        self.client_throttle = Throttle(failures, settings.throttle, "client", clock=lambda: self.clock())
        self.authenticator = ClientAuthenticator(self.clients, checker, self.client_throttle)
        self.csrf = LoginCsrf(csrf_secret, secure=self.issuer.startswith("https://"))
        self.codes = AuthorizationCodes(settings.authorization_code_ttl)
        self.refresh = RefreshTokens(settings.refresh_token_ttl)
        self.tokens = AccessTokens(self.issuer, keys, settings.access_token_ttl, clock=lambda: self.clock())

    @classmethod
    async def start(cls, issuer: str, settings: AuthSettings, base_dir: Path, *,
                    clock: Callable[[], float] = time.time) -> AuthorizationServer:
        """Read the identities file, load (or on first start create) the keys, hash secrets given by environment
        variables: the slow parts run in threads, off the event loop."""
        settings = with_identities_file(settings, base_dir)
        store = KeyStore(base_dir / settings.keys_dir)
        keys = KeyRing(store, settings.access_token_ttl + RETENTION_MARGIN)
        await asyncio.to_thread(keys.load, settings.signing_alg)
        csrf_secret = await asyncio.to_thread(store.shared_secret, "csrf")
        checker = SecretChecker(max_pending=settings.throttle.hash_queue)
        hashes: dict[str, SecretHash] = {}
        for client in settings.clients:
            secret = _given_secret(client, base_dir)
            if secret is not None:  # hashed at once; the plaintext goes out of scope here
                hashes[client.client_id] = await checker.hash(secret)
            elif client.secret_hash is not None:
                hashes[client.client_id] = client.secret_hash
            elif client.confidential:  # never let a confidential client turn public for want of its secret
                problem = (f"client {client.client_id!r}: environment variable {client.secret_env} is empty and "
                           "there is no secret_file or secret_hash")
                raise SettingsError([problem])
        settings = replace(settings, clients=tuple(replace(c, secret_env=None, secret_file=None,
                                                           secret_hash=hashes.get(c.client_id))
                                                   for c in settings.clients))
        return cls(issuer, settings, keys, checker, csrf_secret=csrf_secret, clock=clock)

    def close(self) -> None:
        self.checker.close()

    # -- token endpoint (RFC 6749 §3.2) ------------------------------------------------------------------------
    async def token(self, params: Params, authorization: str | None, address: str) -> dict[str, Any]:
        client = await self.authenticator.authenticate(authorization, params, address=address)
        return await grant(self, client, params)

    # -- authorization endpoint (RFC 6749 §3.1) ----------------------------------------------------------------
    def authorization_request(self, params: Params) -> AuthorizationRequest:
        return parse_authorization_request(params, self.clients, self.issuer)

    async def login(self, request: AuthorizationRequest, username: str, password: str, address: str
                    ) -> LoginResult:
        """Check the password (same cost for unknown users) unless this name or address must wait first.
        Raises Throttled (429) or HashQueueFull (503) without checking anything."""
        attempt = await self.login_throttle.admit(username, address)
        user = self.users.get(username)
        try:
            matched = await self.checker.matches(user.password_hash if user else self.decoy, password,
                                                 suspect=attempt.suspect)
        except BaseException:
            attempt.abandoned()
            raise
        if user is None or not matched:
            return LoginResult(None, await attempt.failed())
        await attempt.succeeded()
        now = self.clock()
        code = self.codes.issue(AuthorizationCode(
            client_id=request.client.client_id, redirect_uri=request.redirect_uri if request.redirect_uri_given
            else None, username=user.username, scope=request.scope, audiences=request.audiences,
            code_challenge=request.code_challenge, auth_time=int(now),
            expires_at=now + self.settings.authorization_code_ttl))
        return LoginResult(request.success(code, self.issuer))

    # -- introspection (RFC 7662) and revocation (RFC 7009) ----------------------------------------------------
    async def introspect(self, params: Params, authorization: str | None, address: str) -> dict[str, Any]:
        """RFC 7662. Tokens the caller may not see (another client's, for another audience) are `active: false`,
        as unknown ones: introspection must not tell a client which strings are live tokens (§4)."""
        client = await self.authenticator.authenticate(authorization, params, address=address, allow_public=False)
        token = params.require("token")
        order = ("refresh", "access") if params.get("token_type_hint") == "refresh_token" else ("access", "refresh")
        for kind in order:
            if kind == "access" and (claims := self.tokens.check(token)) is not None and can_see(client, claims):
                body = {"active": True, "token_type": "Bearer", **claims.raw}
                if "auth_time" in claims.raw:
                    body["username"] = claims.sub
                return body
            if kind == "refresh" and (family := self.refresh.find(token)) is not None \
                    and family.client_id == client.client_id and self.refresh.is_current(token, family, self.clock()):
                return {"active": True, "token_type": "refresh_token", "iss": self.issuer, "sub": family.username,
                        "username": family.username, "client_id": family.client_id,
                        "scope": " ".join(sorted(family.scope)), "exp": int(family.expires_at),
                        "iat": family.auth_time}
        return {"active": False}

    async def revoke(self, params: Params, authorization: str | None, address: str) -> None:
        """Revoke an access token (remembered until it expires) or a refresh token (its whole family).
        Unknown tokens are not an error (RFC 7009 §2.2); another client's token is answered the same, and left
        alone: a different answer would tell the caller which strings are live tokens."""
        client = await self.authenticator.authenticate(authorization, params, address=address)
        token = params.require("token")
        now = self.clock()
        claims = self.tokens.signed_by_us(token)
        if claims is not None:
            if claims.client_id == client.client_id:
                self.tokens.revoke(claims.jti, claims.exp, now)
            return
        family = self.refresh.find(token)
        if family is not None and family.client_id == client.client_id:
            self.revoke_family(family, now)

    def revoke_family(self, family: RefreshFamily, now: float) -> None:
        family.revoked = True
        for jti, exp in family.access_jtis.items():
            self.tokens.revoke(jti, exp, now)

    def revoke_code(self, code: AuthorizationCode, now: float) -> None:
        """A replayed code: revoke the tokens its first exchange produced (RFC 6749 §4.1.2)."""
        for jti, exp in code.access_jtis.items():
            self.tokens.revoke(jti, exp, now)
        if code.family_id is not None and (family := self.refresh.family(code.family_id)) is not None:
            self.revoke_family(family, now)

    # -- discovery -------------------------------------------------------------------------------------------
    def jwks_headers(self) -> dict[str, str]:
        """Resource servers refetch the JWKS after this max-age: a rotated-in key is published longer than that
        before it signs (`key_activation_delay`)."""
        return {"Cache-Control": f"public, max-age={self.settings.jwks_max_age}"}

    def jwks(self) -> dict[str, Any]:
        return self.keys.jwks(self.clock())

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization server metadata (also served as /.well-known/openid-configuration)."""
        base = self.issuer
        auth_methods = ["client_secret_basic", "client_secret_post"]
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/oauth2/authorize",
            "token_endpoint": f"{base}/oauth2/token",
            "jwks_uri": f"{base}/oauth2/jwks",
            "introspection_endpoint": f"{base}/oauth2/introspect",
            "revocation_endpoint": f"{base}/oauth2/revoke",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES),
            "token_endpoint_auth_methods_supported": auth_methods + ["none"],
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods + ["none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": sorted({s for c in self.clients.values() for s in c.scopes}),
            "authorization_response_iss_parameter_supported": True,
            "subject_types_supported": ["public"],
        }


def _given_secret(client: Client, base_dir: Path) -> str | None:
    """A client's secret from its environment variable, else from its file (relative to services.toml's
    directory; the first line, without its line break), else None. The environment wins over the file."""
    if client.secret_env and os.environ.get(client.secret_env):
        return os.environ[client.secret_env]
    if client.secret_file is None:
        return None
    path = base_dir / client.secret_file
    try:
        secret = path.read_text("utf-8").splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise SettingsError([f"client {client.client_id!r}: secret_file {path}: cannot read it ({exc})"]) from None
    if not secret:
        raise SettingsError([f"client {client.client_id!r}: secret_file {path} is empty"])
    return secret
