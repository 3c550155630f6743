"""The order pipeline's events: OrderPlaced and InvoiceIssued, frozen dataclasses in one module.

Amounts are integer minor units (cents). The envelope and the codec live in `meshrun.events`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshrun.events import Event, register

ORDER_EVENTS = "order-events"
INVOICE_EVENTS = "invoice-events"


@dataclass(frozen=True, slots=True)
class LineItem:
    sku: str
    quantity: int
    unit_price: int  # minor units

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LineItem":
        item = cls(sku=data["sku"], quantity=data["quantity"], unit_price=data["unit_price"])
        if not (isinstance(item.sku, str) and isinstance(item.quantity, int) and isinstance(item.unit_price, int)):
            raise ValueError(f"line item has wrong types: {data!r}")
        return item


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    sku: str
    quantity: int
    unit_price: int
    amount: int


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class OrderPlaced(Event):
    TYPE = "order.placed"
    VERSION = 1

    order_id: str
    customer: str
    currency: str
    items: tuple[LineItem, ...]

    @classmethod
    def from_payload(cls, payload: dict[str, Any], **envelope: Any) -> "OrderPlaced":
        items = tuple(LineItem.from_dict(i) for i in payload["items"])
        return cls(order_id=str(payload["order_id"]), customer=str(payload["customer"]),
                   currency=str(payload["currency"]), items=items, **envelope)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class InvoiceIssued(Event):
    TYPE = "invoice.issued"
    VERSION = 1

    invoice_id: str
    order_id: str
    customer: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: int
    tax: int
    total: int

    @classmethod
    def from_payload(cls, payload: dict[str, Any], **envelope: Any) -> "InvoiceIssued":
        lines = tuple(InvoiceLine(**line) for line in payload["lines"])
        fields = {k: payload[k] for k in ("invoice_id", "order_id", "customer", "currency", "subtotal", "tax",
                                          "total")}
        return cls(lines=lines, **fields, **envelope)
