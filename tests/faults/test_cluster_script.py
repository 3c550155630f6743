"""scripts/kafka --nodes 3 runs a real three-node cluster: a record replicated three times is still accepted with
acks=all while its partition's leader is dead, and nothing acknowledged is lost when that node comes back.

Starts its own cluster (data in a temporary directory, on free ports), so it needs Java but not the shared test
broker; without Java it is skipped locally and fails on CI (CI=true).
"""
from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from meshrun.config import TopicConfig
from meshrun.transport.partitioner import partition_for
from tests.faults.cluster import NODES, KafkaCluster, cluster_base_port
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 3


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KafkaCluster]:
    if shutil.which("java") is None:
        message = "java is not installed: scripts/kafka cannot start a three-node cluster for this test"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    cluster = KafkaCluster(tmp_path / "kafka", cluster_base_port())
    try:
        await cluster.start_on_a_free_port()
        yield cluster
    finally:
        await cluster.stop()


def key_for(partition: int) -> bytes:
    """A key that meshrun (like Kafka's default partitioner) sends to `partition`."""
    unused = itertools.count()
    return next(k for k in (f"key-{i}".encode() for i in itertools.count())
                if partition_for(k, PARTITIONS, unused) == partition)


async def read_partition(bootstrap: str, topic: str, partition: int, count: int) -> list[bytes]:
    """The first `count` values of the partition, read back from the cluster."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []

        async def more() -> bool:
            for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                values.extend(r.value for r in records if r.value is not None)
            return len(values) >= count

        await eventually(more, timeout=20, what=f"{count} records in {topic}[{partition}]")
        return values
    finally:
        await consumer.stop()


async def test_a_publish_survives_the_partition_leader_being_killed(cluster: KafkaCluster) -> None:
    transport = kafka_transport(cluster.bootstrap, publish_timeout=20.0)
    await transport.start()
    try:
        topic = unique("cluster")
        await transport.ensure_topics([TopicConfig(topic, PARTITIONS, replication_factor=NODES)])
        key = key_for(0)
        before = [f"before-{i}".encode() for i in range(5)]
        for value in before:
            assert (await transport.publish(topic, value, key=key)).partition == 0
        await eventually(lambda: _in_sync(cluster, topic, [1, 2, 3]), timeout=20,
                         what="all three replicas of partition 0 in sync")

        leader = await cluster.leader_of(topic, 0)
        await cluster.kill_node(leader)
        killed_at = time.monotonic()
        # acks=all with min.insync.replicas=2: the two live nodes are enough once the dead one is fenced (~3 s).
        landed = await asyncio.wait_for(transport.publish(topic, b"after-kill", key=key), 20)
        stalled = time.monotonic() - killed_at
        assert landed.partition == 0
        new_leader = await cluster.leader_of(topic, 0)
        assert new_leader != leader, f"node {leader} was killed but still leads partition 0"
        assert leader not in await cluster.in_sync_replicas(topic, 0)

        await cluster.start_node(leader)
        await eventually(lambda: _in_sync(cluster, topic, [1, 2, 3]), timeout=30,
                         what=f"node {leader} back in partition 0's in-sync replicas")
        await asyncio.wait_for(transport.publish(topic, b"after-restart", key=key), 20)

        expected = [*before, b"after-kill", b"after-restart"]
        assert await read_partition(cluster.bootstrap, topic, 0, len(expected)) == expected
        print(f"publish accepted {stalled:.1f}s after killing node {leader}; new leader node {new_leader}")
    finally:
        await transport.stop()


async def _in_sync(cluster: KafkaCluster, topic: str, nodes: list[int]) -> bool:
    return await cluster.in_sync_replicas(topic, 0) == nodes
