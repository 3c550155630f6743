"""`meshrun bench --accept-only`: the Order service alone on Kafka, counted against the broker's own records.

Asserts what must always hold (nothing lost, nothing doubled, every accepted order one record on order-events, a
well-formed report) and the refusals, never timings.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshrun_bench.cli import bench
from meshrun_bench.load import OrderRun
from meshrun_bench.report import Report, render_table
from tests.conftest import ROOT, pipeline_data, write_toml

ORDERS = 200
WARMUP = 20
NUMBER = (int, float)


def bench_config(tmp_path: Path, ports: Any, transport: str = "memory", kafka: dict[str, Any] | None = None,
                 suffix: str = "") -> Path:
    """The shipped services.toml on free ports (and, for Kafka, the test broker with suffixed groups)."""
    data = pipeline_data(tmp_path, ports, transport, suffix)
    if kafka is not None:
        data["transport"]["kafka"] = kafka
    return write_toml(tmp_path / "services.toml", data)


def run_accept_only(tmp_path: Path, config: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "meshrun", "bench", "--config", str(config), "--accept-only", "--orders", str(ORDERS),
         "--concurrency", "16", "--warmup", str(WARMUP), "--token-seconds", "0", "--json", str(out), *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(out.read_text()), result.stdout


def cells(table: str, label: str) -> list[str]:
    """The cells of the table's row named `label`."""
    [line] = [line for line in table.splitlines() if line.startswith(label)]
    return line[len(label):].split()


def assert_accept_only_figures(figures: dict[str, Any], processes: list[str]) -> None:
    assert figures["accept_only"] is True and figures["latency_to"] == "answer"
    assert (figures["sent"], figures["accepted"], figures["appended"]) == (ORDERS, ORDERS, ORDERS)
    assert (figures["lost"], figures["doubled"], figures["rejected"]) == (0, 0, {})
    assert figures["notified"] == 0 and figures["notified_per_second"] is None
    for key in ("accepted_per_second", "elapsed_seconds", "ready_seconds"):
        assert isinstance(figures[key], NUMBER) and figures[key] > 0, key
    latency = figures["latency_ms"]
    assert latency["samples"] == ORDERS and latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert isinstance(figures["cpu"]["pipeline_ms_per_order"], NUMBER)
    assert [m["label"] for m in figures["memory"]] == processes
    for process in figures["memory"]:
        assert isinstance(process["idle_mb"], NUMBER) and isinstance(process["after_mb"], NUMBER)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize(("workers", "processes"), [
    (1, ["auth,orders"]),
    # The workers are children of `meshrun up --workers 2`: their memory and CPU are measured, not just the parent's.
    (2, ["auth", "orders (parent)", "orders worker 1", "orders worker 2"]),
])
def test_accept_only_counts_every_accepted_order_once_on_the_broker(tmp_path, ports, workers, processes):
    from tests.kafka.broker import TEST_OPTIONS, kafka_bootstrap, unique

    bootstrap = kafka_bootstrap()  # skips without a broker; fails with CI=true
    config = bench_config(tmp_path, ports, "kafka", {"bootstrap_servers": bootstrap, **TEST_OPTIONS},
                          suffix="-" + unique("accept"))
    report, table = run_accept_only(tmp_path, config, "--orders-workers", str(workers))
    assert report["report_version"] == 2 and report["transport"] == "kafka"
    assert_accept_only_figures(report["meshrun"], processes)
    assert len(report["mesh_log"]["mesh_ready_reported_seconds"]) == (1 if workers == 1 else 2)
    assert report["machine_tokens_fetched"] is None and report["token_endpoint_per_second"] is None
    assert isinstance(report["token_verification_us"]["amortised_us"], NUMBER)
    assert "accept only" in table.splitlines()[0]
    assert cells(table, "records appended to order-events") == [f"{ORDERS:,}"]
    assert cells(table, "orders notified end to end per s") == ["-"]


def refusal(tmp_path: Path, ports: Any, *args: str) -> str:
    """The error `meshrun bench` stops with (exit status 2) before starting anything."""
    config = bench_config(tmp_path, ports)
    result = CliRunner().invoke(bench, ["--config", str(config), "--orders", "10", *args])
    assert result.exit_code == 2, result.output
    return result.output


def test_accept_only_needs_the_kafka_transport(tmp_path, ports):
    assert "add --transport kafka" in refusal(tmp_path, ports, "--accept-only")


@pytest.mark.parametrize(("flags", "message"), [
    (["--compare-raw"], "--accept-only and --compare-raw exclude each other"),
    (["--split", "auth,orders/users"], "drop --split / --attach"),
    (["--attach"], "drop --split / --attach"),
])
def test_accept_only_refuses_what_it_cannot_measure(tmp_path, ports, flags, message):
    assert message in refusal(tmp_path, ports, "--accept-only", "--transport", "kafka", *flags)


def test_orders_workers_needs_accept_only(tmp_path, ports):
    assert "--orders-workers only applies with --accept-only" in refusal(tmp_path, ports, "--orders-workers", "2")


def test_lost_and_doubled_compare_the_accepted_orders_with_the_records_appended():
    run = OrderRun("a", 3, "closed")
    run.status = [202, 202, 503]
    run.accepted = 2
    run.start, run.answered_at = [1.0, 1.0, 1.0], [1.010, 1.020, 1.5]
    missing, extra = run.accept_figures("m", appended=1), run.accept_figures("m", appended=3)
    assert (missing.lost, missing.doubled, extra.lost, extra.doubled) == (1, 0, 0, 1)
    assert missing.rejected == {"503": 1}
    assert missing.latency_ms is not None and missing.latency_ms.samples == 2 and missing.latency_ms.max == 20.0


def test_the_table_says_accept_only_and_shows_no_end_to_end_figures():
    run = OrderRun("a", 2, "closed")
    run.status, run.accepted, run.sent = [202, 202], 2, 2
    run.first_start, run.last_accept = 1.0, 2.0
    figures = run.accept_figures("meshrun", appended=2)
    report = Report(command="meshrun bench --accept-only", transport="kafka", config="services.toml",
                    environment={"commit": "abc1234", "nproc": 2}, mesh_log={}, meshrun=figures)
    table = render_table(report)
    assert "closed loop, accept only" in table.splitlines()[0]
    assert cells(table, "orders notified end to end per s") == ["-"]
    assert cells(table, "records appended to order-events") == ["2"]
    assert cells(table, "redeliveries absorbed (idempotency)") == ["-"]
    assert cells(table, "machine tokens fetched (run / total)") == ["-", "/", "-"]
    assert cells(table, "latency p99 (ms, from send to answer)") == ["0.00"]  # answered at the send time here
