"""`meshrun up --only orders --workers 2`: two processes share the Order service's port on Kafka."""
from __future__ import annotations

import uuid

import aiohttp
import pytest

from meshrun.config import KafkaTransportConfig
from meshrun.transport.kafka import KafkaTransport
from tests.conftest import pipeline_data, write_toml
from tests.e2e.helpers import post_order, user_token
from tests.e2e.processes import MeshProcess
from tests.kafka.broker import TEST_OPTIONS, kafka_bootstrap
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def order_events_end(bootstrap: str) -> int:
    transport = KafkaTransport(KafkaTransportConfig(bootstrap, {}))
    await transport.start()
    try:
        [info] = await transport.describe(["order-events"])
        offsets = {p.partition: p.log_end for lags in info.groups.values() for p in lags}
        return sum(offsets.values())
    finally:
        await transport.stop()


async def test_two_order_workers_share_one_port_and_publish_every_order(tmp_path, ports):
    bootstrap = kafka_bootstrap()
    data = pipeline_data(tmp_path, ports, transport="kafka", suffix="-" + uuid.uuid4().hex[:8])
    del data["mesh"]["admin_port"]
    data["transport"]["kafka"] = {"bootstrap_servers": bootstrap, **TEST_OPTIONS}
    # A group on order-events, so describe() reports the topic's end offsets.
    config = write_toml(tmp_path / "services.toml", data)
    auth = MeshProcess(config, "auth,inventory", tmp_path).start()
    orders = MeshProcess(config, "orders", tmp_path, extra=("--workers", "2"), ready_lines=2).start()
    try:
        await auth.wait_ready()
        await orders.wait_ready()
        before = await order_events_end(bootstrap)
        token = await user_token(f"http://127.0.0.1:{ports['auth']}")
        prefix = "w-" + uuid.uuid4().hex[:6]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for i in range(20):
                status, answer = await post_order(http, f"http://127.0.0.1:{ports['orders']}", f"{prefix}-{i}", token)
                assert status == 202, answer
        assert await order_events_end(bootstrap) - before == 20

        def accepted() -> list[dict]:
            return [e for e in orders.events() if e.get("event") == "order_accepted"]

        # Log lines leave a process in buffered writes every 100 ms: wait for them rather than read at once.
        await eventually(lambda: len(accepted()) >= 20, timeout=10, what="both workers' order_accepted lines")
        assert sorted(e["order_id"] for e in accepted()) == sorted(f"{prefix}-{i}" for i in range(20))
        # 20 new connections spread by the kernel over both listeners (all on one: a 2-in-a-million chance).
        assert {e["worker"] for e in accepted()} == {0, 1}
    finally:
        assert orders.stop() == 0
        auth.stop()
