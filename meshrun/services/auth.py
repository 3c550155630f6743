"""The authorization server as a meshrun service: OAuth2 endpoints over HTTP, backed by `AuthorizationServer`.

Only the mapping of requests to the issuer lives here; the rules (grants, PKCE, rotation) are in `meshrun.auth`.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.auth.issuer.authorize import AuthorizationRequest, NotRedirectable, RedirectError, describe_scope
from meshrun.auth.issuer.errors import NO_STORE, OAuthError
from meshrun.auth.issuer.login_page import HEADERS as PAGE_HEADERS
from meshrun.auth.issuer.login_page import error_page, login_form
from meshrun.auth.issuer.params import parse_form, parse_query
from meshrun.auth.issuer.server import AuthorizationServer
from meshrun.auth.issuer.settings import parse_settings
from meshrun.http.server import json_response

SERVER = "authorization_server"
AUTHORIZE_PATH = "/oauth2/authorize"
DISCOVERY_HEADERS = {"Cache-Control": "public, max-age=300"}

service = Service("auth", settings=parse_settings)


def authorization_server(ctx: ServiceContext) -> AuthorizationServer:
    """The running issuer of this service (tests use it to move the issuer's clock)."""
    server: AuthorizationServer = ctx.state[SERVER]
    return server


@service.startup
async def start(ctx: ServiceContext) -> None:
    server = await AuthorizationServer.start(ctx.issuer, ctx.settings, ctx.mesh.base_dir)
    ctx.state[SERVER] = server
    key = server.keys.signing_key()
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


def _page(html: str, status: int = 200) -> web.Response:
    return web.Response(text=html, status=status, content_type="text/html", headers=PAGE_HEADERS)


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **NO_STORE})


def _form(request: AuthorizationRequest, error: str | None = None, username: str = "") -> web.Response:
    # A relative action posts back to wherever the page was served from, also behind a proxy's path prefix.
    return _page(login_form("authorize", list(request.hidden), request.client.client_id, describe_scope(request),
                            error, username))


@service.route("GET", AUTHORIZE_PATH)
async def authorize(request: web.Request, ctx: ServiceContext) -> web.Response:
    """RFC 6749 §4.1.1: validate the request, then show the login form."""
    server = authorization_server(ctx)
    try:
        return _form(server.authorization_request(parse_query(request.query_string)))
    except (NotRedirectable, OAuthError) as exc:
        return _page(error_page(exc.description), 400)
    except RedirectError as exc:
        return _redirect(exc.location)


@service.route("POST", AUTHORIZE_PATH)
async def sign_in(request: web.Request, ctx: ServiceContext) -> web.Response:
    """The login form's submission: a redirect with the code, or the form again with an error."""
    server = authorization_server(ctx)
    try:
        params = parse_form(request.content_type, await request.read())
        auth_request = server.authorization_request(params)
    except (NotRedirectable, OAuthError) as exc:
        return _page(error_page(exc.description), 400)
    except RedirectError as exc:
        return _redirect(exc.location)
    username, password = params.get("username") or "", params.get("password") or ""
    location = await server.login(auth_request, username, password) if username and password else None
    if location is None:
        ctx.log.info("login_failed", client_id=auth_request.client.client_id)
        return _form(auth_request, "Wrong username or password.", username)
    return _redirect(location)


async def _oauth(request: web.Request, ctx: ServiceContext, endpoint: str) -> web.Response:
    server = authorization_server(ctx)
    authorization = request.headers.get("Authorization")
    try:
        params = parse_form(request.content_type, await request.read())
        body: Any
        if endpoint == "token":
            body = await server.token(params, authorization)
        elif endpoint == "introspect":
            body = await server.introspect(params, authorization)
        else:
            await server.revoke(params, authorization)
            return web.Response(status=200, headers=NO_STORE)
    except OAuthError as exc:
        ctx.log.info("oauth_request_refused", endpoint=endpoint, error=exc.error, description=exc.description)
        return exc.response()
    return json_response(body, headers=NO_STORE)


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
    return json_response(authorization_server(ctx).jwks(), headers=DISCOVERY_HEADERS)


@service.route("GET", "/.well-known/oauth-authorization-server")
async def metadata(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(authorization_server(ctx).metadata(), headers=DISCOVERY_HEADERS)


@service.route("GET", "/.well-known/openid-configuration")
async def openid_configuration(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(authorization_server(ctx).metadata(), headers=DISCOVERY_HEADERS)
