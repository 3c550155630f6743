"""A whole Mesh on the Kafka transport: the runtime creates topics, joins groups and reports ready as in memory."""
from __future__ import annotations

import aiohttp
import pytest

from meshrun.examples.greeter import GREETED
from meshrun.runtime import Mesh
from meshrun.transport.delivery import dead_letter_topic
from tests.conftest import make_config
from tests.kafka.broker import TEST_OPTIONS, unique
from tests.polling import eventually

pytestmark = pytest.mark.kafka


async def test_the_greeter_runs_on_kafka_with_two_replicas(bootstrap: str, ports: dict[str, int]) -> None:
    group = unique("greeter")
    config = make_config({
        "mesh": {"transport": "kafka", "grace_period": 5.0},
        "transport": {"kafka": {"bootstrap_servers": bootstrap, **TEST_OPTIONS}},
        "topics": {"greetings": {"partitions": 3}},
        # start_from latest: the greetings topic outlives this test on a reused broker.
        "services": {"greeter": {"module": "meshrun.examples.greeter", "port": ports["greeter"], "group": group,
                                 "replicas": 2, "start_from": "latest"}},
    })
    mesh = Mesh(config)
    assert mesh.transport.name == "kafka"
    await mesh.start()
    try:
        await mesh.wait_ready(30)
        subs = mesh.services["greeter"].subscriptions
        await eventually(lambda: sorted(p for s in subs for p in s.assigned_partitions) == [0, 1, 2],
                         what="the 3 partitions split between the 2 replicas")
        names = [unique("name") for _ in range(6)]
        async with aiohttp.ClientSession() as http:
            for name in names:
                async with http.post(f"http://127.0.0.1:{ports['greeter']}/greet/{name}") as response:
                    assert response.status == 202
                    assert (await response.json())["partition"] in (0, 1, 2)
        state = mesh.services["greeter"].ctx.state
        await eventually(lambda: len(state.get(GREETED, [])) == 6, what="6 greetings handled")
        assert sorted(state[GREETED]) == sorted(names)

        async def no_lag() -> bool:
            [info] = await mesh.transport.describe(["greetings"])
            return group in info.groups and sum(p.lag for p in info.groups[group]) == 0

        await eventually(no_lag, what=f"{group} to have committed every greeting")
        assert dead_letter_topic("greetings") in {i.name for i in await mesh.transport.describe()}
    finally:
        await mesh.stop()
