"""The only broker stops while orders are posted, then comes back: after 10 s and after 60 s away.

A mesh in one `meshrun up --transport kafka` process, and the same mesh split in four processes, each on a broker
of its own and each logging JSON (what once stopped the consumers for good after a restart); the two run side by
side to keep the suite short. During an outage the Order service answers 503 with Retry-After once
`publish_timeout` (10 s) passed and the client retries; handlers wait instead of dead-lettering. Once the broker is
back every order is accepted and notified exactly once, within 30 s of its return.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import (SPLIT, WHOLE, FaultRun, Report, check_all, outage, own_broker_in, running_mesh,
                                  side_by_side)

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.slow]

OUTAGES = (10.0, 60.0)  # seconds; each mesh sees both, one after the other
RECOVERY_BOUND = 30.0  # seconds after the broker's return within which every earlier order is notified


async def broker_outages(workdir: Path, name: str, split: tuple[str, ...]) -> Report:
    async with own_broker_in(workdir / "kafka") as broker, \
            running_mesh(workdir / "mesh", transport="kafka", split=split, bootstrap=broker.bootstrap) as mesh:
        run = FaultRun(mesh, name, rate=25.0, recovery_bound=RECOVERY_BOUND)
        async with run:
            await run.wait_for_notifications(25)
            for seconds in OUTAGES:
                await broker.run("stop")
                await outage(seconds)
                await broker.run("start")
                label = f"outage{seconds:.0f}s"
                run.fault_ended(label)
                await run.wait_recovered(label)
    assert run.report is not None
    return run.report


@pytest.mark.timeout(480)
async def test_broker_outages_under_traffic_one_process_and_four(tmp_path: Path) -> None:
    check_all(await side_by_side(broker_outages(tmp_path / "one", "outage1p", WHOLE),
                                 broker_outages(tmp_path / "four", "outage4p", SPLIT)))
