"""The stores the state tests run on: memory, SQLite in a temporary directory, and PostgreSQL when one is given.

A test that takes the `store` fixture runs once per kind; with CI=true a missing PostgreSQL fails it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from meshrun.state.base import Clock, Store
from meshrun.state.memory import MemoryStore
from meshrun.state.sqlite import SQLiteStore

KINDS = ("memory", "sqlite")


class FakeClock:
    """Time that moves only when a test says so: expiry without sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def store_factory(kind: str, tmp_path: Path) -> Callable[[Clock], Store]:
    if kind == "memory":
        return lambda clock: MemoryStore(clock=clock)
    if kind == "sqlite":
        return lambda clock: SQLiteStore(tmp_path / "state.db", clock=clock)
    from tests.state.postgres import postgres_store_factory

    return postgres_store_factory(tmp_path)
