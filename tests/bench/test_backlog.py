"""A Kafka benchmark run warns when the pipeline's consumer groups start behind (a backlog an earlier run left,
say one of --accept-only): that run would measure the backlog too."""
from __future__ import annotations

import dataclasses

import pytest
from aiokafka import TopicPartition

from meshrun.config import KafkaTransportConfig, ServiceConfig, TopicConfig, parse_config
from meshrun.transport.kafka_admin import KafkaAdmin
from meshrun.transport.kafka_options import KafkaClientOptions
from meshrun_bench.probes import group_backlog
from meshrun_bench.runner import _backlog_note
from tests.kafka.broker import TEST_OPTIONS, kafka_bootstrap, kafka_transport, unique

pytestmark = pytest.mark.kafka


async def test_groups_behind_on_the_broker_are_reported_with_how_far() -> None:
    bootstrap = kafka_bootstrap()
    topic, behind, caught_up, never = unique("backlog"), unique("behind"), unique("caught-up"), unique("never")
    transport = kafka_transport(bootstrap)
    await transport.start()
    try:
        await transport.ensure_topics([TopicConfig(topic, 1)])
        for _ in range(5):
            await transport.publish(topic, b"{}", key=b"k")
    finally:
        await transport.stop()
    kafka = KafkaTransportConfig(bootstrap, dict(TEST_OPTIONS))
    admin = KafkaAdmin(KafkaClientOptions.from_config(kafka))
    await admin.start()
    try:
        await admin.commit_offsets(behind, {TopicPartition(topic, 0): 2})
        await admin.commit_offsets(caught_up, {TopicPartition(topic, 0): 5})
    finally:
        await admin.close()

    assert await group_backlog(kafka, [behind, caught_up, never], [topic]) == {behind: 3}

    config = parse_config({"mesh": {"transport": "kafka"}, "transport": {"kafka": {"bootstrap_servers": bootstrap}},
                           "topics": {topic: {"partitions": 1}},
                           "services": {"counter": {"module": "tests.runtime.sample_services", "group": behind}}},
                          "services.toml")
    note = await _backlog_note(config)
    assert note is not None and f"{behind} 3" in note and "scripts/kafka start --fresh" in note
    config = dataclasses.replace(config, services={"counter": ServiceConfig("counter", "m", group=caught_up)})
    assert await _backlog_note(config) is None
