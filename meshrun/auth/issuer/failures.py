"""Where failed attempts are counted: the `FailureStore` interface, and the in-memory store of one process.

Counting only; what the counts mean (who waits, how long) is `throttle`'s business. A store shared by the issuer
processes behind one URL (a database, Redis) implements the same three calls; until then each process counts its
own failures, so an attacker spreading guesses over N processes gets N times the free failures.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Failures:
    """How many attempts failed under one key, and when the last one did."""

    count: int
    last_at: float


class FailureStore(Protocol):
    """Counts of failed attempts per key. Keys are opaque strings; entries quiet for `forget_after` seconds (the
    store's own setting) are forgotten. Calls are async so that a store across the network fits the interface."""

    async def get(self, keys: Sequence[str], now: float) -> list[Failures | None]:
        """The current count of each key (None: no failure remembered)."""
        ...

    async def add(self, keys: Sequence[str], now: float) -> list[Failures]:
        """One more failure under each key, at `now`; the new counts. Atomic per key, as concurrent calls need."""
        ...

    async def clear(self, key: str) -> None:
        """Forget `key` (a success: the person behind it knows the secret)."""
        ...


class MemoryFailureStore:
    """The failures of this process, at most `max_keys` of them: when full, quiet keys are dropped, then the tenth
    that failed longest ago (a flood of made-up names pushes out stale entries, not the one being attacked)."""

    def __init__(self, forget_after: float, max_keys: int = 100_000) -> None:
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._entries: dict[str, Failures] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, keys: Sequence[str], now: float) -> list[Failures | None]:
        return [self._current(key, now) for key in keys]

    async def add(self, keys: Sequence[str], now: float) -> list[Failures]:
        added = []
        for key in keys:
            before = self._current(key, now)
            if before is None and len(self._entries) >= self.max_keys:
                self._evict(now)
            entry = Failures((before.count if before else 0) + 1, now)
            self._entries[key] = entry
            added.append(entry)
        return added

    async def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    def _current(self, key: str, now: float) -> Failures | None:
        entry = self._entries.get(key)
        if entry is not None and now - entry.last_at > self.forget_after:
            del self._entries[key]
            return None
        return entry

    def _evict(self, now: float) -> None:
        self._entries = {k: e for k, e in self._entries.items() if now - e.last_at <= self.forget_after}
        excess = len(self._entries) - self.max_keys * 9 // 10
        if excess > 0:
            for key, _ in sorted(self._entries.items(), key=lambda item: item[1].last_at)[:excess]:
                del self._entries[key]
