"""The embedded Store (`state = "sqlite:///.meshrun/state.db"`, the default): one SQLite file in WAL mode.

One writer thread owns the connection and commits whatever the loop queued meanwhile in one transaction (group
commit), so a hundred handlers waiting on the store cost one commit. Not for several machines: use PostgreSQL.
"""
from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from meshrun.errors import StateError, StateUnavailable
from meshrun.state.base import SCHEMA_VERSION, Clock, Kept, Once, Store, check_collection

Job = Callable[[sqlite3.Connection, float], Any]
MAX_JOBS_PER_COMMIT = 500
SYNCHRONOUS = ("normal", "full")


class SQLiteStore(Store):
    """State in one SQLite file; several processes on one machine may share it (writes wait for each other)."""

    def __init__(self, path: Path, *, url: str | None = None, synchronous: str = "normal",
                 busy_timeout: float = 5.0, clock: Clock = time.time) -> None:
        super().__init__(clock)
        if synchronous not in SYNCHRONOUS:
            raise StateError(f"state {url or path}: synchronous must be one of {', '.join(SYNCHRONOUS)}, "
                             f"got {synchronous!r}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._jobs: queue.SimpleQueue[tuple[Job, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spaces: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"state {self.url}: cannot create the directory {self.path.parent} ({exc.strerror}); "
                             "create it, or point [mesh] state (env MESHRUN_STATE) elsewhere") from None
        self._thread = threading.Thread(target=self._run, name="meshrun-state-sqlite", daemon=True)
        self._thread.start()
        try:
            await self._call(self._open_db)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    async def check(self) -> None:
        await self._call(lambda conn, now: conn.execute("SELECT version FROM meshrun_schema").fetchone())

    def _open_db(self, conn: sqlite3.Connection, now: float) -> None:
        """Runs as the first job: the thread has connected; create or check the schema."""
        version = conn.execute("SELECT version FROM meshrun_schema").fetchone()
        if version is None:
            conn.execute("INSERT INTO meshrun_schema(version) VALUES (?)", (SCHEMA_VERSION,))
        elif version[0] > SCHEMA_VERSION:
            raise StateError(
                f"state {self.url} was written by a newer meshrun (schema version {version[0]}, this meshrun knows "
                f"up to {SCHEMA_VERSION}): upgrade meshrun, or point [mesh] state (env MESHRUN_STATE) at a new file")
        for (space,) in conn.execute("SELECT name FROM meshrun_spaces").fetchall():
            self._spaces.add(space)

    async def open_space(self, space: str) -> None:
        if space in self._spaces:
            return
        await self._call(lambda conn, now: _create_space(conn, space))
        self._spaces.add(space)

    # -- the writer thread -----------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a killed process (the WAL is written before COMMIT returns); FULL also
            # survives a power cut, at an fsync per commit.
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.execute("CREATE TABLE IF NOT EXISTS meshrun_schema (version INTEGER NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS meshrun_spaces (name TEXT PRIMARY KEY)")
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                break
            jobs = [first]
            while len(jobs) < MAX_JOBS_PER_COMMIT:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                jobs.append(more)
            self._commit(jobs)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _commit(self, jobs: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            now = self.clock()
            for job, future in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((future, job(conn, now), None))
                    conn.execute("RELEASE job")
                except (sqlite3.OperationalError, sqlite3.DatabaseError):
                    raise  # the database itself failed: the whole transaction goes
                except BaseException as exc:  # noqa: BLE001 - one job's error is its caller's, not the batch's
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((future, None, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn is not None:
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._conn.close()
                    self._conn = None  # reconnect with the next batch
            error = self._error_of(exc)
            outcomes = [(future, None, error) for _, future in jobs]
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def _error_of(self, exc: sqlite3.Error) -> StateError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) or "readonly" in text or "locked" in text:
            hint = {"readonly": "the file or its directory is read-only: make them writable",
                    "locked": "another process holds a long write lock on it",
                    "unable to open": "the file cannot be opened: check its directory and permissions",
                    "disk": "the disk is full or failing"}
            detail = next((f"{text}: {h}" for word, h in hint.items() if word in text), text)
            return StateUnavailable(self.url, detail)
        return StateError(f"state {self.url} is not a usable SQLite database ({text}): move the file away to start "
                          "with empty state, or restore it from a backup")

    async def _call(self, job: Job) -> Any:
        if self._thread is None or self._loop is None:
            raise StateError(f"state {self.url} is not open: the runtime opens it before the services start")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((job, future))
        return await future

    # -- operations ------------------------------------------------------------------------------------------------

    async def keep_once(self, space: str, items: Sequence[Once]) -> list[bytes | None]:
        for item in items:
            check_collection(item.collection)
        table = f"{space}_records"
        insert = f'INSERT OR IGNORE INTO "{table}"(collection, key, value, expires_at) VALUES (?, ?, ?, ?)'
        select = f'SELECT value, expires_at FROM "{table}" WHERE collection = ? AND key = ?'
        remove = f'DELETE FROM "{table}" WHERE collection = ? AND key = ?'

        def job(conn: sqlite3.Connection, now: float) -> list[bytes | None]:
            results: list[bytes | None] = []
            counts: dict[str, int] = defaultdict(int)
            for item in items:
                row = (item.collection, item.key, item.value, None if item.ttl is None else now + item.ttl)
                if conn.execute(insert, row).rowcount == 0:
                    value, expires_at = conn.execute(select, row[:2]).fetchone()
                    if expires_at is None or expires_at > now:
                        results.append(bytes(value))
                        continue
                    conn.execute(remove, row[:2])
                    conn.execute(insert, row)
                for name, amount in item.counts.items():
                    counts[name] += amount
                results.append(None)
            _add(conn, space, counts)
            return results

        result: list[bytes | None] = await self._call(job)
        return result

    async def get(self, space: str, collection: str, key: str) -> bytes | None:
        sql = f'SELECT value FROM "{space}_records" WHERE collection = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)'

        def job(conn: sqlite3.Connection, now: float) -> bytes | None:
            row = conn.execute(sql, (check_collection(collection), key, now)).fetchone()
            return None if row is None else bytes(row[0])

        result: bytes | None = await self._call(job)
        return result

    async def put(self, space: str, collection: str, key: str, value: bytes, ttl: float | None) -> None:
        table = f"{space}_records"

        def job(conn: sqlite3.Connection, now: float) -> None:
            expires_at = None if ttl is None else now + ttl
            conn.execute(f'DELETE FROM "{table}" WHERE collection = ? AND key = ? AND expires_at <= ?',
                         (check_collection(collection), key, now))
            conn.execute(f'INSERT INTO "{table}"(collection, key, value, expires_at) VALUES (?, ?, ?, ?) '
                         "ON CONFLICT(collection, key) DO UPDATE SET value = excluded.value, "
                         "expires_at = excluded.expires_at", (collection, key, value, expires_at))

        await self._call(job)

    async def take(self, space: str, collection: str, key: str) -> bytes | None:
        sql = f'DELETE FROM "{space}_records" WHERE collection = ? AND key = ? RETURNING value, expires_at'

        def job(conn: sqlite3.Connection, now: float) -> bytes | None:
            row = conn.execute(sql, (check_collection(collection), key)).fetchone()
            if row is None or (row[1] is not None and row[1] <= now):
                return None
            return bytes(row[0])

        result: bytes | None = await self._call(job)
        return result

    async def delete(self, space: str, collection: str, keys: Sequence[str]) -> int:
        sql = f'DELETE FROM "{space}_records" WHERE collection = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)'

        def job(conn: sqlite3.Connection, now: float) -> int:
            check_collection(collection)
            return sum(conn.execute(sql, (collection, key, now)).rowcount for key in keys)

        result: int = await self._call(job)
        return result

    async def add(self, space: str, counts: Mapping[str, int]) -> dict[str, int]:
        def job(conn: sqlite3.Connection, now: float) -> dict[str, int]:
            _add(conn, space, counts)
            sql = f'SELECT value FROM "{space}_counters" WHERE name = ?'
            return {name: int(conn.execute(sql, (name,)).fetchone()[0]) for name in counts}

        result: dict[str, int] = await self._call(job)
        return result

    async def counters(self, space: str, prefix: str = "") -> dict[str, int]:
        sql = f'SELECT name, value FROM "{space}_counters" WHERE substr(name, 1, ?) = ?'

        def job(conn: sqlite3.Connection, now: float) -> dict[str, int]:
            return {name: int(value) for name, value in conn.execute(sql, (len(prefix), prefix))}

        result: dict[str, int] = await self._call(job)
        return result

    async def scan(self, space: str, collection: str, after: int = 0, limit: int = 1000) -> list[Kept]:
        sql = (f'SELECT seq, key, value FROM "{space}_records" WHERE collection = ? AND seq > ? '
               "AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq LIMIT ?")

        def job(conn: sqlite3.Connection, now: float) -> list[Kept]:
            rows = conn.execute(sql, (check_collection(collection), after, now, limit))
            return [Kept(seq, key, bytes(value)) for seq, key, value in rows]

        result: list[Kept] = await self._call(job)
        return result

    async def count(self, space: str, collection: str) -> int:
        sql = f'SELECT count(*) FROM "{space}_records" WHERE collection = ? AND (expires_at IS NULL OR expires_at > ?)'

        def job(conn: sqlite3.Connection, now: float) -> int:
            return int(conn.execute(sql, (check_collection(collection), now)).fetchone()[0])

        result: int = await self._call(job)
        return result

    async def purge_expired(self, limit: int = 1000) -> int:
        gone = 0
        for space in sorted(self._spaces):
            sql = (f'DELETE FROM "{space}_records" WHERE seq IN (SELECT seq FROM "{space}_records" '
                   "WHERE expires_at <= ? LIMIT ?)")

            def job(conn: sqlite3.Connection, now: float, sql: str = sql) -> int:
                return int(conn.execute(sql, (now, limit - gone)).rowcount)

            gone += await self._call(job)
            if gone >= limit:
                break
        return gone


def _create_space(conn: sqlite3.Connection, space: str) -> None:
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{space}_records" (seq INTEGER PRIMARY KEY AUTOINCREMENT, '
                 "collection TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires_at REAL, "
                 "UNIQUE (collection, key))")
    conn.execute(f'CREATE INDEX IF NOT EXISTS "{space}_records_expiry" ON "{space}_records"(expires_at) '
                 "WHERE expires_at IS NOT NULL")
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{space}_counters" (name TEXT PRIMARY KEY, '
                 "value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute("INSERT OR IGNORE INTO meshrun_spaces(name) VALUES (?)", (space,))


def _add(conn: sqlite3.Connection, space: str, counts: Mapping[str, int]) -> None:
    if counts:
        conn.executemany(f'INSERT INTO "{space}_counters"(name, value) VALUES (?, ?) '
                         "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", counts.items())


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue  # its caller was cancelled
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
