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
from meshrun.auth.client_secret import read_secret
from meshrun.auth.hashing import hash_secret
from meshrun.auth.issuer.settings import AuthSettings, parse_settings
from meshrun.auth.keys import RETENTION_MARGIN, SIGNING_ALGORITHMS, KeyState, KeyStore, key_states, rotate
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
        # The key commands need no client secret: do not ask for the variables that hold them.
        return parse_settings(config.services[service].settings, f"services.{service}.settings", need_secrets=False)
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
              help="Environment variable holding the client secret (else the client's secret_env or "
                   "secret_file, else stdin).")
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
                                                scope=scope, resources=resources,
                                                allow_cleartext=config.trust_proxy_tls))
        elif client_id:
            secret = os.environ.get(secret_env) or _client_secret_from_env(config, service, client_id)
            if not secret:
                secret = _read_secret("Client secret", True)
            body = asyncio.run(login.client_credentials(issuer, client_id, secret, scope, resources,
                                                        allow_cleartext=config.trust_proxy_tls))
    except MeshrunError as exc:
        _fail(exc)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        _fail(MeshrunError(f"lost the connection to the issuer during the flow ({type(exc).__name__}: {exc})"))
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode() if as_json else body["access_token"])


def _client_secret_from_env(config: MeshConfig, service: str, client_id: str) -> str | None:
    """The client's own secret where services.toml says the issuer takes it from: `secret_env` when that variable
    is set, else `secret_file` (relative to services.toml)."""
    if service not in config.services:
        return None
    for client in config.services[service].settings.get("clients", []):
        if not isinstance(client, dict) or client.get("client_id") != client_id:
            continue
        if client.get("secret_env") and os.environ.get(str(client["secret_env"])):
            return os.environ[str(client["secret_env"])]
        if isinstance(client.get("secret_file"), str):
            secret, _ = read_secret("", client["secret_file"], "", config.base_dir,
                                    f"services.{service}.settings.clients.secret")
            return secret
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
@click.option("--now", "immediately", is_flag=True,
              help="For a compromised key: the new key signs at once and every other key is retired at once. "
                   "Tokens they signed are refused from then on; users and clients must get new ones.")
def rotate_keys(config_path: str, service: str, alg: str | None, immediately: bool) -> None:
    """Add a new signing key. It is published at once and starts signing key_activation_delay seconds later
    (by then every resource server has fetched it); the old key stays published until every token it signed has
    expired, then its files are deleted by a later rotation. Running servers follow within a second."""
    try:
        config = load_config(config_path)
        settings = _auth_settings(config, service)
        store = _store(config, settings)
        retired = [k.kid for k in store.load() if k.live(time.time())] if immediately else []
        key, deleted = rotate(store, alg or settings.signing_alg, settings.access_token_ttl + RETENTION_MARGIN,
                              activation_delay=settings.key_activation_delay, immediately=immediately)
    except MeshrunError as exc:
        _fail(exc)
    if immediately:
        click.echo(f"new signing key {key.kid} ({key.alg}) in {store.directory}, signing now")
        for kid in retired:
            click.echo(f"retired key {kid} at once: the tokens it signed are refused from now on")
    else:
        click.echo(f"new signing key {key.kid} ({key.alg}) in {store.directory}: published now, signs from "
                   f"{_when(key.activates_at)} (in {settings.key_activation_delay} s)")
    for kid in deleted:
        click.echo(f"deleted key {kid}" + ("" if kid in retired else ": every token it signed has expired"))


@keys.command("list")
@config_option
@service_option
def list_keys(config_path: str, service: str) -> None:
    """List the signing keys and their state: published (before it signs, or after, until its tokens have
    expired), active (signing) or retired (no longer published)."""
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
    for status in key_states(all_keys, time.time(), settings.access_token_ttl + RETENTION_MARGIN):
        key = status.key
        if status.state is KeyState.PENDING:
            state = f"published, signs from {_when(status.until or 0.0)}"
        elif status.state is KeyState.ACTIVE:
            state = "active (signing)"
        elif status.state is KeyState.PUBLISHED:
            state = f"published until {_when(status.until or 0.0)} (no longer signs)"
        else:
            state = "retired (no longer published; deleted at the next rotation)"
        click.echo(f"{key.kid}  {key.alg}  created {_when(key.created_at)}  {state}")


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
