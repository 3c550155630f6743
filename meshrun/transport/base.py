"""The Transport interface: what every transport (in-memory, Kafka) must do, and nothing about how.

Services only ever talk to this interface. It leaves out serialisation (values are bytes; `meshrun.events`
encodes them) and retries (`meshrun.transport.delivery` applies one retry policy to every transport).
"""
from __future__ import annotations

import abc
import asyncio
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, Literal, Sequence

from meshrun.config import MeshConfig, RetryConfig, TopicConfig
from meshrun.config import StartFrom as StartFrom  # re-exported: the transports name it from here

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record:
    """One event as stored in a partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class RecordMetadata:
    """Where a published record landed, once the transport has made it durable."""

    topic: str
    partition: int
    offset: int


# A handled record may leave publishes in flight: the acknowledgements (futures of `Transport.send`) the record's
# offset must wait for before it is committed. None (or empty) when there are none.
Acks = Sequence[asyncio.Future[Any]]
Handler = Callable[[Record], Awaitable[Acks | None]]
# A handler of consecutive records of one partition at once (`Transport.subscribe(..., max_batch=N)`).
BatchHandler = Callable[[Sequence[Record]], Awaitable[Acks | None]]
ResetTarget = Literal["earliest", "latest"] | datetime


def parse_reset_target(text: str) -> ResetTarget:
    """A replay target as an operator writes it: earliest, latest or an ISO time (a trailing Z means UTC).
    Raises ValueError naming what was given."""
    if text == "earliest":
        return "earliest"
    if text == "latest":
        return "latest"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not earliest, latest or an ISO time (2026-01-31T12:00:00Z)") from None


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    log_start: int
    log_end: int
    committed: int | None

    @property
    def lag(self) -> int:
        start = self.committed if self.committed is not None else self.log_start
        return max(0, self.log_end - start)


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as the transport holds it now: `records` is the sum over its partitions of log end minus log start
    (what retention has not removed yet), so a dead-letter topic that received anything shows it at once."""

    name: str
    partitions: int
    groups: dict[str, list[PartitionLag]] = field(default_factory=dict)
    records: int = 0


class SubscriptionState(enum.Enum):
    """JOINING -> ASSIGNED (has joined its group, may own no partition) -> STOPPING -> STOPPED."""

    JOINING = "joining"
    ASSIGNED = "assigned"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Subscription(abc.ABC):
    """One member of a consumer group, feeding one topic's records to one handler."""

    topic: str
    group: str
    # Set by each implementation: its lifecycle state, and an event set at its first assignment.
    _state: SubscriptionState
    _joined: asyncio.Event

    @property
    def state(self) -> SubscriptionState:
        return self._state

    @property
    @abc.abstractmethod
    def assigned_partitions(self) -> frozenset[int]: ...

    @property
    def problem(self) -> str | None:
        """Why this member is not working right now (say, stalled and rejoining its group), for readiness; None
        when it is fine."""
        return None

    async def wait_joined(self, timeout: float | None = None) -> None:
        """Return once the member has joined its group and received an assignment (possibly empty)."""
        await asyncio.wait_for(self._joined.wait(), timeout)

    @abc.abstractmethod
    async def stop(self, grace_period: float) -> None:
        """Stop fetching, let the in-flight handler finish (up to grace_period), commit, and leave the group."""


class TransportAdmin(abc.ABC):
    """What operators ask of a transport's topics and groups (`meshrun topics`, `meshrun replay`): implemented by
    every transport, and by the client of a running mesh's admin endpoint for a transport that lives in-process."""

    @abc.abstractmethod
    async def describe(self, topics: Sequence[str] | None = None) -> list[TopicInfo]:
        """Topics (without a list: every topic, dead-letter topics included, not the broker's internal ones), their
        partitions, the records each holds, and each group's committed offsets and lag."""

    @abc.abstractmethod
    async def reset_offsets(self, group: str, topic: str, to: ResetTarget) -> dict[int, int]:
        """Move a group's committed offsets (replay); refuses while the group has live members."""

    @abc.abstractmethod
    async def live_members(self, group: str) -> int:
        """Live members of `group` that this transport knows of."""


class Transport(TransportAdmin):
    """Moves records between services: topics of partitions, consumer groups, committed offsets.

    What a transport can do is said by its attributes, never by its name: code that needs to know asks them.
    """

    name: str  # for logs and reports only
    # True when its topics live inside one process (nothing crosses processes): the runtime then opens the admin
    # endpoint, through which `meshrun topics` and `meshrun replay` reach the running mesh.
    in_process: bool = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: MeshConfig) -> "Transport":
        """This transport configured from services.toml (its `[transport.<name>]` table)."""

    @property
    @abc.abstractmethod
    def records_ahead_per_partition(self) -> int:
        """How many records one consumer group may be ahead of another on a partition before the transport holds
        the faster one back (memory: retention; Kafka: records fetched ahead). Sizes what is shared between groups,
        such as the runtime's cache of decoded events."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def ensure_topics(self, topics: Sequence[TopicConfig]) -> None:
        """Create the topics that do not exist; check the partition count of those that do."""

    @abc.abstractmethod
    async def publish(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> RecordMetadata:
        """Append one record; returns once it is durable (Kafka: acknowledged by all in-sync replicas)."""

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None = None, headers: Headers = ()
    ) -> asyncio.Future[Any]:
        """Queue one record behind every record sent before it and return without waiting for it to be durable;
        the returned future resolves once it is (or fails). Records sent one after the other to a partition keep
        their order. This default publishes and returns a resolved future; Kafka keeps many sends in flight.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(await self.publish(topic, value, key=key, headers=headers))
        return future

    @abc.abstractmethod
    async def subscribe(
        self,
        topic: str,
        group: str,
        handler: Handler | BatchHandler,
        *,
        retry: RetryConfig,
        start_from: StartFrom = "earliest",
        member: str = "",
        max_batch: int = 1,
    ) -> Subscription:
        """Join `group` as a new member handling `topic`; records of one partition are handled in order,
        and an offset is committed only after its handler succeeded (or its record was dead-lettered).

        With `max_batch` > 1 the handler is a BatchHandler: it receives up to that many consecutive records of one
        partition, as many as are there when it is free (no waiting for a batch to fill). If it fails, each record
        of the batch is handed to it again on its own, under the retry policy (see `delivery.deliver_batch`).
        """
