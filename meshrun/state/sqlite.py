"""The embedded Store (`state = "sqlite:///.meshrun/state.db"`, the default): one SQLite file in WAL mode.

What the loop's coroutines ask for within one turn is committed together (group commit), so a hundred handlers
waiting on the store cost one commit. Not for several machines: use PostgreSQL.
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
CHECKPOINT_EVERY = 1.0  # seconds between the thread's checkpoints of the WAL, when the loop wrote meanwhile
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
        self._pending: list[tuple[Job, asyncio.Future[Any]]] = []  # queued during this turn of the loop
        self._loop_conn: sqlite3.Connection | None = None
        self._thread_conn: sqlite3.Connection | None = None
        self._waiting: queue.SimpleQueue[list[tuple[Job, asyncio.Future[Any]]] | None] = queue.SimpleQueue()
        self._with_thread = 0  # batches handed to the thread and not settled yet: later ones queue behind them
        self._wrote = False  # the loop's connection wrote since the thread's last checkpoint
        self._thread: threading.Thread | None = None
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
        if self._pending:
            self._hand_over()
        self._waiting.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None

    async def check(self) -> None:
        await self._call(lambda conn, now: conn.execute("SELECT version FROM meshrun_schema").fetchone())

    def _open_db(self, conn: sqlite3.Connection, now: float) -> None:
        """Runs as the first job: create or check the schema."""
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

    # -- where jobs run ----------------------------------------------------------------------------------------------
    # The jobs queued during one turn of the loop run together, in one transaction, on the loop itself: a write to
    # the WAL without fsync takes microseconds, far less than handing work to a thread and back. Only when another
    # process holds the write lock (a shared file) do they go to the thread, which waits for the lock without
    # stopping the loop, and which also checkpoints the WAL into the database (the fsyncs happen there).

    def _connect(self, busy_timeout: float, checkpoints: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives a killed process (the WAL is written before COMMIT returns); FULL also
            # survives a power cut, at an fsync per commit.
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            if not checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("CREATE TABLE IF NOT EXISTS meshrun_schema (version INTEGER NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS meshrun_spaces (name TEXT PRIMARY KEY)")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _call(self, job: Job) -> Any:
        if self._thread is None or self._loop is None:
            raise StateError(f"state {self.url} is not open: the runtime opens it before the services start")
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._hand_over)
        self._pending.append((job, future))
        return await future

    def _hand_over(self) -> None:
        jobs, self._pending = self._pending, []
        if not jobs:
            return
        if self._with_thread == 0:
            try:
                if self._loop_conn is None:
                    self._loop_conn = self._connect(0.0, checkpoints=False)
                _settle(self._execute(self._loop_conn, jobs))
                self._wrote = True
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    self._loop_conn = _dropped(self._loop_conn)
                    _settle([(future, None, self._error_of(exc)) for _, future in jobs])
                    return
                # Another process writes: the thread waits for it.
            except sqlite3.Error as exc:
                self._loop_conn = _dropped(self._loop_conn)
                _settle([(future, None, self._error_of(exc)) for _, future in jobs])
                return
        self._with_thread += 1
        self._waiting.put(jobs)

    def _execute(self, conn: sqlite3.Connection, jobs: list[tuple[Job, asyncio.Future[Any]]]
                 ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """Run the jobs in one transaction; raises sqlite3.Error (rolled back) if the database itself failed."""
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = self.clock()
            for job, future in jobs:
                # A job raises only before it writes (its arguments are checked first), so its error is its
                # caller's alone and needs no savepoint; an error of the database itself ends the transaction.
                try:
                    outcomes.append((future, job(conn, now), None))
                except sqlite3.Error:
                    raise
                except Exception as exc:  # noqa: BLE001 - one job's error is its caller's, not the batch's
                    outcomes.append((future, None, exc))
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        return outcomes

    def _run(self) -> None:
        """The thread: batches the loop could not write (the lock was taken), and checkpoints when idle."""
        while True:
            try:
                jobs = self._waiting.get(timeout=CHECKPOINT_EVERY)
            except queue.Empty:
                self._checkpoint()
                continue
            if jobs is None:
                break
            try:
                if self._thread_conn is None:
                    self._thread_conn = self._connect(self.busy_timeout, checkpoints=True)
                outcomes = self._execute(self._thread_conn, jobs)
            except sqlite3.Error as exc:
                self._thread_conn = _dropped(self._thread_conn)
                error = self._error_of(exc)
                outcomes = [(future, None, error) for _, future in jobs]
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._settle_from_thread, outcomes)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more
        self._checkpoint()
        self._thread_conn = _dropped(self._thread_conn)

    def _settle_from_thread(self, outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        self._with_thread -= 1
        _settle(outcomes)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database without blocking writers, so the WAL stays small."""
        if not self._wrote:
            return
        self._wrote = False
        try:
            if self._thread_conn is None:
                self._thread_conn = self._connect(self.busy_timeout, checkpoints=True)
            self._thread_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            self._thread_conn = _dropped(self._thread_conn)  # the next write reports what is wrong

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


def _busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _dropped(conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
    """Close a connection after an error (the next batch reconnects); None, to assign."""
    if conn is not None:
        try:
            conn.close()
        except sqlite3.Error:
            pass
    return None


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue  # its caller was cancelled
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
