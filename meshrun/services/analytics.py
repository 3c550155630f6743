"""Analytics: counts orders and revenue per currency; GET /analytics returns the figures.

Figures are this process's since start (at-least-once delivery may count a redelivered order twice after a
crash); it is a dashboard, not a ledger.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from meshrun import BatchContext, Service, ServiceContext
from meshrun.http.server import json_response
from meshrun.service_state import StateKey
from meshrun.services.events import ORDER_EVENTS, OrderPlaced


@dataclass
class OrderFigures:
    orders: int = 0
    items: int = 0
    revenue: dict[str, int] = field(default_factory=dict)  # minor units per currency

    def add(self, order: OrderPlaced) -> None:
        self.orders += 1
        self.items += sum(i.quantity for i in order.items)
        amount = sum(i.quantity * i.unit_price for i in order.items)
        self.revenue[order.currency] = self.revenue.get(order.currency, 0) + amount


service = Service("analytics")
FIGURES = StateKey("figures", OrderFigures)


@service.startup
async def create_figures(ctx: ServiceContext) -> None:
    ctx.state[FIGURES] = OrderFigures()


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def count_orders(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    figures = ctx.service.state[FIGURES]
    for i, order in enumerate(orders):
        figures.add(order)
        ctx.log_for(i).info("order_counted", order_id=order.order_id, orders=figures.orders)


@service.route("GET", "/analytics")
async def get_figures(request: web.Request, ctx: ServiceContext) -> web.Response:
    figures = ctx.state[FIGURES]
    return json_response({"orders": figures.orders, "items": figures.items, "revenue_minor": figures.revenue})
