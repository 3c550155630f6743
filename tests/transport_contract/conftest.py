"""Every contract test runs once per transport: the in-memory one and Kafka on the real test broker."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from meshrun.transport.base import Transport
from meshrun.transport.memory import InMemoryTransport
from tests.kafka.broker import kafka_bootstrap, kafka_transport


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    t: Transport = InMemoryTransport() if request.param == "memory" else kafka_transport(kafka_bootstrap())
    await t.start()
    yield t
    await t.stop()
