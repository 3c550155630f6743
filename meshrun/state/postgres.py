"""Placeholder until the PostgreSQL kind lands."""
from __future__ import annotations

from meshrun.errors import StateError
from meshrun.state.memory import MemoryStore


class PostgresStore(MemoryStore):
    def __init__(self, url: str) -> None:
        raise StateError(f"state {url}: PostgreSQL is not supported yet")
