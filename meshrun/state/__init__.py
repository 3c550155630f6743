"""Durable state for services: the Store interface and its kinds (memory, SQLite, PostgreSQL)."""
from meshrun.state.base import DEFAULT_STATE_TTL, Kept, Once, StateSpace, Store

__all__ = ["DEFAULT_STATE_TTL", "Kept", "Once", "StateSpace", "Store"]
