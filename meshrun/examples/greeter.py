"""An example service: an HTTP route that publishes an event, and a handler that records it.

Shows the whole service API in a few lines; the README's "write your own service" section follows it.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from meshrun import EventContext, Service, ServiceContext
from meshrun.events import Event, register
from meshrun.http.server import json_response
from meshrun.service_state import StateKey


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class Greeted(Event):
    TYPE = "greeting.sent"
    VERSION = 1
    name: str


service = Service("greeter")
GREETED = StateKey("greeted", list[str])  # typed state: ctx.state[GREETED] is a list[str] to mypy
service.publisher("greetings")


@service.route("POST", "/greet/{name}")
async def greet(request: web.Request, ctx: ServiceContext) -> web.Response:
    event = Greeted(name=request.match_info["name"])
    where = await ctx.publish("greetings", event, key=event.name)
    return json_response({"event_id": event.event_id, "partition": where.partition, "offset": where.offset},
                         status=202)


@service.subscribe("greetings", event=Greeted)
async def on_greeted(event: Greeted, ctx: EventContext) -> None:
    ctx.service.state.setdefault_with(GREETED, list).append(event.name)
    ctx.log.info("greeting_received", name=event.name)


@service.route("GET", "/greeted")
async def greeted(request: web.Request, ctx: ServiceContext) -> web.Response:
    return json_response({"greeted": ctx.state.get(GREETED, [])})
