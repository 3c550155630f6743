"""Business rules of the pipeline, without I/O: order validation, invoices, the event codec."""
from __future__ import annotations

import orjson
import pytest

from meshrun.events import EventDecodeError, decode, encode
from meshrun.services.billing import compute_invoice, invoice_id_for
from meshrun.services.events import InvoiceIssued, LineItem, OrderPlaced
from meshrun.services.orders import DEFAULT_ITEM, OrderRejected, parse_order
from meshrun.services.users import NotificationRejected, parse_notification


def order(**kw) -> OrderPlaced:
    base = dict(order_id="123", customer="alice", currency="EUR",
                items=(LineItem("A", 3, 1999), LineItem("B", 1, 1)))
    return OrderPlaced(**{**base, **kw})


def test_invoice_amounts_are_integer_minor_units():
    invoice = compute_invoice(order(), tax_rate_bp=2000)
    assert [line.amount for line in invoice.lines] == [5997, 1]
    assert invoice.subtotal == 5998
    assert invoice.tax == 1200  # 1199.6 rounded half up
    assert invoice.total == 7198
    assert all(isinstance(v, int) for v in (invoice.subtotal, invoice.tax, invoice.total))


def test_redelivered_order_produces_the_same_invoice():
    first, again = order(), order()
    assert first.event_id != again.event_id
    assert compute_invoice(first).invoice_id == compute_invoice(again).invoice_id == invoice_id_for("123")
    assert invoice_id_for("124") != invoice_id_for("123")


def test_invoice_keeps_the_trace_of_its_order():
    placed = order()
    assert compute_invoice(placed).trace_id == placed.trace_id


def test_events_round_trip_through_the_envelope():
    placed = order()
    data = orjson.loads(encode(placed))
    assert list(data) == ["event_id", "type", "version", "occurred_at", "trace_id", "payload"]
    assert data["type"] == "order.placed" and data["version"] == 1
    assert decode(encode(placed), OrderPlaced) == placed
    invoice = compute_invoice(placed)
    assert decode(encode(invoice)) == invoice


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=2), "'order.placed' version 2 is not supported (this build reads version 1)"),
    (lambda d: d.update(type="order.cancelled"), "unknown event type 'order.cancelled'"),
    (lambda d: d.pop("trace_id"), "envelope is missing trace_id"),
    (lambda d: d["payload"].pop("customer"), "payload is invalid"),
])
def test_decoder_rejects_what_it_does_not_understand(mutate, message):
    data = orjson.loads(encode(order()))
    mutate(data)
    with pytest.raises(EventDecodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode(orjson.dumps(data))


def test_decoder_rejects_garbage():
    with pytest.raises(EventDecodeError, match="not JSON"):
        decode(b"\xff{")
    with pytest.raises(EventDecodeError, match="expected 'order.placed', got 'invoice.issued'"):
        decode(encode(compute_invoice(order())), OrderPlaced)


def test_order_without_body_gets_the_documented_default_item():
    placed = parse_order("123", b"", "alice")
    assert placed.items == (DEFAULT_ITEM,) and placed.currency == "EUR" and placed.customer == "alice"


def test_order_with_items_and_currency():
    body = orjson.dumps({"items": [{"sku": "BOOK-1", "quantity": 2, "unit_price": 1250}], "currency": "USD"})
    placed = parse_order("A-1", body, "bob")
    assert placed.items == (LineItem("BOOK-1", 2, 1250),) and placed.currency == "USD"


@pytest.mark.parametrize("order_id, body, field", [
    ("bad id!", b"", "order_id"),
    ("x" * 65, b"", "order_id"),
    ("1", b"{not json", "body"),
    ("1", b"[]", "body"),
    ("1", b'{"colour": "red"}', "colour"),
    ("1", b'{"currency": "euro"}', "currency"),
    ("1", b'{"items": []}', "items"),
    ("1", b'{"items": [{"sku": "A", "quantity": -1, "unit_price": 5}]}', "items[0].quantity"),
    ("1", b'{"items": [{"sku": "A", "quantity": 1, "unit_price": 19.99}]}', "items[0].unit_price"),
    ("1", b'{"items": [{"sku": "A", "quantity": 1}]}', "items[0].unit_price"),
    ("1", b'{"items": [{"sku": "A", "quantity": 1, "unit_price": 1, "discount": 2}]}', "items[0].discount"),
    ("1", b'{"items": [{"sku": "", "quantity": 1, "unit_price": 1}]}', "items[0].sku"),
    ("123\n", b"", "order_id"),
    ("1", b'{"currency": "EUR\\n"}', "currency"),
    ("1", b'{"items": [{"sku": "A\\n", "quantity": 1, "unit_price": 1}]}', "items[0].sku"),
])
def test_bad_orders_name_the_field(order_id, body, field):
    with pytest.raises(OrderRejected) as info:
        parse_order(order_id, body, "alice")
    assert info.value.field == field


def test_notification_body_is_validated():
    ok = parse_notification(b'{"invoice_id": "INV-1", "order_id": "1", "user": "alice", "total": 5}')
    assert ok["invoice_id"] == "INV-1"
    for body, field in [(b'{"order_id": "1", "user": "a"}', "invoice_id"),
                        (b'{"invoice_id": "I", "order_id": "1", "user": "a", "x": 1}', "x"),
                        (b'{"invoice_id": "I", "order_id": "1", "user": "a", "total": "5"}', "total"),
                        (b'{"invoice_id": "I\\n", "order_id": "1", "user": "a"}', "invoice_id")]:
        with pytest.raises(NotificationRejected) as info:
            parse_notification(body)
        assert info.value.field == field


def test_invoice_event_type_is_registered():
    assert InvoiceIssued.TYPE == "invoice.issued"


def test_invoice_ids_stay_those_of_uuid5_so_upgrades_keep_deduplicating() -> None:
    import uuid

    from meshrun.services.billing import INVOICE_NAMESPACE

    for order_id in ["123", "bench1234-99999", "ü-order", "x" * 200, ""]:
        assert invoice_id_for(order_id) == "INV-" + uuid.uuid5(INVOICE_NAMESPACE, order_id).hex[:16].upper()
