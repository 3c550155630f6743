"""The Store: what services keep across restarts, in named collections of keyed records, and counters.

One Store per process (chosen by `[mesh] state`), one `StateSpace` per service (`ctx.store`). Not a general
database: the operations are the few that make redelivery harmless (keep once, take once, count once).
"""
from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from meshrun.errors import StateError

SPACE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}\Z")
COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
SCHEMA_VERSION = 1  # bumped with every change to the tables; a store refuses a database with a newer one
DAY = 86_400.0
DEFAULT_STATE_TTL = 7 * DAY  # idempotency keys: redeliveries come within minutes, reposts within days

Clock = Callable[[], float]


def space_name(service: str) -> str:
    """The table prefix of a service: its name, lower case, with '-' as '_' (`order-desk` -> `order_desk`)."""
    name = service.lower().replace("-", "_")
    if not SPACE_NAME.match(name):
        raise StateError(f"service name {service!r} cannot name its state: use 1-48 letters, digits, '_' or '-', "
                         "starting with a letter")
    return name


def check_collection(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise StateError(f"collection name {name!r}: use 1-64 lower-case letters, digits or '_', starting with a "
                         "letter")
    return name


@dataclass(frozen=True, slots=True)
class Once:
    """A record to keep unless its key is kept already (and not expired), and the counters it adds if it is new.

    `ttl` seconds after it is kept the record expires (None: never). Counters never expire.
    """

    collection: str
    key: str
    value: bytes = b""
    counts: Mapping[str, int] = field(default_factory=dict)
    ttl: float | None = DEFAULT_STATE_TTL


@dataclass(frozen=True, slots=True)
class Kept:
    """A kept record: `seq` orders records by when they were first kept (within a space)."""

    seq: int
    key: str
    value: bytes


class Store(ABC):
    """A process's durable state. Every method is atomic: a batch of `keep_once` is one transaction, durable
    (for SQLite and PostgreSQL, at least against a killed process) before the call returns.

    Raises `StateUnavailable` when the database cannot be reached or written now (a handler waits and retries,
    an HTTP route answers 503), and `StateError` for what waiting does not fix (a schema from a newer meshrun).
    """

    url: str  # where the state is, as the user wrote it but without a password: for messages and logs

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock

    def space(self, service: str) -> "StateSpace":
        """The view of one service's state (its own tables or keys); `open_space` must have run for it."""
        return StateSpace(self, space_name(service))

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or upgrade the shared tables (versioned); raises StateError naming the URL."""

    @abstractmethod
    async def open_space(self, space: str) -> None:
        """Create a service's tables if they are missing (idempotent; several processes may race here)."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and disconnect; safe to call twice."""

    @abstractmethod
    async def check(self) -> None:
        """Raise StateUnavailable if the state cannot be read and written now (what /ready asks)."""

    @abstractmethod
    async def keep_once(self, space: str, items: Sequence[Once]) -> list[bytes | None]:
        """Keep each record whose key is not kept yet, adding its counts; for each item, None if it was kept now,
        else the value already kept under its key. One transaction for the whole list; a key repeated in the list
        counts as kept by its first occurrence."""

    @abstractmethod
    async def get(self, space: str, collection: str, key: str) -> bytes | None:
        """The value kept under `key`, or None (an expired record is absent)."""

    @abstractmethod
    async def put(self, space: str, collection: str, key: str, value: bytes, ttl: float | None) -> None:
        """Keep `value` under `key`, replacing what was there (its seq stays if it was there)."""

    @abstractmethod
    async def take(self, space: str, collection: str, key: str) -> bytes | None:
        """Remove the record under `key` and return its value; None if absent. Of concurrent takers (in any
        process), exactly one gets the value: what makes an authorization code or a refresh token single-use."""

    @abstractmethod
    async def delete(self, space: str, collection: str, keys: Sequence[str]) -> int:
        """Remove these keys; how many were there."""

    @abstractmethod
    async def add(self, space: str, counts: Mapping[str, int]) -> dict[str, int]:
        """Add to counters (created at 0), atomically; their new values."""

    @abstractmethod
    async def counters(self, space: str, prefix: str = "") -> dict[str, int]:
        """The counters whose name starts with `prefix`."""

    @abstractmethod
    async def scan(self, space: str, collection: str, after: int = 0, limit: int = 1000) -> list[Kept]:
        """Unexpired records with seq > `after`, oldest first, at most `limit`."""

    @abstractmethod
    async def count(self, space: str, collection: str) -> int:
        """How many unexpired records the collection has."""

    @abstractmethod
    async def purge_expired(self, limit: int = 1000) -> int:
        """Remove up to `limit` expired records of every space (a short transaction each); how many went."""


class StateSpace:
    """One service's state (`ctx.store`): the Store's operations, bound to the service's space."""

    __slots__ = ("store", "name")

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    async def keep_once(self, items: Sequence[Once]) -> list[bytes | None]:
        return await self.store.keep_once(self.name, items) if items else []

    async def keep(self, collection: str, key: str, value: bytes = b"", *, counts: Mapping[str, int] | None = None,
                   ttl: float | None = DEFAULT_STATE_TTL) -> bytes | None:
        """One `Once`: None if kept now, else the value kept before."""
        return (await self.store.keep_once(self.name, [Once(collection, key, value, counts or {}, ttl)]))[0]

    async def get(self, collection: str, key: str) -> bytes | None:
        return await self.store.get(self.name, collection, key)

    async def put(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> None:
        await self.store.put(self.name, collection, key, value, ttl)

    async def take(self, collection: str, key: str) -> bytes | None:
        return await self.store.take(self.name, collection, key)

    async def delete(self, collection: str, *keys: str) -> int:
        return await self.store.delete(self.name, collection, keys) if keys else 0

    async def add(self, counts: Mapping[str, int]) -> dict[str, int]:
        return await self.store.add(self.name, counts)

    async def counters(self, prefix: str = "") -> dict[str, int]:
        return await self.store.counters(self.name, prefix)

    async def scan(self, collection: str, after: int = 0, limit: int = 1000) -> list[Kept]:
        return await self.store.scan(self.name, collection, after, limit)

    async def count(self, collection: str) -> int:
        return await self.store.count(self.name, collection)
