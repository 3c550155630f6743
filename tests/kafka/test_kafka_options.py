"""How `[transport.kafka]` options reach the aiokafka clients: meshrun's defaults, and the user's overrides."""
from __future__ import annotations

from meshrun.config import KafkaTransportConfig, parse_config
from meshrun.transport.kafka_options import KafkaClientOptions


def test_consumers_fetch_small_batches_by_default_and_the_config_can_change_that() -> None:
    default = KafkaClientOptions.from_config(KafkaTransportConfig("127.0.0.1:9092", {}))
    assert default.consumer["max_partition_fetch_bytes"] == 256 * 1024
    assert default.consumer["max_poll_records"] == 500
    assert default.max_unacked_per_partition == 256
    tuned = KafkaClientOptions.from_config(KafkaTransportConfig("127.0.0.1:9092", {
        "max_partition_fetch_bytes": 1 << 20, "fetch_max_bytes": 8 << 20, "max_unacked_per_partition": 32}))
    assert tuned.consumer["max_partition_fetch_bytes"] == 1 << 20
    assert tuned.consumer["fetch_max_bytes"] == 8 << 20
    assert tuned.max_unacked_per_partition == 32
    assert "max_partition_fetch_bytes" not in tuned.producer


def test_fetches_wait_briefly_for_a_batch_by_default_and_can_answer_at_the_first_record() -> None:
    default = KafkaClientOptions.from_config(KafkaTransportConfig("127.0.0.1:9092", {}))
    assert default.consumer["fetch_min_bytes"] == 64 * 1024
    assert default.consumer["fetch_max_wait_ms"] == 5
    eager = KafkaClientOptions.from_config(KafkaTransportConfig("127.0.0.1:9092", {
        "fetch_min_bytes": 1, "fetch_max_wait_ms": 500}))
    assert (eager.consumer["fetch_min_bytes"], eager.consumer["fetch_max_wait_ms"]) == (1, 500)
    assert "fetch_min_bytes" not in eager.producer


def test_every_option_the_file_accepts_is_one_the_transport_uses_and_back() -> None:
    """One declaration (kafka_settings) feeds both: rebalance_timeout_ms once worked in the transport while the
    file refused it as an unknown key."""
    from meshrun.config import kafka_option_types
    from meshrun.transport.kafka_options import KNOWN_OPTIONS

    assert set(kafka_option_types()) - {"bootstrap_servers"} == KNOWN_OPTIONS
    config = parse_config({"transport": {"kafka": {"rebalance_timeout_ms": 90_000, "publish_timeout": 2}},
                           "services": {"g": {"module": "meshrun.examples.greeter"}}})
    options = KafkaClientOptions.from_config(config.kafka)
    assert options.consumer["rebalance_timeout_ms"] == 90_000 and options.revoke_grace_period == 45.0
    assert options.publish_timeout == 2.0
