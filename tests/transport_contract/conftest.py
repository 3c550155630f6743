"""Every contract test runs once per transport: the in-memory one, Kafka on the real test broker, and a third one
that only the entry-point registry knows (tests/transport_contract/loopback.py), created from a services.toml."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import AsyncIterator

import pytest

from meshrun.config import parse_config
from meshrun.transport import create_transport
from meshrun.transport.base import Transport
from meshrun.transport.memory import InMemoryTransport
from tests.kafka.broker import kafka_bootstrap, kafka_transport


@pytest.fixture(scope="module")
def loopback_installed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Install the loopback transport's entry point as a distribution would: a .dist-info on sys.path."""
    site = tmp_path_factory.mktemp("site")
    info = site / "meshrun_loopback-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meshrun-loopback\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[meshrun.transports]\nloopback = tests.transport_contract.loopback:LoopbackTransport\n")
    sys.path.insert(0, str(site))
    yield
    sys.path.remove(str(site))


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka), "loopback"])
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    if request.param == "memory":
        t: Transport = InMemoryTransport()
    elif request.param == "kafka":
        t = kafka_transport(kafka_bootstrap())
    else:
        request.getfixturevalue("loopback_installed")
        config = parse_config({"mesh": {"transport": "loopback"}, "transport": {"loopback": {"retention": 2000}},
                               "services": {"greeter": {"module": "meshrun.examples.greeter"}}},
                              str(Path("contract.toml")))
        t = create_transport(config)
        assert type(t).__name__ == "LoopbackTransport" and t.in_process
    await t.start()
    yield t
    await t.stop()
