"""The Order service: POST /orders/{id} with a user token (scope orders.write) publishes an OrderPlaced.

Validation (`parse_order`) and the idempotency decision are plain functions/objects, free of aiohttp.
Reposting an order id is answered with the first answer and publishes nothing, after a restart too: accepted
orders are kept in the state store before the 202.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.errors import StateUnavailable, TransportUnavailable
from meshrun.http.server import CLAIMS, json_error, json_response
from meshrun.service_state import StateKey
from meshrun.services.events import ORDER_EVENTS, LineItem, OrderPlaced
from meshrun.settings import settings_from

# \Z, not $: $ also matches before a final newline, and "123\n" is not an order id.
ORDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
CURRENCY = re.compile(r"^[A-Z]{3}\Z")
TRACE_ID = re.compile(r"^[0-9a-f]{32}\Z")
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_UNIT_PRICE = 100_000_000  # minor units
DEFAULT_ITEM = LineItem(sku="DEMO-WIDGET", quantity=1, unit_price=1999)
DEFAULT_CURRENCY = "EUR"


class OrderRejected(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a float" if isinstance(value, float) else type(value).__name__
        raise OrderRejected(field, f"must be an integer, got {kind} ({value!r}); amounts are in minor units")
    if not low <= value <= high:
        raise OrderRejected(field, f"must be between {low} and {high}, got {value}")
    return value


def parse_order(order_id: str, body: bytes, customer: str, trace_id: str | None = None) -> OrderPlaced:
    """Validate an order request; raises OrderRejected naming the offending field."""
    if not ORDER_ID.match(order_id):
        raise OrderRejected("order_id", "must be 1-64 characters of letters, digits, '-' or '_'")
    items: tuple[LineItem, ...] = (DEFAULT_ITEM,)
    currency = DEFAULT_CURRENCY
    if body.strip():
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OrderRejected("body", f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise OrderRejected("body", "must be a JSON object")
        unknown = sorted(set(data) - {"items", "currency"})
        if unknown:
            raise OrderRejected(unknown[0], "unknown field (expected items, currency)")
        if "currency" in data:
            currency = data["currency"]
            if not isinstance(currency, str) or not CURRENCY.match(currency):
                raise OrderRejected("currency", f"must be a 3-letter ISO 4217 code such as EUR, got {currency!r}")
        if "items" in data:
            raw_items = data["items"]
            if not isinstance(raw_items, list) or not 1 <= len(raw_items) <= MAX_ITEMS:
                raise OrderRejected("items", f"must be a list of 1 to {MAX_ITEMS} line items")
            items = tuple(_parse_item(i, raw) for i, raw in enumerate(raw_items))
    return OrderPlaced(order_id=order_id, customer=customer, currency=currency, items=items,
                       **({"trace_id": trace_id} if trace_id else {}))


def _parse_item(index: int, raw: Any) -> LineItem:
    where = f"items[{index}]"
    if not isinstance(raw, dict):
        raise OrderRejected(where, "must be an object with sku, quantity, unit_price")
    unknown = sorted(set(raw) - {"sku", "quantity", "unit_price"})
    if unknown:
        raise OrderRejected(f"{where}.{unknown[0]}", "unknown field (expected sku, quantity, unit_price)")
    for key in ("sku", "quantity", "unit_price"):
        if key not in raw:
            raise OrderRejected(f"{where}.{key}", "missing")
    sku = raw["sku"]
    if not isinstance(sku, str) or not SKU.match(sku):
        raise OrderRejected(f"{where}.sku", "must be 1-64 characters of letters, digits, '.', '-' or '_'")
    return LineItem(sku=sku, quantity=_int(raw["quantity"], f"{where}.quantity", 1, MAX_QUANTITY),
                    unit_price=_int(raw["unit_price"], f"{where}.unit_price", 0, MAX_UNIT_PRICE))


@dataclass(frozen=True, slots=True)
class Accepted:
    order_id: str
    event_id: str
    fingerprint: bytes

    def encode(self) -> bytes:
        """How the state store keeps it (under the order id)."""
        return f"{self.event_id}:{self.fingerprint.hex()}".encode()

    @classmethod
    def decode(cls, order_id: str, kept: bytes) -> "Accepted":
        event_id, fingerprint = kept.decode().split(":")
        return cls(order_id, event_id, bytes.fromhex(fingerprint))


class OrderLedger:
    """This process's orders being placed, and the latest accepted (bounded, oldest forgotten first): a concurrent
    repost waits for the first request's outcome, a recent repost is answered without asking the state store.

    An order being published is a Future; once accepted only the small Accepted record is kept. The state store
    keeps every accepted order (for `state_ttl`): what a repost after a restart, or to another process, finds.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._accepted: OrderedDict[str, "Accepted | asyncio.Future[Accepted]"] = OrderedDict()

    def claim(self, order_id: str) -> "Accepted | asyncio.Future[Accepted] | None":
        """None if the caller is the first to place this order (and must publish it), else the first answer."""
        existing = self._accepted.get(order_id)
        if existing is not None:
            return existing
        self._accepted[order_id] = asyncio.get_running_loop().create_future()
        if len(self._accepted) > self.capacity:
            self._accepted.popitem(last=False)
        return None

    def settle(self, order_id: str, accepted: Accepted | None, error: BaseException | None = None) -> None:
        fut = self._accepted.get(order_id)
        if not isinstance(fut, asyncio.Future) or fut.done():
            return
        if accepted is None:
            # Not published: forget the claim so a retry of the request can place it.
            del self._accepted[order_id]
            fut.set_exception(error or RuntimeError("publish failed"))
            fut.exception()  # mark retrieved: waiters, if any, re-raise it themselves
        else:
            fut.set_result(accepted)
            self._accepted[order_id] = accepted


@dataclass(frozen=True)
class OrderSettings:
    # Accepted orders also kept in memory (about 300 bytes each), to answer a recent repost without a store read.
    # Every accepted order is in the state store for `state_ttl` whatever this is.
    remember_orders: int = 20_000


service = Service("orders", settings=settings_from(OrderSettings), max_body_bytes=16 * 1024)
service.publisher(ORDER_EVENTS)


def _fingerprint(body: bytes, customer: str) -> bytes:
    """What a repost must match to get the first answer back (16 bytes: one is kept per remembered order)."""
    return hashlib.blake2b(customer.encode() + b"\0" + body.strip(), digest_size=16).digest()


LEDGER = StateKey("ledger", OrderLedger)


@service.startup
async def create_ledger(ctx: ServiceContext) -> None:
    ctx.state[LEDGER] = OrderLedger(ctx.settings.remember_orders)


def _unavailable(message: str, retry_after: int) -> web.Response:
    """503: nothing was accepted; the client retries the same order id after `retry_after` seconds."""
    response = json_error(503, "unavailable", message, field=None, retry_after=retry_after)
    response.headers["Retry-After"] = str(retry_after)
    return response


ACCEPTED = "accepted"  # order id -> Accepted.encode(): the first answer, across restarts and processes


def _answer_repost(order_id: str, accepted: Accepted, fingerprint: bytes) -> web.Response:
    if accepted.fingerprint != fingerprint:
        return json_error(409, "order_conflict",
                          f"order {order_id} was already placed with a different body or customer", field="order_id")
    return json_response({"order_id": accepted.order_id, "event_id": accepted.event_id,
                          "status": "already_accepted"}, status=200)


@service.route("POST", "/orders/{order_id}", scope="orders.write")
async def place_order(request: web.Request, ctx: ServiceContext) -> web.Response:
    customer = request[CLAIMS].sub
    body = await request.read()
    header_trace = request.headers.get("X-Trace-Id", "").lower()
    try:
        order = parse_order(request.match_info["order_id"], body, customer,
                            header_trace if TRACE_ID.match(header_trace) else None)
    except OrderRejected as exc:
        return json_error(400, "invalid_order", str(exc), field=exc.field)
    ledger = ctx.state[LEDGER]
    fingerprint = _fingerprint(body, customer)
    first = ledger.claim(order.order_id)
    if first is not None:
        try:
            accepted = first if isinstance(first, Accepted) else await asyncio.shield(first)
        except Exception:
            return _unavailable("the first request for this order failed; retry", 1)
        return _answer_repost(order.order_id, accepted, fingerprint)
    try:
        kept = await ctx.store.get(ACCEPTED, order.order_id)
    except StateUnavailable as exc:
        ledger.settle(order.order_id, None, exc)
        return _unavailable(f"the order was not accepted: {exc}", max(1, math.ceil(exc.retry_after)))
    if kept is not None:  # accepted before a restart, or by another process
        accepted = Accepted.decode(order.order_id, kept)
        ledger.settle(order.order_id, accepted)
        return _answer_repost(order.order_id, accepted, fingerprint)
    try:
        where = await ctx.publish(ORDER_EVENTS, order, key=order.order_id)
    except TransportUnavailable as exc:
        # The broker is away or (in memory) consumers are far behind: nothing was accepted, and the client is told
        # when to come back instead of hanging on (publish_timeout bounds the wait).
        ledger.settle(order.order_id, None, exc)
        ctx.log.warning("order_refused_transport_unavailable", order_id=order.order_id, error=str(exc),
                        trace_id=order.trace_id)
        retry_after = max(1, math.ceil(exc.retry_after))
        return _unavailable(f"the order was not accepted: {exc}; retry in {retry_after}s", retry_after)
    except Exception as exc:
        ledger.settle(order.order_id, None, exc)
        ctx.log.warning("order_publish_failed", order_id=order.order_id, error=repr(exc), trace_id=order.trace_id)
        return _unavailable("the order could not be published; nothing was accepted, retry", 1)
    accepted = Accepted(order.order_id, order.event_id, fingerprint)
    try:
        # Kept before the 202: a repost after a crash finds it. A crash between the publish and this line leaves
        # an order published but not kept; its repost is published again, and every consumer acts once per order.
        earlier = await ctx.store.keep(ACCEPTED, order.order_id, accepted.encode(), ttl=ctx.mesh.state_ttl)
    except StateUnavailable as exc:
        ledger.settle(order.order_id, None, exc)
        ctx.log.warning("order_not_recorded", order_id=order.order_id, event_id=order.event_id, error=str(exc))
        return _unavailable(f"the order was published but could not be recorded ({exc}); retrying the same order "
                            "id is safe: it is acted on once", max(1, math.ceil(exc.retry_after)))
    if earlier is not None:  # another process accepted the same order id meanwhile: its answer is the answer
        accepted = Accepted.decode(order.order_id, earlier)
    ledger.settle(order.order_id, accepted)
    ctx.log.info("order_accepted", order_id=order.order_id, event_id=order.event_id, trace_id=order.trace_id,
                 customer=customer, partition=where.partition, offset=where.offset)
    return json_response({"order_id": order.order_id, "event_id": accepted.event_id, "trace_id": order.trace_id,
                          "status": "accepted"}, status=202)
