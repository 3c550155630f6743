"""A member that stops fetching is found and healed; a producer left unusable by a failed batch is replaced.

The edge cases behind the fault suite (tests/faults), on the real test broker: each fault is caused inside the
process, where a broker outage cannot aim it.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from meshrun.config import RetryConfig, TopicConfig
from meshrun.transport.base import Record, SubscriptionState
from meshrun.transport.kafka import KafkaTransport
from meshrun.transport import kafka_subscription
from meshrun.transport.kafka_subscription import KafkaSubscription
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually

pytestmark = pytest.mark.kafka

RETRY = RetryConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)


async def _member(transport: KafkaTransport, topic: str, handled: list[bytes]) -> KafkaSubscription:
    async def handle(record: Record) -> None:
        handled.append(record.value)

    sub = await transport.subscribe(topic, unique("group"), handle, retry=RETRY)
    await sub.wait_joined(30)
    assert isinstance(sub, KafkaSubscription)
    return sub


def _watch_rejoins(sub: KafkaSubscription) -> list[str | None]:
    """What readiness reported (the member's problem) each time the member started to rejoin its group."""
    reported: list[str | None] = []
    rejoin = sub._rejoin

    async def rejoin_and_note() -> None:
        reported.append(sub.problem)
        await rejoin()

    sub._rejoin = rejoin_and_note  # type: ignore[method-assign]
    return reported


class LogRecorder:
    """Stands in for a module's structlog logger: keeps (level, event, fields) of every call."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))
        return log


async def test_a_member_that_stops_fetching_is_declared_stalled_reports_it_and_rejoins(
        bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    logged = LogRecorder()
    monkeypatch.setattr(kafka_subscription, "log", logged)
    transport = kafka_transport(bootstrap, stall_timeout=1.5)
    await transport.start()
    try:
        topic = unique("stall")
        await transport.ensure_topics([TopicConfig(topic, 1)])
        handled: list[bytes] = []
        sub = await _member(transport, topic, handled)
        await transport.publish(topic, b"before")
        await eventually(lambda: handled == [b"before"], what="the first record")

        # The consumer stops answering (as one did after a broker restart): its fetches never return.
        never, entered = asyncio.Event(), asyncio.Event()

        async def hang(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            await never.wait()

        stuck = sub.consumer
        stuck.getmany = hang  # type: ignore[method-assign]
        reported = _watch_rejoins(sub)
        await asyncio.wait_for(entered.wait(), 10)
        await transport.publish(topic, b"while-stuck")
        await eventually(lambda: reported, timeout=20, what="the stall to be found")
        assert reported[0] is not None
        assert "stalled" in reported[0] and "partition 0: records 1..1 not fetched" in reported[0]
        assert topic in reported[0]
        await eventually(lambda: handled == [b"before", b"while-stuck"], timeout=30,
                         what="the record to be handled after the member rejoined")
        await eventually(lambda: sub.state is SubscriptionState.ASSIGNED and sub.problem is None,
                         what="readiness to clear once the member is assigned again")
        [(level, _, fields)] = [line for line in logged.lines if line[1] == "partition_stalled"]
        assert level == "error" and fields["partitions"] == [0] and fields["topic"] == topic
        assert sub.consumer is not stuck
        await transport.publish(topic, b"after")
        await eventually(lambda: handled[-1:] == [b"after"], what="the next record on the new consumer")
        assert handled == [b"before", b"while-stuck", b"after"]  # nothing lost, nothing doubled
    finally:
        await transport.stop()


async def test_a_fetch_loop_that_ended_is_noticed_and_the_member_rejoins(bootstrap: str) -> None:
    transport = kafka_transport(bootstrap, stall_timeout=1.0)
    await transport.start()
    try:
        topic = unique("ended")
        await transport.ensure_topics([TopicConfig(topic, 2)])
        handled: list[bytes] = []
        sub = await _member(transport, topic, handled)
        assert sub._fetch_task is not None
        reported = _watch_rejoins(sub)
        sub._fetch_task.cancel()  # a fetch loop that ends for any reason, a bug included
        await asyncio.gather(sub._fetch_task, return_exceptions=True)
        await eventually(lambda: reported, timeout=15, what="the ended fetch loop to be found")
        assert reported[0] is not None and "the fetch loop ended" in reported[0]
        await transport.publish(topic, b"x", key=b"k")
        await eventually(lambda: handled == [b"x"], timeout=30, what="records to flow after the rejoin")
    finally:
        await transport.stop()


async def test_a_producer_poisoned_by_a_failed_batch_is_replaced_and_publishing_goes_on(kafka: KafkaTransport) -> None:
    topic = unique("poisoned")
    await kafka.ensure_topics([TopicConfig(topic, 1)])
    await kafka.publish(topic, b"one")
    first = kafka._producer.current
    assert first is not None
    # What aiokafka reports once a batch failed for good: every later batch is out of sequence.
    kafka._producer.failed(first, OutOfOrderSequenceNumber())
    landed = await kafka.publish(topic, b"two")
    assert kafka._producer.replacements == 1 and kafka._producer.current is not first
    assert landed.offset == 1
    # A failure reported for the producer already replaced changes nothing.
    kafka._producer.failed(first, OutOfOrderSequenceNumber())
    assert kafka._producer.replacements == 1
    assert (await kafka.publish(topic, b"three")).offset == 2
