"""The embedded store: one SQLite file in WAL mode, shared safely by threads and processes.

Durability: WAL with `synchronous=NORMAL` (the default) makes every commit
survive the death of the process (SIGKILL, OOM kill), which is the failure a
durable runtime exists for; a power cut may lose the last commits but never
corrupts the file. `durability="full"` syncs every commit to disk instead.

Concurrency: each thread gets its own connection. Multi-statement writes take
the write lock up front (`BEGIN IMMEDIATE`) so two writers never deadlock on a
read-to-write upgrade, and a generous busy timeout rides out lock contention
between processes instead of failing with "database is locked".

Every query lives in `_sql.SqlStore`; this module only supplies connections.
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from ..errors import ConfigurationError, StoreError, StoreUnavailable
from ._base import CheckpointRow, Commit, EventRow
from ._group_commit import CheckpointCommit, GroupCommit, checkpoint_key
from ._sql import Connection, SqlStore

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
        # Each connection with the thread that owns it: only that thread may close it while
        # it lives (closing a connection another thread is using crashes the interpreter).
        self._opened: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._opened_lock = threading.Lock()
        self._closed = False
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
            with self._opened_lock:
                self._opened.append((threading.current_thread(), conn))
        return conn

    def _connection(self) -> _Borrowed:
        return _Borrowed(self._conn())

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

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

    def _executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)  # type: ignore[attr-defined]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close this thread's connection and those of finished threads; connections of
        threads still running are closed by those threads, at their next use."""
        self._closed = True
        me = threading.current_thread()
        with self._opened_lock:
            keep = []
            for owner, conn in self._opened:
                if owner is me or not owner.is_alive():
                    with suppress(sqlite3.Error):
                        conn.close()
                else:
                    keep.append((owner, conn))
            self._opened = keep
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
