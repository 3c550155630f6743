"""A broker that goes away for a few seconds delays publishing and consuming; it does not crash a service.

Runs its own broker (scripts/kafka on a free port, data in a temporary directory) so it can stop and restart it
without disturbing the shared test broker.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
from pathlib import Path
from typing import AsyncIterator

import pytest

from meshrun.config import RetryConfig, TopicConfig
from meshrun.transport.base import Record, SubscriptionState
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka"


class Broker:
    """A broker of our own, driven through scripts/kafka."""

    def __init__(self, data_dir: Path) -> None:
        self.port = port_pair_outside_ephemeral_range()
        self.env = {**os.environ, "MESHRUN_KAFKA_DIR": str(data_dir)}

    async def start_on_a_free_port(self, attempts: int = 3) -> None:
        """Start; if another process took the port while the JVM started, try again on another pair."""
        for attempt in range(attempts):
            result = await self._script("start")
            if result.returncode == 0:
                return
            if "Address already in use" not in result.stderr or attempt == attempts - 1:
                break
            await self._script("stop", "--wipe")
            self.port = port_pair_outside_ephemeral_range()
        raise AssertionError(f"scripts/kafka start failed:\n{result.stdout}\n{result.stderr}")

    async def run(self, *args: str) -> None:
        result = await self._script(*args)
        assert result.returncode == 0, f"scripts/kafka {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"

    async def _script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(subprocess.run, [str(SCRIPT), *args, "--port", str(self.port)],
                                       env=self.env, capture_output=True, text=True, timeout=120)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def port_pair_outside_ephemeral_range() -> int:
    """A port N with N + 1 (the controller's) both free, below the kernel's range for outgoing connections.

    The broker binds its ports seconds after they were chosen, and binds them again after a restart. A port from
    the ephemeral range (what binding port 0 returns) can meanwhile become the local end of some outgoing
    connection, the broker's own included, and the start fails with "Address already in use".
    """
    low = _ephemeral_range()[0]
    candidates = list(range(max(1024, low - 12_000), low - 2, 2))
    random.shuffle(candidates)
    return next(p for p in candidates if _bindable(p) and _bindable(p + 1))


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems start theirs higher


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
async def own_broker(tmp_path: Path, bootstrap: str) -> AsyncIterator[Broker]:
    # `bootstrap` first: without the shared broker (no Java, no jars) this test is skipped or failed like the others.
    if shutil.which("java") is None:
        pytest.skip("java is not installed: scripts/kafka cannot start a broker of this test's own")
    broker = Broker(tmp_path / "kafka")
    await broker.start_on_a_free_port()
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
