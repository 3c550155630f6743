"""The User service: POST /notify-user with a machine token (scope users.notify) records a notification once.

The Idempotency-Key header (the invoice id) makes a retried call a no-op. Notifications are kept in memory;
GET /notifications lists them (an operator endpoint on the mesh host).
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass

import orjson
from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.http.server import CLAIMS, json_error, json_response

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
FIELDS = {"invoice_id": str, "order_id": str, "user": str, "total": int, "currency": str, "trace_id": str}
REQUIRED = ("invoice_id", "order_id", "user")


@dataclass(frozen=True, slots=True)
class Notification:
    invoice_id: str
    order_id: str
    user: str
    total: int | None
    currency: str | None
    trace_id: str | None
    notified_by: str
    received_at: float
    seq: int


class NotificationRejected(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def parse_notification(body: bytes) -> dict[str, object]:
    try:
        data = orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise NotificationRejected("body", f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise NotificationRejected("body", "must be a JSON object")
    for key, value in data.items():
        kind = FIELDS.get(key)
        if kind is None:
            raise NotificationRejected(key, f"unknown field (expected {', '.join(FIELDS)})")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise NotificationRejected(key, f"must be a {kind.__name__}")
    for key in REQUIRED:
        if key not in data:
            raise NotificationRejected(key, "missing")
        if not ID.match(str(data[key])):
            raise NotificationRejected(key, "must be 1-128 characters of letters, digits, '.', ':', '-' or '_'")
    return data


service = Service("users", max_body_bytes=8 * 1024)


@service.startup
async def create_store(ctx: ServiceContext) -> None:
    ctx.state["notifications"] = {}
    ctx.state["orders"] = set()  # orders notified at least once
    ctx.state["orders_doubled"] = 0  # orders notified a second time under another key: what must never happen
    ctx.state["duplicates_absorbed"] = 0


@service.route("POST", "/notify-user", scope="users.notify")
async def notify_user(request: web.Request, ctx: ServiceContext) -> web.Response:
    try:
        data = parse_notification(await request.read())
    except NotificationRejected as exc:
        return json_error(400, "invalid_notification", str(exc), field=exc.field)
    key = request.headers.get("Idempotency-Key") or str(data["invoice_id"])
    store: dict[str, Notification] = ctx.state["notifications"]
    if key in store:
        ctx.state["duplicates_absorbed"] += 1
        return json_response({"status": "duplicate", "invoice_id": store[key].invoice_id}, status=200)
    currency = data.get("currency")
    note = Notification(
        # Few distinct users, currencies and clients: interned, so 100,000 notifications hold one copy of each.
        invoice_id=str(data["invoice_id"]), order_id=str(data["order_id"]), user=sys.intern(str(data["user"])),
        total=data.get("total"), currency=sys.intern(currency) if isinstance(currency, str) else None,  # type: ignore[arg-type]
        trace_id=data.get("trace_id") or request.headers.get("X-Trace-Id"),  # type: ignore[arg-type]
        notified_by=sys.intern(request[CLAIMS].client_id), received_at=time.time(), seq=len(store) + 1,
    )
    store[note.invoice_id if key == note.invoice_id else key] = note
    orders: set[str] = ctx.state["orders"]
    if note.order_id in orders:
        ctx.state["orders_doubled"] += 1
        ctx.log.error("order_notified_twice", order_id=note.order_id, invoice_id=note.invoice_id)
    orders.add(note.order_id)
    ctx.log.info("user_notified", message=f"📩 User notified with invoice {note.invoice_id} for order "
                 f"{note.order_id}", invoice_id=note.invoice_id, order_id=note.order_id, user=note.user,
                 trace_id=note.trace_id)
    return json_response({"status": "notified", "invoice_id": note.invoice_id}, status=201)


@service.route("GET", "/notifications")
async def list_notifications(request: web.Request, ctx: ServiceContext) -> web.Response:
    """The notifications received, optionally for one order or after a sequence number (`since`)."""
    store: dict[str, Notification] = ctx.state["notifications"]
    order_id = request.query.get("order_id")
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return json_error(400, "invalid_request", "since: must be an integer sequence number", field="since")
    values = list(store.values())[since:] if order_id is None else [n for n in store.values()
                                                                     if n.order_id == order_id]
    notes = [asdict(n) for n in values]
    return json_response({"count": len(notes), "notifications": notes})


@service.route("GET", "/notifications/stats")
async def notification_stats(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Counts from the service's own records: what a benchmark or a test reads to find lost or doubled work."""
    return json_response({
        "notifications": len(ctx.state["notifications"]),
        "orders": len(ctx.state["orders"]),
        "orders_notified_more_than_once": ctx.state["orders_doubled"],
        "duplicates_absorbed": ctx.state["duplicates_absorbed"],
    })
