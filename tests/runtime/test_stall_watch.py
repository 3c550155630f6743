"""The stall rule: a partition with records past its position that its member does not fetch for stall_timeout."""
from __future__ import annotations

from meshrun.transport.stall import PartitionProgress, StallWatch


def p(partition: int = 0, fetched: int = 10, log_end: int = 20, busy: bool = False) -> PartitionProgress:
    return PartitionProgress(partition, fetched, log_end, busy)


def test_a_partition_behind_and_not_fetching_for_the_timeout_is_stalled() -> None:
    watch = StallWatch(timeout=30)
    assert watch.observe([p()], now=0) == []
    assert watch.observe([p()], now=29.9) == []
    [stall] = watch.observe([p()], now=30)
    assert (stall.partition, stall.fetched, stall.log_end, stall.seconds) == (0, 10, 20, 30)
    assert "records 10..19 not fetched for 30s" in stall.describe()


def test_a_fetched_record_starts_the_clock_again() -> None:
    watch = StallWatch(timeout=30)
    watch.observe([p(fetched=10)], now=0)
    watch.observe([p(fetched=11, log_end=40)], now=25)
    assert watch.observe([p(fetched=11, log_end=40)], now=50) == []
    assert watch.observe([p(fetched=11, log_end=40)], now=55)


def test_a_partition_caught_up_or_waiting_for_its_handler_is_not_stalled() -> None:
    watch = StallWatch(timeout=30)
    watch.observe([p(0, fetched=20, log_end=20), p(1, busy=True)], now=0)
    assert watch.observe([p(0, fetched=20, log_end=20), p(1, busy=True)], now=100) == []
    # Busy for a while, then idle and behind: watched from when it became idle, not from the start.
    assert watch.observe([p(1)], now=100) == []
    assert watch.observe([p(1)], now=120) == []
    assert [s.partition for s in watch.observe([p(1)], now=130)] == [1]


def test_a_revoked_partition_is_forgotten() -> None:
    watch = StallWatch(timeout=30)
    watch.observe([p(0), p(1)], now=0)
    watch.observe([p(1)], now=10)  # partition 0 revoked
    assert [s.partition for s in watch.observe([p(0), p(1)], now=40)] == [1]
    watch.reset()
    assert watch.observe([p(1)], now=80) == []
