"""A record the broker refuses for good, on a partition that already took good records: the source record that
produced it is dead-lettered with the reason, and the partition goes on.

A forwarding handler publishes (through the pipelined acknowledgements a handler returns, as `ctx.publish` does)
one record per source record to a topic whose `max.message.bytes` is 2000: small ones, then one of 10 kB, then
small ones again. The broker refuses the large batch; aiokafka's idempotent producer would then refuse every later
batch to that partition (OutOfOrderSequenceNumber: the refused batch left a gap in its sequence numbers) unless
the transport recovers. The later small records must be published and handled.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from meshrun.config import RetryConfig, TopicConfig
from meshrun.transport.base import Record
from tests.kafka.broker import kafka_bootstrap, kafka_transport, unique
from tests.polling import eventually

pytestmark = [pytest.mark.faults, pytest.mark.kafka, pytest.mark.slow]

MAX_MESSAGE_BYTES = 2000
SMALL, LARGE = 50, 10_000  # bytes of a forwarded record
RETRY = RetryConfig(max_attempts=3, backoff_initial=0.02, backoff_max=0.2)


@pytest.mark.timeout(180)
async def test_a_record_refused_for_good_is_dead_lettered_and_the_partition_goes_on() -> None:
    bootstrap = kafka_bootstrap()
    source, target = unique("refused-source"), unique("refused-target")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(target, 1, 1, topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)})])
    finally:
        await admin.close()
    transport = kafka_transport(bootstrap)
    await transport.start()
    try:
        await transport.ensure_topics([TopicConfig(source, 1), TopicConfig(target, 1), TopicConfig(f"{source}.dlq", 1)])
        arrived: list[bytes] = []
        dead: list[Record] = []
        handled_at: dict[bytes, float] = {}

        async def forward(record: Record) -> list[asyncio.Future[Any]]:
            size = LARGE if record.value == b"large" else SMALL
            return [await transport.send(target, record.value.ljust(size, b"."), key=b"one-partition")]

        async def collect(record: Record) -> None:
            value = record.value.rstrip(b".")
            arrived.append(value)
            handled_at.setdefault(value, time.monotonic())

        async def keep_dead(record: Record) -> None:
            dead.append(record)

        subs = [await transport.subscribe(source, unique("forwarder"), forward, retry=RETRY),
                await transport.subscribe(target, unique("collector"), collect, retry=RETRY),
                await transport.subscribe(f"{source}.dlq", unique("dlq-reader"), keep_dead, retry=RETRY)]
        for sub in subs:
            await sub.wait_joined(30)

        before = [b"ok-0", b"ok-1", b"ok-2"]
        for value in before:
            await transport.publish(source, value, key=b"k")
        await eventually(lambda: set(before) <= set(arrived), timeout=30, what="the good records before the large one")

        after = [f"ok-{i}".encode() for i in range(3, 13)]
        refused_at = time.monotonic()
        for value in [b"large", *after]:
            await transport.publish(source, value, key=b"k")
        try:
            await eventually(lambda: len(dead) >= 1 and set(after) <= set(arrived), timeout=60,
                             what="the large record dead-lettered and every later record forwarded")
        finally:
            firsts = list(dict.fromkeys(arrived))
            reason = dead[0].header("meshrun-dlq-error") if dead else None
            waited = max((handled_at[v] for v in after if v in handled_at), default=refused_at) - refused_at
            print(f"published={len(before) + 1 + len(after)} forwarded={len(firsts)} "
                  f"doubled={len(arrived) - len(firsts)} dead_lettered={len(dead)} "
                  f"later_forwarded={sum(v in handled_at for v in after)}/{len(after)} "
                  f"longest_stall={waited:.1f}s reason={reason!r}", flush=True)

        [letter] = dead
        assert letter.value == b"large"
        assert reason is not None and b"MessageSizeTooLarge" in reason, reason
        assert letter.header("meshrun-dlq-topic") == source.encode()
        assert firsts == before + after  # in order, none missing, nothing of the large record
        # The forwarder's partition moved on: everything it took is committed.
        await eventually(lambda: _committed(transport, source), timeout=30, what="the source partition committed")
    finally:
        await transport.stop()


async def _committed(transport: Any, source: str) -> bool:
    [info] = await transport.describe([source])
    lags = [p.lag for group, partitions in info.groups.items() if group.startswith("forwarder") for p in partitions]
    return bool(lags) and all(lag == 0 for lag in lags)
