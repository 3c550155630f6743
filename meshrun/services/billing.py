"""Billing: turns each OrderPlaced into an InvoiceIssued (integer minor units, deterministic invoice id).

`compute_invoice` is the business rule, free of I/O; the handler only decodes, computes and publishes.
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from meshrun import BatchContext, Service
from meshrun.services.events import (
    INVOICE_EVENTS,
    ORDER_EVENTS,
    InvoiceIssued,
    InvoiceLine,
    OrderPlaced,
)
from meshrun.settings import settings_from
from meshrun.state import Once

# Fixed namespace: the same order id gives the same invoice id in every process, on every redelivery.
INVOICE_NAMESPACE = uuid.UUID("6f1c2a8e-1f0b-4c53-9d8e-3b7a5c2f9e41")


@dataclass(frozen=True)
class BillingSettings:
    tax_rate_bp: int = 0  # tax in basis points (2000 = 20 %), rounded half up to the minor unit

    def __post_init__(self) -> None:
        if not 0 <= self.tax_rate_bp <= 10_000:
            raise ValueError(f"tax_rate_bp must be between 0 and 10000, got {self.tax_rate_bp}")


_NAMESPACE_BYTES = INVOICE_NAMESPACE.bytes


def invoice_id_for(order_id: str) -> str:
    """"INV-" and the first 16 hex digits of uuid5(INVOICE_NAMESPACE, order_id), upper case.

    Computed from the SHA-1 directly (uuid5 is SHA-1 with the version set in byte 6): the same ids, without
    building a UUID object per invoice."""
    head = bytearray(hashlib.sha1(_NAMESPACE_BYTES + order_id.encode()).digest()[:8])
    head[6] = (head[6] & 0x0F) | 0x50
    return "INV-" + head.hex().upper()


def compute_invoice(order: OrderPlaced, tax_rate_bp: int = 0) -> InvoiceIssued:
    """The invoice of an order: line amounts, subtotal, tax and total, all in integer minor units."""
    lines = tuple(InvoiceLine(i.sku, i.quantity, i.unit_price, i.quantity * i.unit_price) for i in order.items)
    subtotal = sum(line.amount for line in lines)
    tax = (subtotal * tax_rate_bp + 5_000) // 10_000
    return InvoiceIssued(
        invoice_id=invoice_id_for(order.order_id), order_id=order.order_id, customer=order.customer,
        currency=order.currency, lines=lines, subtotal=subtotal, tax=tax, total=subtotal + tax,
        trace_id=order.trace_id,
    )


service = Service("billing", settings=settings_from(BillingSettings))
INVOICED = "invoiced"  # order id -> the event id that placed it: a repost (another event) is not invoiced again
service.publisher(INVOICE_EVENTS)


@service.subscribe(ORDER_EVENTS, event=OrderPlaced, batch=100)
async def on_orders_placed(orders: list[OrderPlaced], ctx: BatchContext) -> None:
    settings: BillingSettings = ctx.service.settings
    ttl = ctx.service.mesh.state_ttl
    # Recorded before publishing, in one transaction: a crash after it redelivers the same events, which find
    # their own event id recorded and publish the same invoice again (the User service notifies once per invoice).
    kept = await ctx.service.store.keep_once(
        [Once(INVOICED, order.order_id, order.event_id.encode(), ttl=ttl) for order in orders])
    for i, order in enumerate(orders):
        log = ctx.log_for(i)
        first_event = kept[i]
        if first_event is not None and first_event.decode() != order.event_id:
            # The same order placed twice (a repost that reached us): one invoice per order.
            log.info("invoice_already_issued", order_id=order.order_id, invoice_id=invoice_id_for(order.order_id))
            continue
        invoice = compute_invoice(order, settings.tax_rate_bp)
        await ctx.publish(INVOICE_EVENTS, invoice, key=order.order_id)
        log.info("invoice_issued", invoice_id=invoice.invoice_id, order_id=order.order_id, total=invoice.total,
                 currency=invoice.currency)
