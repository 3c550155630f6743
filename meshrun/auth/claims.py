"""The claims of a verified access token (RFC 9068), and the scope syntax both sides share (RFC 6749 §3.3).

Parsing only: signatures and time checks live in `verify`; minting lives in `issuer.tokens`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def is_scope_token(value: str) -> bool:
    return _SCOPE_TOKEN.fullmatch(value) is not None


def parse_scope(value: str | None) -> frozenset[str]:
    """A space-delimited scope string -> the set of scopes (empty for None or ""). Raises ValueError if malformed."""
    if not value:
        return frozenset()
    scopes = value.split(" ")
    for scope in scopes:
        if not is_scope_token(scope):
            raise ValueError(f"{scope!r} is not a valid scope (RFC 6749 §3.3: printable ASCII, no space, quote "
                             "or backslash, separated by single spaces)")
    return frozenset(scopes)


def format_scope(scopes: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    """The scope string of a set of scopes, sorted so the same set always reads the same."""
    return " ".join(sorted(scopes))


@dataclass(frozen=True, slots=True)
class Claims:
    """What a resource server learns from a valid access token: who (sub), through which client, allowed what.

    `sub` is the user name for a user's token and the client id for a machine token (RFC 9068 §2.2).
    """

    sub: str
    client_id: str
    scope: frozenset[str]
    aud: tuple[str, ...]
    exp: int
    jti: str
    raw: dict[str, Any] = field(compare=False, repr=False)

