"""A three-node Kafka cluster of a test's own, driven through `scripts/kafka --nodes 3`, for fault tests.

Node i (1..3) is a combined broker and controller with node id i, its broker on `port + i - 1` and its controller
on `port + 100 + i - 1`. Topics default to replication factor 3 with min.insync.replicas=2, so `acks=all` needs two
live brokers, and a killed node is fenced within about 3 s.
"""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.kafka.test_broker_outage import bindable as _bindable
from tests.kafka.test_broker_outage import ephemeral_range as _ephemeral_range

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka"
NODES = 3
CONTROLLER_OFFSET = 100  # scripts/kafka: node i's controller listens on port + 100 + i - 1


def cluster_ports(base: int) -> list[int]:
    """The six ports of a cluster on `base`: three brokers, then three controllers."""
    return [base + i for i in range(NODES)] + [base + CONTROLLER_OFFSET + i for i in range(NODES)]


def cluster_base_port() -> int:
    """A base port whose three broker and three controller ports are all free, below the ephemeral range.

    The JVMs bind their ports seconds after they were chosen, and again after a restart; a port from the ephemeral
    range could meanwhile become the local end of an outgoing connection, and the start would fail with "Address
    already in use" (the same reasoning as tests/kafka/test_broker_outage.py's port_pair_outside_ephemeral_range).
    """
    low = _ephemeral_range()[0]
    candidates = list(range(max(1024, low - 12_000), low - CONTROLLER_OFFSET - NODES))
    random.shuffle(candidates)
    return next(p for p in candidates if all(_bindable(q) for q in cluster_ports(p)))


class ScriptFailed(AssertionError):
    """scripts/kafka exited with an error; carries its output."""

    def __init__(self, args: tuple[str, ...], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"scripts/kafka {' '.join(args)} failed (exit {result.returncode}):\n"
                         f"{result.stdout}\n{result.stderr}")
        self.result = result


class KafkaCluster:
    """Three nodes with their data under `data_dir` (MESHRUN_KAFKA_DIR), brokers on port, port + 1, port + 2."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.env = {**os.environ, "MESHRUN_KAFKA_DIR": str(data_dir)}

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.broker_port(i)}" for i in range(1, NODES + 1))

    def broker_port(self, i: int) -> int:
        self._check_node(i)
        return self.port + i - 1

    async def start(self) -> None:
        """Start all three nodes (fresh data) and return once they form one cluster."""
        await self._run("start", "--nodes", str(NODES), "--fresh")

    async def start_on_a_free_port(self, attempts: int = 3) -> None:
        """Start; if another process took one of the six ports meanwhile, try again on another base port."""
        for attempt in range(attempts):
            try:
                await self.start()
                return
            except ScriptFailed as exc:
                # The script's own check ("already in use", "is taken by") or the JVM's bind ("Address already
                # in use", in the log tail it prints).
                taken = "already in use" in exc.result.stderr or "is taken by" in exc.result.stderr
                if not taken or attempt == attempts - 1:
                    raise
            await self.stop()
            self.port = cluster_base_port()

    async def stop(self) -> None:
        """Stop every node and delete the cluster's data."""
        await self._run("stop", "--nodes", str(NODES), "--wipe")

    async def stop_node(self, i: int) -> None:
        """SIGTERM node i and wait until it has exited (a clean shutdown)."""
        await self._run("stop", "--node", str(self._check_node(i)))

    async def start_node(self, i: int) -> None:
        """Restart node i with its data; returns once its broker port accepts connections."""
        await self._run("start", "--node", str(self._check_node(i)))

    async def kill_node(self, i: int) -> None:
        """SIGKILL node i (a crash)."""
        await self._run("kill", "--node", str(self._check_node(i)))

    async def leader_of(self, topic: str, partition: int) -> int:
        """The node id (1..3) of the partition's leader, from a live broker's metadata."""
        leader = int((await self._partition(topic, partition))["leader"])
        if leader < 0:
            raise LookupError(f"{topic}[{partition}] has no leader right now")
        return leader

    async def in_sync_replicas(self, topic: str, partition: int) -> list[int]:
        """The node ids of the partition's in-sync replicas, sorted."""
        return sorted(int(n) for n in (await self._partition(topic, partition))["isr"])

    async def _partition(self, topic: str, partition: int, retry_for: float = 15.0) -> dict[str, Any]:
        """The partition's metadata from a live broker. Right after a kill the metadata may still name the dead node
        (until it is fenced) and a request sent there fails: such errors are retried for `retry_for` seconds."""
        deadline = asyncio.get_running_loop().time() + retry_for
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5_000)
            try:
                await admin.start()
                [info] = await admin.describe_topics([topic])
                break
            except KafkaError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
            finally:
                await admin.close()
            await asyncio.sleep(0.2)
        if info["error_code"]:
            raise LookupError(f"metadata of topic {topic!r}: error code {info['error_code']}")
        for p in info["partitions"]:
            if p["partition"] == partition:
                return dict(p)
        raise LookupError(f"topic {topic!r} has no partition {partition}")

    def _check_node(self, i: int) -> int:
        if not 1 <= i <= NODES:
            raise ValueError(f"node {i}: the nodes are numbered 1 to {NODES}")
        return i

    async def _run(self, *args: str) -> None:
        full = (*args, "--port", str(self.port))
        result = await asyncio.to_thread(subprocess.run, [str(SCRIPT), *full], env=self.env,
                                         capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise ScriptFailed(full, result)
