"""Faults of a three-node cluster under a steady stream of orders, with every topic replicated three times.

The leader of `order-events` partition 0 is killed with SIGKILL mid-stream (a crash: another replica takes over)
and started again; then the three nodes are restarted one by one (stop, start, wait until the node is back in
every partition's in-sync replicas, next). With min.insync.replicas 2, `acks=all` needs two live nodes, which a
single node down leaves: orders keep being accepted, and every one is notified exactly once.
"""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.faults.cluster import NODES, KafkaCluster, cluster_base_port
from tests.faults.harness import PIPELINE_TOPICS, WHOLE, FaultRun, kill_leftover_brokers, require_kafka, running_mesh
from tests.polling import eventually

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.slow]

RECOVERY_BOUND = 30.0  # seconds after a fault within which every earlier order is notified
PARTITIONS = 3  # of each pipeline topic (services.toml)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KafkaCluster]:
    require_kafka()
    cluster = KafkaCluster(tmp_path / "cluster", cluster_base_port())
    try:
        await cluster.start_on_a_free_port()
        yield cluster
    finally:
        try:
            await cluster.stop()
        finally:
            kill_leftover_brokers(tmp_path / "cluster")


async def fully_replicated(cluster: KafkaCluster) -> bool:
    """Every partition of the pipeline's topics has all three nodes in sync."""
    try:
        for topic in PIPELINE_TOPICS:
            for partition in range(PARTITIONS):
                if len(await cluster.in_sync_replicas(topic, partition)) < NODES:
                    return False
    except Exception:  # metadata not available while a node comes back
        return False
    return True


@pytest.mark.timeout(420)
async def test_a_killed_leader_and_a_rolling_restart_under_traffic(cluster: KafkaCluster, tmp_path: Path) -> None:
    async with running_mesh(tmp_path / "mesh", transport="kafka", split=WHOLE, bootstrap=cluster.bootstrap,
                            replication=NODES) as mesh:
        run = FaultRun(mesh, "cluster", rate=25.0, recovery_bound=RECOVERY_BOUND)
        async with run:
            await run.wait_for_notifications(25)
            await eventually(lambda: fully_replicated(cluster), timeout=60, what="every partition fully replicated")

            leader = await cluster.leader_of("order-events", 0)
            await cluster.kill_node(leader)
            run.fault_ended(f"leader{leader}-killed")
            await run.wait_recovered(f"leader{leader}-killed")
            await cluster.start_node(leader)
            await eventually(lambda: fully_replicated(cluster), timeout=90,
                             what=f"node {leader} back in every partition's in-sync replicas")
            run.fault_ended(f"node{leader}-back")
            await run.wait_recovered(f"node{leader}-back")

            for node in range(1, NODES + 1):
                await cluster.stop_node(node)
                await cluster.start_node(node)
                await eventually(lambda: fully_replicated(cluster), timeout=90,
                                 what=f"node {node} back in every partition's in-sync replicas")
                run.fault_ended(f"node{node}-restarted")
            await run.wait_recovered(f"node{NODES}-restarted")
    assert run.report is not None
    run.report.check()
