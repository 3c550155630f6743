"""The stall rule: when a consumer holds a partition with records past its position and does not fetch them.

Plain decisions on observed positions, free of I/O; the Kafka subscription observes, logs, and rejoins its group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One assigned partition as its member sees it at one moment."""

    partition: int
    fetched: int  # the offset after the last record fetched for the partition's worker (its start position before)
    log_end: int  # the partition's log end offset, as the broker reported it
    # The worker holds records it has not handled yet, or fetching is paused because it is behind: the partition
    # waits for its handler (a dependency down, a slow handler), which is not a consumer that stopped fetching.
    busy: bool


@dataclass(frozen=True, slots=True)
class Stall:
    partition: int
    fetched: int
    log_end: int
    seconds: float

    def describe(self) -> str:
        return (f"partition {self.partition}: records {self.fetched}..{self.log_end - 1} not fetched for "
                f"{self.seconds:.0f}s")


class StallWatch:
    """Finds partitions whose records past the position have waited unfetched for `timeout` seconds.

    A partition is watched from the first observation that finds it behind and idle; any fetched record, an empty
    backlog or a busy worker starts the clock again. Observe every few seconds: a stall is reported between
    `timeout` and `timeout` plus one interval after fetching stopped.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._behind_since: dict[int, tuple[int, float]] = {}  # partition -> (fetched position, first seen behind)

    def observe(self, progress: Iterable[PartitionProgress], now: float) -> list[Stall]:
        stalls: list[Stall] = []
        seen: set[int] = set()
        for p in progress:
            seen.add(p.partition)
            if p.busy or p.log_end <= p.fetched:
                self._behind_since.pop(p.partition, None)
                continue
            mark = self._behind_since.get(p.partition)
            if mark is None or mark[0] != p.fetched:
                self._behind_since[p.partition] = (p.fetched, now)
            elif now - mark[1] >= self.timeout:
                stalls.append(Stall(p.partition, p.fetched, p.log_end, now - mark[1]))
        for gone in set(self._behind_since) - seen:  # revoked
            del self._behind_since[gone]
        return stalls

    def reset(self) -> None:
        self._behind_since.clear()
