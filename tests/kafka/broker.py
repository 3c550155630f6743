"""The real broker the Kafka tests run against, and small helpers those tests share.

scripts/test starts the broker (scripts/kafka) and exports MESHRUN_TEST_KAFKA_BOOTSTRAP; without one the Kafka
tests are skipped locally and fail on CI (CI=true), where a missing broker is a broken build, not a pass.
"""
from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import pytest

from meshrun.config import KafkaTransportConfig
from meshrun.transport.kafka import KafkaTransport

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
# Test members notice a rebalance within 200 ms instead of aiokafka's 3 s heartbeat; the broker's minimum session
# timeout is 6 s.
TEST_OPTIONS: dict[str, Any] = {"heartbeat_interval_ms": 200, "session_timeout_ms": 6000, "commit_interval_ms": 50}


def kafka_bootstrap() -> str:
    """The test broker's address; skips the test (fails it when CI=true) if nothing answers there."""
    bootstrap = os.environ.get("MESHRUN_TEST_KAFKA_BOOTSTRAP", DEFAULT_BOOTSTRAP)
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            pass
    except OSError as exc:
        message = (f"no Kafka broker at {bootstrap} ({exc}): run `scripts/kafka start --port {port}` and set "
                   f"MESHRUN_TEST_KAFKA_BOOTSTRAP={bootstrap}, or run the whole suite with scripts/test")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return bootstrap


def kafka_transport(bootstrap: str, **options: Any) -> KafkaTransport:
    return KafkaTransport(KafkaTransportConfig(bootstrap, {**TEST_OPTIONS, **options}))


def unique(prefix: str) -> str:
    """A topic or group name no other test (or earlier run against the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

