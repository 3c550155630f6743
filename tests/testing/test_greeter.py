"""The test kit as a user meets it first: the example greeter service, tested through its HTTP route and topic."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest

from meshrun.examples.greeter import Greeted
from meshrun.testing import MeshFactory, MeshHarness, free_port
from meshrun.testing import mesh_config

# A project's services.toml, as a dict; the kit replaces the port by a free one.
GREETER = {"topics": {"greetings": {"partitions": 3}},
           "services": {"greeter": {"module": "meshrun.examples.greeter", "port": 8080, "group": "greeter-group"}}}


async def test_a_greeting_is_published_and_handled(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(GREETER)
    async with mesh.client("greeter") as http:
        async with http.post("/greet/ada") as response:
            assert response.status == 202
        await mesh.handled("greeter-group")
        async with http.get("/greeted") as response:
            assert (await response.json())["greeted"] == ["ada"]
    [greeting] = mesh.published("greetings", Greeted)
    assert greeting.name == "ada"


async def test_published_events_reach_the_group_by_key(mesh_for: MeshFactory) -> None:
    mesh = await mesh_for(GREETER)
    landed = [await mesh.publish("greetings", Greeted(name=name), key=name) for name in ("ada", "bob", "ada")]
    assert landed[0].partition == landed[2].partition  # one key, one partition, in order
    assert await mesh.handled("greeter-group", "greetings", count=3) == 3
    records = mesh.published("greetings")
    assert len(records) == 3 and all(r.header("meshrun-event-type") == b"greeting.sent" for r in records)
    assert sorted(e.name for e in mesh.published("greetings", Greeted)) == ["ada", "ada", "bob"]
    assert mesh.dead_letters("greetings") == []


async def test_the_service_runs_on_a_free_port_of_its_own(mesh_for: MeshFactory) -> None:
    first, second = await mesh_for(GREETER), await mesh_for(GREETER)  # two meshes of one file side by side
    assert first.url("greeter") != second.url("greeter")
    assert first.config.transport == "memory" and first.config.admin_port is None
    async with first.client("greeter") as http, http.get("/ready") as response:
        assert response.status == 200


async def test_a_port_taken_before_the_mesh_binds_it_is_chosen_again(mesh_for: MeshFactory,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports: Iterator[int] = iter([port, free_port()])  # the first one another process took in between
        monkeypatch.setattr(mesh_config, "free_port", lambda: next(ports))
        mesh = await mesh_for(GREETER)
        assert mesh.url("greeter") != f"http://127.0.0.1:{port}"
        async with mesh.client("greeter") as http, http.get("/ready") as response:
            assert response.status == 200


@pytest.mark.meshrun(GREETER, only=["greeter"])
async def test_the_marked_mesh_runs_for_the_test(meshrun_harness: MeshHarness) -> None:
    await meshrun_harness.publish("greetings", b'{"not": "an event"}')
    await meshrun_harness.handled("greeter-group")
    [letter] = meshrun_harness.dead_letters("greetings")
    assert letter.group == "greeter-group" and letter.error.startswith("PoisonEvent: ")
    assert letter.record.value == b'{"not": "an event"}'
