"""EventContext.publish inside a handler: queued in order, acknowledged before the record is committed, and refused
once the handler has returned (nothing would wait for that acknowledgement any more)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from meshrun.config import MemoryTransportConfig, MeshConfig, ServiceConfig, TopicConfig
from meshrun.context import EventContext, ServiceContext
from meshrun.errors import TransportStateError
from meshrun.transport.base import Headers, Record, RecordMetadata
from meshrun.transport.memory import InMemoryTransport


class PendingSends(InMemoryTransport):
    """The in-memory transport, but `send` leaves the acknowledgement to the test, as a broker would."""

    def __init__(self) -> None:
        super().__init__(MemoryTransportConfig())
        self.pending: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: Headers = ()) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(ack)
        return ack


async def contexts() -> tuple[PendingSends, EventContext]:
    transport = PendingSends()
    await transport.start()
    await transport.ensure_topics([TopicConfig("out", 1)])
    mesh = MeshConfig(file="services.toml")
    service = ServiceContext(ServiceConfig(name="s", module="m"), mesh, None, structlog.get_logger(), transport)
    return transport, EventContext(service, Record("in", 0, 0, None, b"{}"), structlog.get_logger())


async def test_publish_queues_and_hands_the_acknowledgements_to_the_runtime() -> None:
    transport, ctx = await contexts()
    assert await ctx.publish("out", b"one") is None
    assert await ctx.publish("out", b"two") is None
    assert ctx.acks == transport.pending and len(ctx.acks) == 2


async def test_publish_with_wait_returns_where_the_record_landed() -> None:
    _, ctx = await contexts()
    landed = await ctx.publish("out", b"one", wait=True)
    assert isinstance(landed, RecordMetadata) and landed.topic == "out" and ctx.acks is None


async def test_publish_after_the_handler_returned_is_refused() -> None:
    _, ctx = await contexts()
    ctx.finished = True
    with pytest.raises(TransportStateError, match="after the event handler returned"):
        await ctx.publish("out", b"late")
