"""The authorization server as a meshrun service: OAuth2 endpoints over HTTP, backed by `AuthorizationServer`.

Only the mapping of requests to the issuer lives here (headers, cookies, status codes); the rules (grants, PKCE,
throttling, CSRF tokens) are in `meshrun.auth`.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.auth.hashing import HashQueueFull
from meshrun.auth.issuer.authorize import (
    AuthorizationRequest,
    NotRedirectable,
    RedirectError,
    describe_scope,
)
from meshrun.auth.issuer.client_address import client_address
from meshrun.auth.issuer.csrf import cross_site_reason, origin_of
from meshrun.auth.issuer.errors import NO_STORE, OAuthError
from meshrun.auth.issuer.login_page import CSRF_FIELD, error_page, in_words, login_form
from meshrun.auth.issuer.login_page import HEADERS as PAGE_HEADERS
from meshrun.auth.issuer.params import Params, parse_form, parse_query
from meshrun.auth.issuer.server import AuthorizationServer
from meshrun.auth.issuer.settings import parse_settings
from meshrun.auth.issuer.throttle import Throttled
from meshrun.http.server import json_response
from meshrun.service_state import StateKey

SERVER = StateKey("authorization_server", AuthorizationServer)
AUTHORIZE_PATH = "/oauth2/authorize"
METADATA_HEADERS = {"Cache-Control": "public, max-age=300"}
WRONG_PASSWORD = "Wrong username or password."
NOT_FROM_OUR_PAGE = ("This sign-in was not submitted from this server's sign-in page, so nothing was checked. "
                     "Sign in again here.")

service = Service("auth", settings=parse_settings)


def authorization_server(ctx: ServiceContext) -> AuthorizationServer:
    """The running issuer of this service (tests use it to move the issuer's clock)."""
    return ctx.state[SERVER]


@service.startup
async def start(ctx: ServiceContext) -> None:
    server = await AuthorizationServer.start(ctx.issuer, ctx.settings, ctx.mesh.base_dir)
    ctx.state[SERVER] = server
    key = server.keys.signing_key(server.clock())
    ctx.log.info("authorization_server_started", issuer=server.issuer, kid=key.kid, alg=key.alg,
                 keys_dir=str(server.keys.store.directory), clients=len(server.clients), users=len(server.users))


@service.shutdown
async def stop(ctx: ServiceContext) -> None:
    if SERVER in ctx.state:
        authorization_server(ctx).close()


@service.readiness
async def keys_loaded(ctx: ServiceContext) -> str | None:
    if SERVER not in ctx.state:
        return "the authorization server has not started"
    return None


def _address(request: web.Request, server: AuthorizationServer) -> str:
    return client_address(request.remote, request.headers.get("X-Forwarded-For"), server.settings.trusted_proxies)


def _page(html: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=html, status=status, content_type="text/html", headers={**PAGE_HEADERS, **(headers or {})})


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def _form(request: web.Request, server: AuthorizationServer, auth_request: AuthorizationRequest,
          error: str | None = None, username: str = "", status: int = 200, retry_after: int | None = None
          ) -> web.Response:
    """The login form, with a CSRF token bound to this browser's sign-in cookie (set here when it has none)."""
    csrf = server.csrf
    cookie = csrf.cookie_for(request.cookies.get(csrf.cookie_name))
    # A relative action posts back to wherever the page was served from, also behind a proxy's path prefix.
    html = login_form("authorize", list(auth_request.hidden), auth_request.client.client_id,
                      describe_scope(auth_request), csrf.token_for(cookie), error, username)
    response = _page(html, status, {"Retry-After": str(retry_after)} if retry_after else None)
    response.set_cookie(csrf.cookie_name, cookie, path="/", httponly=True, samesite="Strict", secure=csrf.secure)
    return response


@service.route("GET", AUTHORIZE_PATH)
async def authorize(request: web.Request, ctx: ServiceContext) -> web.Response:
    """RFC 6749 §4.1.1: validate the request, then show the login form."""
    server = authorization_server(ctx)
    try:
        return _form(request, server, server.authorization_request(parse_query(request.query_string)))
    except (NotRedirectable, OAuthError) as exc:
        return _page(error_page(exc.description), 400)
    except RedirectError as exc:
        return _redirect(exc.location)


@service.route("POST", AUTHORIZE_PATH)
async def sign_in(request: web.Request, ctx: ServiceContext) -> web.Response:
    """The login form's submission: a redirect with the code, or the form again saying what went wrong.

    Cheap refusals come first (a foreign page, a missing CSRF token, a name or address that must wait): none of
    them costs a password hash, and none issues a code."""
    server = authorization_server(ctx)
    try:
        params = parse_form(request.content_type, await request.read())
        auth_request = server.authorization_request(params)
    except (NotRedirectable, OAuthError) as exc:
        return _page(error_page(exc.description), 400)
    except RedirectError as exc:
        return _redirect(exc.location)
    address = _address(request, server)
    username, password = params.get("username") or "", params.get("password") or ""
    refused = _csrf_problem(request, server, params)
    if refused is not None:
        ctx.log.warning("login_csrf_refused", client_id=auth_request.client.client_id, address=address,
                        reason=refused)
        return _form(request, server, auth_request, NOT_FROM_OUR_PAGE, username, status=403)
    if not username or not password:
        return _form(request, server, auth_request, WRONG_PASSWORD, username)
    try:
        result = await server.login(auth_request, username, password, address)
    except Throttled as exc:
        ctx.log.info("login_throttled", client_id=auth_request.client.client_id, address=address,
                     retry_after=exc.retry_after)
        return _form(request, server, auth_request, f"Too many failed sign-ins ({exc.reason}). Try again in "
                     f"{in_words(exc.retry_after)}.", username, status=429, retry_after=exc.retry_after)
    except HashQueueFull as exc:
        ctx.log.warning("login_hash_queue_full", address=address, retry_after=exc.retry_after)
        return _form(request, server, auth_request, f"The server is busy. Try again in {in_words(exc.retry_after)}.",
                     username, status=503, retry_after=exc.retry_after)
    if result.location is None:
        ctx.log.info("login_failed", client_id=auth_request.client.client_id, address=address)
        wait = f" Too many failed sign-ins: wait {in_words(result.wait)} before the next try." if result.wait else ""
        return _form(request, server, auth_request, WRONG_PASSWORD + wait, username)
    return _redirect(result.location)


def _csrf_problem(request: web.Request, server: AuthorizationServer, params: Params) -> str | None:
    return (cross_site_reason(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                              origin_of(server.issuer))
            or server.csrf.problem(request.cookies.get(server.csrf.cookie_name), params.get(CSRF_FIELD)))


async def _oauth(request: web.Request, ctx: ServiceContext, endpoint: str) -> web.Response:
    server = authorization_server(ctx)
    authorization = request.headers.get("Authorization")
    address = _address(request, server)
    try:
        params = parse_form(request.content_type, await request.read())
        body: Any
        if endpoint == "token":
            body = await server.token(params, authorization, address)
        elif endpoint == "introspect":
            body = await server.introspect(params, authorization, address)
        else:
            await server.revoke(params, authorization, address)
            return web.Response(status=200, headers=NO_STORE)
    except OAuthError as exc:
        ctx.log.info("oauth_request_refused", endpoint=endpoint, error=exc.error, description=exc.description,
                     address=address)
        return exc.response()
    except Throttled as exc:
        ctx.log.info("client_authentication_throttled", endpoint=endpoint, address=address,
                     retry_after=exc.retry_after)
        return _unavailable(429, f"client authentication refused unchecked: {exc.reason}; retry after "
                                 f"{exc.retry_after} s", exc.retry_after)
    except HashQueueFull as exc:
        ctx.log.warning("client_authentication_hash_queue_full", endpoint=endpoint, address=address)
        return _unavailable(503, f"the server is busy checking secrets; retry after {exc.retry_after} s",
                            exc.retry_after)
    return json_response(body, headers=NO_STORE)


def _unavailable(status: int, description: str, retry_after: int) -> web.Response:
    # RFC 6749 registers no error for "later, please" at these endpoints; temporarily_unavailable (§4.1.2.1) says it
    # best, and the status (429 or 503) and Retry-After say the rest.
    return OAuthError("temporarily_unavailable", description, status, {"Retry-After": str(retry_after)}).response()


@service.route("POST", "/oauth2/token")
async def token(request: web.Request, ctx: ServiceContext) -> web.Response:
    return await _oauth(request, ctx, "token")


@service.route("POST", "/oauth2/introspect")
async def introspect(request: web.Request, ctx: ServiceContext) -> web.Response:
    return await _oauth(request, ctx, "introspect")


@service.route("POST", "/oauth2/revoke")
async def revoke(request: web.Request, ctx: ServiceContext) -> web.Response:
    return await _oauth(request, ctx, "revoke")


@service.route("GET", "/oauth2/jwks")
async def jwks(request: web.Request, ctx: ServiceContext) -> web.Response:
    server = authorization_server(ctx)
    return json_response(server.jwks(), headers=server.jwks_headers())


@service.route("GET", "/.well-known/oauth-authorization-server")
async def metadata(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(authorization_server(ctx).metadata(), headers=METADATA_HEADERS)


@service.route("GET", "/.well-known/openid-configuration")
async def openid_configuration(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(authorization_server(ctx).metadata(), headers=METADATA_HEADERS)
