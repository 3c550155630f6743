"""The mesh split across `meshrun up --only` processes on a real Kafka broker.

auth+orders+users, billing, notification and inventory+email+analytics run as separate processes. Every order
must be invoiced and notified exactly once, also when billing is killed with SIGKILL mid-stream, and two billing
processes share the three partitions of order-events.
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.conftest import pipeline_data, write_toml
from tests.e2e.helpers import eventually, get_json, post_order, user_token
from tests.e2e.processes import MeshProcess
from tests.kafka.broker import TEST_OPTIONS, kafka_bootstrap

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SPLIT = ("auth,orders,users", "billing", "notification", "inventory,email,analytics")


@pytest.fixture
async def split_mesh(tmp_path, ports) -> AsyncIterator[dict[str, Any]]:
    bootstrap = kafka_bootstrap()
    data = pipeline_data(tmp_path, ports, transport="kafka", suffix="-" + uuid.uuid4().hex[:8])
    del data["mesh"]["admin_port"]  # the admin endpoint serves the in-memory transport only
    data["transport"]["kafka"] = {"bootstrap_servers": bootstrap, **TEST_OPTIONS}
    config = write_toml(tmp_path / "services.toml", data)
    processes = {only: MeshProcess(config, only, tmp_path) for only in SPLIT}
    try:
        for process in processes.values():
            process.start()
        for process in processes.values():
            await process.wait_ready()
        yield {"processes": processes, "ports": ports, "config": config, "tmp": tmp_path, "data": data}
    finally:
        for process in processes.values():
            process.stop()


async def notified(http: aiohttp.ClientSession, users: str, prefix: str) -> dict[str, int]:
    listing = await get_json(http, f"{users}/notifications")
    counts: dict[str, int] = {}
    for note in listing["notifications"]:
        if note["order_id"].startswith(prefix):
            counts[note["order_id"]] = counts.get(note["order_id"], 0) + 1
    return counts


async def test_split_mesh_survives_a_killed_billing_process(split_mesh):
    ports = split_mesh["ports"]
    orders, users = f"http://127.0.0.1:{ports['orders']}", f"http://127.0.0.1:{ports['users']}"
    token = await user_token(f"http://127.0.0.1:{ports['auth']}")
    prefix = "split-" + uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        first = [f"{prefix}-a{i}" for i in range(15)]
        for order_id in first:
            status, answer = await post_order(http, orders, order_id, token)
            assert status == 202, answer

        async def all_first() -> bool:
            return len(await notified(http, users, prefix)) == len(first)

        await eventually(all_first, timeout=60, what="the first orders to be notified across processes")

        # A stream of orders; billing is killed with SIGKILL in the middle of it, then restarted.
        billing = split_mesh["processes"]["billing"]
        stream = [f"{prefix}-b{i}" for i in range(40)]
        for i, order_id in enumerate(stream):
            if i == 15:
                billing.kill()
            if i == 25:
                billing.start()
            status, answer = await post_order(http, orders, order_id, token)
            assert status == 202, answer  # the Order service does not depend on billing being up
        await billing.wait_ready()

        async def all_notified() -> bool:
            return len(await notified(http, users, prefix)) == len(first) + len(stream)

        await eventually(all_notified, timeout=120, what="every order notified after billing restarted")
        counts = await notified(http, users, prefix)
        assert sorted(counts) == sorted(first + stream)  # none lost
        assert set(counts.values()) == {1}  # none doubled
        stats = await get_json(http, f"{users}/notifications/stats")
        assert stats["orders_notified_more_than_once"] == 0


async def test_two_billing_processes_share_the_partitions_and_take_over(split_mesh):
    ports = split_mesh["ports"]
    processes = split_mesh["processes"]
    group = split_mesh["data"]["services"]["billing"]["group"]
    second = MeshProcess(split_mesh["config"], "billing", split_mesh["tmp"], name="billing-2").start()
    try:
        await second.wait_ready()

        def assignment(process: MeshProcess) -> list[int]:
            found = [e for e in process.events()
                     if e.get("event") == "kafka_partitions_assigned" and e.get("group") == group]
            return found[-1]["partitions"] if found else []

        async def shared() -> bool:
            a, b = assignment(processes["billing"]), assignment(second)
            return bool(a) and bool(b) and sorted(a + b) == [0, 1, 2]

        await eventually(shared, timeout=60, what="the 3 partitions split between the 2 billing processes")

        token = await user_token(f"http://127.0.0.1:{ports['auth']}")
        prefix = "pair-" + uuid.uuid4().hex[:6]
        orders, users = f"http://127.0.0.1:{ports['orders']}", f"http://127.0.0.1:{ports['users']}"
        async with aiohttp.ClientSession() as http:
            ids = [f"{prefix}-{i}" for i in range(12)]
            for order_id in ids[:6]:
                assert (await post_order(http, orders, order_id, token))[0] == 202
            assert processes["billing"].stop() == 0  # graceful: commits and leaves the group

            async def taken_over() -> bool:
                return assignment(second) == [0, 1, 2]

            await eventually(taken_over, timeout=60, what="the remaining billing process to own all partitions")
            for order_id in ids[6:]:
                assert (await post_order(http, orders, order_id, token))[0] == 202

            async def all_notified() -> bool:
                return len(await notified(http, users, prefix)) == len(ids)

            await eventually(all_notified, timeout=60, what="every order notified")
            assert set((await notified(http, users, prefix)).values()) == {1}
    finally:
        second.stop()
