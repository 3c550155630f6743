"""Notification against an older User service (no POST /notify-users: 404): invoices that queued up are still each
notified exactly once, through POST /notify-user, and the list endpoint is not asked again."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import aiohttp
import pytest

from meshrun.events import encode, transport_headers
from meshrun.runtime import Mesh
from meshrun.services.billing import compute_invoice
from meshrun.services.events import InvoiceIssued, LineItem, OrderPlaced
from meshrun.services.notification import BATCH_ENDPOINT_FROM, SENT
from tests.captured_logs import captured_logs
from tests.conftest import make_config, pipeline_data
from tests.e2e.helpers import eventually, get_json


class Setup:
    def __init__(self, mesh: Mesh, ports: Any, logs: list[MutableMapping[str, Any]]) -> None:
        self.mesh, self.logs = mesh, logs
        self.users_url = f"http://127.0.0.1:{ports['users']}"
        self.users = mesh.services["users"].ctx.state
        self.notification = mesh.services["notification"].ctx.state

    async def invoice(self, i: int) -> InvoiceIssued:
        """Billing's invoice for order f-{i}, published as Billing publishes it."""
        order = OrderPlaced(order_id=f"f-{i}", customer="alice", currency="EUR", items=(LineItem("A", 1, 100 + i),))
        invoice = compute_invoice(order)
        await self.mesh.transport.publish("invoice-events", encode(invoice), key=invoice.order_id.encode(),
                                          headers=transport_headers(invoice))
        return invoice

    async def queue_behind_one(self, first: int, count: int) -> list[InvoiceIssued]:
        """Hold the User service, let one invoice's /notify-user call reach it, queue `count - 1` more behind it,
        then let it go: the queued ones reach Notification as one list."""
        gate = self.users["gate"]
        gate.clear()
        calls = self.users["calls"]
        invoices = [await self.invoice(first)]
        await eventually(lambda: self.users["calls"] == calls + 1, timeout=15, what="a /notify-user call held")
        invoices += [await self.invoice(i) for i in range(first + 1, first + count)]
        gate.set()
        return invoices

    def batch_endpoint_missing(self) -> int:
        return sum(1 for line in self.logs if line["event"] == "notify_batch_endpoint_missing")

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        return await get_json(http, f"{self.users_url}/notifications/stats")  # type: ignore[no-any-return]


@pytest.fixture
async def setup(tmp_path, ports) -> AsyncIterator[Setup]:
    """Auth, Notification and the older User service on real ports; invoice-events with one partition, so that
    invoices published while a call is held queue up behind it."""
    data = pipeline_data(tmp_path, ports)
    data["services"]["users"]["module"] = "tests.e2e.older_users"
    data["topics"]["invoice-events"]["partitions"] = 1
    with captured_logs() as logs:
        mesh = Mesh(make_config(data), ["auth", "users", "notification"])
        await mesh.start()
        try:
            await mesh.wait_ready(15)
            yield Setup(mesh, ports, logs)
        finally:
            await mesh.stop()


async def test_queued_invoices_are_each_notified_once_through_notify_user(setup: Setup):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{setup.users_url}/notify-users", json={"notifications": []}) as r:
            assert r.status == 404  # the older service: no such route, whatever the request

        invoices = await setup.queue_behind_one(0, 9)
        await eventually(lambda: _notified(http, setup, 9), timeout=30, what="9 notifications")
        # The 8 that queued up went as a list first: refused with 404, then one /notify-user each.
        assert setup.batch_endpoint_missing() == 1 and setup.notification[BATCH_ENDPOINT_FROM] > time.monotonic()

        # For good: the next invoices that queue up go one at a time at once, without asking for the list again.
        invoices += await setup.queue_behind_one(9, 4)
        await eventually(lambda: _notified(http, setup, 13), timeout=30, what="13 notifications")
        assert setup.batch_endpoint_missing() == 1

        stats = await setup.stats(http)
        assert stats["notifications"] == 13 and stats["orders"] == 13
        assert stats["duplicates_absorbed"] == 0 and stats["orders_notified_more_than_once"] == 0
        listed = (await get_json(http, f"{setup.users_url}/notifications"))["notifications"]
        assert [(n["invoice_id"], n["order_id"], n["total"], n["trace_id"]) for n in listed] == [
            (inv.invoice_id, inv.order_id, inv.total, inv.trace_id) for inv in invoices]
        assert setup.users["calls"] == 13  # one /notify-user call per invoice, none retried
        assert setup.notification[SENT] == 13

    sent = [line for line in setup.logs if line["event"] == "notification_sent"]
    assert [(s["invoice_id"], s["offset"], s["event_id"], s["duplicate"]) for s in sent] == [
        (inv.invoice_id, offset, inv.event_id, False) for offset, inv in enumerate(invoices)]


async def _notified(http: aiohttp.ClientSession, setup: Setup, n: int) -> bool:
    return (await setup.stats(http))["notifications"] >= n
