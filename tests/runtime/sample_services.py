"""Test services for the runtime: a slow consumer and a flaky consumer, declared like any user service."""
from __future__ import annotations

import asyncio

from aiohttp import web

from meshrun import EventContext, Service, ServiceContext
from meshrun.http.server import json_response
from meshrun.transport.base import Record

slow = Service("slow")
slow.publisher("work")


@slow.route("POST", "/jobs/{n}")
async def post_work(request: web.Request, ctx: ServiceContext) -> web.Response:
    n = request.match_info["n"]
    await ctx.publish("work", n.encode(), key=n)
    return json_response({"queued": n}, status=202)


@slow.subscribe("work")
async def handle_work(record: Record, ctx: EventContext) -> None:
    state = ctx.service.state
    state.setdefault("started", []).append(record.value.decode())
    started = state.setdefault("in_flight", asyncio.Event())
    started.set()
    await asyncio.sleep(0.2)  # a handler doing real work while the mesh is asked to stop
    state.setdefault("done", []).append(record.value.decode())


flaky = Service("flaky")


@flaky.subscribe("work")
async def fail_twice(record: Record, ctx: EventContext) -> None:
    attempts = ctx.service.state.setdefault("attempts", {})
    attempts[record.offset] = attempts.get(record.offset, 0) + 1
    if attempts[record.offset] < 3:
        raise RuntimeError("not yet")
    ctx.service.state.setdefault("done", []).append(record.value.decode())


never_ready = Service("never_ready")


@never_ready.readiness
async def waiting_for_database(ctx: ServiceContext) -> str | None:
    return "database not reachable"
