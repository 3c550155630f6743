"""A resource server for the auth tests, declared like any user service: routes protected by scope."""
from __future__ import annotations

from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.auth.claims import Claims
from meshrun.http.server import CLAIMS, json_response

service = Service("protected")


def _claims(request: web.Request) -> dict[str, object]:
    claims: Claims = request[CLAIMS]
    return {"sub": claims.sub, "client_id": claims.client_id, "scope": sorted(claims.scope), "aud": list(claims.aud)}


@service.route("POST", "/orders", scope="orders.write")
async def place_order(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(_claims(request), status=201)


@service.route("POST", "/notify", scope="users.notify")
async def notify(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(_claims(request))


@service.route("GET", "/me", authenticated=True)
async def me(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response(_claims(request))


@service.route("GET", "/public")
async def public(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response({"open": True})


@service.route("GET", "/refuse-first-token", authenticated=True)
async def refuse_first_token(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Answers 401 to the first token it sees, as a server whose view of a token changed would (retry tests)."""
    seen = ctx.state.setdefault("tokens_seen", [])
    token = request.headers["Authorization"][7:]
    seen.append(token)
    if token == seen[0]:
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                                   text='{"error": "invalid_token"}', content_type="application/json")
    return json_response(_claims(request))
