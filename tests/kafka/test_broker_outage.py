"""A broker that goes away for a few seconds delays publishing and consuming; it does not crash a service.

Runs its own broker (scripts/kafka on a free port, data in a temporary directory) so it can stop and restart it
without disturbing the shared test broker.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import AsyncIterator

import pytest

from meshrun.config import RetryConfig, TopicConfig
from meshrun.transport.base import Record, SubscriptionState
from tests.conftest import free_port
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka"


class Broker:
    """A broker of our own, driven through scripts/kafka."""

    def __init__(self, data_dir: Path) -> None:
        # The controller listens on port + 1: find a port whose neighbour is free too.
        self.port = next(p for p in iter(free_port, None) if p < 65000 and _free(p + 1))
        self.env = {**os.environ, "MESHRUN_KAFKA_DIR": str(data_dir)}

    async def run(self, *args: str) -> None:
        result = await asyncio.to_thread(subprocess.run, [str(SCRIPT), *args, "--port", str(self.port)],
                                         env=self.env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"scripts/kafka {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
async def own_broker(tmp_path: Path, bootstrap: str) -> AsyncIterator[Broker]:
    # `bootstrap` first: without the shared broker (no Java, no jars) this test is skipped or failed like the others.
    if shutil.which("java") is None:
        pytest.skip("java is not installed: scripts/kafka cannot start a broker of this test's own")
    broker = Broker(tmp_path / "kafka")
    await broker.run("start")
    yield broker
    await broker.run("stop", "--wipe")


async def test_a_broker_restart_delays_work_without_losing_it(own_broker: Broker) -> None:
    transport = kafka_transport(own_broker.bootstrap, request_timeout_ms=60_000)
    await transport.start()
    try:
        topic = unique("outage")
        await transport.ensure_topics([TopicConfig(topic, 2)])
        handled: list[bytes] = []

        async def handle(record: Record) -> None:
            handled.append(record.value)

        sub = await transport.subscribe(topic, unique("group"), handle, retry=RetryConfig(backoff_initial=0.01))
        await sub.wait_joined(30)
        await transport.publish(topic, b"before", key=b"a")
        await eventually(lambda: handled == [b"before"], what="the record published before the outage")

        await own_broker.run("stop")
        during = asyncio.create_task(transport.publish(topic, b"during", key=b"a"))
        await own_broker.run("start")
        landed = await asyncio.wait_for(during, 60)
        assert landed.topic == topic
        await transport.publish(topic, b"after", key=b"a")
        await eventually(lambda: handled == [b"before", b"during", b"after"], timeout=60,
                         what="the records published during and after the outage")
        assert sub.state is SubscriptionState.ASSIGNED
    finally:
        await transport.stop()
