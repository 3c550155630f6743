"""The in-memory transport: Kafka's semantics (partitions, consumer groups, offsets, replay) inside one process.

It is the embedded default, not a test double. It does not cross processes and keeps nothing across restarts:
split a mesh over several processes with the Kafka transport.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from datetime import datetime
from typing import Sequence

import structlog

from meshrun.config import MemoryTransportConfig, MeshConfig, RetryConfig, TopicConfig
from meshrun.errors import Backpressure, GroupHasLiveMembers, TopicPartitionMismatch, TransportStateError, UnknownTopic
from meshrun.transport.base import (
    BatchHandler,
    Handler,
    Headers,
    PartitionLag,
    Record,
    RecordMetadata,
    ResetTarget,
    StartFrom,
    Subscription,
    SubscriptionState,
    TopicInfo,
    Transport,
)
from meshrun.transport.delivery import split_handler, transient_error
from meshrun.transport.partition_worker import Delivery, PartitionWorker, stop_workers
from meshrun.transport.partitioner import partition_for

log = structlog.get_logger("meshrun.transport.memory")

# Waiting publishers are woken once a batch of room is free, or this long after the first free slot.
WAKE_WITHIN = 0.05


class _Partition:
    __slots__ = ("topic", "index", "records", "log_start", "next_offset", "waiters", "space_waiters", "granted",
                 "wake_timer", "warned_at")

    def __init__(self, topic: str, index: int) -> None:
        self.topic = topic
        self.index = index
        self.records: deque[Record] = deque()
        self.log_start = 0
        self.next_offset = 0
        self.waiters: list[asyncio.Future[None]] = []
        # Publishers waiting for room, first come first served; each is woken with True when a slot is its turn,
        # or False by its own timeout.
        self.space_waiters: deque[asyncio.Future[bool]] = deque()
        self.granted = 0  # slots promised to woken publishers that have not appended yet
        self.wake_timer: asyncio.TimerHandle | None = None  # wakes waiters below the low-water mark, a little later
        self.warned_at = 0.0

    def wake(self, waiters: list[asyncio.Future[None]]) -> None:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        waiters.clear()

    async def wait(self, waiters: list[asyncio.Future[None]]) -> None:
        fut = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        await fut


class _Topic:
    def __init__(self, config: TopicConfig) -> None:
        self.config = config
        self.partitions = [_Partition(config.name, i) for i in range(config.partitions)]
        self.counter = itertools.count()


class _Group:
    """Committed offsets of one consumer group, and its live members per topic."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.committed: dict[tuple[str, int], int] = {}
        self.members: dict[str, list[MemorySubscription]] = {}
        self.lock = asyncio.Lock()


class _LogReader:
    """One partition's log as one member of a group reads it: the `RecordSource` of in-memory partitions. What is
    done is committed at once, and the room it frees goes to the publishers waiting for it."""

    def __init__(self, transport: "InMemoryTransport", part: _Partition, group: _Group) -> None:
        self.transport = transport
        self.part = part
        self.group = group
        self.key = (part.topic, part.index)
        self.position = group.committed[self.key]

    def take(self, limit: int) -> Sequence[Record]:
        part = self.part
        position = self.position
        if position < part.log_start:
            log.error("events_skipped_by_retention", topic=part.topic, partition=part.index, group=self.group.name,
                      skipped=part.log_start - position)
            position = self.position = self.group.committed[self.key] = part.log_start
        if position >= part.next_offset:
            return ()
        first = position - part.log_start
        records = [part.records[first]] if limit == 1 else _window(part.records, first, first + limit)
        self.position = records[-1].offset + 1
        return records

    async def wait(self) -> None:
        await self.part.wait(self.part.waiters)

    def wake(self) -> None:
        self.part.wake(self.part.waiters)

    def done(self, offset: int) -> None:
        self.group.committed[self.key] = offset
        if self.part.space_waiters:
            self.transport.free_space(self.part)


class MemorySubscription(Subscription):
    def __init__(self, transport: "InMemoryTransport", topic: _Topic, group: _Group, handler: Handler | BatchHandler,
                 retry: RetryConfig, start_from: StartFrom, member: str, max_batch: int = 1) -> None:
        self.transport = transport
        self._topic = topic
        self._group = group
        self.topic = topic.config.name
        self.group = group.name
        self.member = member
        single, batch = split_handler(handler, max_batch)
        # Sends of this transport are durable when they return: no acknowledgement is ever pending for long.
        self.delivery = Delivery(group.name, single, batch, max_batch, retry, transport.dead_letter,
                                 transient_error, max_unacked=1)
        self.start_from = start_from
        self._state = SubscriptionState.JOINING
        self._joined = asyncio.Event()
        self._workers: dict[int, PartitionWorker] = {}

    @property
    def assigned_partitions(self) -> frozenset[int]:
        return frozenset(self._workers)

    async def stop(self, grace_period: float) -> None:
        if self._state in (SubscriptionState.STOPPING, SubscriptionState.STOPPED):
            return
        self._state = SubscriptionState.STOPPING
        async with self._group.lock:
            await self.revoke(set(self._workers), grace_period)
            self._group.members[self.topic].remove(self)
            await self.transport.rebalance(self._group, self._topic)
        self._state = SubscriptionState.STOPPED

    async def revoke(self, partitions: set[int], grace_period: float) -> None:
        """Let the handler of each revoked partition finish its current record, then stop that partition.
        Caller: the transport's rebalance, holding the group's lock."""
        workers = [self._workers.pop(p) for p in partitions if p in self._workers]
        await stop_workers(workers, grace_period, topic=self.topic, group=self.group)

    def assign(self, partition: int) -> None:
        """Start handling a partition from the group's committed offset. Caller: the transport's rebalance."""
        part = self._topic.partitions[partition]
        key = (self.topic, partition)
        committed = self._group.committed
        if key not in committed:
            # A new group starts where it was told to; from then on its committed offset pins retention.
            committed[key] = part.log_start if self.start_from == "earliest" else part.next_offset
        self._workers[partition] = PartitionWorker(self.topic, partition, committed[key], self.delivery,
                                                   _LogReader(self.transport, part, self._group), transport="memory")

    def joined(self) -> None:
        """The group's rebalance gave this member its partitions (possibly none). Caller: the transport."""
        self._state = SubscriptionState.ASSIGNED
        self._joined.set()


class InMemoryTransport(Transport):
    """Topics, partitions and consumer groups in this process's memory, bounded by `retention` per partition."""

    name = "memory"
    in_process = True

    def __init__(self, config: MemoryTransportConfig | None = None) -> None:
        self.config = config or MemoryTransportConfig()
        self._topics: dict[str, _Topic] = {}
        self._groups: dict[str, _Group] = {}
        self._started = False
        self._member_ids = itertools.count(1)
        self._wake_batch = max(1, self.config.retention // 16)
        self._trim_chunk = max(1, self.config.retention // 64)

    @classmethod
    def from_config(cls, config: MeshConfig) -> "InMemoryTransport":
        return cls(config.memory)

    @property
    def records_ahead_per_partition(self) -> int:
        return self.config.retention  # backpressure keeps the slowest group within it

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        for group in self._groups.values():
            for members in list(group.members.values()):
                for member in list(members):
                    await member.stop(0.0)
        self._started = False

    def _require_started(self) -> None:
        if not self._started:
            raise TransportStateError("the in-memory transport is not started: call `await transport.start()` first")

    async def ensure_topics(self, topics: Sequence[TopicConfig]) -> None:
        for topic in topics:
            existing = self._topics.get(topic.name)
            if existing is None:
                self._topics[topic.name] = _Topic(topic)
            elif existing.config.partitions != topic.partitions:
                raise TopicPartitionMismatch(topic.name, existing.config.partitions, topic.partitions)

    def _topic(self, name: str) -> _Topic:
        try:
            return self._topics[name]
        except KeyError:
            raise UnknownTopic(name) from None

    async def publish(self, topic: str, value: bytes, *, key: bytes | None = None,
                      headers: Headers = ()) -> RecordMetadata:
        self._require_started()
        t = self._topic(topic)
        part = t.partitions[partition_for(key, len(t.partitions), t.counter)]
        if part.space_waiters or len(part.records) + part.granted >= self.config.retention:
            await self._make_room(part)
        offset = part.next_offset
        # A copy of exactly the value's size: orjson returns its output in a 4 KiB block, and this transport keeps
        # `retention` values per partition (measured: 4 KiB per stored event without the copy, ~360 B with it).
        value = memoryview(value).tobytes()
        part.records.append(Record(topic, part.index, offset, key, value, headers, time.time_ns() // 1_000_000))
        part.next_offset = offset + 1
        if part.waiters:
            part.wake(part.waiters)
        return RecordMetadata(topic, part.index, offset)

    def _slowest(self, part: _Partition) -> tuple[str | None, int]:
        """The group furthest behind on this partition, and its committed offset."""
        key = (part.topic, part.index)
        slowest: tuple[str | None, int] = (None, part.next_offset)
        for group in self._groups.values():
            offset = group.committed.get(key)
            if offset is not None and offset < slowest[1]:
                slowest = (group.name, offset)
        return slowest

    def _trim(self, part: _Partition) -> tuple[str | None, int]:
        """Drop the oldest records every group has consumed, until the partition has room for what is promised to
        woken publishers and a chunk more (retention/64): a full partition then takes that many publishes before
        the groups' offsets are looked up again, instead of one. It keeps between retention - retention/64 and
        retention records. Returns the slowest group and its offset."""
        group, slowest = self._slowest(part)
        keep = self.config.retention - self._trim_chunk
        while part.records and part.log_start < slowest and len(part.records) + part.granted > keep:
            part.records.popleft()
            part.log_start += 1
        return group, slowest

    def free_space(self, part: _Partition, *, now: bool = False) -> None:
        """A consumer moved on: wake as many waiting publishers as there is room, oldest first, once the slowest
        group has made room for a batch (a low-water mark), or `WAKE_WITHIN` seconds after the first free slot.

        Waking all of them for every freed slot made each re-check; waking one per slot kept the loop in lock-step,
        one record per turn. A batch lets publishers and consumers each run through many records per turn, and the
        deadline keeps a slow consumer's publishers from waiting for a batch that takes long to free.
        """
        waiters = part.space_waiters
        if not waiters:
            return
        _, slowest = self._slowest(part)
        free = self.config.retention - (part.next_offset - slowest) - part.granted
        if free <= 0:
            return
        if free < self._wake_batch and not now:
            if part.wake_timer is None:
                part.wake_timer = asyncio.get_running_loop().call_later(WAKE_WITHIN, self._wake_late, part)
            return
        if part.wake_timer is not None:
            part.wake_timer.cancel()
            part.wake_timer = None
        while free > 0 and waiters:
            room = waiters.popleft()
            if not room.done():
                room.set_result(True)
                part.granted += 1
                free -= 1

    def _wake_late(self, part: _Partition) -> None:
        part.wake_timer = None
        self.free_space(part, now=True)

    async def _make_room(self, part: _Partition) -> None:
        """Wait until the partition has room for one more record and no publisher that waited longer is still
        waiting; fail with Backpressure after `publish_timeout`."""
        deadline = time.monotonic() + self.config.publish_timeout
        loop = asyncio.get_running_loop()
        my_turn = False
        while True:
            group, slowest = self._trim(part)
            # A publisher whose wait timed out goes first too: those still queued came after it.
            first = my_turn or not part.space_waiters or time.monotonic() >= deadline
            if len(part.records) + part.granted < self.config.retention and first:
                return  # the caller appends at once, before any other coroutine runs
            now = time.monotonic()
            if now - part.warned_at > 5.0:
                part.warned_at = now
                log.warning("consumer_lagging_publishers_wait", topic=part.topic, partition=part.index, group=group,
                            lag=part.next_offset - slowest, retention=self.config.retention)
            remaining = deadline - now
            if remaining <= 0:
                raise Backpressure(
                    f"topic {part.topic!r} partition {part.index}: group {group!r} is "
                    f"{part.next_offset - slowest} events behind and the partition holds its retention of "
                    f"{self.config.retention}; raise transport.memory.retention or speed up that consumer"
                )
            room: asyncio.Future[bool] = loop.create_future()
            part.space_waiters.append(room)
            timer = loop.call_later(remaining, _time_up, room)
            try:
                my_turn = await room
            except asyncio.CancelledError:
                if room.done() and not room.cancelled() and room.result():
                    part.granted -= 1
                    self.free_space(part, now=True)  # the slot it was given passes to the next publisher
                else:
                    _forget(part.space_waiters, room)
                raise
            finally:
                timer.cancel()
            if my_turn:
                part.granted -= 1
            else:
                _forget(part.space_waiters, room)

    async def dead_letter(self, topic: str, record: Record, headers: Headers) -> None:
        """Publish a record that failed for good to its dead-letter topic. Caller: this transport's subscriptions."""
        if topic not in self._topics:
            await self.ensure_topics([TopicConfig(topic, len(self._topic(record.topic).partitions))])
        await self.publish(topic, record.value, key=record.key, headers=headers)

    async def subscribe(self, topic: str, group: str, handler: Handler | BatchHandler, *, retry: RetryConfig,
                        start_from: StartFrom = "earliest", member: str = "", max_batch: int = 1) -> Subscription:
        self._require_started()
        t = self._topic(topic)
        g = self._groups.get(group)
        if g is None:
            g = self._groups[group] = _Group(group)
        sub = MemorySubscription(self, t, g, handler, retry, start_from,
                                 member or f"{group}-{next(self._member_ids)}", max_batch)
        async with g.lock:
            g.members.setdefault(topic, []).append(sub)
            await self.rebalance(g, t)
        return sub

    async def rebalance(self, group: _Group, topic: _Topic) -> None:
        """Split the topic's partitions round-robin among the group's live members (caller holds group.lock).

        Revoked partitions finish their current record before the new owner starts, so no record is handled
        twice at once and none is skipped.
        """
        members = group.members.get(topic.config.name, [])
        wanted: dict[MemorySubscription, set[int]] = {m: set() for m in members}
        for p in range(len(topic.partitions)):
            if members:
                wanted[members[p % len(members)]].add(p)
        for member, partitions in wanted.items():
            revoked = member.assigned_partitions - partitions
            if revoked:
                await member.revoke(set(revoked), grace_period=30.0)
        for member, partitions in wanted.items():
            for p in sorted(partitions - member.assigned_partitions):
                member.assign(p)
            member.joined()

    async def describe(self, topics: Sequence[str] | None = None) -> list[TopicInfo]:
        names = list(topics) if topics is not None else sorted(self._topics)
        infos = []
        for name in names:
            t = self._topic(name)
            groups: dict[str, list[PartitionLag]] = {}
            for g in self._groups.values():
                if name not in g.members and not any(k[0] == name for k in g.committed):
                    continue
                groups[g.name] = [
                    PartitionLag(p.index, p.log_start, p.next_offset, g.committed.get((name, p.index)))
                    for p in t.partitions
                ]
            infos.append(TopicInfo(name, len(t.partitions), groups,
                                   records=sum(p.next_offset - p.log_start for p in t.partitions)))
        return infos

    def records(self, topic: str, partition: int | None = None) -> list[Record]:
        """The records `topic` holds now (or one partition of it), by partition and then offset: what was published,
        read without joining a group or moving any offset (meshrun.testing reads topics this way). Retention may
        have dropped the oldest; a topic nobody declared raises UnknownTopic."""
        t = self._topic(topic)
        parts = t.partitions if partition is None else [t.partitions[partition]]
        return [record for part in parts for record in part.records]

    async def live_members(self, group: str) -> int:
        g = self._groups.get(group)
        return sum(len(m) for m in g.members.values()) if g else 0

    async def reset_offsets(self, group: str, topic: str, to: ResetTarget) -> dict[int, int]:
        t = self._topic(topic)
        live = await self.live_members(group)
        if live:
            raise GroupHasLiveMembers(group, live)
        g = self._groups.setdefault(group, _Group(group))
        result: dict[int, int] = {}
        for part in t.partitions:
            if to == "earliest":
                offset = part.log_start
            elif to == "latest":
                offset = part.next_offset
            else:
                assert isinstance(to, datetime)
                target_ms = int(to.timestamp() * 1000)
                offset = next((r.offset for r in part.records if r.timestamp_ms >= target_ms), part.next_offset)
            g.committed[(topic, part.index)] = offset
            result[part.index] = offset
            if part.space_waiters:  # moved forward past what held retention: publishers may go on
                self.free_space(part)
        return result


def _window(records: deque[Record], start: int, stop: int) -> list[Record]:
    """records[start:stop], walking from the nearer end: a deque is slow to index far from both of its ends, and a
    consumer is usually near the newest records."""
    stop = min(stop, len(records))
    if start <= len(records) - stop:
        return list(itertools.islice(records, start, stop))
    window = list(itertools.islice(reversed(records), len(records) - stop, len(records) - start))
    window.reverse()
    return window


def _time_up(room: asyncio.Future[bool]) -> None:
    if not room.done():
        room.set_result(False)


def _forget(waiters: deque[asyncio.Future[bool]], room: asyncio.Future[bool]) -> None:
    try:
        waiters.remove(room)
    except ValueError:  # already taken off by a consumer
        pass
