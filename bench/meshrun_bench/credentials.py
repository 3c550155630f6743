"""Who the benchmark is: the user placing orders and the machine client whose token endpoint it probes.

Tokens are obtained the way clients obtain them (authorization code + PKCE for the user), in this process.
"""
from __future__ import annotations

import os
from typing import Any

from meshrun.config import MeshConfig
from meshrun_bench.launcher import BenchError

PASSWORD_ENV = "MESHRUN_BENCH_PASSWORD"
# The shipped services.toml keeps only hashes; its demo identities are published (README, "Security").
DEMO_PASSWORDS = {"alice": "alice-password"}


def _auth_settings(config: MeshConfig) -> dict[str, Any]:
    auth = config.services.get("auth")
    return auth.settings if auth is not None and isinstance(auth.settings, dict) else {}


def user_password(config: MeshConfig, user: str, given: str | None) -> str:
    """--password-stdin, else env MESHRUN_BENCH_PASSWORD, else a plain `password` of `user` in services.toml,
    else the published demo password (a wrong one fails at sign-in with a message saying so)."""
    if given:
        return given
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    for entry in _auth_settings(config).get("users", []):
        if isinstance(entry, dict) and entry.get("username") == user and isinstance(entry.get("password"), str):
            return str(entry["password"])
    if user in DEMO_PASSWORDS:
        return DEMO_PASSWORDS[user]
    raise BenchError(f"no password for user {user!r}: pass --password-stdin or set {PASSWORD_ENV}")


def notification_client(config: MeshConfig) -> dict[str, str]:
    """The Notification service's machine client: id, scope and audience, as its settings declare them."""
    settings = config.services["notification"].settings
    settings = settings if isinstance(settings, dict) else {}
    return {"client_id": str(settings.get("client_id", "notification-service")),
            "scope": str(settings.get("scope", "users.notify")),
            "audience": str(settings.get("audience", "users"))}


def client_secret(config: MeshConfig) -> str | None:
    """The machine client's secret, where Notification itself takes it from: its env variable, then its settings."""
    settings = config.services["notification"].settings
    settings = settings if isinstance(settings, dict) else {}
    env = str(settings.get("client_secret_env", "MESHRUN_NOTIFICATION_SECRET"))
    return os.environ.get(env) or settings.get("client_secret") or None


async def user_token(issuer: str, user: str, password: str, audience: str) -> str:
    """A user access token for the Order service, through the same PKCE flow as `meshrun token --user`."""
    from meshrun.auth.login import user_login
    from meshrun.errors import TokenRequestFailed

    try:
        body = await user_login(issuer, user, password, scope="orders.write", resources=(audience,))
    except TokenRequestFailed as exc:
        raise BenchError(f"could not get a token for {user!r}: {exc} (pass the password with --password-stdin or "
                         f"{PASSWORD_ENV})") from None
    return str(body["access_token"])
