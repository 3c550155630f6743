"""The Mesh on real ports and real asyncio: HTTP, health and readiness, --only, shutdown, port conflicts."""
from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from meshrun.errors import PortInUse
from meshrun.examples.greeter import GREETED
from meshrun.runtime import Mesh
from tests.conftest import make_config
from tests.polling import eventually


def greeter_config(ports, **service) -> dict:
    return {"topics": {"greetings": {"partitions": 3}},
            "services": {"greeter": {"module": "meshrun.examples.greeter", "port": ports["greeter"],
                                     "group": "greeter-group", **service}}}


async def test_greeter_publishes_and_consumes_over_real_http(ports):
    mesh = Mesh(make_config(greeter_config(ports, replicas=2)))
    await mesh.start()
    try:
        await mesh.wait_ready(5)
        base = f"http://127.0.0.1:{ports['greeter']}"
        async with aiohttp.ClientSession() as http:
            for name in ["ada", "bob", "cy"]:
                async with http.post(f"{base}/greet/{name}") as r:
                    assert r.status == 202
            state = mesh.services["greeter"].ctx.state
            await eventually(lambda: len(state.get(GREETED, [])) == 3)
            assert sorted(state[GREETED]) == ["ada", "bob", "cy"]
            async with http.get(f"{base}/health") as r:
                assert r.status == 200 and (await r.json())["status"] == "alive"
            async with http.get(f"{base}/ready") as r:
                assert r.status == 200 and (await r.json())["status"] == "ready"
            async with http.get(f"{base}/nowhere") as r:
                assert r.status == 404 and (await r.json())["error"] == "not_found"
        subs = mesh.services["greeter"].subscriptions
        assert len(subs) == 2
        assert sorted(p for s in subs for p in s.assigned_partitions) == [0, 1, 2]
    finally:
        await mesh.stop()


async def test_only_runs_the_selected_services(ports):
    data = greeter_config(ports)
    data["services"]["other"] = {"module": "tests.runtime.sample_services:flaky", "group": "other-group"}
    data["topics"]["work"] = {}
    mesh = Mesh(make_config(data), ["other"])
    await mesh.start()
    try:
        assert list(mesh.services) == ["other"]
        with pytest.raises(aiohttp.ClientConnectorError):
            async with aiohttp.ClientSession() as http:
                await http.get(f"http://127.0.0.1:{ports['greeter']}/health")
    finally:
        await mesh.stop()


async def test_a_mesh_without_topics_leaves_the_admin_port_to_the_mesh_with_topics(ports):
    # As `meshrun up --only http_only` next to `meshrun up --except http_only`: one in-memory transport each.
    data = greeter_config(ports)
    data["mesh"] = {"admin_port": ports["admin"]}
    data["services"]["http_only"] = {"module": "tests.runtime.sample_services:http_only", "port": ports["http_only"]}
    config = make_config(data)
    without_topics, with_topics = Mesh(config, ["http_only"]), Mesh(config, ["greeter"])
    await without_topics.start()
    try:
        await with_topics.start()  # PortInUse (mesh.admin_port) if the first mesh had taken the port
        try:
            await asyncio.gather(without_topics.wait_ready(5), with_topics.wait_ready(5))
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{ports['admin']}/topics") as r:
                    assert r.status == 200
                    topics = (await r.json())["topics"]
            assert [(t["name"], t["records"]) for t in topics] == [("greetings", 0), ("greetings.dlq", 0)]
        finally:
            await with_topics.stop()
    finally:
        await without_topics.stop()


async def test_port_in_use_names_the_service_and_port(ports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["greeter"]))
        taken.listen()
        mesh = Mesh(make_config(greeter_config(ports)))
        with pytest.raises(PortInUse, match=f"service 'greeter' cannot listen on 127.0.0.1:{ports['greeter']}"):
            await mesh.start()


async def test_ready_reports_what_is_missing(ports):
    mesh = Mesh(make_config({"services": {"nr": {"module": "tests.runtime.sample_services:never_ready",
                                                 "port": ports["nr"]}}}))
    await mesh.start()
    try:
        with pytest.raises(TimeoutError, match="nr: database not reachable"):
            await mesh.wait_ready(0.2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ports['nr']}/ready") as r:
                assert r.status == 503
                assert (await r.json())["problems"] == ["database not reachable"]
    finally:
        await mesh.stop()


async def test_graceful_stop_finishes_in_flight_handlers_and_commits(ports):
    data = {"topics": {"work": {"partitions": 1}},
            "services": {"slow": {"module": "tests.runtime.sample_services:slow", "port": ports["slow"],
                                  "group": "slow-group"}}}
    mesh = Mesh(make_config(data))
    await mesh.start()
    async with aiohttp.ClientSession() as http:
        for n in range(3):
            async with http.post(f"http://127.0.0.1:{ports['slow']}/jobs/{n}") as r:
                assert r.status == 202
    state = mesh.services["slow"].ctx.state
    await eventually(lambda: "in_flight" in state)
    await mesh.stop()
    # The handler that was running when stop began finished; nothing started was abandoned.
    assert state["done"] == state["started"]
    assert len(state["done"]) >= 1
    [info] = await _describe_after_stop(mesh)
    committed = info.groups["slow-group"][0].committed
    assert committed == len(state["done"])


async def _describe_after_stop(mesh: Mesh):
    await mesh.transport.start()
    return await mesh.transport.describe(["work"])


async def test_failing_handler_is_retried_not_dropped(ports):
    data = {"topics": {"work": {"partitions": 1}},
            "services": {"flaky": {"module": "tests.runtime.sample_services:flaky", "group": "flaky-group",
                                   "retry": {"max_attempts": 5, "backoff_initial": 0.01}}}}
    mesh = Mesh(make_config(data))
    await mesh.start()
    try:
        await mesh.wait_ready(5)
        for n in range(3):
            await mesh.transport.publish("work", str(n).encode(), key=b"k")
        state = mesh.services["flaky"].ctx.state
        await eventually(lambda: len(state.get("done", [])) == 3)
        assert state["done"] == ["0", "1", "2"]  # in order, each after two failures
        assert set(state["attempts"].values()) == {3}
    finally:
        await mesh.stop()
