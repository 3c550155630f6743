"""Inventory: reserves stock for every placed order, once per order across redeliveries and restarts.

Reservations are counters per SKU in the state store, added in the same transaction that records the order as
reserved: a redelivered or reposted order reserves nothing more.
"""
from __future__ import annotations

from aiohttp import web

from meshrun import BatchContext, Service, ServiceContext
from meshrun.http.server import json_response
from meshrun.services.events import ORDER_EVENTS, OrderPlaced
from meshrun.state import Once

service = Service("inventory")
RESERVED = "reserved"  # order ids whose stock is reserved
SKU_PREFIX = "sku:"  # counter of units reserved per SKU


def reservation_of(order: OrderPlaced, ttl: float) -> Once:
    """The order, recorded as reserved, and the units it reserves per SKU."""
    units: dict[str, int] = {}
    for item in order.items:
        units[SKU_PREFIX + item.sku] = units.get(SKU_PREFIX + item.sku, 0) + item.quantity
    return Once(RESERVED, order.order_id, counts=units, ttl=ttl)


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def reserve_stock(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    ttl = ctx.service.mesh.state_ttl
    kept = await ctx.service.store.keep_once([reservation_of(order, ttl) for order in orders])
    for i, order in enumerate(orders):
        if kept[i] is None:
            ctx.log_for(i).info("inventory_reserved", order_id=order.order_id,
                                items={item.sku: item.quantity for item in order.items})
        else:
            ctx.log_for(i).info("inventory_already_reserved", order_id=order.order_id)


@service.route("GET", "/reserved")
async def reserved(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Units reserved per SKU, and how many orders reserved them (an operator endpoint, when given a port)."""
    counts = await ctx.store.counters(SKU_PREFIX)
    return json_response({"orders": await ctx.store.count(RESERVED),
                          "units": {name[len(SKU_PREFIX):]: n for name, n in counts.items()}})
