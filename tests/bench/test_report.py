"""The benchmark's figures and how they are shown: percentiles, ratios to the floor, the table, the JSON."""
from __future__ import annotations

import io

import orjson

from meshrun_bench.report import (
    Latency,
    PipelineFigures,
    ProcessMemory,
    Progress,
    Report,
    median_of_rounds,
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
    assert data["report_version"] == 2


def measured_round(per_second: float, raw_per_second: float | None, cpu_ms: float, lost: int = 0) -> Report:
    """One round's report: meshrun at `per_second` and `cpu_ms` per order, the floor (if any) at 0.2 ms."""
    raw = None
    if raw_per_second is not None:
        raw = figures("raw", raw_per_second, 5.0)
        raw.cpu = {"pipeline_ms_per_order": 0.2}
    measured = report(raw=raw)
    measured.meshrun = figures("meshrun", per_second, 10.0)
    measured.meshrun.cpu, measured.meshrun.lost = {"pipeline_ms_per_order": cpu_ms}, lost
    return measured


def test_several_rounds_report_the_median_ratio_round_and_every_round():
    # Meshrun's fastest round (2) has the lowest ratio: the floor drifted more; the median ratio is round 3's.
    rounds = [measured_round(1000.0, 2000.0, 0.30), measured_round(1200.0, 3000.0, 0.24, lost=1),
              measured_round(900.0, 2000.0, 0.36)]
    rounds[0].notes.append("token endpoint: 1 of 10 requests failed")
    chosen = median_of_rounds(rounds)
    assert chosen is rounds[2] and chosen.median_round == 3
    assert [x.notified_ratio for x in chosen.rounds] == [0.5, 0.4, 0.45]
    assert [x.cpu_ratio for x in chosen.rounds] == [1.5, 1.2, 1.8]
    assert chosen.lost_and_doubled() == (1, 0)  # round 2's loss, though the report shows round 3
    assert "round 1: token endpoint: 1 of 10 requests failed" in chosen.notes

    data = orjson.loads(orjson.dumps(chosen.to_json()))
    assert data["meshrun"]["notified_per_second"] == 900.0 and data["median_round"] == 3
    assert [x["round"] for x in data["rounds"]] == [1, 2, 3]
    assert data["rounds"][1] == {"round": 2, "notified_per_second": 1200.0, "pipeline_cpu_ms_per_order": 0.24,
                                 "lost": 1, "doubled": 0, "raw_notified_per_second": 3000.0,
                                 "raw_pipeline_cpu_ms_per_order": 0.2, "notified_ratio": 0.4, "cpu_ratio": 1.2}
    summary = data["rounds_summary"]
    assert (summary["rounds"], summary["median_round"], summary["lost"], summary["doubled"]) == (3, 3, 1, 0)
    assert summary["notified_ratio"] == {"median": 0.45, "min": 0.4, "max": 0.5}
    assert summary["cpu_ratio"] == {"median": 1.5, "min": 1.2, "max": 1.8}

    table = render_table(chosen)
    assert "figures of round 3 of 3, the median by end-to-end meshrun/raw ratio" in table
    assert "end-to-end ratio: median 0.45x, min-max 0.40x - 0.50x" in table
    assert "CPU per order ratio: median 1.50x, min-max 1.20x - 1.80x" in table
    assert "events lost / doubled over the 3 rounds: 1 / 0" in table
    [median_row] = [line for line in table.splitlines() if line.startswith("3 (median)")]
    assert median_row.split()[2:] == ["900.0", "0.360", "2,000.0", "0.200", "0.45x", "1.80x"]


def test_without_the_floor_the_median_round_is_by_meshruns_rate():
    # Two rounds: the lower of the middle two, the less flattering one.
    chosen = median_of_rounds([measured_round(1000.0, None, 0.30), measured_round(1100.0, None, 0.28)])
    assert chosen.median_round == 1
    summary = chosen.rounds_summary()
    assert summary is not None and "notified_ratio" not in summary
    assert summary["notified_per_second"] == {"median": 1050.0, "min": 1000.0, "max": 1100.0}
    assert "meshrun end to end per s: median 1,050.0, min-max 1,000.0 - 1,100.0" in render_table(chosen)


def test_one_round_adds_no_rounds_section_to_the_table():
    chosen = median_of_rounds([measured_round(1000.0, 2000.0, 0.30)])
    assert chosen.median_round == 1 and len(chosen.rounds) == 1
    assert "round" not in render_table(chosen)
    assert chosen.to_json()["rounds_summary"]["notified_ratio"] == {"median": 0.5, "min": 0.5, "max": 0.5}


def test_progress_draws_only_on_a_terminal():
    silent = io.StringIO()
    Progress(silent).update("meshrun", 5, 10)
    assert silent.getvalue() == ""
    shown = io.StringIO()
    progress = Progress(shown, enabled=True)
    progress.update("meshrun", 5, 10, "running")
    progress.clear()
    assert shown.getvalue().startswith("\rmeshrun") and "5/10" in shown.getvalue()
