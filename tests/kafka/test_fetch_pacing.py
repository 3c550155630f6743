"""An idle Kafka consumer long-polls (a fetch answered at its first record) instead of a hundred empty fetches a
second; once records flow it waits for batches again. The switching rule on its own, then on a real broker."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from meshrun.config import KafkaTransportConfig, RetryConfig, TopicConfig
from meshrun.transport.base import Record
from meshrun.transport.kafka import KafkaTransport
from meshrun.transport.kafka_fetch import (
    HEAVY_RATE,
    HEAVY_WAIT_MS,
    IDLE_AFTER,
    IDLE_WAIT_MS,
    LIGHT_WINDOWS,
    RATE_WINDOW,
    FetchPacing,
    Pace,
)
from meshrun.transport.kafka_options import KafkaClientOptions
from meshrun.transport.kafka_subscription import KafkaSubscription
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually


def consumer_with_fetcher() -> SimpleNamespace:
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=65536, _fetch_max_wait_ms=10))


def test_a_consumer_without_records_for_a_while_long_polls_and_the_next_record_switches_it_back() -> None:
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, 65536, 10, enabled=True)
    pacing.fetched(5, now=100.0)
    pacing.fetched(0, now=100.0 + IDLE_AFTER / 2)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (65536, 10)
    pacing.fetched(0, now=100.0 + IDLE_AFTER)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (1, IDLE_WAIT_MS)
    pacing.fetched(1, now=200.0)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (65536, 10)


def poll_at_rate(pacing: FetchPacing, rate: float, start: float, seconds: float, polls_per_second: int = 100) -> float:
    """Polls every 1/polls_per_second s, each returning what arrived meanwhile at `rate` records a second."""
    now = start
    for _ in range(int(seconds * polls_per_second)):
        now += 1 / polls_per_second
        pacing.fetched(round(rate / polls_per_second), now)
    return now


def fetch_settings(consumer: SimpleNamespace) -> tuple[int, int]:
    return consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms


def test_heavy_traffic_makes_fetches_wait_longer_and_light_traffic_brings_the_short_wait_back() -> None:
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, 65536, 10, enabled=True)
    now = poll_at_rate(pacing, HEAVY_RATE * 0.8, start=100.0, seconds=3 * RATE_WINDOW)
    assert pacing.pace is Pace.BUSY and fetch_settings(consumer) == (65536, 10)
    now = poll_at_rate(pacing, HEAVY_RATE * 2, start=now, seconds=RATE_WINDOW / 2)
    assert pacing.pace is Pace.BUSY, "one short burst is not heavy traffic"
    now = poll_at_rate(pacing, HEAVY_RATE * 2, start=now, seconds=2 * RATE_WINDOW)
    assert pacing.pace is Pace.HEAVY and fetch_settings(consumer) == (65536, HEAVY_WAIT_MS)
    # Between half the heavy rate and the heavy rate it stays as it is, so it does not flap around one rate.
    now = poll_at_rate(pacing, HEAVY_RATE * 0.6, start=now, seconds=3 * RATE_WINDOW)
    assert pacing.pace is Pace.HEAVY
    now = poll_at_rate(pacing, HEAVY_RATE * 0.3, start=now, seconds=(LIGHT_WINDOWS - 1.5) * RATE_WINDOW)
    assert pacing.pace is Pace.HEAVY, "a moment of light traffic is not the end of heavy traffic"
    now = poll_at_rate(pacing, HEAVY_RATE * 0.3, start=now, seconds=2 * RATE_WINDOW)
    assert pacing.pace is Pace.BUSY and fetch_settings(consumer) == (65536, 10)


def test_bursts_a_second_apart_keep_a_consumer_heavy_instead_of_switching_every_window() -> None:
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, 65536, 10, enabled=True)
    switches = []
    now = 100.0
    for second in range(10):
        for poll in range(100):  # a burst in the first 50 ms of each second, nothing for the rest of it
            now = 100.0 + second + poll / 100
            before = pacing.pace
            pacing.fetched(140 if poll < 5 else 0, now)
            if pacing.pace is not before:
                switches.append(pacing.pace)
    assert switches == [Pace.HEAVY]


def test_a_heavy_consumer_whose_records_stop_long_polls_and_starts_over_at_the_short_wait() -> None:
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, 65536, 10, enabled=True)
    now = poll_at_rate(pacing, HEAVY_RATE * 3, start=100.0, seconds=3 * RATE_WINDOW)
    assert pacing.pace is Pace.HEAVY
    now = poll_at_rate(pacing, 0, start=now, seconds=IDLE_AFTER * 1.5)
    assert pacing.idle and fetch_settings(consumer) == (1, IDLE_WAIT_MS)
    pacing.fetched(3, now + 0.01)
    assert pacing.pace is Pace.BUSY and fetch_settings(consumer) == (65536, 10)


def test_the_heavy_wait_is_never_shorter_than_the_busy_one() -> None:
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=65536, _fetch_max_wait_ms=100))
    pacing = FetchPacing(consumer, 65536, 100, enabled=True)
    poll_at_rate(pacing, HEAVY_RATE * 3, start=100.0, seconds=3 * RATE_WINDOW)
    assert pacing.pace is Pace.HEAVY and fetch_settings(consumer) == (65536, 100)


def test_fetch_options_set_in_the_config_are_left_alone() -> None:
    options = KafkaClientOptions.from_config(KafkaTransportConfig("127.0.0.1:9092", {"fetch_max_wait_ms": 50}))
    assert options.idle_long_poll is False
    assert KafkaClientOptions.from_config(KafkaTransportConfig("127.0.0.1:9092", {})).idle_long_poll is True
    consumer = consumer_with_fetcher()
    pacing = FetchPacing(consumer, 65536, 10, enabled=options.idle_long_poll)
    pacing.fetched(0, now=1000.0)
    assert (consumer._fetcher._fetch_min_bytes, consumer._fetcher._fetch_max_wait_ms) == (65536, 10)


def test_an_aiokafka_without_those_fetcher_settings_keeps_the_busy_values() -> None:
    pacing = FetchPacing(SimpleNamespace(_fetcher=SimpleNamespace()), 65536, 10, enabled=True)
    pacing.fetched(0, now=1000.0)
    assert pacing.enabled is False and pacing.idle is False


@asynccontextmanager
async def joined_member(bootstrap: str, prefix: str, partitions: int, handler: Any,
                        max_batch: int = 1) -> AsyncIterator[tuple[KafkaTransport, str, KafkaSubscription]]:
    """A started transport, a new topic, and one member of a new group that has joined it; all stopped after."""
    transport: KafkaTransport = kafka_transport(bootstrap)
    await transport.start()
    try:
        topic = unique(prefix)
        await transport.ensure_topics([TopicConfig(topic, partitions)])
        sub = await transport.subscribe(topic, unique("group"), handler, retry=RetryConfig(), max_batch=max_batch)
        assert isinstance(sub, KafkaSubscription)
        await sub.wait_joined(30)
        yield transport, topic, sub
        await sub.stop(grace_period=5)
    finally:
        await transport.stop()


@pytest.mark.kafka
async def test_an_idle_member_long_polls_on_a_real_broker_and_a_record_wakes_it(bootstrap: str) -> None:
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        handled.append(record.value)

    async with joined_member(bootstrap, "pacing", 2, handle) as (transport, topic, sub):
        fetcher = sub.consumer._fetcher  # the attributes this relies on must exist in the aiokafka we run
        await eventually(lambda: (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, IDLE_WAIT_MS),
                         what="the idle member to long-poll")
        for i in range(20):
            await transport.publish(topic, f"r{i}".encode(), key=f"k{i}".encode())
        await eventually(lambda: not sub._pacing.idle and fetcher._fetch_min_bytes == 64 * 1024,
                         what="the member to wait for batches while records flow")
        await eventually(lambda: len(handled) == 20, what="every record published to the idle member")
        await eventually(lambda: sub._pacing.idle, what="the member to long-poll again once idle")


@pytest.mark.kafka
async def test_a_member_receiving_heavy_traffic_on_a_real_broker_waits_longer_per_fetch(bootstrap: str) -> None:
    handled: list[int] = []

    async def handle(records: list[Record]) -> None:
        handled.append(len(records))

    async with joined_member(bootstrap, "heavy", 3, handle, max_batch=100) as (transport, topic, sub):
        fetcher = sub.consumer._fetcher
        applied: list[tuple[Pace, tuple[int, int]]] = []  # every switch, with what the fetcher then had
        apply = sub._pacing._apply

        def recording_apply(pace: Pace) -> None:
            apply(pace)
            applied.append((sub._pacing.pace, (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)))

        sub._pacing._apply = recording_apply  # type: ignore[method-assign]
        sent = 0
        # Published faster than HEAVY_RATE for as long as it takes the member to notice (a few rate windows).
        for _ in range(int(20 / RATE_WINDOW)):
            acks = [await transport.send(topic, b"x" * 200, key=f"k{sent + i}".encode()) for i in range(1000)]
            sent += len(acks)
            await asyncio.gather(*acks)
            await asyncio.sleep(RATE_WINDOW / 4)
            if any(pace is Pace.HEAVY for pace, _ in applied):
                break
        assert (Pace.HEAVY, (64 * 1024, HEAVY_WAIT_MS)) in applied, f"switches {applied} after {sent} records"
        await eventually(lambda: sum(handled) == sent, what="every record handled")
        await eventually(lambda: sub._pacing.idle, timeout=10, what="the member to long-poll once the traffic stops")
