"""Fixtures of the Kafka-specific tests: the real broker's address and a started transport on it."""
from __future__ import annotations

from typing import AsyncIterator

import pytest

from meshrun.transport.kafka import KafkaTransport
from tests.kafka.broker import kafka_bootstrap, kafka_transport


@pytest.fixture(scope="session")
def bootstrap() -> str:
    return kafka_bootstrap()


@pytest.fixture
async def kafka(bootstrap: str) -> AsyncIterator[KafkaTransport]:
    transport = kafka_transport(bootstrap)
    await transport.start()
    yield transport
    await transport.stop()
