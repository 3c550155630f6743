"""Authorization codes (RFC 6749 §4.1): short-lived, single-use, bound to client, redirect URI and PKCE challenge.

Held in this process's memory only: a code is redeemed within seconds, at the server that issued it.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from meshrun.auth.issuer.errors import OAuthError, invalid_grant

# A code is remembered this long after it expired: a late replay still revokes what it produced, and a late
# exchange is told "expired" rather than "unknown".
CODE_MEMORY = 600.0


@dataclass
class AuthorizationCode:
    """What the user approved at the login page, waiting for the client to exchange it for tokens."""

    client_id: str
    redirect_uri: str | None  # as sent in the authorization request; None if it was left out
    username: str
    scope: frozenset[str]
    audiences: tuple[str, ...]
    code_challenge: str | None
    auth_time: int
    expires_at: float
    used: bool = False
    family_id: str | None = None  # the refresh-token family the exchange started, to revoke on replay
    access_jtis: dict[str, int] = field(default_factory=dict)  # jti -> exp of access tokens issued with it


class CodeReplayed(OAuthError):
    """A code was presented a second time (RFC 6749 §4.1.2: revoke what the first exchange issued)."""

    def __init__(self, code: AuthorizationCode) -> None:
        self.code = code
        super().__init__("invalid_grant", "authorization code was already used; tokens issued with it are revoked")


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class AuthorizationCodes:
    """Issues and redeems codes; keeps only their SHA-256, so a memory dump does not hold redeemable codes."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._next_sweep = 0.0
        self._codes: dict[str, AuthorizationCode] = {}

    def issue(self, code: AuthorizationCode) -> str:
        value = secrets.token_urlsafe(32)
        self._codes[_digest(value)] = code
        return value

    def redeem(self, value: str, now: float) -> AuthorizationCode:
        """The code's grant, marked used; invalid_grant if unknown or expired, CodeReplayed if used before."""
        self._sweep(now)
        code = self._codes.get(_digest(value))
        if code is None:
            raise invalid_grant("authorization code is unknown (codes are single-use and held by the server that "
                                "issued them)")
        if code.used:
            raise CodeReplayed(code)
        code.used = True  # any presentation burns it, even one that fails the checks that follow
        if now >= code.expires_at:
            raise invalid_grant(f"authorization code expired (codes live {self.ttl:.0f} s); log in again")
        return code

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        self._codes = {d: c for d, c in self._codes.items() if now < c.expires_at + CODE_MEMORY}
