"""Inventory: reserves stock for every placed order (here: logs the reservation per line item)."""
from __future__ import annotations

from meshrun import BatchContext, Service
from meshrun.service_state import StateKey
from meshrun.services.events import ORDER_EVENTS, OrderPlaced

service = Service("inventory")
RESERVED = StateKey("reserved", dict[str, int])  # units reserved per SKU since start


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def reserve_stock(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    reserved = ctx.service.state.setdefault_with(RESERVED, dict)
    for i, order in enumerate(orders):
        for item in order.items:
            reserved[item.sku] = reserved.get(item.sku, 0) + item.quantity
        ctx.log_for(i).info("inventory_reserved", order_id=order.order_id,
                            items={item.sku: item.quantity for item in order.items})
