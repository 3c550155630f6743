"""A Kafka partition worker pipelines its handlers' publishes: the next record is handled while the broker still
acknowledges the previous ones, and an offset counts as done only once every record up to it is acknowledged.

The worker is driven here with acknowledgements this test resolves by hand, so each ordering can be forced; the
same worker against a real broker is covered by the transport and mesh tests.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from meshrun.config import RetryConfig
from meshrun.transport.base import Record
from meshrun.transport.kafka_subscription import _PartitionWorker
from tests.polling import eventually

TOPIC = "invoices-in"


class ScriptedHandler:
    """Records the offsets it handles; each call returns a fresh, unresolved acknowledgement."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.acks: list[asyncio.Future[Any]] = []

    async def __call__(self, record: Record) -> list[asyncio.Future[Any]]:
        self.handled.append(record.offset)
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return [ack]


def worker_for(handler: Any, *, max_unacked: int = 256, max_batch: int = 1) -> _PartitionWorker:
    sub = SimpleNamespace(
        topic=TOPIC, group="billing-group", handler=handler, max_batch=max_batch,
        retry=RetryConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.05),
        dead_letter=None, resume=lambda worker: None,
        options=SimpleNamespace(max_unacked_per_partition=max_unacked, max_buffered_per_partition=1000),
    )
    return _PartitionWorker(sub, partition=0, position=0)  # type: ignore[arg-type]


def records(*offsets: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(topic=TOPIC, partition=0, offset=o, timestamp=0, timestamp_type=0, key=b"k",
                           value=b"{}", checksum=None, serialized_key_size=1, serialized_value_size=2, headers=[])
            for o in offsets]


async def stop(worker: _PartitionWorker) -> None:
    worker.stop()
    await asyncio.wait_for(worker.task, 5)


async def test_the_next_record_is_handled_while_the_previous_publish_awaits_its_ack() -> None:
    handler = ScriptedHandler()
    worker = worker_for(handler)
    worker.feed(records(0, 1, 2))
    await eventually(lambda: handler.handled == [0, 1, 2])
    assert worker.done == 0  # handled, but nothing acknowledged: nothing may be committed

    handler.acks[1].set_result(None)
    handler.acks[2].set_result(None)
    await eventually(lambda: all(a.done() for a in handler.acks[1:]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert worker.done == 0  # later records acknowledged first still wait for the oldest

    handler.acks[0].set_result(None)
    await eventually(lambda: worker.done == 3)
    await stop(worker)


async def test_a_refused_publish_makes_its_record_be_handled_again_before_it_counts_as_done() -> None:
    handler = ScriptedHandler()
    worker = worker_for(handler)
    worker.feed(records(0, 1))
    await eventually(lambda: handler.handled == [0, 1])
    handler.acks[1].set_result(None)
    handler.acks[0].set_exception(KafkaTimeoutError("not acknowledged"))

    await eventually(lambda: handler.handled == [0, 1, 0])  # handled again, its publish awaited this time
    assert worker.done == 0
    handler.acks[2].set_result(None)
    await eventually(lambda: worker.done == 2)
    await stop(worker)


async def test_unacknowledged_records_per_partition_are_bounded() -> None:
    handler = ScriptedHandler()
    worker = worker_for(handler, max_unacked=2)
    worker.feed(records(0, 1, 2, 3))
    await eventually(lambda: handler.handled == [0, 1])
    for _ in range(20):
        await asyncio.sleep(0)
    assert handler.handled == [0, 1]  # waits for the oldest acknowledgement before handling more

    handler.acks[0].set_result(None)
    await eventually(lambda: handler.handled == [0, 1, 2])
    assert worker.done == 1
    for ack in handler.acks[1:]:
        ack.set_result(None)
    await eventually(lambda: handler.handled == [0, 1, 2, 3])
    handler.acks[3].set_result(None)
    await eventually(lambda: worker.done == 4)
    await stop(worker)


async def test_a_stopping_worker_keeps_what_was_acknowledged_and_leaves_the_rest_for_redelivery() -> None:
    handler = ScriptedHandler()
    worker = worker_for(handler)
    worker.feed(records(0, 1, 2))
    await eventually(lambda: handler.handled == [0, 1, 2])
    worker.stop()
    handler.acks[0].set_result(None)
    handler.acks[1].set_exception(KafkaTimeoutError("not acknowledged"))
    handler.acks[2].set_result(None)
    await asyncio.wait_for(worker.task, 5)
    assert worker.done == 1  # offset 1 is redelivered to whoever owns the partition next
    assert handler.handled == [0, 1, 2]  # not handled again while stopping


async def test_handlers_that_publish_nothing_advance_at_once() -> None:
    handled: list[int] = []

    async def count(record: Record) -> None:
        handled.append(record.offset)

    worker = worker_for(count)
    worker.feed(records(0, 1, 2))
    await eventually(lambda: worker.done == 3)
    assert handled == [0, 1, 2]
    await stop(worker)
