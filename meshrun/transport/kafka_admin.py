"""Cluster administration for the Kafka transport: topics, log offsets, consumer groups' offsets and membership.

Not the data path: publishing and consuming live in `kafka` and `kafka_subscription`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, GroupIdNotFound, for_code
from aiokafka.protocol.admin import DescribeGroupsRequest_v1, DescribeGroupsRequest_v2
from aiokafka.protocol.api import Request

from meshrun.config import TopicConfig
from meshrun.errors import GroupHasLiveMembers, TopicPartitionMismatch, TransportStateError, UnknownTopic
from meshrun.transport.kafka_options import KafkaClientOptions, start_client

log = structlog.get_logger("meshrun.transport.kafka")

_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36


class _DescribeGroupsV2(Request[DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]):  # type: ignore[misc]
    """DescribeGroups capped at version 2.

    aiokafka 0.14 decodes the v3+ reply with the v2 schema, which fails against Kafka 4.x ("Buffer underrun
    decoding string"); v2 carries everything meshrun needs (state, members).
    """

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: Any) -> Any:
        return request_struct_class(self._groups)


class KafkaAdmin:
    """One admin connection (started with the transport) and one group-less consumer for log offsets (started on
    first use) per transport."""

    def __init__(self, options: KafkaClientOptions) -> None:
        self.options = options
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.options.bootstrap_servers,
                                    client_id=f"{self.options.client_id}-admin", **self.options.common)
        await start_client(admin, "admin", self.options)
        self._admin = admin

    async def close(self) -> None:
        if self._offsets is not None:
            await self._offsets.stop()
            self._offsets = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    @property
    def admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise TransportStateError("the Kafka transport is not started: call `await transport.start()` first")
        return self._admin

    async def _offsets_consumer(self) -> AIOKafkaConsumer:
        async with self._lock:
            if self._offsets is None:
                consumer = AIOKafkaConsumer(bootstrap_servers=self.options.bootstrap_servers,
                                            client_id=f"{self.options.client_id}-offsets", enable_auto_commit=False,
                                            **self.options.common)
                await start_client(consumer, "offsets consumer", self.options)
                self._offsets = consumer
            return self._offsets

    # --- topics ---------------------------------------------------------------------------------------------------

    async def topic_names(self) -> list[str]:
        """Every topic but Kafka's internal ones (`__consumer_offsets`, ...)."""
        return sorted(t for t in await self.admin.list_topics() if not t.startswith("__"))

    async def partition_counts(self, topics: Sequence[str]) -> dict[str, int | None]:
        """Partition count of each topic; None for a topic that does not exist."""
        if not topics:
            return {}
        counts: dict[str, int | None] = {}
        for info in await self.admin.describe_topics(list(topics)):
            if info["error_code"] == _UNKNOWN_TOPIC:
                counts[info["topic"]] = None
            elif info["error_code"]:
                raise for_code(info["error_code"])(f"describing topic {info['topic']!r}")
            else:
                counts[info["topic"]] = len(info["partitions"])
        return counts

    async def replication_factor(self, topic: str) -> int:
        [info] = await self.admin.describe_topics([topic])
        if info["error_code"] or not info["partitions"]:
            raise UnknownTopic(topic)
        return len(info["partitions"][0]["replicas"])

    async def partition_count(self, topic: str) -> int:
        count = (await self.partition_counts([topic])).get(topic)
        if count is None:
            raise UnknownTopic(topic)
        return count

    async def ensure_topics(self, topics: Sequence[TopicConfig]) -> dict[str, int]:
        """Create missing topics, check the partition count of existing ones; returns every topic's count."""
        wanted = {t.name: t for t in topics}
        existing = await self.partition_counts(list(wanted))
        missing = [t for name, t in wanted.items() if existing.get(name) is None]
        if missing:
            response = await self.admin.create_topics(
                [NewTopic(t.name, t.partitions, t.replication_factor) for t in missing])
            for name, code, message in response.topic_errors:
                # Another process may have created it meanwhile: then its partition count is checked below.
                if code and code != _TOPIC_ALREADY_EXISTS:
                    raise TransportStateError(f"cannot create topic {name!r}: {message or for_code(code).__name__}")
            existing = await self._wait_for_leaders([t.name for t in missing], existing)
        for name, topic in wanted.items():
            count = existing.get(name)
            if count != topic.partitions:
                raise TopicPartitionMismatch(name, count or 0, topic.partitions)
            log.debug("kafka_topic_ready", topic=name, partitions=count)
        return {name: int(existing[name] or 0) for name in wanted}

    async def _wait_for_leaders(self, names: list[str], counts: dict[str, int | None],
                                timeout: float = 30.0) -> dict[str, int | None]:
        """Wait until new topics have a leader for every partition, so a publish right after does not stall."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            infos = await self.admin.describe_topics(names)
            ready = all(not i["error_code"] and i["partitions"] and all(p["leader"] >= 0 for p in i["partitions"])
                        for i in infos)
            if ready or time.monotonic() > deadline:
                counts = dict(counts)
                counts.update({i["topic"]: len(i["partitions"]) or None for i in infos})
                return counts
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # --- log offsets ----------------------------------------------------------------------------------------------

    async def log_offsets(self, partitions: list[TopicPartition]) -> tuple[dict[TopicPartition, int],
                                                                            dict[TopicPartition, int]]:
        """(log start offsets, log end offsets) of the partitions."""
        consumer = await self._offsets_consumer()
        await self._track_topics(consumer, partitions)
        starts, ends = await asyncio.gather(consumer.beginning_offsets(partitions), consumer.end_offsets(partitions))
        return starts, ends

    @staticmethod
    async def _track_topics(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        """Fetch the metadata of every topic asked about in one request. Otherwise aiokafka learns them one
        unknown topic per retry, 100 ms apart: 10 s for `meshrun topics` on a cluster of 200 topics."""
        client = consumer._client
        await asyncio.gather(*(client.add_topic(t) for t in {tp.topic for tp in partitions}))

    async def offsets_at(self, partitions: list[TopicPartition], timestamp_ms: int) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose record is at or after `timestamp_ms` (the log end if none is)."""
        consumer = await self._offsets_consumer()
        await self._track_topics(consumer, partitions)
        found = await consumer.offsets_for_times({tp: timestamp_ms for tp in partitions})
        ends = await consumer.end_offsets(partitions)
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions}

    # --- consumer groups ------------------------------------------------------------------------------------------

    async def group_names(self) -> list[str]:
        groups = await self.admin.list_consumer_groups()
        return sorted(group for group, protocol_type, *_ in groups if protocol_type in ("consumer", ""))

    async def committed_offsets(self, group: str) -> dict[TopicPartition, int]:
        offsets = await self.admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def all_committed_offsets(self) -> dict[str, dict[TopicPartition, int]]:
        names = await self.group_names()
        offsets = await asyncio.gather(*(self.committed_offsets(g) for g in names))
        return dict(zip(names, offsets, strict=True))

    async def live_members(self, group: str) -> int:
        """How many consumers are members of `group` right now (0 for an unknown or empty group)."""
        coordinator = await self.admin.find_coordinator(group)
        # The admin client's own describe_consumer_groups asks for v3+, which it cannot decode (see above).
        response = await self.admin._client.send(coordinator, _DescribeGroupsV2([group]))
        for error_code, name, _state, _protocol_type, _protocol, members in response.groups:
            if name != group:
                continue
            if error_code and for_code(error_code) is not GroupIdNotFound:
                raise for_code(error_code)(f"describing consumer group {group!r}")
            return len(members)
        return 0

    async def commit_offsets(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        """Set a group's committed offsets as a member-less client; refused by the broker while it has members."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.options.bootstrap_servers, group_id=group,
                                    client_id=f"{self.options.client_id}-offsets", enable_auto_commit=False,
                                    **self.options.common)
        await start_client(consumer, "offsets committer", self.options)
        try:
            # assign() joins no group: the commit carries no generation, which the coordinator accepts only
            # while the group has no member; so a member joining meanwhile cannot have its position moved.
            consumer.assign(list(offsets))
            await consumer.commit(dict(offsets))
        except CommitFailedError:
            raise GroupHasLiveMembers(group, max(1, await self.live_members(group))) from None
        finally:
            await consumer.stop()


def partitions_of(topic: str, count: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(count)]


def by_partition(offsets: dict[TopicPartition, int], topic: str) -> dict[int, int]:
    return {tp.partition: offset for tp, offset in offsets.items() if tp.topic == topic}
