"""The in-process Store (`state = "memory"`): dictionaries, for tests and benchmarks that measure without a disk.

Forgets everything when the process ends, so it is never the default; it follows the same contract as the
durable stores (the store contract tests run on it too).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from meshrun.state.base import Clock, Kept, Once, StateSpace, Store, check_collection


@dataclass(slots=True)
class _Record:
    seq: int
    value: bytes
    expires_at: float | None


@dataclass
class _Space:
    records: dict[str, dict[str, _Record]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class MemoryStore(Store):
    """State in this process's memory: the Store contract without durability."""

    def __init__(self, clock: Clock = time.time) -> None:
        super().__init__(clock)
        self.url = "memory"
        self._spaces: dict[str, _Space] = {}
        self._seq = 0

    @classmethod
    def space_of_its_own(cls, service: str) -> StateSpace:
        """An opened space in a store of its own: for a context built outside a Mesh (a unit test)."""
        store = cls()
        space = store.space(service)
        store._spaces[space.name] = _Space()
        return space

    async def open(self) -> None:
        return None

    async def open_space(self, space: str) -> None:
        self._spaces.setdefault(space, _Space())

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        return None

    def _collection(self, space: str, collection: str) -> dict[str, _Record]:
        records = self._spaces[space].records
        found = records.get(collection)
        if found is None:
            found = records[check_collection(collection)] = {}
        return found

    def _live(self, records: dict[str, _Record], key: str, now: float) -> _Record | None:
        record = records.get(key)
        if record is not None and record.expires_at is not None and record.expires_at <= now:
            del records[key]
            return None
        return record

    async def keep_once(self, space: str, items: Sequence[Once]) -> list[bytes | None]:
        now = self.clock()
        counters = self._spaces[space].counters
        results: list[bytes | None] = []
        for item in items:
            records = self._collection(space, item.collection)
            existing = self._live(records, item.key, now)
            if existing is not None:
                results.append(existing.value)
                continue
            self._seq += 1
            records[item.key] = _Record(self._seq, item.value, None if item.ttl is None else now + item.ttl)
            for name, amount in item.counts.items():
                counters[name] = counters.get(name, 0) + amount
            results.append(None)
        return results

    async def get(self, space: str, collection: str, key: str) -> bytes | None:
        record = self._live(self._collection(space, collection), key, self.clock())
        return None if record is None else record.value

    async def put(self, space: str, collection: str, key: str, value: bytes, ttl: float | None) -> None:
        now = self.clock()
        records = self._collection(space, collection)
        existing = self._live(records, key, now)
        if existing is None:
            self._seq += 1
            seq = self._seq
        else:
            seq = existing.seq
        records[key] = _Record(seq, value, None if ttl is None else now + ttl)

    async def take(self, space: str, collection: str, key: str) -> bytes | None:
        records = self._collection(space, collection)
        record = self._live(records, key, self.clock())
        if record is None:
            return None
        del records[key]
        return record.value

    async def delete(self, space: str, collection: str, keys: Sequence[str]) -> int:
        records = self._collection(space, collection)
        now = self.clock()
        gone = 0
        for key in keys:
            if self._live(records, key, now) is not None:
                del records[key]
                gone += 1
        return gone

    async def add(self, space: str, counts: Mapping[str, int]) -> dict[str, int]:
        counters = self._spaces[space].counters
        for name, amount in counts.items():
            counters[name] = counters.get(name, 0) + amount
        return {name: counters[name] for name in counts}

    async def counters(self, space: str, prefix: str = "") -> dict[str, int]:
        return {name: value for name, value in self._spaces[space].counters.items() if name.startswith(prefix)}

    async def scan(self, space: str, collection: str, after: int = 0, limit: int = 1000) -> list[Kept]:
        now = self.clock()
        kept = [Kept(r.seq, key, r.value) for key, r in self._collection(space, collection).items()
                if r.seq > after and (r.expires_at is None or r.expires_at > now)]
        kept.sort(key=lambda k: k.seq)
        return kept[:limit]

    async def count(self, space: str, collection: str) -> int:
        now = self.clock()
        return sum(1 for r in self._collection(space, collection).values()
                   if r.expires_at is None or r.expires_at > now)

    async def purge_expired(self, limit: int = 1000) -> int:
        now = self.clock()
        gone = 0
        for space in self._spaces.values():
            for records in space.records.values():
                expired = [k for k, r in records.items() if r.expires_at is not None and r.expires_at <= now]
                for key in expired[: limit - gone]:
                    del records[key]
                    gone += 1
                if gone >= limit:
                    return gone
        return gone
