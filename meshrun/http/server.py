"""The aiohttp application of one service: its routes, GET /health and /ready, JSON errors, a body limit.

Nothing here knows the business of a service; guards on routes come from `meshrun.auth.guard`.
"""
from __future__ import annotations

import math
from typing import Any, Awaitable, Callable

import orjson
import structlog
from aiohttp import web

from meshrun.context import ServiceContext
from meshrun.errors import StateUnavailable
from meshrun.service import Route, Service

# The verified token of a guarded request: request[CLAIMS].sub, .scope, .client_id
CLAIMS: Any = web.RequestKey("meshrun.claims", object) if hasattr(web, "RequestKey") else "meshrun.claims"
CONTEXT = web.AppKey("meshrun.context", ServiceContext)
MAX_BODY = web.AppKey("meshrun.max_body_bytes", int)
ReadinessProbe = Callable[[], Awaitable[list[str]]]
log = structlog.get_logger("meshrun.http")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


def json_error(status: int, error: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": error, "message": message, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """Every error leaves as JSON with a status that says what went wrong; never an HTML page or a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        error = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status,
                                                                                          "http_error")
        message = exc.reason
        if exc.status == 413:
            message = f"request body larger than {request.app[MAX_BODY]} bytes"
        elif exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        response = json_error(exc.status, error, message)
        for name in ("Allow", "WWW-Authenticate", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except StateUnavailable as exc:
        # The database is down or read-only: a request that needs it waits for it, and says when to retry.
        retry_after = str(max(1, math.ceil(exc.retry_after)))
        response = json_error(503, "unavailable", f"{exc}; retry in {retry_after}s", retry_after=int(retry_after))
        response.headers["Retry-After"] = retry_after
        return response
    except Exception:
        ctx = request.app.get(CONTEXT)
        (ctx.log if ctx is not None else log).exception("request_failed", method=request.method, path=request.path)
        return json_error(500, "internal_error", "the service failed to handle this request; see its log")


def _wrap(route: Route, ctx: ServiceContext) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    handler = route.handler
    if not route.authenticated:
        async def open_route(request: web.Request) -> web.StreamResponse:
            return await handler(request, ctx)

        return open_route

    async def guarded_route(request: web.Request) -> web.StreamResponse:
        guard = ctx.guard
        if guard is None:  # fail closed: a protected route never runs unverified
            return json_error(503, "unavailable", "token verification is not configured for this service")
        request[CLAIMS] = await guard.authorize(request, route.scope)
        return await handler(request, ctx)

    return guarded_route


def create_app(service: Service, ctx: ServiceContext, readiness: ReadinessProbe) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=service.max_body_bytes)
    app[CONTEXT] = ctx
    app[MAX_BODY] = service.max_body_bytes

    async def health(_: web.Request) -> web.Response:
        return json_response({"status": "alive", "service": ctx.name})

    async def ready(_: web.Request) -> web.Response:
        problems = await readiness()
        if problems:
            return json_response({"status": "not_ready", "service": ctx.name, "problems": problems}, status=503)
        return json_response({"status": "ready", "service": ctx.name})

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    for route in service.routes:
        app.router.add_route(route.method, route.path, _wrap(route, ctx))
    return app
