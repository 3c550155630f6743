"""What a test reads of a running mesh's topics: what was published, what was dead-lettered, and whether a consumer
group has handled it all.

Reads the in-memory transport through its public interface (`records`, `describe`, `live_members`); it moves no
offset and joins no group, so reading changes nothing a service sees.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, TypeVar, cast, overload

import orjson

from meshrun.errors import MeshrunError, UnknownTopic
from meshrun.events import Event, decode
from meshrun.transport.base import PartitionLag, Record
from meshrun.transport.delivery import dead_letter_topic
from meshrun.transport.memory import InMemoryTransport

E = TypeVar("E", bound=Event)
DLQ_SUFFIX = dead_letter_topic("")


class GroupDidNotCatchUp(AssertionError):
    """A consumer group did not commit what was published within the time given: a failed expectation of the
    test, so an AssertionError; the message names the group, each partition's committed offset and the lag."""

    def __init__(self, group: str, message: str, lag: int) -> None:
        self.group = group
        self.lag = lag
        super().__init__(message)


class UnknownGroup(MeshrunError, LookupError):
    """The group asked about reads none of the topics asked about in this mesh."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of `<topic>.dlq`, with why it is there (the `meshrun-dlq-*` headers the runtime wrote)."""

    record: Record
    group: str  # the consumer group whose handler gave up on it
    error: str  # the handler's last error, as `Type: message`
    attempts: int
    topic: str  # where it was first published
    partition: int
    offset: int

    @classmethod
    def of(cls, record: Record) -> DeadLetter:
        def header(name: str) -> str:
            value = record.header(f"meshrun-dlq-{name}")
            return value.decode() if value is not None else ""

        return cls(record, header("group"), header("error"), int(header("attempts") or 0), header("topic"),
                   int(header("partition") or -1), int(header("offset") or -1))

    def event(self, event_type: type[E]) -> E:
        """The dead-lettered event, decoded (raises EventDecodeError for a record that was not one)."""
        return cast(E, decode(self.record.value, event_type))  # decode checked it is an event_type


def _event_type_of(record: Record) -> str | None:
    header = record.header("meshrun-event-type")
    if header is not None:
        return header.decode()
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    return value.get("type") if isinstance(value, dict) else None


class TopicReader:
    """Reading a mesh's topics in a test; `MeshHarness` is one."""

    def __init__(self, transport: InMemoryTransport) -> None:
        self.transport = transport

    @overload
    def published(self, topic: str) -> list[Record]: ...

    @overload
    def published(self, topic: str, event_type: type[E]) -> list[E]: ...

    def published(self, topic: str, event_type: type[Event] | None = None) -> list[Any]:
        """What `topic` holds, by partition and then offset (order across partitions is not publication order).

        Without `event_type`, the records; with it, the events of that type decoded (records of other types are
        left out; one of that type that does not decode raises EventDecodeError)."""
        records = self.transport.records(topic)
        if event_type is None:
            return records
        return [decode(r.value, event_type) for r in records if _event_type_of(r) == event_type.TYPE]

    def dead_letters(self, topic: str) -> list[DeadLetter]:
        """The records dead-lettered from `topic` (those on `<topic>.dlq`), each with its group, error and
        attempts. Empty when nothing was (the dead-letter topic is created on first use)."""
        dlq = topic if topic.endswith(DLQ_SUFFIX) else dead_letter_topic(topic)
        try:
            records = self.transport.records(dlq)
        except UnknownTopic:
            self.transport.records(topic)  # an unknown source topic raises UnknownTopic, naming it
            return []
        return [DeadLetter.of(r) for r in records]

    async def handled(self, group: str, topic: str | None = None, *, count: int | None = None,
                      timeout: float = 10.0) -> int:
        """Wait until consumer group `group` has committed everything on `topic` (default: on every topic it
        reads): each record handled, or dead-lettered after its retries, and its lag 0 on every partition at one
        moment, so what its own handlers published meanwhile to a topic it reads is waited for too. With `count`,
        until its committed offsets on the topic add up to `count` instead (the records handled since the topic
        began; with start_from = latest the ones it skipped count too). Returns the committed offsets, summed.

        Raises GroupDidNotCatchUp after `timeout` seconds, naming the group, its lag and each partition's offsets.
        """
        topics = [topic] if topic is not None else await self._topics_read_by(group)
        if count is not None and len(topics) != 1:
            raise ValueError("handled(count=...) needs a topic: count is of one topic's records")
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            # One describe: the memory transport answers it without yielding, so all partitions are read at once.
            lags = await self._lags(group, topics)
            total = sum(_committed(lag) for lag in lags)
            if total >= count if count is not None else all(_committed(lag) >= lag.log_end for lag in lags):
                return total
            if time.monotonic() >= deadline:
                raise await self._not_caught_up(group, topics, lags, count, timeout)
            # The memory transport signals no commits: poll its offsets, soon at first, then every 20 ms.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def _topics_read_by(self, group: str) -> list[str]:
        topics = [info.name for info in await self.transport.describe() if group in info.groups]
        if not topics:
            raise UnknownGroup(f"no topic of this mesh is read by group {group!r} (groups: "
                               f"{', '.join(await self._groups()) or 'none'})")
        return topics

    async def _groups(self) -> list[str]:
        return sorted({g for info in await self.transport.describe() for g in info.groups})

    async def _lags(self, group: str, topics: list[str]) -> list[_Lag]:
        found: list[_Lag] = []
        for info in await self.transport.describe(topics):
            if group not in info.groups:
                readers = ", ".join(sorted(info.groups)) or "none"
                raise UnknownGroup(f"group {group!r} does not read topic {info.name!r} in this mesh (groups "
                                   f"reading it: {readers}; is its service running?)")
            found += [_Lag(info.name, lag) for lag in info.groups[group]]
        return found

    async def _not_caught_up(self, group: str, topics: list[str], lags: list[_Lag], count: int | None,
                             timeout: float) -> GroupDidNotCatchUp:
        lag = sum(max(0, p.log_end - _committed(p)) for p in lags)
        behind = ", ".join(f"{p.topic}[{p.partition}] at {_committed(p)} of {p.log_end}" for p in lags
                           if _committed(p) < p.log_end)
        wanted = f"{count} records" if count is not None else "everything published"
        members = await self.transport.live_members(group)
        dead = sum(len(self.dead_letters(t)) for t in topics)
        message = (f"group {group!r} did not handle {wanted} on {', '.join(topics)} within {timeout:g}s: "
                   f"committed {sum(_committed(p) for p in lags)}, lag {lag}{f' ({behind})' if behind else ''}; "
                   f"{members} live member(s){'' if members else ' (is its service running?)'}; "
                   f"{dead} dead-lettered")
        return GroupDidNotCatchUp(group, message, lag)


@dataclass(frozen=True, slots=True)
class _Lag:
    """One partition's offsets for a group, with the topic it belongs to."""

    topic: str
    offsets: PartitionLag

    @property
    def partition(self) -> int:
        return self.offsets.partition

    @property
    def log_end(self) -> int:
        return self.offsets.log_end


def _committed(lag: _Lag) -> int:
    offsets = lag.offsets
    return offsets.committed if offsets.committed is not None else offsets.log_start
