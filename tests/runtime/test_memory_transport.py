"""What only the in-memory transport has to get right: bounded retention and backpressure, losing nothing."""
from __future__ import annotations

import asyncio

import pytest

from meshrun.config import MemoryTransportConfig, RetryConfig, TopicConfig
from meshrun.errors import Backpressure
from meshrun.transport.base import Record
from meshrun.transport.memory import InMemoryTransport, _Group
from tests.polling import eventually

RETRY = RetryConfig(max_attempts=3, backoff_initial=0.01)


async def _one_partition_with_a_consumer(retention: int) -> tuple[InMemoryTransport, list[int]]:
    """A started transport with topic "t" of one partition, and the offsets its one consumer has handled."""
    transport = InMemoryTransport(MemoryTransportConfig(retention=retention))
    await transport.start()
    await transport.ensure_topics([TopicConfig("t", 1)])
    seen: list[int] = []

    async def handle(record: Record) -> None:
        seen.append(record.offset)

    await transport.subscribe("t", "g", handle, retry=RETRY)
    return transport, seen


async def test_retention_keeps_memory_bounded_while_consumers_keep_up():
    transport, seen = await _one_partition_with_a_consumer(retention=10)
    for i in range(200):
        await transport.publish("t", b"x", key=b"k")
        await eventually(lambda: len(seen) == i + 1)
    part = transport._topics["t"].partitions[0]
    assert len(part.records) <= 10 and part.log_start >= 190
    assert seen == list(range(200))
    await transport.stop()


async def test_a_full_partition_drops_consumed_records_a_chunk_at_a_time_and_keeps_close_to_retention():
    transport, seen = await _one_partition_with_a_consumer(retention=640)  # chunks of 10
    part = transport._topics["t"].partitions[0]
    kept: set[int] = set()
    for i in range(2000):
        await transport.publish("t", b"x", key=b"k")
        if i >= 640:
            kept.add(len(part.records))
    await eventually(lambda: len(seen) == 2000)
    assert seen == list(range(2000))
    assert min(kept) >= 630 and max(kept) <= 640  # never above retention, never more than a chunk below it
    assert part.log_start + len(part.records) == 2000
    await transport.stop()


async def test_a_slow_consumer_makes_publishers_wait_and_nothing_is_dropped():
    transport = InMemoryTransport(MemoryTransportConfig(retention=5, publish_timeout=10.0))
    await transport.start()
    await transport.ensure_topics([TopicConfig("t", 1)])
    gate = asyncio.Event()
    seen: list[bytes] = []

    async def slow(record: Record) -> None:
        await gate.wait()
        seen.append(record.value)

    await transport.subscribe("t", "slow-group", slow, retry=RETRY)
    for i in range(5):
        await transport.publish("t", str(i).encode(), key=b"k")
    blocked = asyncio.create_task(transport.publish("t", b"5", key=b"k"))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # the partition is full of records the slow group has not handled
    gate.set()
    await asyncio.wait_for(blocked, 5)
    await eventually(lambda: len(seen) == 6)
    assert seen == [str(i).encode() for i in range(6)]
    await transport.stop()


class SteppedConsumer:
    """One partition, and a group whose consumer handles one record per `step()`: the test decides when room frees."""

    def __init__(self, transport: InMemoryTransport) -> None:
        self.transport = transport
        self.part = transport._topics["t"].partitions[0]
        self.handled: list[bytes] = []
        self._steps = asyncio.Semaphore(0)

    @classmethod
    async def start(cls, retention: int) -> "SteppedConsumer":
        transport = InMemoryTransport(MemoryTransportConfig(retention=retention, publish_timeout=10.0))
        await transport.start()
        await transport.ensure_topics([TopicConfig("t", 1)])
        stepped = cls(transport)
        await transport.subscribe("t", "g", stepped._handle, retry=RETRY)
        return stepped

    async def _handle(self, record: Record) -> None:
        await self._steps.acquire()
        self.handled.append(record.value)

    def step(self, records: int = 1) -> None:
        for _ in range(records):
            self._steps.release()

    async def fill(self, records: int) -> None:
        for i in range(records):
            await self.transport.publish("t", b"first-%d" % i, key=b"k")

    def publishers(self, count: int, finished: list[int]) -> list[asyncio.Task[None]]:
        async def publish(i: int) -> None:
            await self.transport.publish("t", b"waiting-%d" % i, key=b"k")
            finished.append(i)

        return [asyncio.create_task(publish(i)) for i in range(count)]


async def test_waiting_publishers_go_on_first_come_first_served():
    stepped = await SteppedConsumer.start(retention=3)
    await stepped.fill(3)
    finished: list[int] = []
    waiting = stepped.publishers(10, finished)
    await eventually(lambda: len(stepped.part.space_waiters) == 10)
    waiting[4].cancel()  # a publisher that gives up leaves the queue without taking a turn
    await asyncio.gather(waiting[4], return_exceptions=True)
    stepped.step(12)
    await asyncio.wait_for(asyncio.gather(*(t for i, t in enumerate(waiting) if i != 4)), 5)
    assert finished == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # in the order they started waiting
    await eventually(lambda: len(stepped.handled) == 12)
    assert stepped.handled == [b"first-0", b"first-1", b"first-2"] + [b"waiting-%d" % i for i in finished]
    assert len(stepped.part.records) <= 3 and not stepped.part.space_waiters
    await stepped.transport.stop()


async def test_waiting_publishers_are_woken_once_a_batch_of_room_is_free():
    stepped = await SteppedConsumer.start(retention=64)  # batches of 4
    await stepped.fill(64)
    finished: list[int] = []
    [waiting] = stepped.publishers(1, finished)
    await eventually(lambda: len(stepped.part.space_waiters) == 1)
    stepped.step(3)
    await eventually(lambda: len(stepped.handled) == 3)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()  # 3 free slots: below the batch of 4 (and well within the 50 ms it may wait)
    stepped.step()
    await asyncio.wait_for(waiting, 5)
    assert len(stepped.handled) == 4 and stepped.part.next_offset == 65
    stepped.step(61)
    await eventually(lambda: len(stepped.handled) == 65)
    await stepped.transport.stop()


async def test_a_slow_consumer_frees_room_below_the_batch_and_its_publishers_still_go_on_soon():
    # 3 free slots are below the batch of 4 (retention 64), and the consumer stalls there: the waiting publishers
    # must still be woken, in order, well before the publish timeout.
    stepped = await SteppedConsumer.start(retention=64)
    await stepped.fill(64)
    finished: list[int] = []
    waiting = stepped.publishers(3, finished)
    await eventually(lambda: len(stepped.part.space_waiters) == 3)
    stepped.step(3)
    await asyncio.wait_for(asyncio.gather(*waiting), 2)  # far below the 10 s timeout
    assert finished == [0, 1, 2]
    stepped.step(64)
    await stepped.transport.stop()


async def test_a_publisher_that_timed_out_takes_free_room_before_younger_waiters():
    transport = InMemoryTransport(MemoryTransportConfig(retention=64, publish_timeout=0.3))
    await transport.start()
    await transport.ensure_topics([TopicConfig("t", 1)])
    part = transport._topics["t"].partitions[0]
    group = transport._groups.setdefault("held", _Group("held"))  # a group with no live member: nothing wakes
    group.committed[("t", 0)] = 0
    for _ in range(64):
        await transport.publish("t", b"x", key=b"k")
    oldest = asyncio.create_task(transport.publish("t", b"oldest", key=b"k"))
    await eventually(lambda: len(part.space_waiters) == 1)
    younger = asyncio.create_task(transport.publish("t", b"younger", key=b"k"))
    await eventually(lambda: len(part.space_waiters) == 2)
    group.committed[("t", 0)] = 1  # room for one record, below the batch: no wake-up
    await asyncio.wait_for(oldest, 2)  # the oldest publisher takes it at its timeout
    with pytest.raises(Backpressure):
        await asyncio.wait_for(younger, 2)
    assert [r.value for r in part.records][-1] == b"oldest"
    await transport.stop()


async def test_a_publisher_waiting_too_long_gets_a_clear_error():
    transport = InMemoryTransport(MemoryTransportConfig(retention=2, publish_timeout=0.1))
    await transport.start()
    await transport.ensure_topics([TopicConfig("t", 1)])
    never = asyncio.Event()

    async def stuck(record: Record) -> None:
        await never.wait()

    sub = await transport.subscribe("t", "stuck-group", stuck, retry=RETRY)
    await transport.publish("t", b"0", key=b"k")
    await transport.publish("t", b"1", key=b"k")
    with pytest.raises(Backpressure, match="group 'stuck-group' is 2 events behind.*retention of 2"):
        await transport.publish("t", b"2", key=b"k")
    part = transport._topics["t"].partitions[0]
    assert [r.value for r in part.records] == [b"0", b"1"]  # the refused publish left the log untouched
    await sub.stop(0.05)
    await transport.stop()


async def test_publishing_before_start_says_what_to_do():
    transport = InMemoryTransport()
    with pytest.raises(Exception, match="call `await transport.start\\(\\)` first"):
        await transport.publish("t", b"x")


async def test_a_handler_that_returns_a_value_does_not_stop_its_partition():
    # A plain handler may return anything (here where its publish landed); only a list of acknowledgements counts.
    transport = InMemoryTransport(MemoryTransportConfig(retention=10))
    await transport.start()
    await transport.ensure_topics([TopicConfig("in", 1), TopicConfig("out", 1)])
    handled: list[int] = []

    async def forward(record: Record) -> object:
        handled.append(record.offset)
        return await transport.publish("out", record.value, key=record.key)

    await transport.subscribe("in", "g", forward, retry=RETRY)
    for _ in range(3):
        await transport.publish("in", b"x", key=b"k")
    await eventually(lambda: handled == [0, 1, 2])
    await eventually(lambda: transport._groups["g"].committed[("in", 0)] == 3)
    await transport.stop()


def test_a_window_of_stored_records_is_the_same_read_from_either_end() -> None:
    from collections import deque

    from meshrun.transport.base import Record
    from meshrun.transport.memory import _window

    stored = deque(Record("t", 0, offset, None, b"") for offset in range(200))
    for start, stop in [(0, 5), (3, 103), (150, 160), (190, 250), (199, 200), (200, 210), (100, 100)]:
        assert [r.offset for r in _window(stored, start, stop)] == list(range(start, min(stop, 200)))


async def test_a_stage_whose_output_is_backed_up_waits_and_dead_letters_nothing():
    """Billing publishing into invoice-events while Notification is stopped: the publish fails with Backpressure
    after publish_timeout, again and again, and the order waits (never dead-lettered) until room is made."""
    transport = InMemoryTransport(MemoryTransportConfig(retention=3, publish_timeout=0.05))
    await transport.start()
    await transport.ensure_topics([TopicConfig("orders", 1), TopicConfig("orders.dlq", 1), TopicConfig("invoices", 1)])
    retry = RetryConfig(max_attempts=2, backoff_initial=0.01, backoff_max=0.05)
    consuming = asyncio.Event()
    invoiced: list[bytes] = []

    async def bill(record: Record) -> None:
        await transport.publish("invoices", record.value, key=record.key)

    async def notify(record: Record) -> None:
        await consuming.wait()
        invoiced.append(record.value)

    await transport.subscribe("orders", "billing", bill, retry=retry)
    notifier = await transport.subscribe("invoices", "notification", notify, retry=retry)
    for i in range(5):
        while True:  # the orders topic is bounded too: the test's own publishes wait like any publisher
            try:
                await transport.publish("orders", str(i).encode(), key=b"k")
                break
            except Backpressure:
                continue
    part = transport._topics["invoices"].partitions[0]
    await eventually(lambda: len(part.space_waiters) == 1, what="billing to wait for room in invoices")
    await asyncio.sleep(0.3)  # several publish timeouts: each would have been an attempt toward the dead letters
    consuming.set()
    await eventually(lambda: invoiced == [b"0", b"1", b"2", b"3", b"4"], what="every order invoiced once, in order")
    assert transport._topics["orders.dlq"].partitions[0].records == type(part.records)()
    await notifier.stop(0.05)
    await transport.stop()
