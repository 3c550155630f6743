"""The partition worker (every transport's) pipelines its handlers' publishes: the next record is handled while the
broker still acknowledges the previous ones, and an offset counts as done only once every record up to it is
acknowledged.

The worker is driven here from a queue of records and with acknowledgements this test resolves by hand, so each
ordering can be forced; the same worker on both transports is covered by the contract, Kafka and mesh tests.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from collections import deque
from typing import Any

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from meshrun.config import RetryConfig
from meshrun.transport.base import Headers, Record
from meshrun.transport.delivery import DeadLetter, PoisonEvent, RetryLater, split_handler
from meshrun.transport.kafka_subscription import transient_publish_error
from meshrun.transport.partition_worker import Delivery, PartitionWorker
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


class ScriptedBatchHandler:
    """A batch handler: records the offsets of each batch it handles; each call returns `publishes` fresh, unresolved
    acknowledgements (kept per call in `acks`). With `fail_batches`, a call of more than one record raises instead."""

    def __init__(self, *, publishes: int = 1, fail_batches: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.acks: list[list[asyncio.Future[Any]]] = []
        self.publishes = publishes
        self.fail_batches = fail_batches

    async def __call__(self, batch: Sequence[Record]) -> list[asyncio.Future[Any]]:
        self.batches.append([record.offset for record in batch])
        if self.fail_batches and len(batch) > 1:
            raise ConnectionResetError("the batch call failed half-way")
        loop = asyncio.get_running_loop()
        acks: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(self.publishes)]
        self.acks.append(acks)
        return acks


class QueueSource:
    """Records fed by the test, taken by the worker: the simplest `RecordSource`. `done_at` lists each `done` call."""

    def __init__(self) -> None:
        self.queue: deque[Record] = deque()
        self.done_at: list[int] = []
        self._wakeup = asyncio.Event()

    def feed(self, records: list[Record]) -> None:
        self.queue.extend(records)
        self._wakeup.set()

    def take(self, limit: int) -> list[Record]:
        return [self.queue.popleft() for _ in range(min(limit, len(self.queue)))]

    async def wait(self) -> None:
        self._wakeup.clear()
        await self._wakeup.wait()

    def wake(self) -> None:
        self._wakeup.set()

    def done(self, offset: int) -> None:
        self.done_at.append(offset)


class Worker(PartitionWorker):
    """A partition worker with its queue at hand: `feed` hands it records."""

    source: QueueSource

    def feed(self, records: list[Record]) -> None:
        self.source.feed(records)


async def no_dead_letters(topic: str, record: Record, headers: Headers) -> None:
    raise AssertionError(f"dead-lettered {record.offset}")


def worker_for(handler: Any, *, max_unacked: int = 256, max_batch: int = 1,
               dead_letter: DeadLetter = no_dead_letters) -> Worker:
    single, batch = split_handler(handler, max_batch)
    delivery = Delivery("billing-group", single, batch, max_batch,
                        RetryConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.05), dead_letter,
                        transient_publish_error, max_unacked)
    return Worker(TOPIC, 0, 0, delivery, QueueSource(), transport="test")


def worker_recording_dead_letters(handler: Any, *, max_batch: int) -> tuple[Worker, list[int]]:
    """A worker whose dead-letter topic is a list of the offsets sent to it."""
    dead: list[int] = []

    async def dead_letter(topic: str, record: Record, headers: Headers) -> None:
        dead.append(record.offset)

    return worker_for(handler, max_batch=max_batch, dead_letter=dead_letter), dead


def records(*offsets: int) -> list[Record]:
    return [Record(TOPIC, 0, o, b"k", b"{}") for o in offsets]


async def stop(worker: PartitionWorker) -> None:
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


async def settle() -> None:
    """Let the worker run as far as it can without an acknowledgement resolving."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_batch_is_done_only_once_its_acks_resolve_and_every_batch_before_it_is_done() -> None:
    handler = ScriptedBatchHandler(publishes=2)
    worker = worker_for(handler, max_batch=3)
    worker.feed(records(0, 1, 2, 3, 4, 5, 6))
    # Pipelined like single records: the next batch is handled while the previous one's publishes await their acks.
    await eventually(lambda: handler.batches == [[0, 1, 2], [3, 4, 5], [6]])
    assert worker.done == 0

    handler.acks[0][0].set_result(None)
    await settle()
    assert worker.done == 0  # one of the batch's two publishes is still unacknowledged
    for ack in handler.acks[1]:
        ack.set_result(None)
    await settle()
    assert worker.done == 0  # a later batch acknowledged first still waits for the oldest

    handler.acks[0][1].set_result(None)
    await eventually(lambda: worker.done == 6)  # past both acknowledged batches
    await settle()
    assert worker.done == 6  # not into the last one, whose acks are pending
    for ack in handler.acks[2]:
        ack.set_result(None)
    await eventually(lambda: worker.done == 7)
    assert handler.batches == [[0, 1, 2], [3, 4, 5], [6]]  # nothing handled twice
    await stop(worker)


async def test_a_refused_publish_of_a_batch_makes_each_of_its_records_be_handled_again_alone() -> None:
    handler = ScriptedBatchHandler()
    worker = worker_for(handler, max_batch=3)
    worker.feed(records(0, 1, 2))
    await eventually(lambda: handler.batches == [[0, 1, 2]])
    handler.acks[0][0].set_exception(MessageSizeTooLargeError("refused for good"))

    # Handled again one record at a time, each one's publish awaited before the next record.
    for handled_again in ([0], [1], [2]):
        await eventually(lambda: handler.batches[-1] == handled_again)  # noqa: B023
        await settle()
        assert handler.batches[-1] == handled_again
        assert worker.done == 0  # the batch counts as done only once all of it is
        handler.acks[-1][0].set_result(None)
    await eventually(lambda: worker.done == 3)
    assert handler.batches == [[0, 1, 2], [0], [1], [2]]
    await stop(worker)


async def test_a_record_whose_publish_keeps_being_refused_is_dead_lettered_alone_and_its_batch_goes_through() -> None:
    handled: list[list[int]] = []

    async def refuse_batches_and_record_1(batch: Sequence[Record]) -> list[asyncio.Future[Any]]:
        handled.append([record.offset for record in batch])
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if len(batch) > 1 or batch[0].offset == 1:
            ack.set_exception(MessageSizeTooLargeError("refused for good"))
        else:
            ack.set_result(None)
        return [ack]

    worker, dead = worker_recording_dead_letters(refuse_batches_and_record_1, max_batch=3)
    worker.feed(records(0, 1, 2))
    await eventually(lambda: worker.done == 3)
    assert dead == [1]
    assert handled == [[0, 1, 2], [0], [1], [1], [1], [2]]  # record 1 alone, max_attempts times
    await stop(worker)


async def test_a_failing_batch_is_handed_over_one_record_at_a_time_each_finished_before_the_next() -> None:
    handler = ScriptedBatchHandler(fail_batches=True)
    worker = worker_for(handler, max_batch=3)
    worker.feed(records(0, 1, 2))
    for handled_alone in ([0], [1], [2]):
        await eventually(lambda: handler.batches[-1:] == [handled_alone])  # noqa: B023
        await settle()
        assert handler.batches[-1] == handled_alone  # the next record waits for this one's acknowledgement
        assert worker.done == 0
        handler.acks[-1][0].set_result(None)
    await eventually(lambda: worker.done == 3)
    assert handler.batches == [[0, 1, 2], [0], [1], [2]]
    await stop(worker)


async def test_a_record_dead_lettered_from_a_failed_batch_is_not_handled_again_when_another_publish_fails() -> None:
    """Offset 2 cannot be handled (the batch fails, it is dead-lettered); offset 0's publish times out once. Offset 0
    is handled again until acknowledged; offset 2 goes to the dead-letter topic once, and is not handled again."""
    handled: list[list[int]] = []
    timed_out: list[int] = []

    async def handle(batch: Sequence[Record]) -> list[asyncio.Future[Any]]:
        handled.append([record.offset for record in batch])
        if any(record.offset == 2 for record in batch):
            raise PoisonEvent("offset 2 does not decode")
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if batch[0].offset == 0 and not timed_out:
            timed_out.append(0)
            ack.set_exception(KafkaTimeoutError("no acknowledgement in time"))
        else:
            ack.set_result(None)
        return [ack]

    worker, dead = worker_recording_dead_letters(handle, max_batch=4)
    worker.feed(records(0, 1, 2, 3))
    await eventually(lambda: worker.done == 4)
    assert dead == [2]
    assert handled == [[0, 1, 2, 3], [0], [0], [1], [2], [3]]
    await stop(worker)


async def test_retry_later_retries_a_batch_whole_instead_of_one_call_per_record() -> None:
    """A dependency that is down is not asked once per record of the batch: the batch waits, then goes through."""
    handled: list[list[int]] = []

    async def handle(batch: Sequence[Record]) -> None:
        handled.append([record.offset for record in batch])
        if len(handled) <= 3:
            raise RetryLater("the User service answered 503")

    worker = worker_for(handle, max_batch=5)
    worker.feed(records(0, 1, 2, 3, 4))
    await eventually(lambda: worker.done == 5)
    assert handled == [[0, 1, 2, 3, 4]] * 4
    await stop(worker)
