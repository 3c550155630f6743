"""The token endpoint's grants (RFC 6749 §4.1.3, §4.4, §6): authorization_code with PKCE, client_credentials,
refresh_token with rotation. No password grant and no implicit grant, on purpose.

Each grant takes the authenticated client and the request parameters and returns the RFC 6749 §5.1 body.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshrun.auth import pkce
from meshrun.auth.claims import format_scope
from meshrun.auth.issuer.codes import CodeReplayed
from meshrun.auth.issuer.errors import invalid_grant, invalid_request, unauthorized_client, unsupported_grant_type
from meshrun.auth.issuer.params import Params
from meshrun.auth.issuer.redirect_uris import character_problem, redirect_uri_matches
from meshrun.auth.issuer.refresh import RefreshReplayed
from meshrun.auth.issuer.scopes import requested_audiences, requested_scope, token_typ
from meshrun.auth.issuer.settings import GRANT_TYPES, REFUSED_GRANTS, Client
from meshrun.auth.issuer.tokens import IssuedToken

if TYPE_CHECKING:
    from meshrun.auth.issuer.server import AuthorizationServer


def token_body(issued: IssuedToken, ttl: int, refresh_token: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"access_token": issued.token, "token_type": "Bearer", "expires_in": ttl,
                            "scope": format_scope(issued.scope)}
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body


async def grant(server: AuthorizationServer, client: Client, params: Params) -> dict[str, Any]:
    grant_type = params.require("grant_type")
    if grant_type not in GRANT_TYPES:
        refused = REFUSED_GRANTS.get(grant_type, f"grant_type {grant_type!r} is not supported")
        raise unsupported_grant_type(f"{refused} (supported: {', '.join(GRANT_TYPES)})")
    if grant_type not in client.grant_types:
        raise unauthorized_client(f"client {client.client_id!r} may not use the {grant_type} grant (it may use: "
                                  f"{', '.join(sorted(client.grant_types))})")
    now = server.clock()
    if grant_type == "client_credentials":
        return client_credentials(server, client, params, now)
    if grant_type == "authorization_code":
        return authorization_code(server, client, params, now)
    return refresh_token(server, client, params, now)


def client_credentials(server: AuthorizationServer, client: Client, params: Params, now: float) -> dict[str, Any]:
    """A machine token: the client acts for itself, so `sub` is its client_id (RFC 9068 §2.2)."""
    scope = requested_scope(client, params.get("scope"))
    audiences = requested_audiences(client, params.getall("resource"), client.audiences)
    issued = server.tokens.mint(sub=client.client_id, client_id=client.client_id, scope=scope,
                                audiences=audiences, now=now, typ=token_typ(server.settings, audiences))
    return token_body(issued, server.tokens.ttl)


def authorization_code(server: AuthorizationServer, client: Client, params: Params, now: float
                       ) -> dict[str, Any]:
    value = params.require("code")
    try:
        code = server.codes.redeem(value, now)
    except CodeReplayed as exc:
        server.revoke_code(exc.code, now)
        raise
    if code.client_id != client.client_id:
        raise invalid_grant("authorization code was issued to another client")
    redirect_uri = params.get("redirect_uri")
    if code.redirect_uri is not None and redirect_uri != code.redirect_uri:
        raise invalid_grant("redirect_uri must be identical to the one of the authorization request")
    if code.redirect_uri is None and redirect_uri is not None and (
            character_problem(redirect_uri) or not redirect_uri_matches(client.redirect_uris, redirect_uri)):
        raise invalid_grant("redirect_uri is not registered for this client")
    verifier = params.get("code_verifier")
    if code.code_challenge is not None:
        if verifier is None:
            raise invalid_grant("code_verifier is missing: the authorization request carried a code_challenge")
        if not pkce.is_verifier(verifier):
            raise invalid_request("code_verifier must be 43-128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 §4.1)")
        if not pkce.verifier_matches(verifier, code.code_challenge):
            raise invalid_grant("PKCE verification failed: code_verifier does not match the code_challenge")
    elif verifier is not None:
        raise invalid_grant("code_verifier sent, but the authorization request had no code_challenge")
    audiences = requested_audiences(client, params.getall("resource"), code.audiences)
    issued = server.tokens.mint(sub=code.username, client_id=client.client_id, scope=code.scope,
                                audiences=audiences, now=now, auth_time=code.auth_time,
                                typ=token_typ(server.settings, audiences))
    code.access_jtis[issued.jti] = issued.exp
    refresh = None
    if "refresh_token" in client.grant_types:
        refresh, family = server.refresh.start(client_id=client.client_id, username=code.username,
                                               scope=code.scope, audiences=code.audiences,
                                               auth_time=code.auth_time, now=now)
        family.access_jtis[issued.jti] = issued.exp
        code.family_id = family.family_id
    return token_body(issued, server.tokens.ttl, refresh)


def refresh_token(server: AuthorizationServer, client: Client, params: Params, now: float) -> dict[str, Any]:
    value = params.require("refresh_token")
    known = server.refresh.find(value)
    if known is not None and known.client_id == client.client_id and server.refresh.is_current(value, known, now):
        # Checked before rotating: a refused request must leave the client its refresh token.
        # RFC 6749 §6: a narrower scope may be asked for; the family keeps the scope of the login.
        scope = requested_scope(client, params.get("scope"), known.scope)
        audiences = requested_audiences(client, params.getall("resource"), known.audiences)
        typ = token_typ(server.settings, audiences)
    try:
        new, family = server.refresh.rotate(value, client.client_id, now)
    except RefreshReplayed as exc:
        server.revoke_family(exc.family, now)
        raise
    issued = server.tokens.mint(sub=family.username, client_id=client.client_id, scope=scope,
                                audiences=audiences, now=now, auth_time=family.auth_time, typ=typ)
    family.access_jtis[issued.jti] = issued.exp
    return token_body(issued, server.tokens.ttl, new)
