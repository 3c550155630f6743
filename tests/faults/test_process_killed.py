"""A meshrun process killed with SIGKILL while orders flow on Kafka, then started again: nothing lost, nothing doubled.

Redelivery after a crash is at least once; the state store makes it exactly once in effect. Checked from the
outside: every accepted order notified once (the User service's records and its log across every life), analytics
totals equal to the accepted orders, inventory reserving once per order, nothing dead-lettered. The whole mesh in
one process is killed twice; then each process of the four-process split, one at a time.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from meshrun.services.orders import DEFAULT_ITEM
from tests.faults.harness import SPLIT, WHOLE, FaultRun, Mesh, Report, check_all, running_mesh, side_by_side
from tests.kafka.broker import kafka_bootstrap

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.slow]

RATE = 40.0  # orders per second
RECOVERY_BOUND = 45.0  # seconds after a restart within which every earlier order is notified


async def killed_and_restarted(workdir: Path, name: str, split: tuple[str, ...], kills: list[str],
                               bootstrap: str, state: str | None = None) -> Report:
    async with running_mesh(workdir, transport="kafka", split=split, bootstrap=bootstrap, from_log_end=True,
                            state=state) as mesh:
        run = FaultRun(mesh, name, rate=RATE, recovery_bound=RECOVERY_BOUND)
        async with run:
            await run.wait_for_notifications(40)
            for i, part in enumerate(kills):
                process = mesh.processes[part]
                await asyncio.to_thread(process.kill)
                process.start()
                await process.wait_ready(120)
                label = f"kill{i + 1}:{process.name}"
                run.fault_ended(label)
                await run.wait_recovered(label)
                await run.wait_for_notifications(len(run.ledger.notified) + 40)  # flowing again before the next
        assert run.report is not None
        if run.report.lost == 0:
            await check_acted_once(mesh, run)
    return run.report


async def check_acted_once(mesh: Mesh, run: FaultRun) -> None:
    """Every service acted once per accepted order, across every life of every process."""
    accepted = len(run.ledger.accepted)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{mesh.url('analytics')}/analytics") as response:
            figures = await response.json()
        async with http.get(f"{mesh.url('inventory')}/reserved") as response:
            reserved = await response.json()
    assert figures["orders"] == accepted and figures["revenue_minor"] == {"EUR": accepted * DEFAULT_ITEM.unit_price}, \
        (figures, accepted)
    assert reserved == {"orders": accepted, "units": {DEFAULT_ITEM.sku: accepted * DEFAULT_ITEM.quantity}}, \
        (reserved, accepted)
    for event in ("order_confirmation_email", "inventory_reserved", "user_notified"):
        lines = Counter(e.get("order_id") for p in mesh.processes.values() for e in p.events()
                        if e.get("event") == event)
        twice = {order_id: n for order_id, n in lines.items() if n > 1}
        assert not twice, f"{event} logged more than once for {len(twice)} orders: {list(twice.items())[:5]}"


@pytest.mark.timeout(420)
async def test_the_whole_mesh_killed_twice_under_load(tmp_path: Path) -> None:
    bootstrap = kafka_bootstrap()
    check_all(await side_by_side(
        killed_and_restarted(tmp_path / "sqlite", "killed-whole-sqlite", WHOLE, [WHOLE[0], WHOLE[0]], bootstrap)))


@pytest.mark.timeout(600)
async def test_each_process_of_the_split_killed_in_turn_under_load(tmp_path: Path) -> None:
    bootstrap = kafka_bootstrap()
    check_all(await side_by_side(
        killed_and_restarted(tmp_path / "sqlite", "killed-split-sqlite", SPLIT, list(SPLIT), bootstrap)))
