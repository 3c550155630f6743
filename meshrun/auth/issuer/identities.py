"""The users and clients an issuer knows, parsed from `[[users]]` and `[[clients]]` tables with every problem named.

Secrets are accepted only as salted slow hashes, or for a client, from an environment variable or a file: never
as plaintext in the table. Checking secrets against requests is `clients`' and `server`'s job.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from meshrun.auth.claims import is_scope_token
from meshrun.auth.hashing import SecretHash
from meshrun.auth.issuer.redirect_uris import redirect_uri_problem

GRANT_TYPES = ("authorization_code", "client_credentials", "refresh_token")
REFUSED_GRANTS = {
    "password": "the resource owner password grant is not supported (OAuth 2.0 Security BCP, RFC 9700 §2.4)",
    "implicit": "the implicit grant is not supported (RFC 9700 §2.1.2): use authorization_code with PKCE",
}
_PRINTABLE = re.compile(r"[\x20-\x7e]+")  # RFC 6749 Appendix A: client_id and user names are VSCHARs
_PLAINTEXT_SECRET = ("plaintext secrets are not accepted: name an environment variable in secret_env or a file in "
                     "secret_file, or store secret_hash (make one with `meshrun hash-secret`)")


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: SecretHash


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client. Confidential when it has a secret (hash, environment variable or file), public
    otherwise. `require_pkce` is always true for a public client."""

    client_id: str
    secret_hash: SecretHash | None
    secret_env: str | None
    grant_types: frozenset[str]
    scopes: frozenset[str]
    audiences: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    secret_file: str | None = None
    require_pkce: bool = True
    introspect_audiences: tuple[str, ...] = ()  # it speaks for these resource servers at introspection

    @property
    def confidential(self) -> bool:
        return self.secret_hash is not None or self.secret_env is not None or self.secret_file is not None


class Problems(list[str]):
    """Problems found so far, each `key: what is wrong`; parsing goes on to report all of them at once."""

    def fail(self, key: str, message: str) -> None:
        self.append(f"{key}: {message}")


def typed(table: dict[str, Any], name: str, kind: type, key: str, problems: Problems, default: Any = None) -> Any:
    value = table.get(name, default)
    if name in table and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        if not (kind is float and isinstance(value, int) and not isinstance(value, bool)):
            problems.fail(f"{key}.{name}", f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
            return default
    return value


def strings(table: dict[str, Any], name: str, key: str, problems: Problems) -> list[str]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.fail(f"{key}.{name}", f"expected a list of strings, got {value!r}")
        return []
    return value


def parse_identities(table: dict[str, Any], path: str, problems: Problems, *, need_secrets: bool = True
                     ) -> tuple[list[User], list[Client]]:
    sep = "" if path.endswith(":") else "."
    prefix = path + (" " if sep == "" else sep)
    users = [u for i, entry in enumerate(_tables(table, "users", path, sep, problems))
             if (u := _user(entry, f"{prefix}users[{i}]", problems)) is not None]
    clients = [c for i, entry in enumerate(_tables(table, "clients", path, sep, problems))
               if (c := _client(entry, f"{prefix}clients[{i}]", problems, need_secrets)) is not None]
    check_identities(users, clients, problems, path)
    return users, clients


def check_identities(users: list[User], clients: list[Client], problems: Problems, where: str) -> None:
    """Rules across entries: names are unique, and every password hash has the same cost."""
    for kind, names in (("username", [u.username for u in users]), ("client_id", [c.client_id for c in clients])):
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.fail(where, f"{kind} {name!r} is declared more than once")
    costs: dict[tuple[int, int, int], list[str]] = {}
    for user in users:
        costs.setdefault(user.password_hash.cost, []).append(user.username)
    if len(costs) > 1:
        # An unknown user name is checked against a decoy of one cost: a user hashed at another cost would answer
        # measurably faster or slower than a name that does not exist, telling an attacker which names do.
        found = "; ".join(f"ln={c[0]},r={c[1]},p={c[2]} for {', '.join(names)}" for c, names in sorted(costs.items()))
        problems.fail(where, f"users' password hashes have different scrypt costs ({found}): hash every password "
                             "at one cost (`meshrun hash-secret`), so that a login cannot tell which user names exist")


def _tables(table: dict[str, Any], name: str, path: str, sep: str, problems: Problems) -> list[dict[str, Any]]:
    value = table.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.fail(f"{path}{sep}{name}", f"expected [[{name}]] tables")
        return []
    return value


def _unknown(entry: dict[str, Any], key: str, known: set[str], plaintext: dict[str, str], problems: Problems
             ) -> None:
    for extra in sorted(set(entry) - known):
        problems.fail(f"{key}.{extra}", plaintext.get(extra, f"unknown key (known: {', '.join(sorted(known))})"))


def _hash(entry: dict[str, Any], name: str, key: str, problems: Problems) -> SecretHash | None:
    text = typed(entry, name, str, key, problems)
    if text is None:
        return None
    try:
        return SecretHash.parse(text)
    except ValueError as exc:
        problems.fail(f"{key}.{name}", str(exc))
        return None


def _user(entry: dict[str, Any], key: str, problems: Problems) -> User | None:
    _unknown(entry, key, {"username", "password_hash"},
             {"password": "plaintext passwords are not accepted: store password_hash (make one with "
                          "`meshrun hash-secret`)"}, problems)
    username = typed(entry, "username", str, key, problems)
    if not username or not _PRINTABLE.fullmatch(username):
        problems.fail(f"{key}.username", "missing, or not printable ASCII")
    password_hash = _hash(entry, "password_hash", key, problems)
    if "password_hash" not in entry:
        problems.fail(f"{key}.password_hash", "missing (make one with `meshrun hash-secret`)")
    if not username or password_hash is None:
        return None
    return User(username, password_hash)


def _client(entry: dict[str, Any], key: str, problems: Problems, need_secrets: bool) -> Client | None:
    known = {"client_id", "secret_hash", "secret_env", "secret_file", "grant_types", "scopes", "audiences",
             "redirect_uris", "require_pkce", "introspect_audiences"}
    _unknown(entry, key, known, {"secret": _PLAINTEXT_SECRET, "client_secret": _PLAINTEXT_SECRET}, problems)
    before = len(problems)
    client_id = typed(entry, "client_id", str, key, problems)
    if not client_id or not _PRINTABLE.fullmatch(client_id):
        problems.fail(f"{key}.client_id", "missing, or not printable ASCII")
    secret_hash = _hash(entry, "secret_hash", key, problems)
    secret_env = typed(entry, "secret_env", str, key, problems) or None
    secret_file = typed(entry, "secret_file", str, key, problems) or None
    if need_secrets and secret_env and not os.environ.get(secret_env) and secret_hash is None and secret_file is None:
        problems.fail(f"{key}.secret_env", f"environment variable {secret_env} is not set (and there is no "
                                           f"secret_file or secret_hash to fall back on): export {secret_env} "
                                           "before starting the mesh (scripts/up exports the demo secret)")
    grants = strings(entry, "grant_types", key, problems)
    if not grants:
        problems.fail(f"{key}.grant_types", f"missing: list some of {', '.join(GRANT_TYPES)}")
    for grant in grants:
        if grant not in GRANT_TYPES:
            problems.fail(f"{key}.grant_types", REFUSED_GRANTS.get(grant, f"{grant!r} is not one of "
                                                                          f"{', '.join(GRANT_TYPES)}"))
    confidential = secret_hash is not None or secret_env is not None or secret_file is not None
    if "client_credentials" in grants and not confidential:
        problems.fail(f"{key}.grant_types", "client_credentials needs a confidential client: add secret_env, "
                                            "secret_file or secret_hash")
    if "refresh_token" in grants and "authorization_code" not in grants:
        problems.fail(f"{key}.grant_types", "refresh_token is only issued with authorization_code")
    scopes = strings(entry, "scopes", key, problems)
    for scope in scopes:
        if not is_scope_token(scope):
            problems.fail(f"{key}.scopes", f"{scope!r} is not a valid scope (printable ASCII without space, "
                                           "quote or backslash)")
    audiences = strings(entry, "audiences", key, problems)
    if not audiences or not all(audiences):
        problems.fail(f"{key}.audiences", "missing: name the services (their `audience`) this client's tokens "
                                          "are for")
    redirect_uris = strings(entry, "redirect_uris", key, problems)
    if "authorization_code" in grants and not redirect_uris:
        problems.fail(f"{key}.redirect_uris", "missing: authorization_code needs at least one redirect URI")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            problems.fail(f"{key}.redirect_uris", f"{uri!r}: {problem}")
    require_pkce = typed(entry, "require_pkce", bool, key, problems, True)
    if not require_pkce and not confidential:
        problems.fail(f"{key}.require_pkce", "a public client always needs PKCE (RFC 9700 §2.1.1): it has no secret "
                                             "to bind its code to; remove require_pkce = false")
    introspect = strings(entry, "introspect_audiences", key, problems)
    if introspect and not confidential:
        problems.fail(f"{key}.introspect_audiences", "introspection needs client authentication: only a "
                                                     "confidential client may introspect")
    if len(problems) > before:
        return None
    return Client(client_id, secret_hash, secret_env, frozenset(grants), frozenset(scopes), tuple(audiences),
                  tuple(redirect_uris), secret_file, require_pkce, tuple(introspect))
