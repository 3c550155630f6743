"""scripts/demo as the README tells users to run it, on both transports."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.kafka.broker import kafka_bootstrap

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_PORTS = (9000, 8081, 8083, 8084, 8085, 8090)


def shipped_ports_free() -> bool:
    for port in SHIPPED_PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def run_demo(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    if not shipped_ports_free():
        message = f"a service already listens on one of the shipped ports {SHIPPED_PORTS}; stop it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(["bash", str(ROOT / "scripts" / "demo"), "--orders", "3", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, env={**os.environ, **env})


def check_demo_output(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("-> HTTP 202") == 3
    assert result.stdout.count("📩 alice notified with invoice INV-") == 3
    trail = result.stdout.split("== trail of order")[1]
    for event in ("order_accepted", "inventory_reserved", "order_confirmation_email", "order_counted",
                  "invoice_issued", "notification_sent", "user_notified"):
        assert event in trail
    assert "== all 3 orders notified" in result.stdout


def test_demo_on_the_in_memory_transport():
    check_demo_output(run_demo())


@pytest.mark.kafka
def test_demo_on_kafka():
    bootstrap = kafka_bootstrap()
    check_demo_output(run_demo("--transport", "kafka", MESHRUN_KAFKA_BOOTSTRAP_SERVERS=bootstrap))
