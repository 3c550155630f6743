"""Refresh tokens with rotation (RFC 9700 §4.14.2): each use replaces the token; replaying an old one revokes
the whole family, because either the client or an attacker holds a stolen copy.

Held in this process's memory: a restart (or another issuer process) does not know them; the user logs in again.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from meshrun.auth.issuer.errors import OAuthError, invalid_grant


@dataclass
class RefreshFamily:
    """One login's chain of refresh tokens, and the access tokens issued along it."""

    family_id: str
    client_id: str
    username: str
    scope: frozenset[str]
    audiences: tuple[str, ...]
    auth_time: int
    expires_at: float  # absolute: rotation does not extend a login beyond refresh_token_ttl
    current: str  # SHA-256 of the only token that may be used next
    revoked: bool = False
    access_jtis: dict[str, int] = field(default_factory=dict)  # jti -> exp


class RefreshReplayed(OAuthError):
    def __init__(self, family: RefreshFamily) -> None:
        self.family = family
        super().__init__("invalid_grant", "refresh token was already used: its whole family is revoked (a copy may "
                                          "have leaked); log in again")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RefreshTokens:
    """Issues, rotates, finds and revokes refresh tokens; stores only their SHA-256."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._next_sweep = 0.0
        self._families: dict[str, RefreshFamily] = {}
        self._by_digest: dict[str, str] = {}  # digest of every token a family ever had -> family id

    def start(self, *, client_id: str, username: str, scope: frozenset[str], audiences: tuple[str, ...],
              auth_time: int, now: float) -> tuple[str, RefreshFamily]:
        self._sweep(now)
        token = secrets.token_urlsafe(32)
        family = RefreshFamily(secrets.token_hex(8), client_id, username, scope, audiences, auth_time,
                               now + self.ttl, _digest(token))
        self._families[family.family_id] = family
        self._by_digest[family.current] = family.family_id
        return token, family

    def find(self, token: str) -> RefreshFamily | None:
        family_id = self._by_digest.get(_digest(token))
        return self._families.get(family_id) if family_id else None

    def family(self, family_id: str) -> RefreshFamily | None:
        return self._families.get(family_id)

    def is_current(self, token: str, family: RefreshFamily, now: float) -> bool:
        return not family.revoked and now < family.expires_at and family.current == _digest(token)

    def rotate(self, token: str, client_id: str, now: float) -> tuple[str, RefreshFamily]:
        """A new token replacing `token`; invalid_grant if unknown, expired, revoked or another client's;
        RefreshReplayed (after revoking the family) if `token` was already replaced."""
        family = self.find(token)
        if family is None or family.client_id != client_id:
            raise invalid_grant("refresh token is unknown (or was issued to another client, or by another issuer "
                                "process, or before a restart); log in again")
        if family.revoked:
            raise invalid_grant("refresh token was revoked; log in again")
        if now >= family.expires_at:
            raise invalid_grant("refresh token expired; log in again")
        if family.current != _digest(token):
            family.revoked = True
            raise RefreshReplayed(family)
        new = secrets.token_urlsafe(32)
        family.current = _digest(new)
        self._by_digest[family.current] = family.family_id
        return new, family

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        expired = {fid for fid, f in self._families.items() if now >= f.expires_at}
        for fid in expired:
            del self._families[fid]
        self._by_digest = {d: fid for d, fid in self._by_digest.items() if fid not in expired}
