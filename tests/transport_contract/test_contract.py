"""The transport contract: what every transport guarantees, checked on the in-memory transport and on real Kafka.

Each test runs once per transport (see conftest.py); a behaviour that differs between them is a bug in one of them.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Sequence

import pytest

from meshrun.config import RetryConfig, TopicConfig
from meshrun.errors import (
    Backpressure,
    BrokerUnavailable,
    GroupHasLiveMembers,
    TopicPartitionMismatch,
    UnknownTopic,
)
from meshrun.transport.base import Record, StartFrom, Subscription, Transport
from meshrun.transport.delivery import PoisonEvent, RetryLater, dead_letter_topic
from meshrun.transport.partitioner import partition_for
from tests.kafka.broker import unique
from tests.polling import eventually

FAST_RETRY = RetryConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)


class Collector:
    """A handler that keeps every record it was given, in the order it got them; `then` runs after keeping one."""

    def __init__(self, then: Callable[[Record], Awaitable[None]] | None = None) -> None:
        self.records: list[Record] = []
        self.then = then

    async def __call__(self, record: Record) -> None:
        self.records.append(record)
        if self.then is not None:
            await self.then(record)

    @property
    def values(self) -> list[bytes]:
        return [r.value for r in self.records]


class BatchCollector:
    """A batch handler that keeps every batch it was given, in the order it got them; `then` runs after keeping one
    (and may raise, failing the batch)."""

    def __init__(self, then: Callable[[Sequence[Record]], Awaitable[None]] | None = None) -> None:
        self.batches: list[list[Record]] = []
        self.then = then

    async def __call__(self, records: Sequence[Record]) -> None:
        self.batches.append(list(records))
        if self.then is not None:
            await self.then(records)

    @property
    def records(self) -> list[Record]:
        return [r for batch in self.batches for r in batch]

    @property
    def values(self) -> list[bytes]:
        return [r.value for r in self.records]


async def new_topic(transport: Transport, partitions: int = 3, *, dead_letters: bool = False) -> str:
    name = unique("contract")
    topics = [TopicConfig(name, partitions)]
    if dead_letters:
        topics.append(TopicConfig(dead_letter_topic(name), partitions))
    await transport.ensure_topics(topics)
    return name


async def join(transport: Transport, topic: str, handler: Any, group: str | None = None, *,
               retry: RetryConfig = FAST_RETRY, start_from: StartFrom = "earliest",
               max_batch: int = 1) -> Subscription:
    sub = await transport.subscribe(topic, group or unique("group"), handler, retry=retry, start_from=start_from,
                                    max_batch=max_batch)
    await sub.wait_joined(30)
    return sub


def key_on(partition: int, partitions: int) -> bytes:
    """A key the default partitioner puts on `partition`."""
    return next(k for i in itertools.count() if partition_for(k := f"key-{i}".encode(), partitions,
                                                               itertools.count()) == partition)


async def test_records_of_one_key_are_handled_in_publish_order(transport: Transport) -> None:
    topic = await new_topic(transport, 3)
    published = [(f"customer-{i % 4}".encode(), str(i).encode()) for i in range(40)]
    for key, value in published:
        await transport.publish(topic, value, key=key)
    got = Collector()
    await join(transport, topic, got)
    await eventually(lambda: len(got.records) == 40, what="40 records")
    for key in {k for k, _ in published}:
        mine = [r for r in got.records if r.key == key]
        assert [r.value for r in mine] == [v for k, v in published if k == key]
        assert len({r.partition for r in mine}) == 1
    for partition in range(3):
        offsets = [r.offset for r in got.records if r.partition == partition]
        assert offsets == list(range(len(offsets)))


async def test_a_key_lands_on_the_same_partition_on_every_transport(transport: Transport) -> None:
    topic = await new_topic(transport, 5)
    for i in range(30):
        key = f"order-{i}".encode()
        landed = await transport.publish(topic, b"{}", key=key)
        assert landed.topic == topic
        assert landed.partition == partition_for(key, 5, itertools.count())


async def test_records_without_a_key_go_round_robin_over_the_partitions_of_their_topic(transport: Transport) -> None:
    first, second = await new_topic(transport, 3), await new_topic(transport, 3)
    await transport.publish(first, b"warm-up", key=b"k")  # a producer learns a topic's partitions on its first send
    await transport.publish(second, b"warm-up", key=b"k")
    landed = []
    for _ in range(6):
        landed.append((await transport.publish(first, b"{}")).partition)
        await transport.publish(second, b"{}")  # another topic's records do not move this topic's turn
    assert sorted(landed[:3]) == [0, 1, 2] and landed[3:] == landed[:3]


async def test_every_group_gets_every_event(transport: Transport) -> None:
    topic = await new_topic(transport, 3)
    billing, email = Collector(), Collector()
    await join(transport, topic, billing)
    await join(transport, topic, email)
    for i in range(20):
        await transport.publish(topic, str(i).encode(), key=str(i).encode())
    await eventually(lambda: len(billing.records) == 20 and len(email.records) == 20, what="20 records per group")
    assert sorted(billing.values) == sorted(email.values) == sorted(str(i).encode() for i in range(20))


async def test_partitions_are_split_between_the_members_of_a_group(transport: Transport) -> None:
    topic = await new_topic(transport, 4)
    group = unique("group")
    first, second = Collector(), Collector()
    a = await join(transport, topic, first, group)
    b = await join(transport, topic, second, group)

    def split() -> bool:
        mine, theirs = a.assigned_partitions, b.assigned_partitions
        return bool(mine and theirs and mine | theirs == {0, 1, 2, 3} and not mine & theirs)

    await eventually(split, what="the 4 partitions split between the 2 members")
    for i in range(40):
        await transport.publish(topic, str(i).encode(), key=f"k{i}".encode())
    await eventually(lambda: len(first.records) + len(second.records) == 40, what="40 records")
    assert first.records and second.records
    assert {r.partition for r in first.records}.isdisjoint({r.partition for r in second.records})
    assert sorted(first.values + second.values) == sorted(str(i).encode() for i in range(40))


async def test_partitions_of_one_member_are_handled_concurrently(transport: Transport) -> None:
    topic = await new_topic(transport, 2)
    second_handled = asyncio.Event()
    steps: list[str] = []

    async def handler(record: Record) -> None:
        if record.partition == 0:
            steps.append("slow-start")
            await asyncio.wait_for(second_handled.wait(), 20)
            steps.append("slow-end")
        else:
            steps.append("other")
            second_handled.set()

    await join(transport, topic, handler)
    await transport.publish(topic, b"slow", key=key_on(0, 2))
    await eventually(lambda: steps == ["slow-start"], what="the slow handler to start")
    await transport.publish(topic, b"other", key=key_on(1, 2))
    await eventually(lambda: len(steps) == 3, what="both records")
    assert steps == ["slow-start", "other", "slow-end"]


async def test_a_failed_handler_is_retried_and_its_record_neither_lost_nor_skipped(transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    failed = False

    async def fail_once_on_2(record: Record) -> None:
        nonlocal failed
        if record.value == b"2" and not failed:
            failed = True
            raise ConnectionError("database restarting")

    got = Collector(fail_once_on_2)
    for i in range(5):
        await transport.publish(topic, str(i).encode())
    await join(transport, topic, got)
    await eventually(lambda: got.values[-1:] == [b"4"], what="the last record")
    assert got.values == [b"0", b"1", b"2", b"2", b"3", b"4"]


async def test_the_offset_of_an_unfinished_record_is_not_committed(transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    group = unique("group")
    for i in range(5):
        await transport.publish(topic, str(i).encode())

    async def stuck_on_2(record: Record) -> None:
        if record.value == b"2":
            raise RetryLater("payment provider down")

    first = Collector(stuck_on_2)
    sub = await join(transport, topic, first, group)
    await eventually(lambda: first.values[-2:] == [b"2", b"2"], what="record 2 being retried")
    await sub.stop(grace_period=5)
    [info] = await transport.describe([topic])
    assert [p.committed for p in info.groups[group]] == [2]

    second = Collector()
    await join(transport, topic, second, group)
    await eventually(lambda: len(second.records) == 3, what="records 2-4 for the next member")
    assert second.values == [b"2", b"3", b"4"]


async def read_all(transport: Transport, topic: str, count: int) -> list[Record]:
    reader = Collector()
    sub = await join(transport, topic, reader)
    await eventually(lambda: len(reader.records) >= count, what=f"{count} record(s) on {topic}")
    await sub.stop(grace_period=5)
    return reader.records


async def test_a_record_that_keeps_failing_is_dead_lettered_and_its_partition_moves_on(transport: Transport) -> None:
    topic = await new_topic(transport, 1, dead_letters=True)
    group = unique("group")
    attempts = 0

    async def reject_bad(record: Record) -> None:
        nonlocal attempts
        if record.value == b"bad":
            attempts += 1
            raise ValueError("amount must be positive")

    got = Collector(reject_bad)
    await transport.publish(topic, b"good-1", key=b"order-1")
    await transport.publish(topic, b"bad", key=b"order-2", headers=(("meshrun-trace-id", b"trace-2"),))
    await transport.publish(topic, b"good-2", key=b"order-3")
    await join(transport, topic, got, group, retry=RetryConfig(max_attempts=3, backoff_initial=0.01))
    await eventually(lambda: got.values[-1:] == [b"good-2"], what="the record after the bad one")
    assert attempts == 3
    assert got.values == [b"good-1", b"bad", b"bad", b"bad", b"good-2"]

    [dead] = await read_all(transport, dead_letter_topic(topic), 1)
    assert (dead.value, dead.key) == (b"bad", b"order-2")
    assert dead.header("meshrun-trace-id") == b"trace-2"
    assert dead.header("meshrun-dlq-group") == group.encode()
    assert dead.header("meshrun-dlq-error") == b"ValueError: amount must be positive"
    assert dead.header("meshrun-dlq-attempts") == b"3"
    assert dead.header("meshrun-dlq-topic") == topic.encode()
    assert (dead.header("meshrun-dlq-partition"), dead.header("meshrun-dlq-offset")) == (b"0", b"1")

    async def all_committed() -> bool:
        [info] = await transport.describe([topic])
        return [p.committed for p in info.groups[group]] == [3]

    await eventually(all_committed, what="the offset after the dead-lettered record to be committed")


async def test_a_poison_event_is_dead_lettered_at_once(transport: Transport) -> None:
    topic = await new_topic(transport, 2, dead_letters=True)
    calls = 0

    async def undecodable(record: Record) -> None:
        nonlocal calls
        calls += 1
        raise PoisonEvent("not JSON")

    await join(transport, topic, undecodable)
    await transport.publish(topic, b"\xff", key=b"k")
    [dead] = await read_all(transport, dead_letter_topic(topic), 1)
    assert dead.value == b"\xff"
    assert dead.header("meshrun-dlq-attempts") == b"1"
    assert dead.header("meshrun-dlq-error") == b"PoisonEvent: not JSON"
    assert calls == 1


async def test_retry_later_is_retried_beyond_max_attempts_until_it_succeeds(transport: Transport) -> None:
    topic = await new_topic(transport, 1, dead_letters=True)
    calls = 0

    async def dependency_down_five_times(record: Record) -> None:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise RetryLater("inventory service unavailable")

    got = Collector(dependency_down_five_times)
    await join(transport, topic, got, retry=RetryConfig(max_attempts=2, backoff_initial=0.01, backoff_max=0.02))
    await transport.publish(topic, b"reserve")
    await eventually(lambda: calls == 6, what="the sixth call")
    assert got.values == [b"reserve"] * 6
    # Nothing was dead-lettered: a group that reads the dead-letter topic finds it empty.
    reader = unique("group")
    await (await join(transport, dead_letter_topic(topic), Collector(), reader)).stop(grace_period=5)
    [dlq] = await transport.describe([dead_letter_topic(topic)])
    assert [p.log_end for p in dlq.groups[reader]] == [0]


@pytest.mark.parametrize("max_batch", [1, 10])
@pytest.mark.parametrize("unavailable", [Backpressure("consumers far behind"),
                                         BrokerUnavailable("127.0.0.1:9", "publish not acknowledged")],
                         ids=["backpressure", "broker-away"])
async def test_a_publish_refused_because_the_transport_is_away_makes_the_record_wait_never_dead_letters_it(
        transport: Transport, unavailable: Exception, max_batch: int) -> None:
    """What a handler's publish raises while the broker is away (or, in memory, consumers are far behind) is an
    outage, not a failure of the record: it waits beyond max_attempts instead of going to the dead-letter topic."""
    topic = await new_topic(transport, 1, dead_letters=True)
    calls = 0

    async def publish_refused_five_times(records: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise unavailable

    got = BatchCollector(publish_refused_five_times) if max_batch > 1 else Collector(publish_refused_five_times)
    await join(transport, topic, got, retry=RetryConfig(max_attempts=2, backoff_initial=0.01, backoff_max=0.02),
               max_batch=max_batch)
    await transport.publish(topic, b"invoice")
    await eventually(lambda: calls == 6, what="the sixth call")
    assert got.values == [b"invoice"] * 6
    reader = unique("group")
    await (await join(transport, dead_letter_topic(topic), Collector(), reader)).stop(grace_period=5)
    [dlq] = await transport.describe([dead_letter_topic(topic)])
    assert [p.log_end for p in dlq.groups[reader]] == [0]


async def test_reset_to_earliest_replays_every_event(transport: Transport) -> None:
    topic = await new_topic(transport, 2)
    group = unique("group")
    for i in range(10):
        await transport.publish(topic, str(i).encode(), key=str(i).encode())
    first = Collector()
    sub = await join(transport, topic, first, group)
    await eventually(lambda: len(first.records) == 10, what="10 records")
    await sub.stop(grace_period=5)

    assert await transport.reset_offsets(group, topic, "earliest") == {0: 0, 1: 0}
    again = Collector()
    await join(transport, topic, again, group)
    await eventually(lambda: len(again.records) == 10, what="the 10 records again")
    assert sorted(again.values) == sorted(first.values)


async def test_reset_to_a_time_replays_what_was_published_since(transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    group = unique("group")
    for i in range(3):
        await transport.publish(topic, f"old-{i}".encode())
    # Record timestamps have millisecond precision: let the clock move past the old records' millisecond.
    last_old = time.time()
    await eventually(lambda: time.time() - last_old > 0.003, what="the clock to move on")
    since = datetime.now(timezone.utc)
    for i in range(2):
        await transport.publish(topic, f"new-{i}".encode())
    first = Collector()
    sub = await join(transport, topic, first, group)
    await eventually(lambda: len(first.records) == 5, what="5 records")
    await sub.stop(grace_period=5)

    assert await transport.reset_offsets(group, topic, since) == {0: 3}
    again = Collector()
    await join(transport, topic, again, group)
    await eventually(lambda: len(again.records) == 2, what="the 2 newer records")
    assert again.values == [b"new-0", b"new-1"]


async def test_reset_is_refused_while_the_group_has_live_members(transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    group = unique("group")
    sub = await join(transport, topic, Collector(), group)
    with pytest.raises(GroupHasLiveMembers, match=group):
        await transport.reset_offsets(group, topic, "earliest")
    await sub.stop(grace_period=5)
    assert await transport.reset_offsets(group, topic, "latest") == {0: 0}


async def test_a_new_group_starting_from_latest_sees_only_newer_events(transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    for i in range(5):
        await transport.publish(topic, f"old-{i}".encode())
    got = Collector()
    await join(transport, topic, got, start_from="latest")
    for i in range(3):
        await transport.publish(topic, f"new-{i}".encode())
    await eventually(lambda: len(got.records) >= 3, what="3 new records")
    assert got.values == [b"new-0", b"new-1", b"new-2"]


async def test_a_stopped_member_commits_and_the_next_one_continues_without_duplicates(transport: Transport) -> None:
    topic = await new_topic(transport, 2)
    group = unique("group")
    for i in range(40):
        await transport.publish(topic, str(i).encode(), key=f"k{i}".encode())
    reached, release = asyncio.Event(), asyncio.Event()

    async def pause_at_ten(record: Record) -> None:
        if len(first.records) == 10:
            reached.set()
            await release.wait()  # in flight while the member stops: it must finish and be committed

    first = Collector(pause_at_ten)
    sub = await join(transport, topic, first, group)
    await asyncio.wait_for(reached.wait(), 30)
    stopping = asyncio.create_task(sub.stop(grace_period=10))
    await eventually(lambda: sub.state.value == "stopping", what="the member to start stopping")
    release.set()
    await stopping

    second = Collector()
    await join(transport, topic, second, group)
    await eventually(lambda: len(first.records) + len(second.records) == 40, what="all 40 records")
    assert sorted(first.values + second.values) == sorted(str(i).encode() for i in range(40))
    assert Counter(first.values + second.values).most_common(1)[0][1] == 1


async def test_describe_shows_each_groups_committed_offsets_and_lag(transport: Transport) -> None:
    topic = await new_topic(transport, 2)
    group = unique("group")
    keys = [key_on(0, 2)] * 4 + [key_on(1, 2)] * 2
    for key in keys:
        await transport.publish(topic, b"before", key=key)
    got = Collector()
    sub = await join(transport, topic, got, group)
    await eventually(lambda: len(got.records) == 6, what="6 records")
    await sub.stop(grace_period=5)
    for key in [key_on(0, 2)] * 1 + [key_on(1, 2)] * 3:
        await transport.publish(topic, b"after", key=key)

    [info] = await transport.describe([topic])
    assert (info.name, info.partitions) == (topic, 2)
    lags = info.groups[group]
    assert [(p.partition, p.log_start, p.log_end, p.committed, p.lag) for p in lags] == [
        (0, 0, 5, 4, 1),
        (1, 0, 5, 2, 3),
    ]
    assert topic in {i.name for i in await transport.describe()}


async def test_describe_counts_the_records_of_every_topic_dead_letters_included(transport: Transport) -> None:
    topic = await new_topic(transport, 3, dead_letters=True)
    for i in range(5):
        await transport.publish(topic, b"poison" if i == 2 else b"fine", key=str(i).encode())

    async def refuse_poison(record: Record) -> None:
        if record.value == b"poison":
            raise ValueError("cannot handle poison")

    group = unique("group")
    await join(transport, topic, Collector(refuse_poison), group, retry=RetryConfig(max_attempts=1))
    # Committed past the poison record only once it was durably dead-lettered, so the count is there now.
    await eventually(caught_up(transport, topic, group, 5), what="all 5 records committed")

    infos = {i.name: i for i in await transport.describe()}
    dlq = infos[dead_letter_topic(topic)]
    assert infos[topic].records == 5
    assert (dlq.records, dlq.partitions, dlq.groups) == (1, 3, {})  # counted though no group reads it
    [only_dlq] = await transport.describe([dead_letter_topic(topic)])
    assert only_dlq.records == 1


async def test_unknown_topics_are_refused(transport: Transport) -> None:
    missing = unique("undeclared")
    with pytest.raises(UnknownTopic, match=missing):
        await transport.publish(missing, b"{}")
    with pytest.raises(UnknownTopic, match=missing):
        await transport.subscribe(missing, unique("group"), Collector(), retry=FAST_RETRY)
    with pytest.raises(UnknownTopic, match=missing):
        await transport.describe([missing])


async def test_a_topic_declared_with_another_partition_count_is_refused(transport: Transport) -> None:
    topic = await new_topic(transport, 2)
    await transport.ensure_topics([TopicConfig(topic, 2)])  # the same declaration again is fine
    with pytest.raises(TopicPartitionMismatch, match="exists with 2 partitions, configured with 3"):
        await transport.ensure_topics([TopicConfig(topic, 3)])


async def test_a_handler_still_running_after_the_grace_period_is_cancelled_and_its_record_redelivered(
        transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    group = unique("group")
    await transport.publish(topic, b"slow")
    await transport.publish(topic, b"next")
    started = asyncio.Event()

    async def hangs(record: Record) -> None:
        started.set()
        await asyncio.Event().wait()  # a call that never returns

    first = Collector(hangs)
    sub = await join(transport, topic, first, group)
    await asyncio.wait_for(started.wait(), 30)
    await sub.stop(grace_period=0.2)
    assert first.values == [b"slow"]

    second = Collector()
    await join(transport, topic, second, group)
    await eventually(lambda: len(second.records) == 2, what="both records for the next member")
    assert second.values == [b"slow", b"next"]


# --- batch handlers (subscribe(..., max_batch=N)) ------------------------------------------------------------------


def caught_up(transport: Transport, topic: str, group: str, published: int) -> Callable[[], Awaitable[bool]]:
    """A condition: `group` has committed all `published` records of `topic`, so its lag is 0 on every partition."""

    async def check() -> bool:
        [info] = await transport.describe([topic])
        lags = info.groups.get(group, [])
        return (sum(p.log_end for p in lags) == published
                and all(p.committed == p.log_end and p.lag == 0 for p in lags))

    return check


async def test_a_batch_handler_gets_every_record_once_in_order_in_batches_of_one_partition(
        transport: Transport) -> None:
    topic = await new_topic(transport, 3)
    group = unique("group")
    published = [(f"customer-{i % 5}".encode(), str(i).encode()) for i in range(60)]
    for key, value in published:
        await transport.publish(topic, value, key=key)
    got = BatchCollector()
    await join(transport, topic, got, group, max_batch=4)
    await eventually(lambda: len(got.records) >= 60, what="60 records")

    for batch in got.batches:
        assert 1 <= len(batch) <= 4
        assert len({r.partition for r in batch}) == 1, "a batch mixes partitions"
        assert [r.offset for r in batch] == list(range(batch[0].offset, batch[0].offset + len(batch)))
    for partition in range(3):
        mine = [r for r in got.records if r.partition == partition]
        assert [r.offset for r in mine] == list(range(len(mine)))  # each record once, in offset order
        assert [r.value for r in mine] == [v for k, v in published
                                           if partition_for(k, 3, itertools.count()) == partition]
    await eventually(caught_up(transport, topic, group, 60), what="every batch committed (lag 0)")
    assert len(got.records) == 60  # and none handled again meanwhile


async def test_records_published_while_a_batch_is_handled_arrive_together_in_a_later_batch(
        transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    release = asyncio.Event()

    async def hold_the_first_batch(records: Sequence[Record]) -> None:
        if len(got.batches) == 1:
            await asyncio.wait_for(release.wait(), 30)

    got = BatchCollector(hold_the_first_batch)
    await transport.publish(topic, b"0")
    await join(transport, topic, got, max_batch=5)
    await eventually(lambda: got.batches, what="the first batch")
    for i in range(1, 10):
        await transport.publish(topic, str(i).encode())
    release.set()
    await eventually(lambda: len(got.records) >= 10, what="10 records")

    assert [r.value for r in got.batches[0]] == [b"0"]  # a batch never waits to fill
    assert got.values == [str(i).encode() for i in range(10)]
    later = [len(batch) for batch in got.batches[1:]]
    assert max(later) > 1, f"the records that waited for the handler came one at a time: {later}"
    assert max(later) <= 5


async def test_a_record_that_keeps_failing_in_a_batch_is_dead_lettered_alone_and_the_others_go_through(
        transport: Transport) -> None:
    topic = await new_topic(transport, 1, dead_letters=True)
    group = unique("group")
    handled: list[bytes] = []
    calls_with_bad: list[int] = []  # the length of each batch the bad record came in

    async def handle_in_turn(records: Sequence[Record]) -> None:
        for record in records:
            if record.value == b"bad":
                calls_with_bad.append(len(records))
                raise ValueError("amount must be positive")
            handled.append(record.value)

    for i, value in enumerate([b"good-0", b"good-1", b"bad", b"good-3", b"good-4"]):
        await transport.publish(topic, value, key=f"order-{i}".encode())
    got = BatchCollector(handle_in_turn)
    await join(transport, topic, got, group, retry=RetryConfig(max_attempts=3, backoff_initial=0.01),
               max_batch=10)
    await eventually(lambda: handled[-1:] == [b"good-4"], what="the records after the bad one")

    counts = Counter(handled)
    assert set(counts) == {b"good-0", b"good-1", b"good-3", b"good-4"}
    assert 1 <= counts[b"good-0"] <= 2 and 1 <= counts[b"good-1"] <= 2  # in the failed batch, then again alone
    assert counts[b"good-3"] == counts[b"good-4"] == 1  # the failed batch never reached them
    assert handled[-2:] == [b"good-3", b"good-4"]
    # The bad record was retried alone, max_attempts times, after at most one failed batch.
    assert calls_with_bad.count(1) == 3
    assert len(calls_with_bad) - calls_with_bad.count(1) <= 1

    dlq, reader_group = dead_letter_topic(topic), unique("group")
    reader = Collector()
    reader_sub = await join(transport, dlq, reader, reader_group)
    await eventually(lambda: reader.records, what="the dead-lettered record")
    await reader_sub.stop(grace_period=5)
    [dead] = reader.records
    assert (dead.value, dead.key) == (b"bad", b"order-2")
    assert dead.header("meshrun-dlq-offset") == b"2"
    assert dead.header("meshrun-dlq-attempts") == b"3"
    assert dead.header("meshrun-dlq-error") == b"ValueError: amount must be positive"
    [dlq_info] = await transport.describe([dlq])
    assert sum(p.log_end for p in dlq_info.groups[reader_group]) == 1  # that record alone

    await eventually(caught_up(transport, topic, group, 5), what="the whole batch committed (lag 0)")
    await transport.publish(topic, b"good-5", key=b"order-5")
    await eventually(lambda: handled[-1:] == [b"good-5"], what="a later record")
    await eventually(caught_up(transport, topic, group, 6), what="the later record committed")


async def test_handled_batches_are_committed_and_not_handed_to_the_groups_next_member(transport: Transport) -> None:
    topic = await new_topic(transport, 2)
    group = unique("group")
    for i in range(12):
        await transport.publish(topic, f"old-{i}".encode(), key=key_on(i % 2, 2))
    first = BatchCollector()
    sub = await join(transport, topic, first, group, max_batch=5)
    await eventually(lambda: len(first.records) == 12, what="12 records")
    await eventually(caught_up(transport, topic, group, 12), what="lag 0 once the batches are handled")
    await sub.stop(grace_period=5)
    [info] = await transport.describe([topic])
    assert [(p.partition, p.committed, p.lag) for p in info.groups[group]] == [(0, 6, 0), (1, 6, 0)]

    for partition in range(2):
        await transport.publish(topic, f"new-{partition}".encode(), key=key_on(partition, 2))
    second = BatchCollector()
    await join(transport, topic, second, group, max_batch=5)
    await eventually(lambda: {b"new-0", b"new-1"} <= set(second.values), what="the 2 new records")
    # A committed record would come before the new one of its partition: none did.
    assert sorted(second.values) == [b"new-0", b"new-1"]


@pytest.mark.parametrize("max_batch", [0, -1, True, 10_001, "3"])
async def test_an_invalid_max_batch_is_refused_before_joining(transport: Transport, max_batch: Any) -> None:
    topic = await new_topic(transport, 1)
    group = unique("group")
    with pytest.raises(ValueError, match="max_batch"):
        await transport.subscribe(topic, group, BatchCollector(), retry=FAST_RETRY, max_batch=max_batch)
    assert await transport.reset_offsets(group, topic, "earliest") == {0: 0}  # no member of the group was left


async def test_max_batch_from_1_to_10_000_is_accepted(transport: Transport) -> None:
    topic = await new_topic(transport, 1)
    await transport.publish(topic, b"only")
    single, batches = Collector(), BatchCollector()
    for handler, max_batch in ((single, 1), (batches, 10_000)):
        sub = await join(transport, topic, handler, max_batch=max_batch)
        await eventually(lambda: handler.records, what=f"the record with max_batch={max_batch}")  # noqa: B023
        await sub.stop(grace_period=5)
    assert single.values == [b"only"]
    assert [[r.value for r in batch] for batch in batches.batches] == [[b"only"]]
