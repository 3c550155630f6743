"""Email: the order confirmation a customer would receive (logged, not sent: no mail server in the mesh)."""
from __future__ import annotations

from meshrun import EventContext, Service
from meshrun.services.events import ORDER_EVENTS, OrderPlaced

service = Service("email")


@service.subscribe(ORDER_EVENTS, event=OrderPlaced)
async def send_confirmation(order: OrderPlaced, ctx: EventContext) -> None:
    ctx.service.state["sent"] = ctx.service.state.get("sent", 0) + 1
    ctx.log.info("order_confirmation_email", order_id=order.order_id, to=order.customer,
                 subject=f"Your order {order.order_id} is confirmed")
