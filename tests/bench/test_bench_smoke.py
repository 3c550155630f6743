"""`meshrun bench` as a user runs it, once, with a small N: the real mesh in a process of its own, real tokens,
real HTTP. It asserts what must always hold (nothing lost, nothing doubled, a well-formed report), never timings.
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
from tests.conftest import ROOT, pipeline_data, write_toml

NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))


def run_bench(tmp_path: Path, ports: Any, *args: str, transport: str = "memory", suffix: str = "",
              kafka: dict[str, Any] | None = None) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    data = pipeline_data(tmp_path, ports, transport, suffix)
    if kafka is not None:
        data["transport"]["kafka"] = kafka
        for service in data["services"].values():
            if "group" in service:  # new groups start at the end, not at every order earlier tests left on the broker
                service["start_from"] = "latest"
    config = write_toml(tmp_path / "services.toml", data)
    out = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, "-m", "meshrun", "bench", "--config", str(config), "--orders", "50", "--concurrency", "8",
         "--warmup", "10", "--token-seconds", "0.2", "--json", str(out), *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(out.read_text()), result


def assert_pipeline_figures(figures: dict[str, Any], name: str, processes: int = 1) -> None:
    assert figures["name"] == name
    assert (figures["sent"], figures["accepted"], figures["notified"]) == (50, 50, 50)
    assert figures["lost"] == 0
    assert figures["doubled"] == 0 and figures["doubled_in_records"] == 0 and figures["doubled_from_stats"] == 0
    assert figures["rejected"] == {}
    for key in ("accepted_per_second", "notified_per_second", "elapsed_seconds", "ready_seconds"):
        assert isinstance(figures[key], NUMBER) and figures[key] > 0, key
    latency = figures["latency_ms"]
    assert set(latency) == {"p50", "p95", "p99", "max", "samples"} and latency["samples"] == 50
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    cpu = figures["cpu"]
    assert isinstance(cpu["pipeline_ms_per_order"], NUMBER) and isinstance(cpu["load_generator_ms_per_order"], NUMBER)
    assert isinstance(cpu["other_processes_cores"], NUMBER)
    assert len(figures["memory"]) == processes
    for process in figures["memory"]:
        assert isinstance(process["pid"], int)
        assert isinstance(process["idle_mb"], NUMBER) and isinstance(process["after_mb"], NUMBER)


def assert_report(report: dict[str, Any], transport: str, processes: int = 1) -> None:
    assert report["report_version"] == 2 and report["transport"] == transport
    assert report["environment"]["nproc"] >= 1 and isinstance(report["environment"]["python"], str)
    assert report["mesh_log"]["format"] == "json" and report["mesh_log"]["level"] == "info"
    assert_pipeline_figures(report["meshrun"], "meshrun", processes)
    assert isinstance(report["token_endpoint_per_second"], NUMBER) and report["token_endpoint_per_second"] > 0
    verification = report["token_verification_us"]
    assert all(isinstance(verification[k], NUMBER) for k in ("amortised_us", "uncached_us", "first_us"))
    tokens = report["machine_tokens_fetched"]
    assert isinstance(tokens["during_run"], int) and tokens["total"] >= 1


def test_bench_drives_the_in_memory_mesh_and_loses_nothing(tmp_path, ports):
    report, result = run_bench(tmp_path, ports, "--compare-raw")
    assert_report(report, "memory")
    assert_pipeline_figures(report["raw"], "raw")
    assert set(report["ratio_to_raw"]) >= {"accepted_per_second", "notified_per_second", "latency_p99"}
    assert "orders notified end to end per s" in result.stdout and "meshrun/raw" in result.stdout


def test_rounds_repeat_the_mesh_and_the_floor_and_report_each_round(tmp_path, ports):
    report, result = run_bench(tmp_path, ports, "--compare-raw", "--rounds", "2")
    assert_report(report, "memory")
    assert_pipeline_figures(report["raw"], "raw")
    assert [r["round"] for r in report["rounds"]] == [1, 2] and report["median_round"] in (1, 2)
    assert all((r["lost"], r["doubled"]) == (0, 0) for r in report["rounds"])
    summary = report["rounds_summary"]
    assert (summary["rounds"], summary["lost"], summary["doubled"]) == (2, 0, 0)
    assert summary["notified_ratio"]["min"] <= summary["notified_ratio"]["median"] <= summary["notified_ratio"]["max"]
    assert "round 1/2" in result.stderr and "round 2/2" in result.stderr
    assert "e2e ratio" in result.stdout and "end-to-end ratio: median" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--rounds", "3", "--attach"], "--rounds and --attach exclude each other"),
    (["--rounds", "3", "--accept-only", "--transport", "kafka"], "--rounds and --accept-only exclude each other"),
    (["--rounds", "0"], "0 is not in the range 1<=x<=20"),
    (["--rounds", "21"], "21 is not in the range 1<=x<=20"),
])
def test_rounds_are_refused_where_they_mean_nothing(args, message):
    # Refused while parsing the flags, before any config is read or anything started.
    result = CliRunner().invoke(bench, ["--config", "missing.toml", *args])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.kafka
@pytest.mark.slow
def test_bench_drives_the_kafka_mesh_and_loses_nothing(tmp_path, ports):
    from tests.kafka.broker import TEST_OPTIONS, kafka_bootstrap, unique

    bootstrap = kafka_bootstrap()  # skips without a broker; fails with CI=true
    report, _ = run_bench(tmp_path, ports, transport="kafka", suffix="-" + unique("bench"),
                          kafka={"bootstrap_servers": bootstrap, **TEST_OPTIONS})
    assert_report(report, "kafka")
