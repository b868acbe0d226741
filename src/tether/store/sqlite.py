"""The embedded store: one SQLite file in WAL mode, shared safely by threads and processes.

Durability: WAL with `synchronous=NORMAL` (the default) makes every commit
survive the death of the process (SIGKILL, OOM kill), which is the failure a
durable runtime exists for; a power cut may lose the last commits but never
corrupts the file. `durability="full"` syncs every commit to disk instead.

Concurrency: each thread gets its own connection, closed when the thread ends (see
`_Opened`), so a process holds one per live thread. Multi-statement writes take
the write lock up front (`BEGIN IMMEDIATE`) so two writers never deadlock on a
read-to-write upgrade, and a generous busy timeout rides out lock contention
between processes instead of failing with "database is locked". Within one process
writes queue on a lock of the store's (`_writing`) before they reach the file's: a
thread that finds SQLite's lock taken sleeps in its busy handler (1, 2, 5, 10 ms and
more) however soon the lock is free again, while a Python lock hands over at once.

Every query lives in `_sql.SqlStore`; this module only supplies connections.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from ._base import CheckpointRow, Commit, EventRow
from ._group_commit import CheckpointCommit, GroupCommit, checkpoint_key
from ._json_bytes import json_bytes
from ._sql import CHECKPOINT_FIELDS, Connection, SqlStore, checkpoint_values, event_params
from ._sql_common import INSERT_EVENT

# A batch of checkpoint commits as one statement (what `_sql_common.RECORD_CHECKPOINT` is
# for one row; keep the two in step). The rows come as one JSON array of
# [execution id, token, *CHECKPOINT_FIELDS]; each is fenced on its own lease token, a
# 'retrying' row is replaced and a final one never; RETURNING names the rows written, each
# with its execution's cancel request.
_BATCH = (
    f"INSERT INTO checkpoints (execution_id, {', '.join(CHECKPOINT_FIELDS)}) "
    "SELECT json_extract(r.value, '$[0]'), "
    + ", ".join(f"json_extract(r.value, '$[{i}]')" for i in range(2, 2 + len(CHECKPOINT_FIELDS)))
    + " FROM json_each(?) r WHERE EXISTS (SELECT 1 FROM executions e "
    "WHERE e.id = json_extract(r.value, '$[0]') AND e.lease_token = json_extract(r.value, '$[1]')) "
    "ON CONFLICT (execution_id, position) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in CHECKPOINT_FIELDS if c != "position")
    + " WHERE checkpoints.status = 'retrying' RETURNING execution_id, position, "
    "(SELECT cancel_requested FROM executions WHERE id = checkpoints.execution_id)"
)

_BUSY_TIMEOUT_MS = 60_000
# Readers that overlap without pause keep SQLite from restarting the WAL, so it can grow
# large under a burst of work; past this size `maintain()` checkpoints and truncates it.
_WAL_LIMIT = 64 * 1024 * 1024


def path_from_url(url: str) -> str:
    rest = url.partition("://")[2]
    path = rest[1:] if rest.startswith("/") else rest
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ConfigurationError(
            f"{url!r} names no file; an in-memory database is not durable. "
            "Use sqlite:///path/to/tether.db"
        )
    return os.path.abspath(path)


class SQLiteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, url: str, *, durability: str = "normal") -> None:
        if durability not in ("normal", "full"):
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        self.url = url
        self.path = path_from_url(url)
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        # Each connection with the thread that owns it, closed when that thread ends.
        self._opened = _Opened()
        self._closed = False
        # Writes of this process's threads, one at a time (see the module's docstring).
        self._writing = threading.RLock()
        # Checkpoint commits of executions on an event loop: written by one thread, many in
        # one transaction (see record_checkpoint_async).
        self._group: GroupCommit[CheckpointCommit, Commit] = GroupCommit(
            self._write_checkpoints, key=checkpoint_key, shared=(StoreUnavailable,)
        )
        # Closing the last connection checkpoints the WAL and removes it: do it at exit
        # rather than leave a large -wal file behind.
        atexit.register(self.close)
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create the directory for {self.path}: {exc}") from exc
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # --- connections --------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._closed:
            if self._closed:
                if conn is not None:
                    self._local.conn = None
                    with suppress(sqlite3.Error):
                        conn.close()
                raise StoreError(f"the store {self.url} is closed")
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=60
                )
                conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
            self._local.conn = conn
            self._opened.add(conn)
        return conn

    def _connection(self) -> _Borrowed:
        return _Borrowed(self._conn())

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        conn = self._conn()
        with self._writing:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _run(self, conn: Connection, sql: str, params: Any = ()) -> Any:
        if not _writes(sql):
            return conn.execute(sql, params)
        # A write outside a transaction is a transaction of its own, open until its cursor
        # is done: run it to the end under the lock.
        with self._writing:
            cursor = conn.execute(sql, params)
            return _Done(cursor.fetchall(), cursor.rowcount)

    async def record_checkpoint_async(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Commit:
        """Group commit: what executions on event loops commit while a write is in flight is
        written by the committer's thread in one transaction (one lock, one WAL append and
        commit instead of one each); each caller resumes only once its own row is durable.
        Sync callers keep the single statement of `record_checkpoint` (a lone flow pays no
        hand-off, and threads each block on their own write anyway)."""
        return await self._group.commit_async(
            CheckpointCommit(execution_id, token, row, tuple(events))
        )

    def _write_checkpoints(self, batch: list[CheckpointCommit]) -> list[Commit]:
        """A batch of the group commit: one statement (a transaction with the events' insert
        when the calls logged any), so a lost lease makes its own row LOST and no other."""
        if len(batch) == 1:
            one = batch[0]
            return [self.record_checkpoint(one.execution_id, one.token, one.row, one.events)]
        rows = json_bytes([(c.execution_id, c.token, *checkpoint_values(c.row)) for c in batch])
        logged = any(c.events for c in batch)
        with self._transaction() if logged else self._connection() as conn:
            written = {
                (r[0], r[1]): r[2] for r in self._run(conn, _BATCH, (rows.decode(),)).fetchall()
            }
            if logged:
                events = [
                    event_params(e)
                    for c in batch
                    if (c.execution_id, c.row.position) in written
                    for e in c.events
                ]
                self._executemany(conn, INSERT_EVENT, events)
        outcomes = []
        for c in batch:
            cancel = written.get((c.execution_id, c.row.position))
            outcomes.append(
                Commit.LOST if cancel is None else Commit.CANCEL_REQUESTED if cancel
                else Commit.COMMITTED
            )  # fmt: skip
        return outcomes

    def _executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._writing:
            conn.executemany(sql, rows)  # type: ignore[attr-defined]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close this thread's connection and those of finished threads; connections of
        threads still running are closed by those threads, at their next use or their end."""
        self._closed = True
        self._opened.close_mine_and_finished()
        if getattr(self._local, "conn", None) is not None:
            self._local.conn = None

    def maintain(self) -> None:
        try:
            if os.path.getsize(self.path + "-wal") < _WAL_LIMIT:
                return
        except OSError:
            return
        # A separate connection with a short busy timeout: if readers are in the way, the
        # next call tries again rather than stalling the caller.
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.2)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.Error:
            pass


class _Opened:
    """The store's connections, each with the thread that opened it, closed when that thread
    ends: threads come and go (a threaded web server calling `flow.run()`), and a connection
    left open for each would pile up file descriptors until the process ran out.

    Only its own thread may close a connection while that thread lives (closing a connection
    another thread is using crashes the interpreter). So each thread keeps a marker in a
    thread-local, which CPython drops when the thread ends; the marker's finalizer, run then,
    closes the connection. Opening a connection also closes those of threads that have ended
    while something else kept their marker alive."""

    __slots__ = ("_entries", "_keys", "_lock", "_marks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._keys = itertools.count()
        self._marks = threading.local()

    def add(self, conn: sqlite3.Connection) -> None:
        key = next(self._keys)
        mark = _Mark()
        done = weakref.finalize(mark, self._drop, key)
        # At exit, threads still running may be using their connections: `close()` (atexit)
        # closes only those that are safe to close.
        done.atexit = False
        self._marks.mark = mark
        with self._lock:
            ended = [k for k, (owner, _) in self._entries.items() if not owner.is_alive()]
            stale = [self._entries.pop(k)[1] for k in ended]
            self._entries[key] = (threading.current_thread(), conn)
        for old in stale:
            _close(old)

    def _drop(self, key: int) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            _close(entry[1])

    def close_mine_and_finished(self) -> None:
        """Close the calling thread's connection and those of threads that have ended; a
        running thread's is closed by that thread, at its next use or when it ends."""
        me = threading.current_thread()
        with self._lock:
            safe = [
                k for k, (owner, _) in self._entries.items() if owner is me or not owner.is_alive()
            ]
            conns = [self._entries.pop(k)[1] for k in safe]
        for conn in conns:
            _close(conn)


class _Mark:
    """Dies with the thread whose thread-local holds it (see `_Opened`)."""

    __slots__ = ("__weakref__",)


def _close(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        conn.close()


_WRITE_VERB = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE)\b")
_kinds: dict[str, bool] = {}


def _writes(sql: str) -> bool:
    """Whether a statement writes (cached per statement text: they are constants)."""
    found = _kinds.get(sql)
    if found is None:
        text = sql.lstrip().upper()
        found = not text.startswith("SELECT") or _WRITE_VERB.search(text) is not None
        if len(_kinds) < 10_000:
            _kinds[sql] = found
    return found


class _Done:
    """A write's cursor, run to its end: its rows and row count."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


class _Borrowed:
    """The thread's own connection as a context manager; a class, not a generator, because
    it sits on the hot path of every checkpoint commit."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None
