"""The authorization server's settings: lifetimes, keys, and the clients and users it knows, from services.toml.

Parsing and validation only, every problem naming its key (`services.auth.settings.clients[0].scopes: ...`).
Secrets and passwords are accepted only as salted slow hashes, or for a client secret, from an environment variable.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshrun.auth.claims import is_scope_token
from meshrun.auth.hashing import SecretHash
from meshrun.auth.keys import DEFAULT_SIGNING_ALGORITHM, SIGNING_ALGORITHMS
from meshrun.errors import SettingsError

GRANT_TYPES = ("authorization_code", "client_credentials", "refresh_token")
REFUSED_GRANTS = {
    "password": "the resource owner password grant is not supported (OAuth 2.0 Security BCP, RFC 9700 §2.4)",
    "implicit": "the implicit grant is not supported (RFC 9700 §2.1.2): use authorization_code with PKCE",
}
_LOOPBACK_NETLOC = re.compile(r"(127\.0\.0\.1|\[::1\])(:\d{1,5})?")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")  # RFC 6749 Appendix A: client_id and user names are VSCHARs


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: SecretHash


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client. Confidential when it has a secret (hash or environment variable), public otherwise."""

    client_id: str
    secret_hash: SecretHash | None
    secret_env: str | None
    grant_types: frozenset[str]
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    redirect_uris: tuple[str, ...]

    @property
    def confidential(self) -> bool:
        return self.secret_hash is not None or self.secret_env is not None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    keys_dir: str = "keys"
    signing_alg: str = DEFAULT_SIGNING_ALGORITHM
    access_token_ttl: int = 300
    authorization_code_ttl: int = 60
    refresh_token_ttl: int = 8 * 3600
    identities_file: str | None = None
    users: tuple[User, ...] = ()
    clients: tuple[Client, ...] = ()


class _Problems(list[str]):
    def fail(self, key: str, message: str) -> None:
        self.append(f"{key}: {message}")


def _typed(table: dict[str, Any], name: str, kind: type, key: str, problems: _Problems, default: Any = None) -> Any:
    value = table.get(name, default)
    if name in table and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        problems.fail(f"{key}.{name}", f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return default
    return value


def _strings(table: dict[str, Any], name: str, key: str, problems: _Problems) -> list[str]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.fail(f"{key}.{name}", f"expected a list of strings, got {value!r}")
        return []
    return value


def _positive(table: dict[str, Any], name: str, key: str, problems: _Problems, default: int) -> int:
    value = _typed(table, name, int, key, problems, default)
    if value <= 0:
        problems.fail(f"{key}.{name}", f"must be a positive number of seconds, got {value!r}")
        return default
    return int(value)


def parse_settings(table: dict[str, Any], path: str) -> AuthSettings:
    """The `settings=` parser of the auth service; raises SettingsError listing every problem."""
    problems = _Problems()
    known = {"keys_dir", "signing_alg", "access_token_ttl", "authorization_code_ttl", "refresh_token_ttl",
             "identities_file", "users", "clients"}
    for extra in sorted(set(table) - known):
        problems.fail(f"{path}.{extra}", f"unknown key (known: {', '.join(sorted(known))})")
    alg = _typed(table, "signing_alg", str, path, problems, DEFAULT_SIGNING_ALGORITHM)
    if alg not in SIGNING_ALGORITHMS:
        problems.fail(f"{path}.signing_alg", f"{alg!r} is not one of {', '.join(SIGNING_ALGORITHMS)}")
        alg = DEFAULT_SIGNING_ALGORITHM
    users, clients = parse_identities(table, path, problems)
    settings = AuthSettings(
        keys_dir=_typed(table, "keys_dir", str, path, problems, "keys"),
        signing_alg=alg,
        access_token_ttl=_positive(table, "access_token_ttl", path, problems, 300),
        authorization_code_ttl=_positive(table, "authorization_code_ttl", path, problems, 60),
        refresh_token_ttl=_positive(table, "refresh_token_ttl", path, problems, 8 * 3600),
        identities_file=_typed(table, "identities_file", str, path, problems, None),
        users=tuple(users), clients=tuple(clients),
    )
    if problems:
        raise SettingsError(list(problems))
    return settings


def with_identities_file(settings: AuthSettings, base_dir: Path) -> AuthSettings:
    """Add the users and clients of `identities_file` (relative to services.toml's directory), if one is named."""
    if settings.identities_file is None:
        return settings
    file = base_dir / settings.identities_file
    try:
        data = tomllib.loads(file.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError([f"{file}: cannot read identities ({exc})"]) from None
    problems = _Problems()
    for extra in sorted(set(data) - {"users", "clients"}):
        problems.fail(f"{file}: {extra}", "unknown key (expected [[users]] and [[clients]] tables)")
    users, clients = parse_identities(data, f"{file}:", problems)
    merged = replace(settings, users=settings.users + tuple(users), clients=settings.clients + tuple(clients))
    _check_unique(merged, problems, str(file))
    if problems:
        raise SettingsError(list(problems))
    return merged


def parse_identities(table: dict[str, Any], path: str, problems: _Problems) -> tuple[list[User], list[Client]]:
    sep = "" if path.endswith(":") else "."
    prefix = path + (" " if sep == "" else sep)
    users = [u for i, entry in enumerate(_tables(table, "users", path, sep, problems))
             if (u := _user(entry, f"{prefix}users[{i}]", problems)) is not None]
    clients = [c for i, entry in enumerate(_tables(table, "clients", path, sep, problems))
               if (c := _client(entry, f"{prefix}clients[{i}]", problems)) is not None]
    _check_unique(AuthSettings(users=tuple(users), clients=tuple(clients)), problems, path)
    return users, clients


def _tables(table: dict[str, Any], name: str, path: str, sep: str, problems: _Problems) -> list[dict[str, Any]]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.fail(f"{path}{sep}{name}", f"expected [[{name}]] tables")
        return []
    return value


def _check_unique(settings: AuthSettings, problems: _Problems, where: str) -> None:
    for kind, names in (("username", [u.username for u in settings.users]),
                        ("client_id", [c.client_id for c in settings.clients])):
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.fail(where, f"{kind} {name!r} is declared more than once")


def _unknown(entry: dict[str, Any], key: str, known: set[str], plaintext: dict[str, str], problems: _Problems
             ) -> None:
    for extra in sorted(set(entry) - known):
        problems.fail(f"{key}.{extra}", plaintext.get(extra, f"unknown key (known: {', '.join(sorted(known))})"))


def _hash(entry: dict[str, Any], name: str, key: str, problems: _Problems) -> SecretHash | None:
    text = _typed(entry, name, str, key, problems)
    if text is None:
        return None
    try:
        return SecretHash.parse(text)
    except ValueError as exc:
        problems.fail(f"{key}.{name}", str(exc))
        return None


def _user(entry: dict[str, Any], key: str, problems: _Problems) -> User | None:
    _unknown(entry, key, {"username", "password_hash"},
             {"password": "plaintext passwords are not accepted: store password_hash (make one with "
                          "`meshrun hash-secret`)"}, problems)
    username = _typed(entry, "username", str, key, problems)
    if not username or not _PRINTABLE.fullmatch(username):
        problems.fail(f"{key}.username", "missing, or not printable ASCII")
    password_hash = _hash(entry, "password_hash", key, problems)
    if "password_hash" not in entry:
        problems.fail(f"{key}.password_hash", "missing (make one with `meshrun hash-secret`)")
    if not username or password_hash is None:
        return None
    return User(username, password_hash)


def _client(entry: dict[str, Any], key: str, problems: _Problems) -> Client | None:
    known = {"client_id", "secret_hash", "secret_env", "grant_types", "scopes", "audiences", "redirect_uris"}
    _unknown(entry, key, known, {"secret": "plaintext secrets are not accepted: store secret_hash (make one with "
                                           "`meshrun hash-secret`) or name an environment variable in secret_env"},
             problems)
    before = len(problems)
    client_id = _typed(entry, "client_id", str, key, problems)
    if not client_id or not _PRINTABLE.fullmatch(client_id):
        problems.fail(f"{key}.client_id", "missing, or not printable ASCII")
    secret_hash = _hash(entry, "secret_hash", key, problems)
    secret_env = _typed(entry, "secret_env", str, key, problems)
    if secret_env and secret_hash is None and secret_env not in os.environ:
        problems.fail(f"{key}.secret_env", f"environment variable {secret_env} is not set and there is no "
                                           "secret_hash to fall back on")
    grants = _strings(entry, "grant_types", key, problems)
    if not grants:
        problems.fail(f"{key}.grant_types", f"missing: list some of {', '.join(GRANT_TYPES)}")
    for grant in grants:
        if grant not in GRANT_TYPES:
            problems.fail(f"{key}.grant_types", REFUSED_GRANTS.get(grant, f"{grant!r} is not one of "
                                                                          f"{', '.join(GRANT_TYPES)}"))
    confidential = secret_hash is not None or bool(secret_env)
    if "client_credentials" in grants and not confidential:
        problems.fail(f"{key}.grant_types", "client_credentials needs a confidential client: add secret_hash "
                                            "or secret_env")
    if "refresh_token" in grants and "authorization_code" not in grants:
        problems.fail(f"{key}.grant_types", "refresh_token is only issued with authorization_code")
    scopes = _strings(entry, "scopes", key, problems)
    for scope in scopes:
        if not is_scope_token(scope):
            problems.fail(f"{key}.scopes", f"{scope!r} is not a valid scope (printable ASCII without space, "
                                           "quote or backslash)")
    audiences = _strings(entry, "audiences", key, problems)
    if not audiences or not all(audiences):
        problems.fail(f"{key}.audiences", "missing: name the services (their `audience`) this client's tokens "
                                          "are for")
    redirect_uris = _strings(entry, "redirect_uris", key, problems)
    if "authorization_code" in grants and not redirect_uris:
        problems.fail(f"{key}.redirect_uris", "missing: authorization_code needs at least one redirect URI")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            problems.fail(f"{key}.redirect_uris", f"{uri!r}: {problem}")
    if len(problems) > before:
        return None
    return Client(client_id, secret_hash, secret_env or None, frozenset(grants), frozenset(scopes),
                  tuple(audiences), tuple(redirect_uris))


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be registered (RFC 6749 §3.1.2, RFC 8252 §7-8), or None."""
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return "not a valid URI"
    if not parts.scheme or parts.fragment or "#" in uri:
        return "must be an absolute URI without a fragment"
    if parts.scheme == "http" and not _LOOPBACK_NETLOC.fullmatch(parts.netloc):
        return "plain http is only allowed on a loopback IP literal (http://127.0.0.1/... or http://[::1]/...)"
    if parts.scheme in ("http", "https") and not parts.netloc:
        return "has no host"
    return None
