"""Analytics: counts orders, items and revenue per currency; GET /analytics returns the figures.

Exact across redeliveries and restarts: each order's figures are added in the same state-store transaction that
records the order as counted, so a redelivered or reposted order adds nothing.
"""
from __future__ import annotations

from aiohttp import web

from meshrun import BatchContext, Service, ServiceContext
from meshrun.http.server import json_response
from meshrun.services.events import ORDER_EVENTS, OrderPlaced
from meshrun.state import Once

service = Service("analytics")
COUNTED = "counted"  # order ids whose figures are in the totals
REVENUE_PREFIX = "revenue:"  # counter of revenue per currency, in minor units


def figures_of(order: OrderPlaced) -> dict[str, int]:
    """What one order adds to the totals."""
    amount = sum(i.quantity * i.unit_price for i in order.items)
    return {"orders": 1, "items": sum(i.quantity for i in order.items), REVENUE_PREFIX + order.currency: amount}


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def count_orders(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    ttl = ctx.service.mesh.state_ttl
    kept = await ctx.service.store.keep_once(
        [Once(COUNTED, order.order_id, counts=figures_of(order), ttl=ttl) for order in orders])
    for i, order in enumerate(orders):
        if kept[i] is None:
            ctx.log_for(i).info("order_counted", order_id=order.order_id)


@service.route("GET", "/analytics")
async def get_figures(request: web.Request, ctx: ServiceContext) -> web.Response:
    counts = await ctx.store.counters()
    revenue = {name[len(REVENUE_PREFIX):]: n for name, n in counts.items() if name.startswith(REVENUE_PREFIX)}
    return json_response({"orders": counts.get("orders", 0), "items": counts.get("items", 0),
                          "revenue_minor": revenue})
