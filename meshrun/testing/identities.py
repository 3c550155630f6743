"""The users and clients a test mesh's authorization server knows, with secrets only the harness holds.

Declared as salted hashes in the auth service's settings (as `meshrun hash-secret` makes them), so a test needs no
secret from its environment. Not a way to forge tokens: they are issued by the real token endpoint.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Iterable

from meshrun.auth.hashing import SecretHash, hash_secret

# The public client the harness signs its users in with (authorization code with PKCE, as `meshrun token`).
LOGIN_CLIENT = "meshrun-testing"
# Any port of the loopback interface is accepted for this redirect (RFC 8252 §7.3); meshrun.auth.login listens there.
LOOPBACK_REDIRECT = "http://127.0.0.1/callback"
# The least cost a hash may have: these secrets are random and live for one test, and a cheap hash keeps start-up
# and every sign-in fast. Users of a services.toml of their own are hashed at their users' cost instead (the
# issuer refuses users of different costs: an unknown name must cost as long as a known one).
TEST_LOG2_N = 10


@dataclass(frozen=True, slots=True)
class HarnessIdentities:
    """Test users (name -> password) and machine clients (client id -> secret), each secret random per harness."""

    users: dict[str, str]
    clients: dict[str, str]

    @classmethod
    def declare(cls, users: Iterable[str], clients: Iterable[str]) -> HarnessIdentities:
        return cls({name: secrets.token_urlsafe(24) for name in users},
                   {client: secrets.token_urlsafe(24) for client in clients})

    def settings_entries(self, scopes: Iterable[str], audiences: Iterable[str], user_log2_n: int = TEST_LOG2_N
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """`[[users]]` and `[[clients]]` tables for the auth service's settings: the users, a public client to sign
        them in, and the machine clients, each client allowed every scope and audience given."""
        allowed = {"scopes": sorted(set(scopes)), "audiences": sorted(set(audiences))}
        users = [{"username": name, "password_hash": str(hash_secret(password, log2_n=user_log2_n))}
                 for name, password in self.users.items()]
        clients: list[dict[str, Any]] = [
            {"client_id": LOGIN_CLIENT, "grant_types": ["authorization_code"], "redirect_uris": [LOOPBACK_REDIRECT],
             **allowed}]
        clients += [{"client_id": client, "secret_hash": str(hash_secret(secret, log2_n=TEST_LOG2_N)),
                     "grant_types": ["client_credentials"], **allowed} for client, secret in self.clients.items()]
        return users, clients


def users_log2_n(settings: dict[str, Any]) -> int:
    """The scrypt cost of the users an auth service's settings declare already (the harness's users must match
    it), or the harness's own when there are none or they cannot be read (the settings parser reports those)."""
    for user in settings.get("users") or ():
        try:
            return SecretHash.parse(str(user.get("password_hash", ""))).log2_n
        except (ValueError, AttributeError):
            continue
    return TEST_LOG2_N
