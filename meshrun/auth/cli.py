"""The auth commands of `meshrun`: `token`, `keys rotate|list`, `hash-secret`. Flags and printing only.

`meshrun.cli` adds every command of `commands` to the main group.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import NoReturn

import aiohttp
import click
import orjson

from meshrun.auth import login
from meshrun.auth.hashing import hash_secret
from meshrun.auth.issuer.settings import AuthSettings, parse_settings
from meshrun.auth.keys import RETENTION_MARGIN, SIGNING_ALGORITHMS, KeyStore, published, rotate
from meshrun.config import MeshConfig, load_config
from meshrun.errors import MeshrunError, SettingsError

config_option = click.option("--config", "config_path", envvar="MESHRUN_CONFIG", default="services.toml",
                             show_default=True, help="services.toml to read (env MESHRUN_CONFIG).")
service_option = click.option("--service", default="auth", show_default=True,
                              help="Name of the authorization server's service in services.toml.")


def _fail(error: Exception) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def _issuer(config: MeshConfig, service: str) -> str:
    if config.issuer:
        return config.issuer.rstrip("/")
    if service in config.services and config.services[service].port is not None:
        return config.service_url(service)
    raise MeshrunError(f"{config.file}: set [mesh] issuer (the authorization server's URL)")


def _auth_settings(config: MeshConfig, service: str) -> AuthSettings:
    if service not in config.services:
        raise MeshrunError(f"{config.file}: no [services.{service}] (the authorization server); pass --service")
    try:
        return parse_settings(config.services[service].settings, f"services.{service}.settings")
    except SettingsError as exc:
        raise MeshrunError(f"{config.file}: {exc}") from None


def _read_secret(what: str, from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = click.prompt(what, hide_input=True, err=True)
    if not value:
        raise MeshrunError(f"no {what.lower()} given")
    return value


@click.command()
@config_option
@click.option("--client", "client_id", help="Get a machine token for this client (client_credentials); with "
                                            "--user, the public client to sign in through (default meshrun-cli).")
@click.option("--user", "username", help="Sign this user in (authorization code + PKCE) and print their token.")
@click.option("--scope", help="Space-separated scopes to ask for (default: all the client may get).")
@click.option("--resource", "resources", multiple=True, help="Audience to ask for (RFC 8707); repeatable.")
@click.option("--password-stdin", is_flag=True, help="Read the user's password from stdin instead of a prompt.")
@click.option("--secret-env", default="MESHRUN_CLIENT_SECRET", show_default=True,
              help="Environment variable holding the client secret (else the client's secret_env, else stdin).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole token response (with refresh_token).")
@service_option
def token(config_path: str, client_id: str | None, username: str | None, scope: str | None,
          resources: tuple[str, ...], password_stdin: bool, secret_env: str, as_json: bool, service: str) -> None:
    """Print an access token: a machine token (--client ID) or a user's (--user NAME).

    \b
    MESHRUN_CLIENT_SECRET=... meshrun token --client notification-service
    meshrun token --user alice --password-stdin <<< alice-password
    """
    try:
        if not client_id and not username:
            raise MeshrunError("pass --client ID (machine token) or --user NAME (sign a user in)")
        config = load_config(config_path)
        issuer = _issuer(config, service)
        if username:
            password = _read_secret("Password", password_stdin)
            body = asyncio.run(login.user_login(issuer, username, password, client_id=client_id or "meshrun-cli",
                                                scope=scope, resources=resources))
        elif client_id:
            secret = os.environ.get(secret_env) or _client_secret_from_env(config, service, client_id)
            if not secret:
                secret = _read_secret("Client secret", True)
            body = asyncio.run(login.client_credentials(issuer, client_id, secret, scope, resources))
    except MeshrunError as exc:
        _fail(exc)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        _fail(MeshrunError(f"lost the connection to the issuer during the flow ({type(exc).__name__}: {exc})"))
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() if as_json else body["access_token"])


def _client_secret_from_env(config: MeshConfig, service: str, client_id: str) -> str | None:
    """The client's own `secret_env` from services.toml, when that variable is set."""
    if service not in config.services:
        return None
    for client in config.services[service].settings.get("clients", []):
        if isinstance(client, dict) and client.get("client_id") == client_id and client.get("secret_env"):
            return os.environ.get(str(client["secret_env"])) or None
    return None


@click.group()
def keys() -> None:
    """The authorization server's signing keys (in keys_dir, next to services.toml)."""


def _store(config: MeshConfig, settings: AuthSettings) -> KeyStore:
    return KeyStore(config.base_dir / settings.keys_dir)


@keys.command("rotate")
@config_option
@service_option
@click.option("--alg", type=click.Choice(SIGNING_ALGORITHMS), default=None,
              help="Algorithm of the new key (default: signing_alg from services.toml).")
def rotate_keys(config_path: str, service: str, alg: str | None) -> None:
    """Add a new signing key; running servers sign with it within a second. Old public keys stay published
    until every token they signed has expired, then their files are deleted by a later rotation."""
    try:
        config = load_config(config_path)
        settings = _auth_settings(config, service)
        store = _store(config, settings)
        key, deleted = rotate(store, alg or settings.signing_alg, settings.access_token_ttl + RETENTION_MARGIN)
    except MeshrunError as exc:
        _fail(exc)
    click.echo(f"new signing key {key.kid} ({key.alg}) in {store.directory}")
    for kid in deleted:
        click.echo(f"deleted key {kid}: every token it signed has expired")


@keys.command("list")
@config_option
@service_option
def list_keys(config_path: str, service: str) -> None:
    """List the signing keys: which one signs, which are still published, until when."""
    try:
        config = load_config(config_path)
        settings = _auth_settings(config, service)
        store = _store(config, settings)
        all_keys = store.load()
    except MeshrunError as exc:
        _fail(exc)
    if not all_keys:
        click.echo(f"no keys in {store.directory}: the auth service creates one on its first start")
        return
    retention = settings.access_token_ttl + RETENTION_MARGIN
    now = time.time()
    shown = {k.kid for k in published(all_keys, now, retention)}
    for key, successor in zip(all_keys, all_keys[1:] + [None]):
        created = _when(key.created_at)
        if successor is None:
            state = "signing"
        elif key.kid in shown:
            state = f"published until {_when(successor.created_at + retention)}"
        else:
            state = "retired (no longer published; deleted at the next rotation)"
        click.echo(f"{key.kid}  {key.alg}  created {created}  {state}")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.command("hash-secret")
def hash_secret_command() -> None:
    """Print a salted scrypt hash of a secret or password (read from stdin, or prompted twice), for
    services.toml's secret_hash / password_hash."""
    if sys.stdin.isatty():
        secret = click.prompt("Secret", hide_input=True, confirmation_prompt=True, err=True)
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        _fail(MeshrunError("empty secret"))
    click.echo(str(hash_secret(secret)))


commands = [token, keys, hash_secret_command]
