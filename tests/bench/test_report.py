"""The benchmark's figures and how they are shown: percentiles, ratios to the floor, the table, the JSON."""
from __future__ import annotations

import io

import orjson

from meshrun.bench.report import (
    Latency,
    PipelineFigures,
    ProcessMemory,
    Progress,
    Report,
    render_table,
)


def figures(name: str, per_second: float, p99: float) -> PipelineFigures:
    return PipelineFigures(name=name, mode="closed", latency_from="send", sent=100, accepted=100, notified=100,
                           accepted_per_second=per_second, notified_per_second=per_second,
                           latency_ms=Latency(1.0, 2.0, p99, p99 + 1, 100), ready_seconds=0.5,
                           memory=[ProcessMemory("mesh", 1, 40.0, 50.0)])


def report(raw: PipelineFigures | None = None) -> Report:
    return Report(command="meshrun bench", transport="memory", config="services.toml",
                  environment={"commit": "abc1234", "nproc": 2, "cpu": "cpu", "python": "3.11"},
                  mesh_log={"format": "json", "level": "info"}, meshrun=figures("meshrun", 1500.0, 10.0),
                  token_endpoint_per_second=800.0, token_verification_us={"amortised_us": 1.5, "first_us": 900.0},
                  machine_tokens_fetched={"during_run": 0, "total": 1}, raw=raw)


def test_percentiles_use_the_nearest_rank_in_milliseconds():
    latency = Latency.of([i / 1000 for i in range(1, 101)])  # 1 ms .. 100 ms
    assert latency == Latency(p50=50.0, p95=95.0, p99=99.0, max=100.0, samples=100)
    assert Latency.of([]) is None


def test_ratios_divide_meshrun_by_the_floor():
    ratios = report(raw=figures("raw", 3000.0, 5.0)).ratios()
    assert ratios is not None
    assert ratios["notified_per_second"] == 0.5
    assert ratios["latency_p99"] == 2.0
    assert ratios["rss_after_mb"] == 1.0
    assert report().ratios() is None


def test_the_table_shows_the_floor_and_ratios_only_when_measured():
    alone = render_table(report())
    assert "raw floor" not in alone and "orders notified end to end per s" in alone
    compared = render_table(report(raw=figures("raw", 3000.0, 5.0)))
    assert "meshrun/raw" in compared and "0.50x" in compared


def test_json_holds_the_same_figures_and_the_ratios():
    data = orjson.loads(orjson.dumps(report(raw=figures("raw", 3000.0, 5.0)).to_json()))
    assert data["meshrun"]["notified_per_second"] == 1500.0
    assert data["raw"]["latency_ms"]["p99"] == 5.0
    assert data["ratio_to_raw"]["notified_per_second"] == 0.5
    assert data["report_version"] == 1


def test_progress_draws_only_on_a_terminal():
    silent = io.StringIO()
    Progress(silent).update("meshrun", 5, 10)
    assert silent.getvalue() == ""
    shown = io.StringIO()
    progress = Progress(shown, enabled=True)
    progress.update("meshrun", 5, 10, "running")
    progress.clear()
    assert shown.getvalue().startswith("\rmeshrun") and "5/10" in shown.getvalue()
