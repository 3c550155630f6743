"""Access tokens as the issuer sees them: minting RFC 9068 JWTs, recognising its own, remembering revocations.

Resource servers verify tokens on their own (`meshrun.auth.guard`); this is the issuer's side only.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from meshrun.auth.claims import Claims, format_scope
from meshrun.auth.keys import KeyRing
from meshrun.auth.verify import InvalidToken, TokenVerifier, VerificationKey, keys_from_jwks


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    exp: int
    scope: frozenset[str]


class AccessTokens:
    """Mints access tokens with the key ring's current key, and checks tokens presented back to the issuer."""

    def __init__(self, issuer: str, keys: KeyRing, ttl: int, clock: Callable[[], float]) -> None:
        self.issuer = issuer
        self.keys = keys
        self.ttl = ttl
        self.clock = clock
        self.revoked: dict[str, int] = {}  # jti -> exp: remembered until the token would have expired anyway
        # Its own tokens, at introspection and revocation: no audience check, no leeway (the issuer's clock rules).
        self._verifier = TokenVerifier(issuer, None, leeway=0.0, clock=lambda: self.clock())
        # For revocation: an expired token still names its owner (signature and issuer must still hold).
        self._any_time = TokenVerifier(issuer, None, leeway=float("inf"), clock=lambda: self.clock(), cache_size=0)
        self._published: list[str] = []

    def mint(self, *, sub: str, client_id: str, scope: frozenset[str], audiences: tuple[str, ...], now: float,
             auth_time: int | None = None, typ: str = "at+jwt") -> IssuedToken:
        """RFC 9068 §2: header typ at+jwt and kid; claims iss, sub, aud, exp, iat, jti, client_id, scope.

        `typ` is the audiences' profile: "JWT" changes the header only, the claims stay RFC 9068's."""
        iat = int(now)
        jti = secrets.token_urlsafe(16)
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audiences[0] if len(audiences) == 1 else list(audiences),
            "exp": iat + self.ttl,
            "iat": iat,
            "jti": jti,
            "client_id": client_id,
        }
        if scope:
            claims["scope"] = format_scope(scope)
        if auth_time is not None:
            claims["auth_time"] = auth_time
        token = self.keys.signing_key(now).sign({"typ": typ}, claims)
        return IssuedToken(token, jti, iat + self.ttl, scope)

    def check(self, token: str) -> Claims | None:
        """The claims of one of our access tokens that is still active (signed by a published key, not expired,
        not revoked), else None."""
        self._sync_keys()
        try:
            claims = self._verifier.verify(token)
        except InvalidToken:
            return None
        return None if claims.jti in self.revoked else claims

    def signed_by_us(self, token: str) -> Claims | None:
        """Like `check`, but also for expired or revoked tokens (revocation must still find their owner)."""
        self._sync_keys()
        try:
            return self._any_time.verify(token)
        except InvalidToken:
            return None

    def revoke(self, jti: str, exp: int, now: float) -> None:
        if len(self.revoked) >= 1024:
            self.revoked = {j: e for j, e in self.revoked.items() if e > now}
        self.revoked[jti] = exp

    def _sync_keys(self) -> None:
        published = self.keys.published(self.clock())
        kids = [k.kid for k in published]
        if kids != self._published:
            keys: dict[str, VerificationKey] = keys_from_jwks({"keys": [k.public_jwk() for k in published]})[0]
            self._verifier.set_keys(keys)
            self._any_time.set_keys(keys)
            self._published = kids
