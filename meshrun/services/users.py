"""The User service: POST /notify-user with a machine token (scope users.notify) records a notification once;
POST /notify-users records a list of them in one request (what Notification sends when invoices queue up).

The Idempotency-Key header (the invoice id; in a list, each notification's invoice id) makes a retried call a
no-op. Notifications are kept in memory, bounded: the last `keep_notifications` in full (GET /notifications lists
them; an operator endpoint on the mesh host), and the idempotency keys and order ids of the last
`remember_notifications`.
"""
from __future__ import annotations

import re
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import islice

import orjson
from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.http.server import CLAIMS, json_error, json_response
from meshrun.service_state import StateKey
from meshrun.settings import settings_from

ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")  # \Z, not $: $ also matches before a final newline
FIELDS = {"invoice_id": str, "order_id": str, "user": str, "total": int, "currency": str, "trace_id": str}
REQUIRED = ("invoice_id", "order_id", "user")
MAX_NOTIFICATIONS_PER_REQUEST = 500


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


def _json_body(body: bytes) -> object:
    try:
        return orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise NotificationRejected("body", f"not valid JSON ({exc})") from None


def _checked(data: object, where: str = "") -> dict[str, object]:
    """One notification's fields, checked; `where` prefixes the field named in an error (`notifications[3].`)."""
    if not isinstance(data, dict):
        raise NotificationRejected(where.rstrip(".") or "body", "must be a JSON object")
    for key, value in data.items():
        kind = FIELDS.get(key)
        if kind is None:
            raise NotificationRejected(where + key, f"unknown field (expected {', '.join(FIELDS)})")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise NotificationRejected(where + key, f"must be a {kind.__name__}")
    for key in REQUIRED:
        if key not in data:
            raise NotificationRejected(where + key, "missing")
        if not ID.match(str(data[key])):
            raise NotificationRejected(where + key,
                                       "must be 1-128 characters of letters, digits, '.', ':', '-' or '_'")
    return data


def parse_notification(body: bytes) -> dict[str, object]:
    return _checked(_json_body(body))


def parse_notifications(body: bytes) -> list[dict[str, object]]:
    """The body of POST /notify-users: {"notifications": [...]}, 1 to MAX_NOTIFICATIONS_PER_REQUEST of them, all
    checked before any is recorded."""
    data = _json_body(body)
    if not isinstance(data, dict):
        raise NotificationRejected("body", 'must be a JSON object: {"notifications": [...]}')
    unknown = sorted(set(data) - {"notifications"})
    if unknown:
        raise NotificationRejected(unknown[0], "unknown field (expected notifications)")
    items = data.get("notifications")
    if not isinstance(items, list):
        raise NotificationRejected("notifications", "missing, or not a list")
    if not 1 <= len(items) <= MAX_NOTIFICATIONS_PER_REQUEST:
        raise NotificationRejected("notifications",
                                   f"must hold 1 to {MAX_NOTIFICATIONS_PER_REQUEST} notifications, got {len(items)}")
    return [_checked(item, f"notifications[{i}].") for i, item in enumerate(items)]


@dataclass(frozen=True)
class UsersSettings:
    keep_notifications: int = 10_000  # listed in full by GET /notifications
    remember_notifications: int = 20_000  # idempotency keys and order ids kept to recognise a repeat

    def __post_init__(self) -> None:
        if self.keep_notifications < 1 or self.remember_notifications < self.keep_notifications:
            raise ValueError("keep_notifications must be at least 1, and remember_notifications at least "
                             f"keep_notifications (got {self.keep_notifications} and {self.remember_notifications})")


class NotificationBook:
    """The service's records, free of I/O and bounded: memory follows the settings, not the notifications count.

    A repeat (the same idempotency key) is recognised, and an order notified under a second key is counted, within
    the last `remember` notifications; redeliveries arrive long before that window passes.
    """

    def __init__(self, keep: int, remember: int) -> None:
        self.recent: deque[Notification] = deque(maxlen=keep)
        self.remember = remember
        self._keys: OrderedDict[str, str] = OrderedDict()  # idempotency key -> invoice id
        self._orders: OrderedDict[str, None] = OrderedDict()
        self.count = 0
        self.orders_notified = 0
        self.orders_doubled = 0  # orders notified a second time under another key: what must never happen
        self.duplicates_absorbed = 0

    def duplicate_of(self, key: str) -> str | None:
        """The invoice id already recorded under this idempotency key, if any."""
        invoice_id = self._keys.get(key)
        if invoice_id is not None:
            self.duplicates_absorbed += 1
        return invoice_id

    def record(self, key: str, note: Notification) -> bool:
        """Keep a new notification; True if its order had already been notified (under another key)."""
        self.count += 1
        self.recent.append(note)
        self._keys[note.invoice_id if key == note.invoice_id else key] = note.invoice_id
        if len(self._keys) > self.remember:
            self._keys.popitem(last=False)
        doubled = note.order_id in self._orders
        if doubled:
            self.orders_doubled += 1
        else:
            self.orders_notified += 1
            self._orders[note.order_id] = None
            if len(self._orders) > self.remember:
                self._orders.popitem(last=False)
        return doubled

    def after(self, seq: int) -> tuple[list[Notification], int]:
        """Notifications with a sequence number above `seq`, and how many of those are no longer kept."""
        first = self.count - len(self.recent) + 1  # sequence number of the oldest kept
        start = max(seq + 1, first)
        missed = max(0, first - (seq + 1))
        return list(islice(self.recent, start - first, None)), missed

    def of_order(self, order_id: str) -> list[Notification]:
        return [n for n in self.recent if n.order_id == order_id]


# Room for a full list of notifications (about 200 bytes each) on POST /notify-users.
service = Service("users", settings=settings_from(UsersSettings), max_body_bytes=256 * 1024)


BOOK = StateKey("book", NotificationBook)


@service.startup
async def create_store(ctx: ServiceContext) -> None:
    settings: UsersSettings = ctx.settings
    ctx.state[BOOK] = NotificationBook(settings.keep_notifications, settings.remember_notifications)


def _notify(ctx: ServiceContext, data: dict[str, object], key: str, client_id: str,
            trace_id: str | None) -> dict[str, str]:
    """Record one checked notification unless its idempotency key was seen; what the caller is told about it."""
    book = ctx.state[BOOK]
    recorded = book.duplicate_of(key)
    if recorded is not None:
        return {"status": "duplicate", "invoice_id": recorded}
    currency = data.get("currency")
    note = Notification(
        # Few distinct users, currencies and clients: interned, so the kept notifications hold one copy of each.
        invoice_id=str(data["invoice_id"]), order_id=str(data["order_id"]), user=sys.intern(str(data["user"])),
        total=data.get("total"), currency=sys.intern(currency) if isinstance(currency, str) else None,  # type: ignore[arg-type]
        trace_id=data.get("trace_id") or trace_id,  # type: ignore[arg-type]
        notified_by=sys.intern(client_id), received_at=time.time(), seq=book.count + 1,
    )
    if book.record(key, note):
        ctx.log.error("order_notified_twice", order_id=note.order_id, invoice_id=note.invoice_id)
    ctx.log.info("user_notified", message=f"📩 User notified with invoice {note.invoice_id} for order "
                 f"{note.order_id}", invoice_id=note.invoice_id, order_id=note.order_id, user=note.user,
                 trace_id=note.trace_id)
    return {"status": "notified", "invoice_id": note.invoice_id}


@service.route("POST", "/notify-user", scope="users.notify")
async def notify_user(request: web.Request, ctx: ServiceContext) -> web.Response:
    try:
        data = parse_notification(await request.read())
    except NotificationRejected as exc:
        return json_error(400, "invalid_notification", str(exc), field=exc.field)
    key = request.headers.get("Idempotency-Key") or str(data["invoice_id"])
    result = _notify(ctx, data, key, request[CLAIMS].client_id, request.headers.get("X-Trace-Id"))
    return json_response(result, status=201 if result["status"] == "notified" else 200)


@service.route("POST", "/notify-users", scope="users.notify")
async def notify_users(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Several notifications in one request, each idempotent under its invoice id. All are checked first: one
    invalid notification rejects the request (400, naming it) and records none. 200 with a result per
    notification, in order, each "notified" or "duplicate"."""
    try:
        items = parse_notifications(await request.read())
    except NotificationRejected as exc:
        return json_error(400, "invalid_notification", str(exc), field=exc.field)
    client_id = request[CLAIMS].client_id
    results = [_notify(ctx, data, str(data["invoice_id"]), client_id, None) for data in items]
    notified = sum(1 for r in results if r["status"] == "notified")
    return json_response({"notified": notified, "duplicates": len(results) - notified, "results": results})


@service.route("GET", "/notifications")
async def list_notifications(request: web.Request, ctx: ServiceContext) -> web.Response:
    """The kept notifications, optionally for one order or after a sequence number (`since`); `missed` counts
    those after `since` that are no longer kept (a reader that fell more than keep_notifications behind)."""
    book = ctx.state[BOOK]
    order_id = request.query.get("order_id")
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return json_error(400, "invalid_request", "since: must be an integer sequence number", field="since")
    if order_id is None:
        notes, missed = book.after(since)
    else:
        notes, missed = book.of_order(order_id), 0
    # orjson writes the slotted dataclasses itself: no dict per notification.
    return json_response({"count": len(notes), "missed": missed, "notifications": notes})


@service.route("GET", "/notifications/stats")
async def notification_stats(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Counts from the service's own records: what a benchmark or a test reads to find lost or doubled work."""
    book = ctx.state[BOOK]
    return json_response({
        "notifications": book.count,
        "orders": book.orders_notified,
        "orders_notified_more_than_once": book.orders_doubled,
        "duplicates_absorbed": book.duplicates_absorbed,
        "kept": len(book.recent),
    })
