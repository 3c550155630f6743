"""How long a Kafka consumer's fetches wait: for a batch while records flow, for the first record when idle.

While records flow, a fetch is answered once `fetch_min_bytes` are there or after `fetch_max_wait_ms` (64 KiB or
10 ms by default): the broker then answers a few large fetches instead of one per record. Idle, that would be a
hundred empty answers a second per consumer (measured: an idle mesh of five consumers and its broker used 0.38 of
a core), so after IDLE_AFTER seconds without a record the consumer long-polls instead: each fetch waits up to
IDLE_WAIT_MS and is answered at the first record, which switches it back.

aiokafka reads both values from its fetcher for every request but has no public way to change them on a running
consumer: this sets the fetcher's attributes, and does nothing (the busy values stay) if they are not there.
"""
from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("meshrun.transport.kafka")

IDLE_AFTER = 1.0  # seconds without a record before a consumer long-polls
IDLE_WAIT_MS = 500  # how long an idle consumer's fetch waits for its first record (aiokafka's default)
FETCHER_SETTINGS = ("_fetch_min_bytes", "_fetch_max_wait_ms")  # aiokafka's Fetcher, read per fetch request


class FetchPacing:
    """Switches one consumer's fetches between waiting for a batch (records flow) and long polling (idle)."""

    def __init__(self, consumer: Any, busy_min_bytes: int, busy_wait_ms: int, *, enabled: bool) -> None:
        self.consumer = consumer
        self.busy = (busy_min_bytes, busy_wait_ms)
        self.enabled = enabled
        self.idle = False
        self.last_record = 0.0

    def fetched(self, records: int, now: float) -> None:
        """Called after each poll of the consumer with how many records it returned."""
        if not self.enabled:
            return
        if records:
            self.last_record = now
            if self.idle:
                self._apply(*self.busy, idle=False)
        elif not self.idle and now - self.last_record >= IDLE_AFTER:
            self._apply(1, IDLE_WAIT_MS, idle=True)

    def _apply(self, min_bytes: int, wait_ms: int, *, idle: bool) -> None:
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is None or not all(hasattr(fetcher, name) for name in FETCHER_SETTINGS):
            self.enabled = False  # an aiokafka without these attributes: keep the busy values
            log.debug("kafka_fetch_pacing_unavailable")
            return
        fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = min_bytes, wait_ms
        self.idle = idle
