"""Email: the order confirmation a customer would receive (logged, not sent: no mail server in the mesh)."""
from __future__ import annotations

from meshrun import BatchContext, Service
from meshrun.service_state import StateKey
from meshrun.services.events import ORDER_EVENTS, OrderPlaced

service = Service("email")
SENT = StateKey("sent", int)  # confirmations sent since start


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def send_confirmations(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    for i, order in enumerate(orders):
        ctx.service.state[SENT] = ctx.service.state.get(SENT, 0) + 1
        ctx.log_for(i).info("order_confirmation_email", order_id=order.order_id, to=order.customer,
                            subject=f"Your order {order.order_id} is confirmed")
