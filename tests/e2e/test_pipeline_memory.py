"""The order pipeline end to end on the in-memory transport: real HTTP, real tokens, real ports."""
from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator

import aiohttp
import pytest

from meshrun.runtime import Mesh
from meshrun.service_state import ServiceState
from meshrun.services.billing import invoice_id_for
from meshrun.services.email import SENT
from meshrun.services.inventory import RESERVED
from meshrun.services.users import BOOK
from meshrun.transport.memory import InMemoryTransport
from tests.conftest import make_config, pipeline_data
from tests.e2e.helpers import eventually, get_json, machine_token, post_order, user_token


class Pipeline:
    def __init__(self, mesh: Mesh, ports: Any, token: str) -> None:
        self.mesh, self.ports, self.token = mesh, ports, token
        self.orders = f"http://127.0.0.1:{ports['orders']}"
        self.users = f"http://127.0.0.1:{ports['users']}"
        self.issuer = f"http://127.0.0.1:{ports['auth']}"

    def state(self, service: str) -> ServiceState:
        return self.mesh.services[service].ctx.state

    async def published(self, topic: str) -> int:
        """Records ever appended to `topic` (a group-independent count, so a topic nobody reads counts too)."""
        return sum(part.next_offset for part in self.mesh.transport._topics[topic].partitions)  # type: ignore[attr-defined]

    async def notified(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        return await get_json(http, f"{self.users}/notifications/stats")


@pytest.fixture
async def pipeline(tmp_path, ports) -> AsyncIterator[Pipeline]:
    mesh = Mesh(make_config(pipeline_data(tmp_path, ports)))
    await mesh.start()
    try:
        await mesh.wait_ready(15)
        yield Pipeline(mesh, ports, await user_token(f"http://127.0.0.1:{ports['auth']}"))
    finally:
        await mesh.stop()


async def test_every_order_is_invoiced_and_notified_once(pipeline: Pipeline):
    n = 30
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            body = {"items": [{"sku": f"SKU-{i}", "quantity": i + 1, "unit_price": 250}], "currency": "EUR"}
            status, answer = await post_order(http, pipeline.orders, f"o-{i}", pipeline.token, body)
            assert status == 202, answer
            assert answer["order_id"] == f"o-{i}" and len(answer["event_id"]) == 32
        await eventually(lambda: _count(http, pipeline, n), what=f"{n} notifications")
        listing = await get_json(http, f"{pipeline.users}/notifications")
        by_order = {note["order_id"]: note for note in listing["notifications"]}
        assert sorted(by_order) == sorted(f"o-{i}" for i in range(n))
        assert all(note["invoice_id"] == invoice_id_for(oid) and note["user"] == "alice"
                   for oid, note in by_order.items())
        assert by_order["o-3"]["total"] == 4 * 250
        stats = await pipeline.notified(http)
        assert stats["orders_notified_more_than_once"] == 0 and stats["notifications"] == n
        figures = await get_json(http, f"http://127.0.0.1:{pipeline.ports['analytics']}/analytics")
        assert figures["orders"] == n and figures["revenue_minor"] == {"EUR": 250 * sum(range(1, n + 1))}
    assert pipeline.state("email")[SENT] == n
    assert sum(pipeline.state("inventory")[RESERVED].values()) == sum(range(1, n + 1))
    assert await pipeline.published("invoice-events") == n


async def _count(http: aiohttp.ClientSession, pipeline: Pipeline, n: int) -> bool:
    return (await pipeline.notified(http))["notifications"] >= n


async def test_reposting_an_order_publishes_nothing_new(pipeline: Pipeline):
    async with aiohttp.ClientSession() as http:
        first = await post_order(http, pipeline.orders, "same-1", pipeline.token)
        again = await post_order(http, pipeline.orders, "same-1", pipeline.token)
        assert first[0] == 202 and again[0] == 200
        assert again[1]["event_id"] == first[1]["event_id"] and again[1]["status"] == "already_accepted"
        other = await post_order(http, pipeline.orders, "same-1", pipeline.token,
                                 {"items": [{"sku": "X", "quantity": 9, "unit_price": 1}]})
        assert other[0] == 409 and other[1]["error"] == "order_conflict"
        await eventually(lambda: _count(http, pipeline, 1), what="the notification")
        assert await pipeline.published("order-events") == 1
        stats = await pipeline.notified(http)
        assert stats["notifications"] == 1


@pytest.mark.parametrize("order_id, body, status, field", [
    ("bad%20id", None, 400, "order_id"),
    ("o1", b"{not json", 400, "body"),
    ("o1", b'{"items": [{"sku": "A", "quantity": -2, "unit_price": 5}]}', 400, "items[0].quantity"),
    ("o1", b'{"items": [{"sku": "A", "quantity": 1, "unit_price": 9.99}]}', 400, "items[0].unit_price"),
    ("o1", b'{"coupon": "FREE"}', 400, "coupon"),
    ("o1", b'{"items": [{"sku": "' + b"A" * 20000 + b'", "quantity": 1, "unit_price": 1}]}', 413, None),
])
async def test_bad_requests_are_rejected_and_publish_nothing(pipeline: Pipeline, order_id, body, status, field):
    async with aiohttp.ClientSession() as http:
        got, answer = await post_order(http, pipeline.orders, order_id, pipeline.token, data=body,
                                       headers={"Content-Type": "application/json"})
    assert got == status, answer
    if field:
        assert answer["field"] == field and field in answer["message"]
    else:
        assert answer["error"] == "payload_too_large"
    assert await pipeline.published("order-events") == 0


async def test_orders_need_a_user_token_with_the_right_scope(pipeline: Pipeline):
    async with aiohttp.ClientSession() as http:
        status, answer = await post_order(http, pipeline.orders, "o1", None)
        assert status == 401 and answer["error"] == "invalid_token"
        machine = await machine_token(pipeline.issuer)  # audience users, scope users.notify: not for orders
        status, answer = await post_order(http, pipeline.orders, "o1", machine)
        assert status in (401, 403)
        async with http.post(f"{pipeline.users}/notify-user", headers={"Authorization": f"Bearer {pipeline.token}"},
                             json={"invoice_id": "I", "order_id": "o", "user": "alice"}) as r:
            assert r.status in (401, 403)  # a user token cannot impersonate the notification service
    assert await pipeline.published("order-events") == 0


async def test_replay_makes_inventory_reread_every_order(pipeline: Pipeline):
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            assert (await post_order(http, pipeline.orders, f"r-{i}", pipeline.token))[0] == 202
        await eventually(lambda: _count(http, pipeline, 5), what="5 notifications")
        inventory = pipeline.state("inventory")
        await eventually(lambda: _reserved(inventory, 5), what="5 reservations")
        admin = f"http://127.0.0.1:{pipeline.ports['admin']}"
        async with http.post(f"{admin}/replay", params={"group": "inventory-group", "topic": "order-events",
                                                        "to": "earliest"}) as r:
            assert r.status == 200, await r.text()
            assert sum((await r.json())["offsets"].values()) == 0
        await eventually(lambda: _reserved(inventory, 10), what="inventory to re-read the 5 orders")
        topics = await get_json(http, f"{admin}/topics")
        lag = {g: sum(p["lag"] for p in parts) for t in topics["topics"] if t["name"] == "order-events"
               for g, parts in t["groups"].items()}
        assert lag["inventory-group"] == 0 and set(lag) >= {"billing-group", "email-group", "analytics-group"}
        assert (await pipeline.notified(http))["notifications"] == 5  # other groups did not move


async def _reserved(inventory: ServiceState, n: int) -> bool:
    return sum(inventory.get(RESERVED, {}).values()) >= n


async def test_user_service_down_then_up_loses_and_doubles_nothing(tmp_path, ports):
    transport = InMemoryTransport()
    await transport.start()
    config = make_config(pipeline_data(tmp_path, ports))
    users_config = dataclasses.replace(config, admin_port=None)  # one admin endpoint per process
    rest = Mesh(config, [n for n in config.services if n != "users"], transport=transport)
    users = Mesh(users_config, ["users"], transport=transport)
    await rest.start()
    await users.start()
    try:
        await rest.wait_ready(15)
        token = await user_token(f"http://127.0.0.1:{ports['auth']}")
        base = f"http://127.0.0.1:{ports['orders']}"
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                assert (await post_order(http, base, f"before-{i}", token))[0] == 202
            stats_url = f"http://127.0.0.1:{ports['users']}/notifications/stats"
            await eventually(lambda: _stat(http, stats_url, 3), what="3 notifications before the outage")
            first_store = {n.invoice_id for n in users.services["users"].ctx.state[BOOK].recent}
            await users.stop()
            for i in range(4):
                assert (await post_order(http, base, f"during-{i}", token))[0] == 202
            notification = rest.services["notification"]
            # The notifications wait: nothing committed past them while the User service is down.
            await eventually(lambda: _lagging(transport, 4), what="invoices to wait uncommitted")
            users = Mesh(users_config, ["users"], transport=transport)
            await users.start()
            await eventually(lambda: _stat(http, stats_url, 4), timeout=30, what="the 4 waiting notifications")
            second_store = users.services["users"].ctx.state[BOOK].recent
            orders_after = sorted(n.order_id for n in second_store)
            assert orders_after == [f"during-{i}" for i in range(4)]
            assert not first_store & {n.invoice_id for n in second_store}
            assert notification.ctx.state["sent"] == 7
    finally:
        await users.stop()
        await rest.stop()
        await transport.stop()


async def _stat(http: aiohttp.ClientSession, url: str, n: int) -> bool:
    async with http.get(url) as r:
        return r.status == 200 and (await r.json())["notifications"] >= n


async def _lagging(transport: InMemoryTransport, n: int) -> bool:
    [info] = await transport.describe(["invoice-events"])
    return sum(p.lag for p in info.groups["notification-group"]) == n


async def test_two_billing_replicas_share_the_partitions(tmp_path, ports):
    data = pipeline_data(tmp_path, ports)
    data["services"]["billing"]["replicas"] = 2
    mesh = Mesh(make_config(data))
    await mesh.start()
    try:
        await mesh.wait_ready(15)
        members = mesh.services["billing"].subscriptions
        assert len(members) == 2
        owned = [sorted(m.assigned_partitions) for m in members]
        assert sorted(p for parts in owned for p in parts) == [0, 1, 2] and all(owned)
        token = await user_token(f"http://127.0.0.1:{ports['auth']}")
        async with aiohttp.ClientSession() as http:
            for i in range(12):
                assert (await post_order(http, f"http://127.0.0.1:{ports['orders']}", f"b-{i}", token))[0] == 202
            stats_url = f"http://127.0.0.1:{ports['users']}/notifications/stats"
            await eventually(lambda: _stat(http, stats_url, 12), what="12 notifications")
            stats = await get_json(http, stats_url)
            assert stats["notifications"] == 12 and stats["duplicates_absorbed"] == 0
    finally:
        await mesh.stop()
