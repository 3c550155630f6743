"""The User service as it was before POST /notify-users: the same /notify-user (real token checks, the same records
and idempotency) and stats, and no route for a list, so POST /notify-users is answered 404 as that version did.

A gate in its state lets a test hold /notify-user calls while invoices queue up behind them; `calls` counts them.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.services import users

service = Service("users", settings=users.service.settings)


@service.startup
async def open_gate(ctx: ServiceContext) -> None:
    ctx.state["gate"] = asyncio.Event()
    ctx.state["gate"].set()
    ctx.state["calls"] = 0


@service.route("POST", "/notify-user", scope="users.notify")
async def notify_user(request: web.Request, ctx: ServiceContext) -> web.StreamResponse:
    ctx.state["calls"] += 1
    await ctx.state["gate"].wait()
    return await users.notify_user(request, ctx)


service.route("GET", "/notifications")(users.list_notifications)
service.route("GET", "/notifications/stats")(users.notification_stats)
