"""`python -m meshrun_bench.consumers`: the transport's CPU per published record with several groups on Kafka.

Asserts that a run publishes at its rate, that every group reads what was published, and the option parsing; never
timings.
"""
from __future__ import annotations

import argparse

import pytest

from meshrun_bench.consumers import measure, parse_options, run
from tests.kafka.broker import kafka_bootstrap


def test_compared_options_are_parsed_as_integers_where_they_are_integers() -> None:
    assert parse_options("fetch_min_bytes=65536, fetch_max_wait_ms=10,client_id=bench") == {
        "fetch_min_bytes": 65536, "fetch_max_wait_ms": 10, "client_id": "bench"}
    assert parse_options("") == {}
    with pytest.raises(argparse.ArgumentTypeError, match="expected key=value, got 'fetch_min_bytes'"):
        parse_options("fetch_min_bytes")


@pytest.mark.kafka
async def test_a_run_publishes_at_its_rate_and_every_group_reads_what_was_published() -> None:
    result = await measure(kafka_bootstrap(), {}, groups=2, rate=400, seconds=1.5, warmup=0.5, max_batch=50)
    # The publisher keeps to the clock (what fell due while it was held up goes out at its next tick).
    assert 500 <= result.published <= 700
    # Both groups read during the window: at least one group's worth even if both lag behind by half of it, and
    # never more than what was published, give or take a backlog from the warm-up.
    assert result.published <= result.handled <= 2 * (result.published + 0.5 * 400)
    assert result.cpu_us_per_record > 0 and result.cores > 0
    assert result.options == "defaults"


@pytest.mark.kafka
async def test_each_round_measures_the_defaults_then_the_compared_options(capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    args = argparse.Namespace(bootstrap=kafka_bootstrap(), groups=1, rate=200, seconds=0.5, warmup=0.2, rounds=1,
                              max_batch=10, compare={"fetch_max_wait_ms": 10})
    results = await run(args)
    assert [r.options for r in results] == ["defaults", "fetch_max_wait_ms=10"]
    printed = capsys.readouterr().out
    assert "round 1: defaults" in printed and "median of 1: fetch_max_wait_ms=10" in printed
