"""Which Store a `[mesh] state` URL names: "memory", "sqlite:///path" or "postgresql://...".

Parsing only; the stores connect when the runtime opens them. A relative SQLite path is relative to the directory
of services.toml (as keys_dir is), so `meshrun up` from anywhere uses the same file.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from meshrun.errors import StateError
from meshrun.state.base import Store

DEFAULT_STATE = "sqlite:///.meshrun/state.db"
SCHEMES = ("memory", "sqlite", "postgresql", "postgres")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def check_state_url(url: str) -> str | None:
    """What is wrong with `url`, or None: for the config's list of problems."""
    scheme = url.split(":", 1)[0]
    if url == "memory":
        return None
    if scheme not in SCHEMES or "://" not in url:
        return (f"unknown state URL {redacted(url)!r}: use \"sqlite:///.meshrun/state.db\" (embedded), "
                "\"postgresql://user@host:5432/db\" or \"memory\" (forgets everything at exit: tests only)")
    if scheme == "sqlite":
        parts = urlsplit(url)
        if parts.netloc or not parts.path.strip("/"):
            return f"state URL {url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        synchronous = parse_qs(parts.query).get("synchronous", ["normal"])[0]
        if synchronous not in ("normal", "full"):
            return f"state URL {url!r}: synchronous must be normal or full, got {synchronous!r}"
    return None


def store_for(url: str, base_dir: Path) -> Store:
    """The Store the URL names (not opened yet)."""
    problem = check_state_url(url)
    if problem:
        raise StateError(problem)
    if url == "memory":
        from meshrun.state.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from meshrun.state.sqlite import SQLiteStore

        parts = urlsplit(url)
        path = Path(parts.path[1:])  # sqlite:///rel -> "rel"; sqlite:////abs -> "/abs"
        synchronous = parse_qs(parts.query).get("synchronous", ["normal"])[0]
        return SQLiteStore(path if path.is_absolute() else base_dir / path, url=url, synchronous=synchronous)
    from meshrun.state.postgres import PostgresStore

    return PostgresStore(url)
