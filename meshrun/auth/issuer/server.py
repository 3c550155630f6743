"""AuthorizationServer: the issuer's state and operations, one method per endpoint, without HTTP.

`meshrun.services.auth` maps requests onto it; tests may drive it directly. `clock` is an attribute so a test can
move time forward instead of sleeping.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshrun.auth.hashing import SecretChecker, SecretHash, decoy
from meshrun.auth.issuer.authorize import AuthorizationRequest, parse_authorization_request
from meshrun.auth.issuer.clients import ClientAuthenticator
from meshrun.auth.issuer.codes import AuthorizationCode, AuthorizationCodes
from meshrun.auth.issuer.errors import invalid_client
from meshrun.auth.issuer.grants import grant
from meshrun.auth.issuer.params import Params
from meshrun.auth.issuer.refresh import RefreshFamily, RefreshTokens
from meshrun.auth.issuer.settings import GRANT_TYPES, AuthSettings, with_identities_file
from meshrun.auth.issuer.tokens import AccessTokens
from meshrun.auth.keys import RETENTION_MARGIN, KeyRing, KeyStore
from meshrun.errors import SettingsError


class AuthorizationServer:
    """Clients, users, keys, codes and refresh-token families of one issuer process."""

    def __init__(self, issuer: str, settings: AuthSettings, keys: KeyRing, checker: SecretChecker, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer.rstrip("/")
        self.settings = settings
        self.keys = keys
        self.checker = checker
        self.clock = clock
        self.clients = {c.client_id: c for c in settings.clients}
        self.users = {u.username: u for u in settings.users}
        self.authenticator = ClientAuthenticator(self.clients, checker)
        self.codes = AuthorizationCodes(settings.authorization_code_ttl)
        self.refresh = RefreshTokens(settings.refresh_token_ttl)
        self.tokens = AccessTokens(self.issuer, keys, settings.access_token_ttl, clock=lambda: self.clock())

    @classmethod
    async def start(cls, issuer: str, settings: AuthSettings, base_dir: Path, *,
                    clock: Callable[[], float] = time.time) -> AuthorizationServer:
        """Read the identities file, load (or on first start create) the keys, hash secrets given by environment
        variables: the slow parts run in threads, off the event loop."""
        settings = with_identities_file(settings, base_dir)
        keys = KeyRing(KeyStore(base_dir / settings.keys_dir), settings.access_token_ttl + RETENTION_MARGIN)
        await asyncio.to_thread(keys.load, settings.signing_alg)
        checker = SecretChecker()
        hashes: dict[str, SecretHash] = {}
        for client in settings.clients:
            from_env = os.environ.get(client.secret_env) if client.secret_env else None
            if from_env:  # the environment wins over the file: that is how a deployment replaces a demo secret
                hashes[client.client_id] = await checker.hash(from_env)
            elif client.secret_hash is not None:
                hashes[client.client_id] = client.secret_hash
            elif client.confidential:  # never let a confidential client turn public for want of its secret
                problem = (f"client {client.client_id!r}: environment variable {client.secret_env} is empty and "
                           "there is no secret_hash")
                raise SettingsError([problem])
        settings = replace(settings, clients=tuple(replace(c, secret_env=None, secret_hash=hashes.get(c.client_id))
                                                   for c in settings.clients))
        return cls(issuer, settings, keys, checker, clock=clock)

    def close(self) -> None:
        self.checker.close()

    # -- token endpoint (RFC 6749 §3.2) ------------------------------------------------------------------------
    async def token(self, params: Params, authorization: str | None) -> dict[str, Any]:
        client = await self.authenticator.authenticate(authorization, params)
        return await grant(self, client, params)

    # -- authorization endpoint (RFC 6749 §3.1) ----------------------------------------------------------------
    def authorization_request(self, params: Params) -> AuthorizationRequest:
        return parse_authorization_request(params, self.clients, self.issuer)

    async def login(self, request: AuthorizationRequest, username: str, password: str) -> str | None:
        """The redirect carrying a new code if the password is right, else None. Same cost for unknown users."""
        user = self.users.get(username)
        matched = await self.checker.matches(user.password_hash if user else decoy(), password)
        if user is None or not matched:
            return None
        now = self.clock()
        code = self.codes.issue(AuthorizationCode(
            client_id=request.client.client_id, redirect_uri=request.redirect_uri if request.redirect_uri_given
            else None, username=user.username, scope=request.scope, audiences=request.audiences,
            code_challenge=request.code_challenge, auth_time=int(now),
            expires_at=now + self.settings.authorization_code_ttl))
        return request.success(code, self.issuer)

    # -- introspection (RFC 7662) and revocation (RFC 7009) ----------------------------------------------------
    async def introspect(self, params: Params, authorization: str | None) -> dict[str, Any]:
        client = await self.authenticator.authenticate(authorization, params, allow_public=False)
        token = params.require("token")
        order = ("refresh", "access") if params.get("token_type_hint") == "refresh_token" else ("access", "refresh")
        for kind in order:
            if kind == "access" and (claims := self.tokens.check(token)) is not None:
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

    async def revoke(self, params: Params, authorization: str | None) -> None:
        """Revoke an access token (remembered until it expires) or a refresh token (its whole family).
        Unknown tokens are not an error (RFC 7009 §2.2); another client's token is."""
        client = await self.authenticator.authenticate(authorization, params)
        token = params.require("token")
        now = self.clock()
        claims = self.tokens.signed_by_us(token)
        if claims is not None:
            if claims.client_id != client.client_id:
                raise invalid_client("the token was issued to another client; a client may only revoke its own")
            self.tokens.revoke(claims.jti, claims.exp, now)
            return
        family = self.refresh.find(token)
        if family is not None:
            if family.client_id != client.client_id:
                raise invalid_client("the token was issued to another client; a client may only revoke its own")
            family.revoked = True
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
