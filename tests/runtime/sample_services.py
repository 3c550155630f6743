"""Test services for the runtime: a slow consumer, a flaky consumer, a batch consumer, one that dead-letters a
poison job and one with HTTP only, declared like any user service."""
from __future__ import annotations

import asyncio

from aiohttp import web

from meshrun import BatchContext, EventContext, Service, ServiceContext
from meshrun.examples.greeter import Greeted
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


batcher = Service("batcher")


@batcher.subscribe("greetings", event=Greeted, batch=4)
async def greet_in_batches(events: list[Greeted], ctx: BatchContext) -> None:
    """Records each list it is handed (and the offsets of its records); refuses any list holding "poison"."""
    if any(event.name == "poison" for event in events):
        raise ValueError("poison")
    state = ctx.service.state
    state.setdefault("batches", []).append([event.name for event in events])
    state.setdefault("offsets", []).append([record.offset for record in ctx.records])
    for i, event in enumerate(events):
        ctx.log_for(i).info("greeting_batched", name=event.name)


picky = Service("picky")
picky.publisher("work")


@picky.route("POST", "/jobs/{n}")
async def post_job(request: web.Request, ctx: ServiceContext) -> web.Response:
    n = request.match_info["n"]
    await ctx.publish("work", n.encode(), key=n)
    return json_response({"queued": n}, status=202)


@picky.subscribe("work")
async def refuse_poison(record: Record, ctx: EventContext) -> None:
    """Takes every job but "poison", which fails every attempt and so ends in work.dlq."""
    if record.value == b"poison":
        raise ValueError("cannot handle poison")


http_only = Service("http_only")


@http_only.route("GET", "/status")
async def status(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response({"status": "up"})
