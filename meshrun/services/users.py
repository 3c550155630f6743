"""The User service: POST /notify-user with a machine token (scope users.notify) records a notification once;
POST /notify-users records a list of them in one request (what Notification sends when invoices queue up).

The Idempotency-Key header (the invoice id; in a list, each notification's invoice id) makes a retried call a
no-op, across restarts: notifications and their keys are kept in the state store (`[mesh] state`) for `state_ttl`,
written before the answer. GET /notifications lists them (an operator endpoint on the mesh host).
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from meshrun import Service, ServiceContext
from meshrun.http.server import CLAIMS, json_error, json_response
from meshrun.settings import settings_from
from meshrun.state import Kept, Once

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
    max_listed: int = 10_000  # notifications GET /notifications returns at most per call (`limit` lowers it)

    def __post_init__(self) -> None:
        if self.max_listed < 1:
            raise ValueError(f"max_listed must be at least 1, got {self.max_listed}")


# Room for a full list of notifications (about 200 bytes each) on POST /notify-users.
service = Service("users", settings=settings_from(UsersSettings), max_body_bytes=256 * 1024)

NOTIFICATIONS = "notifications"  # by idempotency key: the notification, as JSON
ORDERS = "orders"  # by order id: the invoice id it was first notified with


def notification_of(data: dict[str, object], client_id: str, trace_id: str | None, now: float) -> Notification:
    """The notification a checked request asks for (its seq is set once the store kept it)."""
    currency = data.get("currency")
    return Notification(
        # Few distinct users, currencies and clients: interned, so listed notifications hold one copy of each.
        invoice_id=str(data["invoice_id"]), order_id=str(data["order_id"]), user=sys.intern(str(data["user"])),
        total=data.get("total"), currency=sys.intern(currency) if isinstance(currency, str) else None,  # type: ignore[arg-type]
        trace_id=data.get("trace_id") or trace_id,  # type: ignore[arg-type]
        notified_by=sys.intern(client_id), received_at=now, seq=0,
    )


def records_of(key: str, note: Notification, ttl: float) -> list[Once]:
    """What the store keeps for a new notification, in one transaction: the notification under its idempotency
    key (a repeat of the key finds it), and its order (a second key for the same order is an order notified twice).
    """
    kept = orjson.dumps(note)
    return [Once(NOTIFICATIONS, key, kept, counts={"notifications": 1}, ttl=ttl),
            Once(ORDERS, note.order_id, note.invoice_id.encode(), counts={"orders": 1}, ttl=ttl)]


async def _notify(ctx: ServiceContext, requests: list[tuple[dict[str, object], str]], client_id: str,
                  trace_id: str | None) -> list[dict[str, str]]:
    """Record checked notifications (each with its idempotency key) unless their key was seen: one store
    transaction for all; what the caller is told about each. Durable before the answer, so a retry after a crash
    is a duplicate."""
    now = time.time()
    notes = [notification_of(data, client_id, trace_id, now) for data, _ in requests]
    ttl = ctx.mesh.state_ttl
    items = [once for (_, key), note in zip(requests, notes) for once in records_of(key, note, ttl)]
    kept = await ctx.store.keep_once(items)
    results: list[dict[str, str]] = []
    doubled = duplicates = 0
    for i, note in enumerate(notes):
        before, order_before = kept[2 * i], kept[2 * i + 1]
        if before is not None:
            duplicates += 1
            results.append({"status": "duplicate", "invoice_id": orjson.loads(before)["invoice_id"]})
            continue
        if order_before is not None and order_before.decode() != note.invoice_id:
            doubled += 1
            ctx.log.error("order_notified_twice", order_id=note.order_id, invoice_id=note.invoice_id,
                          first_invoice_id=order_before.decode())
        ctx.log.info("user_notified", message=f"📩 User notified with invoice {note.invoice_id} for order "
                     f"{note.order_id}", invoice_id=note.invoice_id, order_id=note.order_id, user=note.user,
                     trace_id=note.trace_id)
        results.append({"status": "notified", "invoice_id": note.invoice_id})
    if doubled or duplicates:
        await ctx.store.add({"orders_doubled": doubled, "duplicates_absorbed": duplicates})
    return results


@service.route("POST", "/notify-user", scope="users.notify")
async def notify_user(request: web.Request, ctx: ServiceContext) -> web.Response:
    try:
        data = parse_notification(await request.read())
    except NotificationRejected as exc:
        return json_error(400, "invalid_notification", str(exc), field=exc.field)
    key = request.headers.get("Idempotency-Key") or str(data["invoice_id"])
    # A StateUnavailable leaves as 503 with Retry-After (meshrun.http.server): one transaction, nothing recorded.
    [result] = await _notify(ctx, [(data, key)], request[CLAIMS].client_id, request.headers.get("X-Trace-Id"))
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
    results = await _notify(ctx, [(data, str(data["invoice_id"])) for data in items], request[CLAIMS].client_id, None)
    notified = sum(1 for r in results if r["status"] == "notified")
    return json_response({"notified": notified, "duplicates": len(results) - notified, "results": results})


def _listed(kept: Kept) -> Notification:
    fields = orjson.loads(kept.value)
    fields["seq"] = kept.seq
    return Notification(**fields)


@service.route("GET", "/notifications")
async def list_notifications(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Notifications kept (for `state_ttl`), oldest first: all, one order's, or those after a sequence number
    (`since`, the `seq` of the last one read), at most `limit` (default and most: max_listed). `next` is the
    `since` that reads on; `missed` is always 0 (kept for readers of the older, bounded book)."""
    settings: UsersSettings = ctx.settings
    order_id = request.query.get("order_id")
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return json_error(400, "invalid_request", "since: must be an integer sequence number", field="since")
    try:
        limit = min(int(request.query.get("limit", settings.max_listed)), settings.max_listed)
    except ValueError:
        return json_error(400, "invalid_request", "limit: must be an integer", field="limit")
    if limit < 1:
        return json_error(400, "invalid_request", "limit: must be at least 1", field="limit")
    if order_id is None:
        notes = [_listed(k) for k in await ctx.store.scan(NOTIFICATIONS, after=since, limit=limit)]
    else:
        invoice = await ctx.store.get(ORDERS, order_id)
        notes = [] if invoice is None else [
            n for n in map(_listed, await _of_order(ctx, invoice.decode())) if n.order_id == order_id]
    # orjson writes the slotted dataclasses itself: no dict per notification.
    return json_response({"count": len(notes), "missed": 0, "next": notes[-1].seq if notes else since,
                          "notifications": notes})


async def _of_order(ctx: ServiceContext, invoice_id: str) -> list[Kept]:
    """The notifications of an order: kept under its invoice id (the key Notification sends)."""
    kept = await ctx.store.get(NOTIFICATIONS, invoice_id)
    return [] if kept is None else [Kept(0, invoice_id, kept)]


@service.route("GET", "/notifications/stats")
async def notification_stats(request: web.Request, ctx: ServiceContext) -> web.Response:
    """Counts from the service's own records: what a benchmark or a test reads to find lost or doubled work."""
    counts = await ctx.store.counters()
    kept = await ctx.store.count(NOTIFICATIONS)
    return json_response({
        "notifications": counts.get("notifications", 0),
        "orders": counts.get("orders", 0),
        "orders_notified_more_than_once": counts.get("orders_doubled", 0),
        "duplicates_absorbed": counts.get("duplicates_absorbed", 0),
        "kept": kept,
    })
