"""What only the Kafka transport has to get right: acknowledged publishes, rebalances between members, the broker's
own view of topics and groups, and a broker that is not there."""
from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from meshrun.config import KafkaTransportConfig, RetryConfig, TopicConfig
from meshrun.errors import (
    BrokerUnavailable,
    MeshrunError,
    TopicPartitionMismatch,
    TransportStateError,
    UnknownTopic,
)
from meshrun.transport.base import Record
from meshrun.transport.delivery import PoisonEvent, dead_letter_topic
from meshrun.transport.kafka import KafkaTransport
from meshrun.transport.partitioner import partition_for
from tests.conftest import ROOT
from tests.kafka.broker import kafka_transport, unique
from tests.polling import eventually

pytestmark = pytest.mark.kafka

RETRY = RetryConfig(max_attempts=3, backoff_initial=0.01, backoff_max=0.05)


async def test_publish_returns_once_acknowledged_and_the_record_is_readable(kafka: KafkaTransport,
                                                                             bootstrap: str) -> None:
    topic = unique("acked")
    await kafka.ensure_topics([TopicConfig(topic, 3)])
    landed = await kafka.publish(topic, b'{"order_id": 7}', key=b"order-7", headers=(("meshrun-event-id", b"e-7"),))

    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        tp = TopicPartition(topic, landed.partition)
        # Acknowledged with acks=all: the record is below the high watermark, readable by every consumer now.
        assert (await reader.end_offsets([tp]))[tp] == landed.offset + 1
        reader.assign([tp])
        reader.seek(tp, landed.offset)
        message = await asyncio.wait_for(reader.getone(), 10)
    finally:
        await reader.stop()
    assert (message.key, message.value) == (b"order-7", b'{"order_id": 7}')
    assert list(message.headers) == [("meshrun-event-id", b"e-7")]


async def test_concurrent_publishes_each_get_their_own_acknowledgement(kafka: KafkaTransport) -> None:
    topic = unique("concurrent")
    await kafka.ensure_topics([TopicConfig(topic, 3)])
    landed = await asyncio.gather(*(kafka.publish(topic, str(i).encode(), key=f"k{i % 7}".encode())
                                    for i in range(300)))
    for partition in range(3):
        offsets = sorted(r.offset for r in landed if r.partition == partition)
        assert offsets == list(range(len(offsets)))  # each record written once, none lost
    assert sum(1 for _ in landed) == 300


async def test_an_existing_topic_with_another_partition_count_is_a_clear_error(kafka: KafkaTransport) -> None:
    topic = unique("mismatch")
    await kafka._admin.admin.create_topics([NewTopic(topic, 2, 1)])
    with pytest.raises(TopicPartitionMismatch) as raised:
        await kafka.ensure_topics([TopicConfig(topic, 3)])
    assert (raised.value.existing, raised.value.configured) == (2, 3)
    assert f"set [topics.{topic}] partitions = 2" in str(raised.value)
    await kafka.ensure_topics([TopicConfig(topic, 2)])


async def test_a_replication_factor_the_cluster_cannot_reach_is_a_clear_error(kafka: KafkaTransport) -> None:
    topic = unique("replicated")
    with pytest.raises(TransportStateError, match=f"cannot create topic '{topic}'.*replication factor of 3"):
        await kafka.ensure_topics([TopicConfig(topic, 1, replication_factor=3)])


async def test_members_joining_and_leaving_hand_partitions_over_without_loss_or_duplicates(
        kafka: KafkaTransport) -> None:
    topic = unique("rebalance")
    group = unique("group")
    await kafka.ensure_topics([TopicConfig(topic, 4)])
    handled: Counter[bytes] = Counter()
    by_member: dict[str, list[bytes]] = {"a": [], "b": []}

    def member(name: str):  # type: ignore[no-untyped-def]
        async def handle(record: Record) -> None:
            handled[record.value] += 1
            by_member[name].append(record.value)
            await asyncio.sleep(0.002)  # slow enough that rebalances happen with handlers in flight

        return handle

    a = await kafka.subscribe(topic, group, member("a"), retry=RETRY, member="a")
    await a.wait_joined(30)
    published: list[bytes] = []
    keep_publishing = True

    async def publish_until_told() -> None:
        while keep_publishing:
            value = str(len(published)).encode()
            await kafka.publish(topic, value, key=b"k" + value)
            published.append(value)
            await asyncio.sleep(0.001)  # a steady stream rather than one burst, so it spans both rebalances

    publishing = asyncio.create_task(publish_until_told())
    await eventually(lambda: len(handled) >= 50, what="member a to handle 50 records")
    b = await kafka.subscribe(topic, group, member("b"), retry=RETRY, member="b")
    await eventually(lambda: a.assigned_partitions and b.assigned_partitions
                     and a.assigned_partitions | b.assigned_partitions == {0, 1, 2, 3}, what="a split of 4")
    await eventually(lambda: len(by_member["b"]) >= 20, what="member b to handle records")
    await a.stop(grace_period=10)
    await eventually(lambda: b.assigned_partitions == {0, 1, 2, 3}, what="b to take over every partition")
    handled_by_b = len(by_member["b"])
    await eventually(lambda: len(by_member["b"]) >= handled_by_b + 40, what="b to handle records after a left")
    keep_publishing = False
    await publishing
    await eventually(lambda: len(handled) == len(published), what=f"all {len(published)} records")
    await b.stop(grace_period=10)

    assert set(handled) == set(published)
    doubled = [v for v, n in handled.items() if n > 1]
    assert doubled == []
    assert by_member["a"] and by_member["b"]


async def test_a_partition_whose_handler_is_behind_stops_fetching_and_resumes_in_order(bootstrap: str) -> None:
    transport = kafka_transport(bootstrap, max_in_flight_per_partition=20, max_poll_records=10)
    await transport.start()
    try:
        topic = unique("backpressure")
        await transport.ensure_topics([TopicConfig(topic, 1)])
        await asyncio.gather(*(transport.publish(topic, str(i).encode()) for i in range(300)))
        handled: list[int] = []
        most_buffered = 0
        paused_seen = False

        async def slow(record: Record) -> None:
            nonlocal most_buffered, paused_seen
            [fetched] = sub._fetched.values()
            most_buffered = max(most_buffered, len(fetched.queue))
            paused_seen = paused_seen or fetched.paused
            handled.append(record.offset)
            await asyncio.sleep(0)

        sub = await transport.subscribe(topic, unique("group"), slow, retry=RETRY)
        await eventually(lambda: len(handled) == 300, what="300 records")
        assert handled == list(range(300))
        assert paused_seen
        assert most_buffered <= 20 + 10  # the bound, plus at most one fetched batch
    finally:
        await transport.stop()


async def test_a_rebalance_cancels_a_handler_stuck_past_the_grace_period_and_redelivers_its_record(
        bootstrap: str) -> None:
    # rebalance_timeout_ms 4 s: a revoked partition's handler gets half of it, 2 s, to finish.
    transport = kafka_transport(bootstrap, rebalance_timeout_ms=4000)
    await transport.start()
    try:
        topic = unique("stuck")
        group = unique("group")
        await transport.ensure_topics([TopicConfig(topic, 2)])
        stuck = asyncio.Event()
        got: dict[str, list[bytes]] = {"a": [], "b": []}

        async def hangs_on_p0(record: Record) -> None:
            got["a"].append(record.value)
            if record.partition == 0:
                stuck.set()
                await asyncio.Event().wait()

        async def works(record: Record) -> None:
            got["b"].append(record.value)

        a = await transport.subscribe(topic, group, hangs_on_p0, retry=RETRY, member="a")
        await a.wait_joined(30)
        p0 = next(k for i in itertools.count() if partition_for(k := f"k{i}".encode(), 2, itertools.count()) == 0)
        await transport.publish(topic, b"stuck", key=p0)
        await asyncio.wait_for(stuck.wait(), 30)
        b = await transport.subscribe(topic, group, works, retry=RETRY, member="b")
        await eventually(lambda: b.assigned_partitions and a.assigned_partitions, what="a split")
        if 0 in b.assigned_partitions:
            await eventually(lambda: got["b"] == [b"stuck"], what="b to get the stuck record again")
        else:  # a kept partition 0: its new worker starts over at the uncommitted record
            await eventually(lambda: got["a"] == [b"stuck", b"stuck"], what="a to get the stuck record again")
    finally:
        await transport.stop()


async def test_an_undeclared_dead_letter_topic_is_created_like_its_source(kafka: KafkaTransport) -> None:
    topic = unique("no-dlq-declared")
    await kafka.ensure_topics([TopicConfig(topic, 2)])

    async def poison(record: Record) -> None:
        raise PoisonEvent("cannot decode")

    sub = await kafka.subscribe(topic, unique("group"), poison, retry=RETRY)
    await sub.wait_joined(30)
    await kafka.publish(topic, b"?", key=b"k")
    dlq = dead_letter_topic(topic)

    async def dead_lettered() -> bool:
        try:
            [info] = await kafka.describe([dlq])
        except UnknownTopic:
            return False
        _, ends = await kafka._admin.log_offsets([TopicPartition(dlq, p) for p in range(info.partitions)])
        return info.partitions == 2 and sum(ends.values()) == 1

    await eventually(dead_lettered, what=f"{dlq} created with 2 partitions, holding the record")
    assert await kafka._admin.replication_factor(dlq) == 1


async def test_stop_returns_even_when_it_lands_as_a_commit_completes(bootstrap: str) -> None:
    # Commits every millisecond under a steady stream, stopped at varying moments: on Python 3.11 a cancellation
    # that arrived as a commit completed used to be lost, and stop() waited forever (about 1 stop in 30).
    transport = kafka_transport(bootstrap, commit_interval_ms=1)
    await transport.start()
    try:
        topic = unique("stop-race")
        await transport.ensure_topics([TopicConfig(topic, 1)])
        streaming = True

        async def stream() -> None:
            while streaming:
                await transport.publish(topic, b"x")

        publisher = asyncio.create_task(stream())

        handled = 0

        async def count(record: Record) -> None:
            nonlocal handled
            handled += 1

        for attempt in range(60):
            handled = 0
            sub = await transport.subscribe(topic, unique("group"), count, retry=RETRY)
            await eventually(lambda: handled > 0, what="records being handled and committed")
            await asyncio.sleep(0.002 * (attempt % 9))  # stop at a different moment of the commit cycle each time
            await asyncio.wait_for(sub.stop(grace_period=1), 10)
        streaming = False
        await publisher
    finally:
        await transport.stop()


async def test_live_members_are_read_from_the_broker(kafka: KafkaTransport) -> None:
    topic = unique("members")
    group = unique("group")
    await kafka.ensure_topics([TopicConfig(topic, 2)])

    async def ignore(record: Record) -> None:
        pass

    subs = [await kafka.subscribe(topic, group, ignore, retry=RETRY) for _ in range(2)]
    for sub in subs:
        await sub.wait_joined(30)

    async def members_now() -> int:
        return await kafka._admin.live_members(group)

    await eventually(lambda: _is(members_now(), 2), what="the broker to report 2 members")
    for sub in subs:
        await sub.stop(grace_period=5)
    assert await members_now() == 0
    assert await kafka._admin.live_members(unique("never-seen")) == 0


async def _is(count: "asyncio.Future[int] | Any", expected: int) -> bool:
    return bool(await count == expected)


async def test_start_without_a_reachable_broker_says_what_to_do() -> None:
    from tests.conftest import free_port

    port = free_port()
    transport = KafkaTransport(KafkaTransportConfig(f"127.0.0.1:{port}", {"request_timeout_ms": 1500}))
    with pytest.raises(BrokerUnavailable, match=r"cannot reach Kafka at 127\.0\.0\.1:\d+ .*scripts/kafka start"):
        await transport.start()
    await transport.stop()


async def test_a_transport_that_was_not_started_refuses_work_with_a_clear_error(bootstrap: str) -> None:
    transport = kafka_transport(bootstrap)
    with pytest.raises(TransportStateError, match="call `await transport.start"):
        await transport.publish("anything", b"{}")


def test_unknown_options_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(MeshrunError, match="unknown option.*lingr_ms.*known: .*linger_ms"):
        KafkaTransport(KafkaTransportConfig("127.0.0.1:9092", {"lingr_ms": 5}))


def test_tls_files_without_a_tls_protocol_are_refused() -> None:
    with pytest.raises(MeshrunError, match='security_protocol = "SSL"'):
        KafkaTransport(KafkaTransportConfig("127.0.0.1:9092", {"ssl_cafile": "ca.pem"}))


def test_the_partitioner_matches_the_in_memory_one_whatever_the_partition_order() -> None:
    from meshrun.transport.kafka import _KeyPartitioner

    partitioner = _KeyPartitioner()
    for i in range(50):
        key = f"customer-{i}".encode()
        assert partitioner(key, [3, 1, 0, 2], [2, 0]) == partition_for(key, 4, itertools.count())


async def test_a_publish_the_broker_refuses_for_good_is_retried_then_dead_lettered(kafka: KafkaTransport,
                                                                                   bootstrap: str) -> None:
    # The handler's output is larger than the output topic accepts: the record must not be handled again forever;
    # it follows the retry policy to the dead-letter topic, and the partition moves on to the next record.
    source, output, group = unique("refused-in"), unique("refused-out"), unique("refused-group")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(output, 1, 1, topic_configs={"max.message.bytes": "1000"})])
    finally:
        await admin.close()
    dlq = dead_letter_topic(source)
    await kafka.ensure_topics([TopicConfig(source, 1), TopicConfig(dlq, 1)])
    calls: list[int] = []

    async def publish_output(record: Record) -> list[asyncio.Future[Any]]:
        calls.append(record.offset)
        value = b"x" * 5000 if record.value == b"too-big" else b"fine"
        return [await kafka.send(output, value, key=record.key)]  # pipelined, as EventContext.publish does

    await kafka.publish(source, b"too-big", key=b"k")
    await kafka.publish(source, b"small", key=b"k")
    sub = await kafka.subscribe(source, group, publish_output, retry=RETRY)
    try:
        async def both_committed() -> bool:
            [info] = await kafka.describe([source])
            lags = info.groups.get(group)
            return bool(lags) and lags[0].committed == 2

        await eventually(both_committed, timeout=60, what="both records committed")
        _, ends = await kafka._admin.log_offsets([TopicPartition(dlq, 0), TopicPartition(output, 0)])
        assert ends[TopicPartition(dlq, 0)] == 1  # the refused record, dead-lettered once
        assert ends[TopicPartition(output, 0)] == 1  # the small record's output
        assert calls.count(0) == RETRY.max_attempts + 1  # the pipelined attempt, then the retry policy
        assert calls.count(1) in (1, 2)  # twice if its output shared the refused record's batch
    finally:
        await sub.stop(1.0)


async def test_describe_lists_dead_letter_topics_with_their_records_and_no_internal_topic(
        kafka: KafkaTransport) -> None:
    topic, group = unique("dead-letters-counted"), unique("group")
    dlq = dead_letter_topic(topic)
    await kafka.ensure_topics([TopicConfig(topic, 2), TopicConfig(dlq, 2)])
    for i in range(4):
        await kafka.publish(topic, b"poison" if i == 1 else b"fine", key=f"k{i}".encode())

    async def refuse_poison(record: Record) -> None:
        if record.value == b"poison":
            raise ValueError("cannot handle poison")

    sub = await kafka.subscribe(topic, group, refuse_poison, retry=RetryConfig(max_attempts=1))
    try:
        async def all_committed() -> bool:
            [info] = await kafka.describe([topic])
            return sum(p.committed or 0 for p in info.groups.get(group, [])) == 4

        await eventually(all_committed, timeout=60, what="the 4 records committed")
    finally:
        await sub.stop(1.0)
    infos = {i.name: i for i in await kafka.describe()}
    assert (infos[topic].records, infos[dlq].records) == (4, 1)
    assert "__consumer_offsets" in await kafka._admin.admin.list_topics()  # the group committed: it exists
    assert not [name for name in infos if name.startswith("__")]


def test_topics_json_counts_records_and_dead_letters_on_the_broker(bootstrap: str, tmp_path: Path) -> None:
    topic, group = unique("topics-cli"), unique("group")
    dlq = dead_letter_topic(topic)

    async def fill() -> None:
        transport = kafka_transport(bootstrap)
        await transport.start()
        try:
            await transport.ensure_topics([TopicConfig(topic, 2), TopicConfig(dlq, 2)])
            for i in range(3):
                await transport.publish(topic, b"fine", key=f"k{i}".encode())
            await transport.publish(dlq, b"poison", key=b"k9", headers=(("meshrun-dlq-group", group.encode()),))
            _, ends = await transport._admin.log_offsets([TopicPartition(topic, p) for p in range(2)])
            await transport._admin.commit_offsets(group, ends)
        finally:
            await transport.stop()

    asyncio.run(fill())
    config = tmp_path / "services.toml"
    config.write_text(f'[mesh]\ntransport = "kafka"\n[transport.kafka]\nbootstrap_servers = "{bootstrap}"\n'
                      '[topics.greetings]\n[services.greeter]\nmodule = "meshrun.examples.greeter"\n'
                      'group = "greeter-group"\n')
    result = subprocess.run([sys.executable, "-m", "meshrun", "topics", "--config", str(config), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    topics = {t["name"]: t for t in document["topics"]}
    assert document["transport"] == "kafka"
    assert (topics[topic]["records"], topics[dlq]["records"], topics[dlq]["groups"]) == (3, 1, {})
    assert [(p["committed"], p["lag"]) for p in topics[topic]["groups"][group]] == [
        (p["log_end"], 0) for p in topics[topic]["groups"][group]]
    assert not [name for name in topics if name.startswith("__")]

    plain = subprocess.run([sys.executable, "-m", "meshrun", "topics", "--config", str(config)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert [dlq, "2", "1"] in [line.split() for line in plain.stdout.splitlines()]
    assert f"! 1 dead-lettered record(s) of {topic}" in plain.stdout
