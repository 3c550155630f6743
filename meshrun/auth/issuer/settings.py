"""The authorization server's settings: lifetimes, keys, throttling, and the clients and users it knows.

Parsing and validation only, every problem naming its key (`services.auth.settings.clients[0].scopes: ...`).
The users and clients themselves are parsed by `identities`.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshrun.auth.issuer.identities import (
    GRANT_TYPES,
    REFUSED_GRANTS,
    Client,
    Problems,
    User,
    check_identities,
    parse_identities,
    strings,
    typed,
)
from meshrun.auth.keys import DEFAULT_SIGNING_ALGORITHM, SIGNING_ALGORITHMS
from meshrun.errors import SettingsError

__all__ = ["GRANT_TYPES", "REFUSED_GRANTS", "TOKEN_PROFILES", "AuthSettings", "Client", "ResourceServer",
           "ThrottleSettings", "User", "parse_settings", "with_identities_file"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A rotated-in key starts signing this long after the JWKS max-age: resource servers have refetched by then.
ACTIVATION_MARGIN = 60
# The access-token header `typ` per resource server: RFC 9068's by default; plain JWT for consumers that refuse
# at+jwt (Spring Security's default JwtDecoder accepts only `JWT` or no typ, and no property changes that).
TOKEN_PROFILES = ("at+jwt", "JWT")


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """Failed logins and client authentications: how many are free, and how fast the delays after them grow.

    Counted per username (or client id) from one address, per address, and per username over all addresses; the
    last applies only to addresses that failed for that name themselves, so nobody can lock a user out.
    """

    free_failures: int = 5            # per username (client id) from one address
    address_free_failures: int = 20   # per address, whatever the name: guessing many names from one place
    account_free_failures: int = 100  # per name from every address: guesses spread over many addresses
    first_delay: float = 1.0          # seconds, doubling with every further failure...
    max_delay: float = 900.0          # ...up to this
    forget_after: float = 3600.0      # seconds without a failure after which a name or address starts afresh
    hash_queue: int = 16              # slow hash checks running or waiting at most; beyond, 503 with Retry-After


@dataclass(frozen=True, slots=True)
class ResourceServer:
    """A resource server (an audience) declared with the `typ` its access tokens carry."""

    audience: str
    token_typ: str = "at+jwt"


@dataclass(frozen=True, slots=True)
class AuthSettings:
    keys_dir: str = "keys"
    signing_alg: str = DEFAULT_SIGNING_ALGORITHM
    access_token_ttl: int = 300
    authorization_code_ttl: int = 60
    refresh_token_ttl: int = 8 * 3600
    jwks_max_age: int = 300           # the JWKS's Cache-Control max-age: how stale a resource server's keys may be
    key_activation_delay: int = 300 + ACTIVATION_MARGIN  # a rotated-in key is published this long before it signs
    identities_file: str | None = None
    trusted_proxies: tuple[IpNetwork, ...] = ()  # whose X-Forwarded-For names the client's address
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    resource_servers: tuple[ResourceServer, ...] = ()
    users: tuple[User, ...] = ()
    clients: tuple[Client, ...] = ()

    def token_typ(self, audience: str) -> str:
        """The `typ` of access tokens for `audience`: its declared profile, else at+jwt."""
        for server in self.resource_servers:
            if server.audience == audience:
                return server.token_typ
        return TOKEN_PROFILES[0]


KNOWN = {"keys_dir", "signing_alg", "access_token_ttl", "authorization_code_ttl", "refresh_token_ttl", "jwks_max_age",
         "key_activation_delay", "identities_file", "trusted_proxies", "throttle", "resource_servers", "users",
         "clients"}


def _positive(table: dict[str, Any], name: str, key: str, problems: Problems, default: Any, kind: type = int,
              unit: str = " of seconds") -> Any:
    value = typed(table, name, kind, key, problems, default)
    if value <= 0:
        problems.fail(f"{key}.{name}", f"must be a positive number{unit}, got {value!r}")
        return default
    return kind(value)


def parse_settings(table: dict[str, Any], path: str, *, need_secrets: bool = True) -> AuthSettings:
    """The `settings=` parser of the auth service; raises SettingsError listing every problem.

    `need_secrets=False` skips checking that clients' secret variables are set (commands that only touch keys).
    """
    problems = Problems()
    for extra in sorted(set(table) - KNOWN):
        problems.fail(f"{path}.{extra}", f"unknown key (known: {', '.join(sorted(KNOWN))})")
    alg = typed(table, "signing_alg", str, path, problems, DEFAULT_SIGNING_ALGORITHM)
    if alg not in SIGNING_ALGORITHMS:
        problems.fail(f"{path}.signing_alg", f"{alg!r} is not one of {', '.join(SIGNING_ALGORITHMS)}")
        alg = DEFAULT_SIGNING_ALGORITHM
    users, clients = parse_identities(table, path, problems, need_secrets=need_secrets)
    max_age = _positive(table, "jwks_max_age", path, problems, 300)
    delay = typed(table, "key_activation_delay", int, path, problems, max_age + ACTIVATION_MARGIN)
    if delay < max_age:
        problems.fail(f"{path}.key_activation_delay", f"{delay} is shorter than jwks_max_age ({max_age}): a resource "
                                                      "server may meet the new key's tokens before it has fetched "
                                                      "the key, and refuse them")
    settings = AuthSettings(
        keys_dir=typed(table, "keys_dir", str, path, problems, "keys"),
        signing_alg=alg,
        access_token_ttl=_positive(table, "access_token_ttl", path, problems, 300),
        authorization_code_ttl=_positive(table, "authorization_code_ttl", path, problems, 60),
        refresh_token_ttl=_positive(table, "refresh_token_ttl", path, problems, 8 * 3600),
        jwks_max_age=max_age,
        key_activation_delay=delay,
        identities_file=typed(table, "identities_file", str, path, problems, None),
        trusted_proxies=_networks(table, f"{path}", problems),
        throttle=_throttle(table, f"{path}.throttle", problems),
        resource_servers=_resource_servers(table, f"{path}.resource_servers", problems),
        users=tuple(users), clients=tuple(clients),
    )
    if problems:
        raise SettingsError(list(problems))
    return settings


def _networks(table: dict[str, Any], path: str, problems: Problems) -> tuple[IpNetwork, ...]:
    networks = []
    for value in strings(table, "trusted_proxies", path, problems):
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            problems.fail(f"{path}.trusted_proxies", f"{value!r} is not an IP address or network (10.0.0.0/8)")
    return tuple(networks)


def _resource_servers(settings: dict[str, Any], path: str, problems: Problems) -> tuple[ResourceServer, ...]:
    tables = settings.get("resource_servers", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.fail(path, "expected [[resource_servers]] tables, each with `audience` and `token_typ`")
        return ()
    servers: dict[str, ResourceServer] = {}
    for index, table in enumerate(tables):
        key = f"{path}[{index}]"
        for extra in sorted(set(table) - {"audience", "token_typ"}):
            problems.fail(f"{key}.{extra}", "unknown key (known: audience, token_typ)")
        audience = typed(table, "audience", str, key, problems, "")
        typ = typed(table, "token_typ", str, key, problems, TOKEN_PROFILES[0])
        if not audience:
            problems.fail(f"{key}.audience", "required: the `aud` value the resource server checks (e.g. \"orders\")")
        elif audience in servers:
            problems.fail(f"{key}.audience", f"{audience!r} is declared twice")
        if typ not in TOKEN_PROFILES:
            problems.fail(f"{key}.token_typ", f"{typ!r} is not one of {', '.join(TOKEN_PROFILES)} (\"JWT\" for Spring "
                                              "Security's default decoder)")
        elif audience:
            servers[audience] = ResourceServer(audience, typ)
    return tuple(servers.values())


def _throttle(settings: dict[str, Any], path: str, problems: Problems) -> ThrottleSettings:
    table = settings.get("throttle", {})
    if not isinstance(table, dict):
        problems.fail(path, "expected a [throttle] table")
        return ThrottleSettings()
    default = ThrottleSettings()
    known = set(ThrottleSettings.__dataclass_fields__)
    for extra in sorted(set(table) - known):
        problems.fail(f"{path}.{extra}", f"unknown key (known: {', '.join(sorted(known))})")
    counts = {name: _positive(table, name, path, problems, getattr(default, name), unit="")
              for name in ("free_failures", "address_free_failures", "account_free_failures", "hash_queue")}
    times = {name: _positive(table, name, path, problems, getattr(default, name), float)
             for name in ("first_delay", "max_delay", "forget_after")}
    if times["first_delay"] > times["max_delay"]:
        problems.fail(f"{path}.first_delay", f"is longer than max_delay ({times['max_delay']})")
    if times["forget_after"] < times["max_delay"]:
        problems.fail(f"{path}.forget_after", f"is shorter than max_delay ({times['max_delay']}): failures would be "
                                              "forgotten while their delay still runs")
    return ThrottleSettings(**counts, **times)


def with_identities_file(settings: AuthSettings, base_dir: Path) -> AuthSettings:
    """Add the users and clients of `identities_file` (relative to services.toml's directory), if one is named."""
    if settings.identities_file is None:
        return settings
    file = base_dir / settings.identities_file
    try:
        data = tomllib.loads(file.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError([f"{file}: cannot read identities ({exc})"]) from None
    problems = Problems()
    for extra in sorted(set(data) - {"users", "clients"}):
        problems.fail(f"{file}: {extra}", "unknown key (expected [[users]] and [[clients]] tables)")
    users, clients = parse_identities(data, f"{file}:", problems)
    merged = replace(settings, users=settings.users + tuple(users), clients=settings.clients + tuple(clients))
    check_identities(list(merged.users), list(merged.clients), problems, str(file))
    if problems:
        raise SettingsError(list(problems))
    return merged
