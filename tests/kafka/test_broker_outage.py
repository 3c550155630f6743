"""A broker that goes away for a few seconds delays publishing and consuming; it does not crash a service.

Runs its own broker (scripts/kafka on a free port, data in a temporary directory) so it can stop and restart it
without disturbing the shared test broker.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from meshrun.config import RetryConfig, TopicConfig
from meshrun.transport.base import Record, SubscriptionState
from tests.conftest import pipeline_data, write_toml
from tests.e2e.helpers import post_order, user_token
from tests.e2e.processes import MeshProcess
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka"


class Broker:
    """A broker of our own, driven through scripts/kafka."""

    def __init__(self, data_dir: Path) -> None:
        self.port = port_pair_outsideephemeral_range()
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
            self.port = port_pair_outsideephemeral_range()
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


def port_pair_outsideephemeral_range() -> int:
    """A port N with N + 1 (the controller's) both free, below the kernel's range for outgoing connections.

    The broker binds its ports seconds after they were chosen, and binds them again after a restart. A port from
    the ephemeral range (what binding port 0 returns) can meanwhile become the local end of some outgoing
    connection, the broker's own included, and the start fails with "Address already in use".
    """
    low = ephemeral_range()[0]
    candidates = list(range(max(1024, low - 12_000), low - 2, 2))
    random.shuffle(candidates)
    return next(p for p in candidates if bindable(p) and bindable(p + 1))


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default; other systems start theirs higher


def bindable(port: int) -> bool:
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
    # publish_timeout long enough for the restart: the publish waits for the broker instead of failing as unavailable.
    transport = kafka_transport(own_broker.bootstrap, request_timeout_ms=60_000, publish_timeout=60.0)
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



def _mesh_config(tmp_path: Path, ports: Any, broker: Broker, grace: float, publish_timeout: float = 2.0) -> Path:
    """The shipped pipeline on the test's broker: free ports, unique groups, publish_timeout 2 s."""
    data = pipeline_data(tmp_path, ports, transport="kafka", suffix="-" + unique("g"))
    data["mesh"]["grace_period"] = grace
    data["transport"]["kafka"] = {"bootstrap_servers": broker.bootstrap, "publish_timeout": publish_timeout,
                                  "heartbeat_interval_ms": 200, "session_timeout_ms": 6000}
    return write_toml(tmp_path / "services.toml", data)


async def _start_mesh(tmp_path: Path, config: Path, only: str) -> MeshProcess:
    mesh = MeshProcess(config, only, tmp_path).start()
    try:
        await mesh.wait_ready(90)
    except BaseException:
        mesh.kill()
        raise
    return mesh


async def _exit_code_within(mesh: MeshProcess, seconds: float) -> int:
    assert mesh.proc is not None
    return await asyncio.to_thread(mesh.proc.wait, seconds)  # raises TimeoutExpired when it takes longer


async def test_an_order_during_an_outage_is_refused_with_retry_after_and_sigterm_still_exits(
        own_broker: Broker, tmp_path: Path, ports: Any) -> None:
    config = _mesh_config(tmp_path, ports, own_broker, grace=3.0)
    mesh = await _start_mesh(tmp_path, config, "auth,orders")
    try:
        issuer = f"http://127.0.0.1:{ports['auth']}"
        orders = f"http://127.0.0.1:{ports['orders']}"
        token = await user_token(issuer)
        body = {"items": [{"sku": "BOOK-1", "quantity": 1, "unit_price": 100}], "currency": "EUR"}
        async with aiohttp.ClientSession() as http:
            assert (await post_order(http, orders, "before-outage", token, body))[0] == 202
            await own_broker.run("stop")
            started = time.monotonic()
            async with http.post(f"{orders}/orders/during-outage", json=body,
                                 headers={"Authorization": f"Bearer {token}"},
                                 timeout=aiohttp.ClientTimeout(total=30)) as response:
                waited = time.monotonic() - started
                answer = await response.json()
                assert response.status == 503, answer
                assert answer["error"] == "unavailable" and "publish_timeout" in answer["message"]
                assert int(response.headers["Retry-After"]) >= 1 and answer["retry_after"] >= 1
            # Bounded by publish_timeout (2 s), with slack for a loaded machine; never hanging.
            assert waited < 10, waited
        assert mesh.proc is not None
        stop_started = time.monotonic()
        mesh.proc.send_signal(signal.SIGTERM)
        # grace_period 3 s plus the stop margin of 5 s, with slack for a loaded machine.
        await _exit_code_within(mesh, 3.0 + 5.0 + 4.0)
        assert time.monotonic() - stop_started < 12
    finally:
        mesh.kill()


async def test_a_second_sigterm_exits_at_once(own_broker: Broker, tmp_path: Path, ports: Any) -> None:
    # An order in flight while the broker is away holds the graceful stop (its request may finish for up to
    # grace_period, its publish waits publish_timeout): only the second signal can end it early.
    config = _mesh_config(tmp_path, ports, own_broker, grace=60.0, publish_timeout=60.0)
    mesh = await _start_mesh(tmp_path, config, "auth,orders")
    token = await user_token(f"http://127.0.0.1:{ports['auth']}")
    body = {"items": [{"sku": "BOOK-1", "quantity": 1, "unit_price": 100}], "currency": "EUR"}
    try:
        await own_broker.run("stop")
        async with aiohttp.ClientSession() as http:
            in_flight = asyncio.create_task(post_order(http, f"http://127.0.0.1:{ports['orders']}", "held", token,
                                                       body))
            await asyncio.sleep(0.5)  # let the request reach the publish; nothing logs that moment to wait on
            assert mesh.proc is not None
            mesh.proc.send_signal(signal.SIGTERM)
            await eventually(lambda: any(e.get("event") == "mesh_stopping" for e in mesh.events()),
                             what="the first SIGTERM to start a graceful stop")
            mesh.proc.send_signal(signal.SIGTERM)
            assert await _exit_code_within(mesh, 5.0) == 130
            assert any(e.get("event") == "mesh_stopped_at_second_signal" for e in mesh.events())
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)
    finally:
        mesh.kill()
