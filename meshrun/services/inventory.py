"""Inventory: reserves stock for every placed order (here: logs the reservation per line item)."""
from __future__ import annotations

from meshrun import EventContext, Service
from meshrun.services.events import ORDER_EVENTS, OrderPlaced

service = Service("inventory")


@service.subscribe(ORDER_EVENTS, event=OrderPlaced)
async def reserve_stock(order: OrderPlaced, ctx: EventContext) -> None:
    reserved = ctx.service.state.setdefault("reserved", {})
    for item in order.items:
        reserved[item.sku] = reserved.get(item.sku, 0) + item.quantity
    ctx.log.info("inventory_reserved", order_id=order.order_id,
                 items={item.sku: item.quantity for item in order.items})
