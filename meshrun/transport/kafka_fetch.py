"""How long a Kafka consumer's fetches wait: longer the more records flow, for the first record when idle.

While records flow, a fetch is answered once `fetch_min_bytes` are there or after `fetch_max_wait_ms` (64 KiB or
5 ms by default): the broker then answers a few large fetches instead of one per record. Under heavy traffic (a
consumer receiving HEAVY_RATE records a second or more) a fetch waits up to HEAVY_WAIT_MS instead: every fetch,
handler call and commit then carries more records, which is what a CPU-bound mesh needs (measured with `python -m
meshrun_bench.consumers`, five groups at 2,500 records/s: 166 instead of 195 us of CPU per published record). Light
traffic keeps the short wait, so its latency does not change. Idle, a short wait would be a hundred or more empty
answers a second per consumer (measured with 10 ms: an idle mesh of five consumers and its broker used 0.38 of a
core), so after IDLE_AFTER seconds without a record the consumer long-polls instead: each fetch waits up to
IDLE_WAIT_MS and is answered at the first record, which switches it back.

aiokafka reads both values from its fetcher for every request but has no public way to change them on a running
consumer: this sets the fetcher's attributes, and does nothing (the busy values stay) if they are not there.
"""
from __future__ import annotations

import enum
from typing import Any

import structlog

log = structlog.get_logger("meshrun.transport.kafka")

IDLE_AFTER = 1.0  # seconds without a record before a consumer long-polls
IDLE_WAIT_MS = 500  # how long an idle consumer's fetch waits for its first record (aiokafka's default)
HEAVY_RATE = 1_000  # records a second at which a consumer's fetches wait longer (see LIGHT_WINDOWS for the way back)
HEAVY_WAIT_MS = 25  # how long a fetch waits under heavy traffic (at HEAVY_RATE, 25 records or more per fetch)
RATE_WINDOW = 0.5  # seconds of polls over which the rate of records is measured
# Windows in a row below HEAVY_RATE / 2 before a heavy consumer waits less again: bursts a second apart (a window
# full, the next empty) keep it heavy instead of switching every half second.
LIGHT_WINDOWS = 4
FETCHER_SETTINGS = ("_fetch_min_bytes", "_fetch_max_wait_ms")  # aiokafka's Fetcher, read per fetch request


class Pace(enum.Enum):
    """What a consumer's fetches wait for. IDLE -> BUSY at the first record; BUSY -> HEAVY after a window at
    HEAVY_RATE or more, HEAVY -> BUSY after LIGHT_WINDOWS windows below half of it; BUSY or HEAVY -> IDLE after
    IDLE_AFTER seconds without a record."""

    IDLE = "idle"
    BUSY = "busy"
    HEAVY = "heavy"


class FetchPacing:
    """Switches one consumer's fetches between long polling (idle), waiting for a batch (records flow) and waiting
    longer for a bigger batch (heavy traffic)."""

    def __init__(self, consumer: Any, busy_min_bytes: int, busy_wait_ms: int, *, enabled: bool) -> None:
        self.consumer = consumer
        self.settings = {Pace.IDLE: (1, IDLE_WAIT_MS), Pace.BUSY: (busy_min_bytes, busy_wait_ms),
                         Pace.HEAVY: (busy_min_bytes, max(busy_wait_ms, HEAVY_WAIT_MS))}
        self.enabled = enabled
        self.pace = Pace.BUSY
        self.last_record = 0.0
        self._window_start: float | None = None
        self._window_records = 0
        self._light_windows = 0  # windows in a row below HEAVY_RATE / 2

    @property
    def idle(self) -> bool:
        return self.pace is Pace.IDLE

    def fetched(self, records: int, now: float) -> None:
        """Called after each poll of the consumer with how many records it returned."""
        if not self.enabled:
            return
        if records:
            self.last_record = now
            if self.pace is Pace.IDLE:
                self._apply(Pace.BUSY)
        elif self.pace is not Pace.IDLE and now - self.last_record >= IDLE_AFTER:
            self._apply(Pace.IDLE)
        if self._window_start is None:  # the first poll starts the first window; its records fall before it
            self._window_start = now
            return
        self._window_records += records
        elapsed = now - self._window_start
        if elapsed < RATE_WINDOW:
            return
        rate = self._window_records / elapsed
        self._window_start, self._window_records = now, 0
        self._light_windows = self._light_windows + 1 if rate < HEAVY_RATE / 2 else 0
        if self.pace is Pace.BUSY and rate >= HEAVY_RATE:
            self._apply(Pace.HEAVY)
        elif self.pace is Pace.HEAVY and self._light_windows >= LIGHT_WINDOWS:
            self._apply(Pace.BUSY)

    def _apply(self, pace: Pace) -> None:
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is None or not all(hasattr(fetcher, name) for name in FETCHER_SETTINGS):
            self.enabled = False  # an aiokafka without these attributes: keep the busy values
            log.debug("kafka_fetch_pacing_unavailable")
            return
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = self.settings[pace]
        self.pace = pace
