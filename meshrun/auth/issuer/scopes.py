"""Which scopes and audiences a request gets: what it asks for, within what the client (or grant) allows.

Plain functions: RFC 6749 §3.3 for scope, RFC 8707 for `resource` (here: the audience names of services.toml).
"""
from __future__ import annotations

from meshrun.auth.claims import format_scope, parse_scope
from meshrun.auth.issuer.errors import invalid_scope, invalid_target
from meshrun.auth.issuer.settings import Client


def requested_scope(client: Client, requested: str | None, allowed: frozenset[str] | None = None) -> frozenset[str]:
    """The scopes to grant: those asked for, all of `allowed` (default: the client's) if none are."""
    allowed = client.scopes if allowed is None else allowed
    if requested is None:
        return allowed
    try:
        scopes = parse_scope(requested)
    except ValueError as exc:
        raise invalid_scope(str(exc)) from None
    extra = scopes - allowed
    if extra:
        raise invalid_scope(f"scope {format_scope(extra)!r} is not allowed for client {client.client_id!r} "
                            f"(allowed: {format_scope(allowed) or 'none'})")
    return scopes


def requested_audiences(client: Client, resources: list[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The token's audiences: the `resource` values asked for, each one of `allowed`; all of `allowed` if none."""
    if not resources:
        return allowed
    unknown = [r for r in resources if r not in allowed]
    if unknown:
        raise invalid_target(f"resource {unknown[0]!r} is not an audience client {client.client_id!r} may get "
                             f"tokens for (allowed: {', '.join(allowed)})")
    return tuple(dict.fromkeys(resources))
