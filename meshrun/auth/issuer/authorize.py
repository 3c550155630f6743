"""The authorization request (RFC 6749 §4.1.1 with PKCE, RFC 7636): validating it, and the answers it can get.

Errors about the client or its redirect URI are shown on a page (redirecting would hand a code or an error to an
unverified address, §4.1.2.1); every other error goes back to the client's redirect URI with `state`.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from meshrun.auth import pkce
from meshrun.auth.claims import format_scope
from meshrun.auth.issuer.errors import OAuthError
from meshrun.auth.issuer.params import Params
from meshrun.auth.issuer.redirect_uris import character_problem, redirect_uri_matches
from meshrun.auth.issuer.scopes import requested_audiences, requested_scope
from meshrun.auth.issuer.settings import Client
from meshrun.errors import AuthError

# The parameters the login form carries from the GET that showed it to the POST that submits it.
REQUEST_PARAMETERS = ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                      "code_challenge_method")


class NotRedirectable(AuthError):
    """The request cannot be answered at its redirect URI: shown to the user instead."""

    def __init__(self, description: str) -> None:
        self.description = description
        super().__init__(description)


def with_query(uri: str, values: dict[str, str]) -> str:
    """`uri` with `values` added to its query, keeping the query it already has (RFC 6749 §3.1.2)."""
    return uri + ("&" if "?" in uri else "?") + urlencode(values)


class RedirectError(AuthError):
    """An error answered at the client's redirect URI (RFC 6749 §4.1.2.1), with `state` and `iss` (RFC 9207)."""

    def __init__(self, redirect_uri: str, error: str, description: str, state: str | None, issuer: str) -> None:
        values = {"error": error, "error_description": description}
        if state is not None:
            values["state"] = state
        values["iss"] = issuer
        self.location = with_query(redirect_uri, values)
        self.error = error
        super().__init__(f"{error}: {description}")


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A validated request: which client wants which scopes and audiences, where the code goes."""

    client: Client
    redirect_uri: str
    redirect_uri_given: bool
    scope: frozenset[str]
    audiences: tuple[str, ...]
    state: str | None
    code_challenge: str | None
    hidden: tuple[tuple[str, str], ...]  # the original parameters, for the login form to send back

    def success(self, code: str, issuer: str) -> str:
        values = {"code": code}
        if self.state is not None:
            values["state"] = self.state
        values["iss"] = issuer
        return with_query(self.redirect_uri, values)


def parse_authorization_request(params: Params, clients: dict[str, Client], issuer: str) -> AuthorizationRequest:
    client_id = params.get("client_id")
    if client_id is None:
        raise NotRedirectable("the request has no client_id.")
    client = clients.get(client_id)
    if client is None:
        raise NotRedirectable(f"no client is registered as {client_id!r}.")
    given = params.get("redirect_uri")
    if given is None:
        only = client.redirect_uris[0] if len(client.redirect_uris) == 1 else None
        if only is None or only.startswith("http://"):  # a loopback redirect needs its port: it must be sent
            raise NotRedirectable("the request has no redirect_uri (required unless the client has exactly one "
                                  "fixed redirect URI).")
        redirect_uri = only
    elif problem := character_problem(given):  # before matching: the raw string is what a redirect would use
        raise NotRedirectable(f"redirect_uri {given!r} {problem}.")
    elif not redirect_uri_matches(client.redirect_uris, given):
        raise NotRedirectable(f"redirect_uri {given!r} is not registered for client {client_id!r}.")
    else:
        redirect_uri = given
    state = params.get("state")

    def refuse(error: str, description: str) -> RedirectError:
        return RedirectError(redirect_uri, error, description, state, issuer)

    if params.get("response_type") != "code":
        raise refuse("unsupported_response_type", "only response_type=code is supported (no implicit grant)")
    if "authorization_code" not in client.grant_types:
        raise refuse("unauthorized_client", f"client {client_id!r} may not use the authorization_code grant")
    try:
        scope = requested_scope(client, params.get("scope"))
        audiences = requested_audiences(client, params.getall("resource"), client.audiences)
    except OAuthError as exc:
        raise refuse(exc.error, exc.description) from None
    challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
    if challenge is None:
        if method is not None:
            raise refuse("invalid_request", "code_challenge_method without code_challenge")
        if client.require_pkce or not client.confidential:
            raise refuse("invalid_request", f"PKCE is required for client {client_id!r}: send code_challenge and "
                                            "code_challenge_method=S256 (RFC 9700 §2.1.1)")
    elif method != "S256":
        raise refuse("invalid_request", "code_challenge_method must be S256 (plain is not accepted)")
    elif not pkce.is_challenge(challenge):
        raise refuse("invalid_request", "code_challenge must be the 43-character BASE64URL(SHA-256(code_verifier))")
    hidden = [(name, value) for name in REQUEST_PARAMETERS if (value := params.get(name)) is not None]
    hidden += [("resource", r) for r in params.getall("resource")]
    return AuthorizationRequest(client, redirect_uri, given is not None, scope, audiences, state, challenge,
                                tuple(hidden))


def describe_scope(request: AuthorizationRequest) -> list[str]:
    return format_scope(request.scope).split() if request.scope else []
