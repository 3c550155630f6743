"""The options of `[transport.kafka]`, declared once: their types, which client each goes to, and what it does.

Not the routing into aiokafka's arguments (`kafka_options`) nor the reading of services.toml (`meshrun.config`):
both read this table, so the options the file accepts and those the transport uses cannot drift apart again.
Imports nothing heavy: `meshrun check` reads it without loading the Kafka client.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Goes(enum.Enum):
    """Which client an option configures."""

    CONNECTION = "connection"  # meshrun's own: where the cluster is
    EVERY_CLIENT = "every client"  # producer, consumers and admin take it as it is
    TLS_FILE = "tls file"  # becomes part of the TLS context
    PRODUCER = "producer"
    CONSUMER = "consumer"
    MESHRUN = "meshrun"  # meshrun's own tuning, not passed to aiokafka


@dataclass(frozen=True, slots=True)
class KafkaOption:
    name: str
    kind: type  # str, int or float (seconds); env MESHRUN_KAFKA_<NAME> is converted with it
    goes: Goes
    doc: str


KAFKA_OPTIONS: tuple[KafkaOption, ...] = (
    KafkaOption("bootstrap_servers", str, Goes.CONNECTION, "comma-separated host:port list of brokers"),
    KafkaOption("client_id", str, Goes.MESHRUN, "prefix of the client ids the broker sees"),
    KafkaOption("security_protocol", str, Goes.EVERY_CLIENT, "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    KafkaOption("sasl_mechanism", str, Goes.EVERY_CLIENT, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    KafkaOption("sasl_plain_username", str, Goes.EVERY_CLIENT, "the SASL user"),
    KafkaOption("sasl_plain_password", str, Goes.EVERY_CLIENT, "the SASL password (put it in the environment)"),
    KafkaOption("request_timeout_ms", int, Goes.EVERY_CLIENT, "how long a request, and start-up, may take"),
    KafkaOption("ssl_cafile", str, Goes.TLS_FILE, "CA bundle to trust"),
    KafkaOption("ssl_certfile", str, Goes.TLS_FILE, "client certificate for mutual TLS"),
    KafkaOption("ssl_keyfile", str, Goes.TLS_FILE, "client key for mutual TLS"),
    KafkaOption("linger_ms", int, Goes.PRODUCER, "producer batching delay"),
    KafkaOption("session_timeout_ms", int, Goes.CONSUMER, "when a silent member is dropped from its group"),
    KafkaOption("heartbeat_interval_ms", int, Goes.CONSUMER, "how often members check in"),
    KafkaOption("max_poll_records", int, Goes.CONSUMER, "records per fetch"),
    KafkaOption("rebalance_timeout_ms", int, Goes.CONSUMER, "how long a rebalance waits for members to rejoin"),
    KafkaOption("max_partition_fetch_bytes", int, Goes.CONSUMER, "bytes fetched per partition"),
    KafkaOption("fetch_max_bytes", int, Goes.CONSUMER, "bytes fetched per request"),
    KafkaOption("fetch_min_bytes", int, Goes.CONSUMER, "a fetch is answered once this many bytes are there"),
    KafkaOption("fetch_max_wait_ms", int, Goes.CONSUMER, "... or after this long"),
    KafkaOption("commit_interval_ms", int, Goes.MESHRUN, "how often a member commits what its handlers finished"),
    KafkaOption("max_in_flight_per_partition", int, Goes.MESHRUN,
                "records fetched ahead of a partition's handler before the partition stops fetching"),
    KafkaOption("max_unacked_per_partition", int, Goes.MESHRUN,
                "handled records of a partition whose publishes may await their acknowledgement"),
    KafkaOption("publish_timeout", float, Goes.MESHRUN,
                "seconds a publish waits for its acknowledgement before it fails as unavailable"),
    KafkaOption("stall_timeout", float, Goes.MESHRUN,
                "seconds a member may leave newer records of its partition unfetched before it rejoins its group"),
)


def options_going_to(goes: Goes) -> tuple[str, ...]:
    return tuple(option.name for option in KAFKA_OPTIONS if option.goes is goes)
