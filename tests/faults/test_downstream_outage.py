"""The User service is down for two minutes while orders keep coming, on both transports.

The mesh runs as `meshrun up --except users` plus `meshrun up --only users` (Notification calls the User service
over HTTP, so the split works in memory too). The users process is stopped with SIGTERM, orders are posted for
120 s, then it is started again: Notification's handlers wait (RetryLater) instead of dead-lettering, and once it is
back every accepted order is notified exactly once. The User service keeps its records in the state store, so what
it recorded before the stop is still there after it, and its `user_notified` log lines across both lives match them.
The memory and Kafka variants run side by side.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.harness import (SERVICES, FaultRun, Report, check_all, notified_in_log, outage, running_mesh,
                                  side_by_side)
from tests.kafka.broker import kafka_bootstrap

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.slow]

USERS_DOWN = 120.0  # seconds
RECOVERY_BOUND = 30.0  # seconds after the User service is back within which every earlier order is notified
EXCEPT_USERS = ",".join(s for s in SERVICES if s != "users")


async def users_down_for_a_while(workdir: Path, transport: str, bootstrap: str) -> Report:
    async with running_mesh(workdir, transport=transport, split=(EXCEPT_USERS, "users"), bootstrap=bootstrap,
                            from_log_end=transport == "kafka") as mesh:
        users = mesh.processes["users"]
        run = FaultRun(mesh, f"usersdown-{transport}", rate=20.0, recovery_bound=RECOVERY_BOUND)
        async with run:
            await run.wait_for_notifications(25)
            assert run.poller is not None
            before = await run.poller.stats()
            assert await asyncio.to_thread(users.stop) == 0
            logged = notified_in_log(users, run.ledger.prefix)
            recorded = sum(len(times) for times in logged.values())
            # Its log holds at least what its records counted a moment before the stop.
            assert before is not None and recorded >= before["notifications"], (recorded, before)
            await outage(USERS_DOWN)
            users.start()
            await users.wait_ready()
            after = await run.poller.stats()
            # Nothing it recorded was forgotten by the restart.
            assert after is not None and after["notifications"] == recorded, (recorded, after)
            run.fault_ended("users-down")
            await run.wait_recovered("users-down")
    assert run.report is not None
    return run.report


@pytest.mark.timeout(480)
async def test_the_user_service_down_for_two_minutes_under_load(tmp_path: Path) -> None:
    bootstrap = kafka_bootstrap()
    check_all(await side_by_side(users_down_for_a_while(tmp_path / "memory", "memory", bootstrap),
                                 users_down_for_a_while(tmp_path / "kafka", "kafka", bootstrap)))
