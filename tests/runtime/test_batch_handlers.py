"""Batch subscribers (`service.subscribe(..., batch=N)`) in a mesh on the in-memory transport: the events waiting in
a partition arrive as lists of at most N, each event's log line is bound to where that event came from, and a record
that fails a batch is dead-lettered alone while the other events of the batch are handled."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from meshrun.events import encode, transport_headers
from meshrun.examples.greeter import Greeted
from meshrun.runtime import Mesh
from meshrun.transport.base import Record
from meshrun.transport.memory import InMemoryTransport
from tests.captured_logs import captured_logs
from tests.conftest import make_config
from tests.polling import eventually


def batcher_config() -> dict[str, Any]:
    return {"topics": {"greetings": {"partitions": 1}},
            "services": {"batcher": {"module": "tests.runtime.sample_services:batcher", "group": "batcher-group",
                                     "retry": {"max_attempts": 2, "backoff_initial": 0.01}}}}


async def put(transport: InMemoryTransport, value: Greeted | bytes) -> None:
    if isinstance(value, Greeted):
        await transport.publish("greetings", encode(value), headers=transport_headers(value))
    else:
        await transport.publish("greetings", value)


@asynccontextmanager
async def batcher(waiting: list[Greeted | bytes]) -> AsyncIterator[tuple[Mesh, InMemoryTransport]]:
    """The batcher's mesh, started once `waiting` are already in the topic's only partition."""
    config = make_config(batcher_config())
    transport = InMemoryTransport(config.memory)
    await transport.start()
    await transport.ensure_topics([config.topics["greetings"]])
    for value in waiting:
        await put(transport, value)
    mesh = Mesh(config, transport=transport)
    try:
        await mesh.start()
        await mesh.wait_ready(5)
        yield mesh, transport
    finally:
        await mesh.stop()
        await transport.stop()


async def committed(transport: InMemoryTransport) -> int | None:
    [info] = await transport.describe(["greetings"])
    return info.groups["batcher-group"][0].committed


def dead_letters(transport: InMemoryTransport) -> list[Record]:
    return [r for part in transport._topics["greetings.dlq"].partitions for r in part.records]  # type: ignore[attr-defined]


async def test_waiting_events_arrive_in_lists_and_each_log_line_names_its_own_event():
    greetings = [Greeted(name=f"g{i}") for i in range(7)]
    with captured_logs() as logs:
        async with batcher(greetings) as (mesh, transport):
            state = mesh.services["batcher"].ctx.state
            await eventually(lambda: sum(map(len, state.get("batches", []))) == 7, timeout=10,
                             what="the 7 waiting greetings")
            assert state["batches"] == [["g0", "g1", "g2", "g3"], ["g4", "g5", "g6"]]  # at most batch=4 a list
            assert state["offsets"] == [[0, 1, 2, 3], [4, 5, 6]]
            await eventually(lambda: _committed_is(transport, 7), timeout=10, what="offset 7 committed")
            # Light traffic: an event published to an idle subscriber comes at once, in a list of one.
            late = Greeted(name="late")
            await put(transport, late)
            await eventually(lambda: len(state["batches"]) == 3, timeout=10, what="the late greeting")
            assert state["batches"][-1] == ["late"] and state["offsets"][-1] == [7]
    lines = [line for line in logs if line["event"] == "greeting_batched"]
    assert [(line["name"], line["offset"], line["event_id"], line["trace_id"]) for line in lines] == [
        (g.name, offset, g.event_id, g.trace_id) for offset, g in enumerate([*greetings, late])]
    assert all(line["topic"] == "greetings" and line["partition"] == 0 and line["service"] == "batcher"
               and line["log_level"] == "info" for line in lines)


async def _committed_is(transport: InMemoryTransport, offset: int) -> bool:
    return await committed(transport) == offset


@pytest.mark.parametrize("bad, attempts, error", [
    (b"not an event", "1", "PoisonEvent"),  # does not decode: dead-lettered at once
    (Greeted(name="poison"), "2", "ValueError: poison"),  # the handler refuses it: retried, then dead-lettered
])
async def test_a_record_that_fails_its_batch_is_dead_lettered_alone(bad, attempts, error):
    waiting = [Greeted(name="g0"), bad, Greeted(name="g2"), Greeted(name="g3")]
    async with batcher(waiting) as (mesh, transport):
        state = mesh.services["batcher"].ctx.state
        await eventually(lambda: _committed_is(transport, 4), timeout=10, what="all 4 records done")
        # The list of 4 failed, so each record was handed over alone: the good ones handled once each, in order.
        assert state["batches"] == [["g0"], ["g2"], ["g3"]] and state["offsets"] == [[0], [2], [3]]
        [dead] = dead_letters(transport)
        assert dead.value == (bad if isinstance(bad, bytes) else encode(bad))
        assert dead.header("meshrun-dlq-offset") == b"1" and dead.header("meshrun-dlq-group") == b"batcher-group"
        assert dead.header("meshrun-dlq-attempts") == attempts.encode()
        assert error in (dead.header("meshrun-dlq-error") or b"").decode()
        # The subscriber goes on with lists afterwards.
        for name in ("h0", "h1"):
            await put(transport, Greeted(name=name))
        await eventually(lambda: _committed_is(transport, 6), timeout=10, what="2 more greetings")
        assert [n for batch in state["batches"][3:] for n in batch] == ["h0", "h1"]
