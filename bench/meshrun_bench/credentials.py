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
# The demo client secret, which services.toml takes from the environment (scripts/up exports it): a mesh the
# benchmark starts itself gets it when nothing else gives one, so `meshrun bench` works on a fresh clone.
DEMO_CLIENT_SECRET = "notification-secret"


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


def _secret_sources(config: MeshConfig) -> tuple[str, str, str]:
    """(variable, file, plaintext) of the Notification service's client secret, as its settings name them."""
    settings = config.services["notification"].settings
    settings = settings if isinstance(settings, dict) else {}
    return (str(settings.get("client_secret_env", "MESHRUN_NOTIFICATION_SECRET")),
            str(settings.get("client_secret_file", "")), str(settings.get("client_secret", "")))


def demo_secret_environment(config: MeshConfig) -> dict[str, str]:
    """What the meshes the benchmark starts need in their environment: the demo client secret, when the variable
    is not set and the settings name no other source (the shipped services.toml on a fresh shell); else nothing."""
    env, file, plaintext = _secret_sources(config)
    if os.environ.get(env) or file or plaintext:
        return {}
    return {env: DEMO_CLIENT_SECRET}


def client_secret(config: MeshConfig) -> str | None:
    """The machine client's secret, where Notification itself takes it from: its variable, its file, its settings,
    else the demo secret the benchmark gave the mesh it started."""
    from meshrun.auth.client_secret import read_secret
    from meshrun.errors import SettingsError

    env, file, plaintext = _secret_sources(config)
    try:
        return read_secret(env, file, plaintext, config.base_dir, "services.notification.settings.client_secret")[0]
    except SettingsError:
        return demo_secret_environment(config).get(env)


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
