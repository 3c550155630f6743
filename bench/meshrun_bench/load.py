"""The load generator: orders through POST /orders/{id}, followed to the User service's own records.

Closed loop (C workers, each sending its next order when the last one was answered) or open loop (orders due at a
fixed rate, each sent at its due time whether or not earlier ones were answered). Accept-only (`send_orders`), only
the answers are awaited. It starts no process.
"""
from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from meshrun_bench.report import Latency, PipelineFigures

ORDER_BODY = orjson.dumps({"items": [{"sku": "BENCH-1", "quantity": 2, "unit_price": 1250}], "currency": "EUR"})
# Read the new notifications twice a second while orders are still being sent (each read is work for the mesh being
# measured), ten times a second while waiting for the last ones.
POLL_WHILE_SENDING = 0.5
POLL_INTERVAL = 0.1
ProgressFn = Callable[["OrderRun", str], None]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a pipeline answers: its order endpoint and the User service that records notifications."""

    orders_url: str
    users_url: str


class BearerHeader:
    """The Authorization header the generator sends; `refresh` (if any) is awaited to replace an expired token."""

    def __init__(self, token: str, refresh: Callable[[], Any] | None = None) -> None:
        self.value = f"Bearer {token}"
        self.refresh = refresh
        self._refreshing: asyncio.Task[None] | None = None

    def expired(self, sent_with: str) -> asyncio.Task[None] | None:
        """A 401 came back for `sent_with`: fetch a new token once, whoever noticed first."""
        if self.refresh is None:
            return None
        if sent_with == self.value and (self._refreshing is None or self._refreshing.done()):
            async def renew() -> None:
                self.value = f"Bearer {await self.refresh()}"  # type: ignore[misc]

            self._refreshing = asyncio.create_task(renew())
        return self._refreshing


class OrderRun:
    """The orders of one run (ids `<prefix>-<i>`) and what became of each: start, answer, notification."""

    def __init__(self, prefix: str, count: int, mode: str) -> None:
        self.prefix = prefix + "-"
        self.count = count
        self.mode = mode
        self.start = [0.0] * count        # wall clock: due time (open loop) or send time (closed loop)
        self.status = [0] * count          # HTTP status, -1 for a connection error, 0 not answered yet
        self.answered_at = [0.0] * count   # wall clock of the answer (or of the connection error)
        self.notified_at = [0.0] * count   # the User service's received_at
        self.seen = bytearray(count)       # how many times the order appears in the User service's records
        self.sent = 0
        self.accepted = 0
        self.notified = 0
        self.first_start = 0.0
        self.last_accept = 0.0
        self.last_notified = 0.0
        self.late_max = 0.0
        self.sending_done = False

    def order_id(self, i: int) -> str:
        return f"{self.prefix}{i}"

    def index_of(self, order_id: str) -> int | None:
        if not order_id.startswith(self.prefix):
            return None
        try:
            i = int(order_id[len(self.prefix):])
        except ValueError:
            return None
        return i if 0 <= i < self.count else None

    def missing(self) -> int:
        """Accepted orders not notified yet."""
        return sum(1 for s, c in zip(self.status, self.seen) if s == 202 and not c)

    def rejected(self) -> dict[str, int]:
        """Answers other than 202 by status ("error" for a connection error); unanswered orders are not counted."""
        counts: dict[str, int] = {}
        for s in self.status:
            if s not in (0, 202):
                key = "error" if s < 0 else str(s)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def figures(self, name: str, stats_before: dict[str, int], stats_after: dict[str, int]) -> PipelineFigures:
        latencies: list[float] = []
        lost = 0
        for i in range(self.count):
            if self.status[i] == 202:
                if self.seen[i]:
                    latencies.append(self.notified_at[i] - self.start[i])
                else:
                    lost += 1
        in_records = sum(1 for c in self.seen if c > 1)
        from_stats = stats_after["orders_notified_more_than_once"] - stats_before["orders_notified_more_than_once"]
        accept_span = self.last_accept - self.first_start
        notify_span = self.last_notified - self.first_start
        return PipelineFigures(
            name=name, mode=self.mode, latency_from="due" if self.mode == "open" else "send",
            sent=self.sent, accepted=self.accepted, rejected=self.rejected(), notified=self.notified, lost=lost,
            doubled=max(in_records, from_stats), doubled_in_records=in_records, doubled_from_stats=from_stats,
            duplicates_absorbed=stats_after["duplicates_absorbed"] - stats_before["duplicates_absorbed"],
            elapsed_seconds=round(max(accept_span, notify_span), 3),
            accepted_per_second=round(self.accepted / accept_span, 1) if accept_span > 0 else 0.0,
            notified_per_second=round(self.notified / notify_span, 1) if notify_span > 0 else 0.0,
            latency_ms=Latency.of(latencies),
            generator_late_ms_max=round(self.late_max * 1000, 2) if self.mode == "open" else None,
        )

    def accept_figures(self, name: str, appended: int) -> PipelineFigures:
        """Accept-only: latency to the answer; lost and doubled from the `appended` records the broker counted.

        An accepted order the broker does not hold is lost; a record beyond one per accepted order is doubled (or
        was published for an order whose answer never arrived, which the client cannot tell apart).
        """
        latencies = [self.answered_at[i] - self.start[i] for i in range(self.count) if self.status[i] == 202]
        accept_span = self.last_accept - self.first_start
        return PipelineFigures(
            name=name, mode=self.mode, latency_from="due" if self.mode == "open" else "send", accept_only=True,
            latency_to="answer", sent=self.sent, accepted=self.accepted, rejected=self.rejected(),
            appended=appended, lost=max(0, self.accepted - appended), doubled=max(0, appended - self.accepted),
            elapsed_seconds=round(max(accept_span, 0.0), 3),
            accepted_per_second=round(self.accepted / accept_span, 1) if accept_span > 0 else 0.0,
            notified_per_second=None, latency_ms=Latency.of(latencies),
            generator_late_ms_max=round(self.late_max * 1000, 2) if self.mode == "open" else None,
        )


async def place(http: aiohttp.ClientSession, target: Target, auth: BearerHeader, run: OrderRun, i: int,
                start: float) -> None:
    """POST one order; record its start and the answer's status (202 = accepted after a durable publish)."""
    if not run.first_start or start < run.first_start:
        run.first_start = start
    run.start[i] = start
    run.sent += 1
    url = f"{target.orders_url}/orders/{run.order_id(i)}"
    status = -1
    for _ in range(2):  # a second try only after a 401, with a fresh token (same order id: idempotent)
        header = auth.value
        try:
            async with http.post(url, data=ORDER_BODY, headers={"Authorization": header,
                                                                "Content-Type": "application/json"}) as r:
                await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError):
            status = -1
        if status != 401:
            break
        renewing = auth.expired(header)
        if renewing is None:
            break
        await renewing
    answered = time.time()
    run.status[i] = status
    run.answered_at[i] = answered
    if status == 202:
        run.accepted += 1
        run.last_accept = answered


async def closed_loop(http: aiohttp.ClientSession, target: Target, auth: BearerHeader, run: OrderRun,
                      concurrency: int) -> None:
    """C workers sharing one sequence of orders: each sends the next as soon as its last one was answered."""
    orders = iter(range(run.count))

    async def worker() -> None:
        for i in orders:
            await place(http, target, auth, run, i, time.time())

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        run.sending_done = True


async def open_loop(http: aiohttp.ClientSession, target: Target, auth: BearerHeader, run: OrderRun,
                    rate: float) -> None:
    """Order i is due at t0 + i/rate and is sent then, however many earlier orders are still in flight.

    Its latency counts from the due time, so a stalled pipeline cannot hide behind a stalled generator.
    """
    loop = asyncio.get_running_loop()
    t0_loop = loop.time() + 0.05
    t0_wall = time.time() + (t0_loop - loop.time())
    in_flight: set[asyncio.Task[None]] = set()
    try:
        for i in range(run.count):
            due = i / rate
            delay = t0_loop + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            run.late_max = max(run.late_max, loop.time() - (t0_loop + due))
            task = asyncio.create_task(place(http, target, auth, run, i, t0_wall + due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        run.sending_done = True


async def user_stats(http: aiohttp.ClientSession, target: Target) -> dict[str, int]:
    async with http.get(f"{target.users_url}/notifications/stats") as r:
        r.raise_for_status()
        return dict(orjson.loads(await r.read()))


class NotificationFollower:
    """Reads GET /notifications?since=N incrementally and marks this run's orders as notified."""

    def __init__(self, http: aiohttp.ClientSession, target: Target, since: int) -> None:
        self.http = http
        self.target = target
        self.since = since
        self.missed = 0  # notifications no longer kept by the User service when read (they count as lost)

    async def poll(self, run: OrderRun) -> None:
        async with self.http.get(f"{self.target.users_url}/notifications", params={"since": str(self.since)}) as r:
            r.raise_for_status()
            body = orjson.loads(await r.read())
        self.missed += int(body.get("missed", 0))
        for note in body["notifications"]:
            self.since = max(self.since, int(note["seq"]))
            i = run.index_of(str(note["order_id"]))
            if i is None:
                continue
            if run.seen[i] < 255:
                run.seen[i] += 1
            if run.seen[i] == 1:
                at = float(note["received_at"])
                run.notified_at[i] = at
                run.notified += 1
                run.last_notified = max(run.last_notified, at)

    async def follow(self, run: OrderRun, drain_timeout: float, progress: ProgressFn | None = None) -> None:
        """Poll until the generator is done and every accepted order was notified, or `drain_timeout` seconds
        passed after the last accept without that happening (what is missing then is lost)."""
        while True:
            await self.poll(run)
            if progress is not None:
                progress(run, "running" if not run.sending_done else "draining")
            if run.sending_done:
                if run.notified >= run.accepted and run.missing() == 0:
                    # One more read catches a doubled notification that arrived with the last one.
                    await asyncio.sleep(POLL_INTERVAL)
                    await self.poll(run)
                    return
                if time.time() - max(run.last_accept, run.last_notified) > drain_timeout:
                    return
            await asyncio.sleep(POLL_INTERVAL if run.sending_done else POLL_WHILE_SENDING)


async def drive(http: aiohttp.ClientSession, poll_http: aiohttp.ClientSession, target: Target,
                auth: BearerHeader, run: OrderRun, *, concurrency: int = 32, rate: float | None = None,
                drain_timeout: float = 60.0, progress: ProgressFn | None = None,
                name: str = "meshrun") -> PipelineFigures:
    """Send the run's orders (open loop when `rate` is set), wait for their notifications, count from the records."""
    before = await user_stats(poll_http, target)
    follower = NotificationFollower(poll_http, target, since=int(before["notifications"]))
    sender = open_loop(http, target, auth, run, rate) if rate else closed_loop(http, target, auth, run, concurrency)
    sending = asyncio.create_task(sender)
    try:
        await follower.follow(run, drain_timeout, progress)
    finally:
        if not sending.done():
            sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
    after = await user_stats(poll_http, target)
    if follower.missed:
        print(f"{name}: {follower.missed} notifications were no longer kept by the User service when read (they "
              "count as lost here); raise services.users.settings.keep_notifications", file=sys.stderr)
    return run.figures(name, before, after)


async def send_orders(http: aiohttp.ClientSession, target: Target, auth: BearerHeader, run: OrderRun, *,
                      concurrency: int = 32, rate: float | None = None,
                      progress: ProgressFn | None = None) -> None:
    """Accept-only: send the run's orders (open loop when `rate` is set) and wait for their answers, nothing more.

    A 202 means the broker acknowledged the order's event; what becomes of it later is not this run's business.
    """
    sender = open_loop(http, target, auth, run, rate) if rate else closed_loop(http, target, auth, run, concurrency)
    sending = asyncio.create_task(sender)
    try:
        while not sending.done():
            if progress is not None:
                progress(run, "running")
            await asyncio.wait({sending}, timeout=POLL_WHILE_SENDING)
    finally:
        if not sending.done():  # cancelled from outside: stop sending too
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
    sending.result()  # what the generator raised, if anything
