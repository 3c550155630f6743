"""Which scopes and audiences a request gets: what it asks for, within what the client (or grant) allows.

Plain functions: RFC 6749 §3.3 for scope, RFC 8707 for `resource` (here: the audience names of services.toml).
"""
from __future__ import annotations

from meshrun.auth.claims import format_scope, parse_scope
from meshrun.auth.issuer.errors import invalid_scope, invalid_target
from meshrun.auth.issuer.settings import AuthSettings, Client


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


def token_typ(settings: AuthSettings, audiences: tuple[str, ...]) -> str:
    """The one `typ` a token for `audiences` can carry; invalid_target if their declared profiles differ.

    One token cannot be both: an at+jwt token is refused by a `JWT` consumer, and a `JWT` token must not reach a
    resource server that counts on at+jwt to tell access tokens from other JWTs.
    """
    profiles = {audience: settings.token_typ(audience) for audience in audiences}
    if len(set(profiles.values())) > 1:
        described = ", ".join(f"{audience!r} ({typ})" for audience, typ in profiles.items())
        raise invalid_target(f"the audiences {described} take tokens of different types (resource_servers."
                             "token_typ): ask for them in separate requests, with one `resource` each")
    return next(iter(profiles.values()), "at+jwt")
