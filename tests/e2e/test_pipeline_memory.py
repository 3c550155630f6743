"""The order pipeline end to end on the in-memory transport: real HTTP, real tokens, real ports."""
from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

import aiohttp
import pytest

from meshrun.runtime import Mesh
from meshrun.services import notification as notification_service
from meshrun.services.billing import invoice_id_for
from meshrun.testing import MeshFactory, MeshHarness
from meshrun.transport.memory import InMemoryTransport
from tests.conftest import ROOT, make_config, pipeline_data
from tests.e2e.helpers import eventually, get_json, post_order, user_token

# In the order an order flows through them: once each has handled what it was given, the pipeline is at rest.
GROUPS = ("inventory-group", "email-group", "analytics-group", "billing-group", "notification-group")


@pytest.fixture
async def pipeline(mesh_for: MeshFactory) -> MeshHarness:
    """The shipped services.toml running for the test (each service on a free port), with its admin endpoint."""
    return await mesh_for(ROOT / "services.toml", admin=True)


@pytest.fixture
async def alice(pipeline: MeshHarness) -> str:
    """The demo user's token, signed in with the CLI's public client as `meshrun token --user alice` does."""
    return await pipeline.token("alice", password="alice-password", client="meshrun-cli")


async def at_rest(pipeline: MeshHarness) -> None:
    for group in GROUPS:
        await pipeline.handled(group)


async def notified(http: aiohttp.ClientSession, pipeline: MeshHarness) -> dict[str, Any]:
    return await get_json(http, f"{pipeline.url('users')}/notifications/stats")


async def test_every_order_is_invoiced_and_notified_once(pipeline: MeshHarness, alice: str):
    n = 30
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            body = {"items": [{"sku": f"SKU-{i}", "quantity": i + 1, "unit_price": 250}], "currency": "EUR"}
            status, answer = await post_order(http, pipeline.url("orders"), f"o-{i}", alice, body)
            assert status == 202, answer
            assert answer["order_id"] == f"o-{i}" and len(answer["event_id"]) == 32
        await at_rest(pipeline)
        listing = await get_json(http, f"{pipeline.url('users')}/notifications")
        by_order = {note["order_id"]: note for note in listing["notifications"]}
        assert sorted(by_order) == sorted(f"o-{i}" for i in range(n))
        assert all(note["invoice_id"] == invoice_id_for(oid) and note["user"] == "alice"
                   for oid, note in by_order.items())
        assert by_order["o-3"]["total"] == 4 * 250
        stats = await notified(http, pipeline)
        assert stats["orders_notified_more_than_once"] == 0 and stats["notifications"] == n
        figures = await get_json(http, f"{pipeline.url('analytics')}/analytics")
        assert figures["orders"] == n and figures["revenue_minor"] == {"EUR": 250 * sum(range(1, n + 1))}
    assert (await pipeline.context("email").store.counters()) == {"sent": n}
    assert sum((await pipeline.context("inventory").store.counters("sku:")).values()) == sum(range(1, n + 1))
    assert len(pipeline.published("invoice-events")) == n
    assert all(not pipeline.dead_letters(topic) for topic in ("order-events", "invoice-events"))


async def test_reposting_an_order_publishes_nothing_new(pipeline: MeshHarness, alice: str):
    orders = pipeline.url("orders")
    async with aiohttp.ClientSession() as http:
        first = await post_order(http, orders, "same-1", alice)
        again = await post_order(http, orders, "same-1", alice)
        assert first[0] == 202 and again[0] == 200
        assert again[1]["event_id"] == first[1]["event_id"] and again[1]["status"] == "already_accepted"
        other = await post_order(http, orders, "same-1", alice,
                                 {"items": [{"sku": "X", "quantity": 9, "unit_price": 1}]})
        assert other[0] == 409 and other[1]["error"] == "order_conflict"
        await at_rest(pipeline)
        assert len(pipeline.published("order-events")) == 1
        stats = await notified(http, pipeline)
        assert stats["notifications"] == 1


@pytest.mark.parametrize("order_id, body, status, field", [
    ("bad%20id", None, 400, "order_id"),
    ("o1", b"{not json", 400, "body"),
    ("o1", b'{"items": [{"sku": "A", "quantity": -2, "unit_price": 5}]}', 400, "items[0].quantity"),
    ("o1", b'{"items": [{"sku": "A", "quantity": 1, "unit_price": 9.99}]}', 400, "items[0].unit_price"),
    ("o1", b'{"coupon": "FREE"}', 400, "coupon"),
    ("o1", b'{"items": [{"sku": "' + b"A" * 20000 + b'", "quantity": 1, "unit_price": 1}]}', 413, None),
])
async def test_bad_requests_are_rejected_and_publish_nothing(pipeline: MeshHarness, alice: str, order_id, body,
                                                             status, field):
    async with aiohttp.ClientSession() as http:
        got, answer = await post_order(http, pipeline.url("orders"), order_id, alice, data=body,
                                       headers={"Content-Type": "application/json"})
    assert got == status, answer
    if field:
        assert answer["field"] == field and field in answer["message"]
    else:
        assert answer["error"] == "payload_too_large"
    assert pipeline.published("order-events") == []


async def test_orders_need_a_user_token_with_the_right_scope(pipeline: MeshHarness, alice: str):
    orders = pipeline.url("orders")
    async with aiohttp.ClientSession() as http:
        status, answer = await post_order(http, orders, "o1", None)
        assert status == 401 and answer["error"] == "invalid_token"
        # audience users, scope users.notify: not for orders
        machine = await pipeline.machine_token("notification-service", secret="notification-secret",
                                               scope="users.notify")
        status, answer = await post_order(http, orders, "o1", machine)
        assert status in (401, 403)
        async with http.post(f"{pipeline.url('users')}/notify-user", headers={"Authorization": f"Bearer {alice}"},
                             json={"invoice_id": "I", "order_id": "o", "user": "alice"}) as r:
            assert r.status in (401, 403)  # a user token cannot impersonate the notification service
    assert pipeline.published("order-events") == []


async def test_replay_makes_inventory_reread_every_order_and_reserve_none_twice(pipeline: MeshHarness, alice: str):
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            assert (await post_order(http, pipeline.url("orders"), f"r-{i}", alice))[0] == 202
        await at_rest(pipeline)
        inventory = pipeline.context("inventory").store
        assert sum((await inventory.counters("sku:")).values()) == 5
        async with http.post(f"{pipeline.admin_url}/replay", params={"group": "inventory-group",
                                                                     "topic": "order-events", "to": "earliest"}) as r:
            assert r.status == 200, await r.text()
            assert sum((await r.json())["offsets"].values()) == 0
        await pipeline.handled("inventory-group")
        # Re-read, all 5 (the lag below is 0), and reserved once per order: the store remembers them.
        assert sum((await inventory.counters("sku:")).values()) == 5
        topics = await get_json(http, f"{pipeline.admin_url}/topics")
        lag = {g: sum(p["lag"] for p in parts) for t in topics["topics"] if t["name"] == "order-events"
               for g, parts in t["groups"].items()}
        assert lag["inventory-group"] == 0 and set(lag) >= {"billing-group", "email-group", "analytics-group"}
        assert (await notified(http, pipeline))["notifications"] == 5  # other groups did not move


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
            await users.stop()
            for i in range(4):
                assert (await post_order(http, base, f"during-{i}", token))[0] == 202
            notification = rest.services["notification"]
            # The notifications wait: nothing committed past them while the User service is down.
            await eventually(lambda: _lagging(transport, 4), what="invoices to wait uncommitted")
            users = Mesh(users_config, ["users"], transport=transport)
            await users.start()
            # The restarted User service keeps what it recorded before (the state store): 3 + 4, each once.
            await eventually(lambda: _stat(http, stats_url, 7), timeout=30, what="the 4 waiting notifications")
            listing = await get_json(http, f"http://127.0.0.1:{ports['users']}/notifications")
            assert sorted(n["order_id"] for n in listing["notifications"]) == sorted(
                [f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(4)])
            assert notification.ctx.state[notification_service.SENT] == 7
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


async def test_two_billing_replicas_share_the_partitions(mesh_for: MeshFactory):
    data = tomllib.loads((ROOT / "services.toml").read_text())
    data["services"]["billing"]["replicas"] = 2
    pipeline = await mesh_for(data)
    members = pipeline.mesh.services["billing"].subscriptions
    assert len(members) == 2
    owned = [sorted(m.assigned_partitions) for m in members]
    assert sorted(p for parts in owned for p in parts) == [0, 1, 2] and all(owned)
    token = await pipeline.token("alice", password="alice-password", client="meshrun-cli")
    async with aiohttp.ClientSession() as http:
        for i in range(12):
            assert (await post_order(http, pipeline.url("orders"), f"b-{i}", token))[0] == 202
        await at_rest(pipeline)
        stats = await notified(http, pipeline)
        assert stats["notifications"] == 12 and stats["duplicates_absorbed"] == 0
