"""Email: the order confirmation a customer would receive (logged, not sent: no mail server in the mesh).

One confirmation per order across redeliveries and restarts: the order is recorded as confirmed in the state store
before its offset is committed, and a redelivered order finds it there.
"""
from __future__ import annotations

from meshrun import BatchContext, Service
from meshrun.services.events import ORDER_EVENTS, OrderPlaced
from meshrun.state import Once

service = Service("email")
CONFIRMED = "confirmed"  # order ids whose confirmation went out


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def send_confirmations(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    ttl = ctx.service.mesh.state_ttl
    # Recorded first, then "sent": a real mail call would go between a pending record and its confirmation.
    kept = await ctx.service.store.keep_once(
        [Once(CONFIRMED, order.order_id, counts={"sent": 1}, ttl=ttl) for order in orders])
    for i, order in enumerate(orders):
        if kept[i] is not None:
            continue
        ctx.log_for(i).info("order_confirmation_email", order_id=order.order_id, to=order.customer,
                            subject=f"Your order {order.order_id} is confirmed")
