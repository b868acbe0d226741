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
import operator
import os
import re
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any, TypeVar, cast

from ..errors import (
    ConfigurationError,
    NotATetherStore,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreOpenedReadOnly,
    StoreReadOnly,
    StoreUnavailable,
)
from ._base import CheckpointRow, Commit, EventRow
from ._group_commit import CheckpointCommit, Finish, GroupCommit, rejoins
from ._redact import redact
from ._sql import CHECKPOINT_FIELDS, Connection, SqlStore, checkpoint_values, event_params
from ._sql_common import EXECUTION_COLUMNS, INSERT_EVENT, RELEASED
from ._sql_migrations import check_opening

# Rows per statement of a group-commit batch (see _batch_rows): under SQLite's 32,766
# parameters, and a batch this large is rare.
_MOST_ROWS = 1024
# Execution rows have 29 columns: 1024 of them stay under SQLite's 32,766 bound parameters.
_MOST_STARTS = 1024
X = TypeVar("X")


@cache
def _checkpoints_statement(size: int, *, returning: bool = True) -> str:
    """A batch of `size` checkpoint commits as one statement (what
    `_sql_common.RECORD_CHECKPOINT` is for one row: the same fence and conflict rule; keep
    the two in step). Each row is
    [execution id, token, *CHECKPOINT_FIELDS], fenced on its own lease token; a 'retrying'
    row is replaced and a final one never; RETURNING names the rows written, each with its
    execution's cancel request (without `returning`, the row count says whether all were).
    Bound parameters cost less per row than one JSON array taken apart by json_extract
    (measured: benchmarks/writer_rows.py)."""
    one = f"({', '.join('?' * (2 + len(CHECKPOINT_FIELDS)))})"
    tail = (
        " RETURNING execution_id, position, "
        "(SELECT cancel_requested FROM executions WHERE id = checkpoints.execution_id)"
        if returning
        else ""
    )
    return (
        f"INSERT INTO checkpoints (execution_id, {', '.join(CHECKPOINT_FIELDS)}) "
        "SELECT v.column1, "
        + ", ".join(f"v.column{i}" for i in range(3, 3 + len(CHECKPOINT_FIELDS)))
        + f" FROM (VALUES {', '.join([one] * size)}) v WHERE EXISTS (SELECT 1 FROM executions e "
        "WHERE e.id = v.column1 AND e.lease_token = v.column2) "
        "ON CONFLICT (execution_id, position) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in CHECKPOINT_FIELDS if c != "position")
        + " WHERE checkpoints.status = 'retrying'"
        + tail
    )


@cache
def _ends_statement(size: int, *, returning: bool = True) -> str:
    """A batch of `size` executions' ends as one statement (what `SqlStore.finish` is for
    one; keep the two in step): [execution id, token, status, result, error, now] per row,
    each fenced on its own lease token; RETURNING names the executions ended (without
    `returning`, the row count says whether all were). A child's end resolves its parent's
    wait by the trigger of migration 0010, row by row, as for one."""
    one = "(?, ?, ?, ?, ?, ?)"
    return (
        "UPDATE executions SET status = v.column3, result = v.column4, error = v.column5, "
        f"{RELEASED}, wake_at = NULL, finished_at = v.column6, updated_at = v.column6 "
        f"FROM (VALUES {', '.join([one] * size)}) v "
        "WHERE executions.id = v.column1 AND executions.lease_token = v.column2"
        + (" RETURNING executions.id" if returning else "")
    )


@cache
def _starts_statement(size: int) -> str:
    """`size` new keyless executions as one statement: rows of NULLs pad it to a power of two
    (see `_batch_rows`) and are left out. One step for the whole batch, where
    `executemany` stepped (and let go of the GIL) once per row."""
    count = len(EXECUTION_COLUMNS.split(", "))
    one = f"({', '.join('?' * count)})"
    return (
        f"INSERT INTO executions ({EXECUTION_COLUMNS}) SELECT "
        + ", ".join(f"v.column{i}" for i in range(1, count + 1))
        + f" FROM (VALUES {', '.join([one] * size)}) v WHERE v.column1 IS NOT NULL"
    )


class _NotAll(Exception):
    """A fast batch statement wrote fewer rows than it was given: the batch is rolled back
    and written again, row by row answered (see `SQLiteStore._write_group`)."""


def _batch_rows(
    items: Sequence[X],
    width: int,
    flat: Callable[[Sequence[X]], list[Any]],
    most: int = _MOST_ROWS,
) -> Iterator[tuple[int, list[Any], int]]:
    """(rows per statement, its parameters, the real rows among them) for each statement of
    a batch of `items`, each a row of `width` values, at most `most` real rows each; `flat`
    gives a chunk's values, row after row. Padded with rows of NULLs (the fence, or a
    start's `WHERE`, matches no NULL id: they write nothing) up to a power of two, so that a
    handful of statement texts serve every batch size, each compiled once per connection
    (sqlite3 keeps them)."""
    for start in range(0, len(items), most):
        chunk = items[start : start + most]
        size = 1 << (len(chunk) - 1).bit_length()
        params = flat(chunk)
        params += [None] * (width * (size - len(chunk)))
        yield size, params, len(chunk)


def _flat(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [v for r in rows for v in r]


def _into_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Put the file in WAL mode, which it keeps. Asked only when it is not in it already:
    the switch needs the file to itself and SQLite refuses it at once (SQLITE_BUSY, no busy
    handler) while another connection writes, so a connection opening beside a busy writer
    of another process failed. Two processes opening a new file at once both switch: the
    refused one tries again, within the busy timeout."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != _BUSY or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _commit_params(commits: Sequence[CheckpointCommit]) -> list[Any]:
    """The parameters of `_checkpoints_statement`, row after row: [execution id, token,
    *CHECKPOINT_FIELDS] each. Straight into one list: a tuple per row would be a thousand
    objects alive through a statement of a thousand rows, walked by any collection the loop
    thread runs meanwhile."""
    params: list[Any] = []
    for c in commits:
        params += (c.execution_id, c.token)
        params += checkpoint_values(c.row)
    return params


_end_values = operator.attrgetter(*Finish.COLUMNS)


def _end_params(ends: Sequence[Finish]) -> list[Any]:
    """The parameters of `_ends_statement`, row after row."""
    params: list[Any] = []
    for f in ends:
        params += _end_values(f)
    return params


# The values of a row of each batch statement.
_COMMIT_WIDTH = 2 + len(CHECKPOINT_FIELDS)
_END_WIDTH = len(Finish.COLUMNS)


# SQLite's primary result codes (the low byte of an extended code) that say what failed.
_BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _PROTOCOL, _NOTADB = (
    5, 6, 7, 8, 10, 11, 13, 14, 15, 26,
)  # fmt: skip
# The first 16 bytes of every SQLite database file.
_MAGIC = b"SQLite format 3\x00"
# Readers that overlap without pause keep SQLite from restarting the WAL, so it can grow
# large under a burst of work; past this size `maintain()` checkpoints and truncates it.
_WAL_LIMIT = 64 * 1024 * 1024
# WAL pages a commit may leave before it checkpoints them into the file (SQLite's default is
# 1,000). A checkpoint runs inside the commit that crosses the line, under `_writing`, and
# syncs the WAL and the file (two fdatasyncs) whatever its size, while every other writer of
# the process waits: a loop of 10,000 `run()` starts beside their running agents (150,000 to
# 200,000 WAL frames, each start's autocommit writing one per B-tree its row enters) made
# about 150 checkpoints, 1.3-1.5 s of fdatasync. Ten times fewer, each copying pages that
# were written again and again only once: 17-20, 0.3-0.4 s. 10,000 pages (40 MiB at the
# 4 KiB page size) stays under `_WAL_LIMIT`; the durability of a commit does not depend on it.
_WAL_CHECKPOINT_PAGES = 10_000


def path_from_url(url: str) -> str:
    rest = url.partition("://")[2]
    path = rest[1:] if rest.startswith("/") else rest
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ConfigurationError(
            f"{redact(url)!r} names no file; an in-memory database is not durable. "
            "Use sqlite:///path/to/tether.db"
        )
    return os.path.abspath(path)


class SQLiteStore(SqlStore):
    """See the module's docstring. `readonly=True` opens an existing tether database without
    writing anything to it (no migration, no journal switch; usable on read-only media);
    every write then raises StoreOpenedReadOnly."""

    dialect = "sqlite"
    any_table_is_foreign = True

    def __init__(
        self,
        url: str,
        *,
        durability: str = "normal",
        busy_timeout: float = 60.0,
        readonly: bool = False,
    ) -> None:
        if durability not in ("normal", "full"):
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        if not busy_timeout > 0:
            raise ConfigurationError(f"busy_timeout must be above 0 seconds, not {busy_timeout!r}")
        self.url = url
        self.readonly = readonly
        self.busy_timeout = float(busy_timeout)
        # Set once a read or write finds the file damaged: from then on nothing is written
        # (a write into corrupt pages can spread the damage), and every call says why.
        self._corrupt: StoreCorrupt | None = None
        self.path = path_from_url(url)
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        # Each connection with the thread that owns it, closed when that thread ends.
        self._opened = _Opened()
        self._closed = False
        # Writes of this process's threads, one at a time (see the module's docstring).
        self._writing = threading.RLock()
        # Checkpoint commits of executions on an event loop, and executions' ends: written
        # by one thread, many in one transaction (see record_checkpoint_async, finish).
        self._group: GroupCommit[CheckpointCommit | Finish, Commit | bool] = GroupCommit(
            self._write_group, key=None, shared=(StoreUnavailable, StoreCorrupt),
            rejoins=rejoins,
        )  # fmt: skip
        # Closing the last connection checkpoints the WAL and removes it: do it at exit
        # rather than leave a large -wal file behind.
        atexit.register(self.close)
        # How this store's connections open the file (see _open_uri); looked at before the
        # first connection, which switches a writable store's journal to WAL.
        self._uri = ""
        try:
            if self._inspect() and readonly:
                raise ConfigurationError(
                    f"no tether database at {self.path}; reading does not create one (the "
                    "first run() of a flow, or `tether worker --create`, makes it)"
                )
            if readonly:
                return
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the directory for {self.path}: {exc}"
                ) from exc
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _inspect(self) -> bool:
        """Look at the file before anything is written to it: whether it is new (missing,
        empty, or a SQLite database with no tables: a write open makes it tether's), else
        check that it is tether's and that its schema fits (`check_opening`). A file that is
        not SQLite, or another application's database, is refused untouched: its bytes, its
        journal mode and its neighbour files stay as they were."""
        try:
            with open(self.path, "rb") as file:
                head = file.read(len(_MAGIC) + 3)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite database {self.path} [{type(exc).__name__}: "
                f"{exc.strerror or exc}]: check that it is a file this user may read"
            ) from exc
        if not head:
            return True  # an empty file: SQLite makes it a database on the first write
        if not head.startswith(_MAGIC):
            raise NotATetherStore(
                f"{self.path} is not a tether database: it is not a SQLite database at all "
                "(its first bytes say so). Nothing was written to it. Point --db / TETHER_DB "
                "at tether's own database."
            )
        if self.readonly:
            self._uri = _open_uri(self.path, head)
        try:
            conn = sqlite3.connect(_look_uri(self.path, head), uri=True, timeout=self.busy_timeout)
            try:
                tables = {
                    r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                version = self._schema_version(conn, tables)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise self._fault(exc, "cannot read it") from exc
        return check_opening(
            self.path, self.dialect, tables, version,
            readonly=self.readonly, any_table_is_foreign=True,
        )  # fmt: skip

    # --- connections --------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if self._corrupt is not None:
            raise StoreCorrupt(str(self._corrupt))
        if conn is None or self._closed:
            if self._closed:
                if conn is not None:
                    self._local.conn = None
                    with suppress(sqlite3.Error):
                        conn.close()
                raise StoreError(f"the store {self.url} is closed")
            try:
                conn = sqlite3.connect(
                    self._uri or self.path,
                    uri=bool(self._uri),
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self.busy_timeout,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                if self.readonly:
                    # Belt and braces over mode=ro: not even a temporary table is written.
                    conn.execute("PRAGMA query_only = 1")
                else:
                    _into_wal(conn, self.busy_timeout)
                    conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                    conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
                    conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_CHECKPOINT_PAGES}")
            except sqlite3.Error as exc:
                raise self._fault(exc, "cannot open it") from exc
            self._local.conn = conn
            self._opened.add(conn)
        return conn

    def _connection(self) -> _Borrowed:
        return _Borrowed(self, self._conn())

    def _refuse_write(self) -> StoreOpenedReadOnly:
        return StoreOpenedReadOnly(
            f"the store {self.path} was opened read-only (readonly=True, or a reading "
            "command): nothing was written. Open it without readonly to write."
        )

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self.readonly:
            raise self._refuse_write()
        conn = self._conn()
        with self._writing:
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (a full disk does), or the COMMIT
                    # itself failed (busy) and left the transaction open: end it either way,
                    # so the thread's connection is usable again.
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._fault(exc) from exc

    def _fault(self, exc: sqlite3.Error, doing: str = "") -> StoreError | StoreOpenedReadOnly:
        """The dialect's error classification: what a driver error means, as a typed error
        with advice. Transient ones are `StoreUnavailable` (the engine retries, then
        releases the execution); a damaged file is `StoreCorrupt`, and stops all writes."""
        return classify(exc, self, doing)

    def _run(self, conn: Connection, sql: str, params: Any = ()) -> Any:
        if not _writes(sql):
            return conn.execute(sql, params)
        if self.readonly:
            raise self._refuse_write()
        # A write outside a transaction is a transaction of its own, open until its cursor
        # is done: run it to the end under the lock.
        with self._writing:
            cursor = conn.execute(sql, params)
            return _Done(cursor.fetchall(), cursor.rowcount)

    def _count(self, sql: str, params: Any = ()) -> int:
        # The path of every lone checkpoint commit (`record_checkpoint`): what `_run` does for
        # a write, without the borrowed-connection and finished-cursor objects. Run to its end
        # under the lock, as there: a statement with RETURNING would hold its transaction open
        # until its rows are read.
        conn = self._conn()
        try:
            writes = _kinds.get(sql)
            if not (_writes(sql) if writes is None else writes):
                cursor = conn.execute(sql, params)
            elif self.readonly:
                raise self._refuse_write()
            else:
                with self._writing:
                    cursor = conn.execute(sql, params)
                    cursor.fetchall()
            return int(cursor.rowcount)
        except sqlite3.Error as exc:
            raise classify(exc, self) from exc

    def record_checkpoint_async(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Awaitable[Commit]:
        """Group commit: what executions on event loops commit while a write is in flight is
        written by the committer's thread in one transaction (one lock, one WAL append and
        commit instead of one each); each caller resumes only once its own row is durable.
        Sync callers keep the single statement of `record_checkpoint` (a lone flow pays no
        hand-off, and threads each block on their own write anyway)."""
        # The writer answers a checkpoint with a Commit, an end with a bool (see _write_group).
        return self._group.commit_async(  # type: ignore[return-value]
            CheckpointCommit(execution_id, token, row, tuple(events))
        )

    def finish(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        now: float,
    ) -> bool:
        # Ends of executions on threads (several finishing at once) share a transaction too;
        # a lone one is written at once on its own thread, as alone (see _group_commit).
        return bool(self._group.commit(Finish(execution_id, token, status, result, error, now)))

    def finish_async(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        now: float,
    ) -> Awaitable[bool]:
        """The end of an execution on an event loop, in the committer's next batch with
        other executions' checkpoints and ends: no thread hop and no transaction of its own
        (a burst of 10,000 ends is a few commits, not 10,000)."""
        return self._group.commit_async(  # type: ignore[return-value]
            Finish(execution_id, token, status, result, error, now)
        )

    def _write_group(self, batch: list[CheckpointCommit | Finish]) -> list[Commit | bool]:
        """A batch of the group commit: one statement per kind (checkpoints, their events,
        ends), in one transaction when there is more than one. Each row is fenced on its own
        lease token, so a lost lease makes its own item LOST (False) and no other."""
        if len(batch) == 1:
            one = batch[0]
            if isinstance(one, Finish):
                return [self._finish_one(one)]
            return [self.record_checkpoint(one.execution_id, one.token, one.row, one.events)]
        try:
            return self._write_all(batch)
        except _NotAll:
            return self._write_each(batch)

    def _insert_new(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        for size, params, _ in _batch_rows(rows, len(rows[0]), _flat, _MOST_STARTS):
            self._run(conn, _starts_statement(size), params)

    def _write_all(self, batch: list[CheckpointCommit | Finish]) -> list[Commit | bool]:
        """The usual batch, where every row is written (every lease held, no final row in
        the way): each statement runs to its end in one step, where RETURNING made SQLite
        hand back each row in a step of its own, and each step lets go of the GIL. This
        thread then waited to get it back from a busy event loop once per row (up to the
        5 ms switch interval each time): the writer, not the database, was the bottleneck of
        10,000 agents. Raises _NotAll (rolled back) when a statement wrote fewer rows."""
        ends = [f for f in batch if type(f) is Finish]
        commits = cast(list[CheckpointCommit], batch if not ends else [
            c for c in batch if type(c) is CheckpointCommit
        ])  # fmt: skip
        cancelled: set[str] = set()
        with self._transaction() as conn:
            if commits:
                for size, params, count in _batch_rows(commits, _COMMIT_WIDTH, _commit_params):
                    done = self._run(conn, _checkpoints_statement(size, returning=False), params)
                    if done.rowcount != count:
                        raise _NotAll
                events = [event_params(e) for c in commits if c.events for e in c.events]
                if events:
                    self._executemany(conn, INSERT_EVENT, events)
            if ends:
                for size, params, count in _batch_rows(ends, _END_WIDTH, _end_params):
                    done = self._run(conn, _ends_statement(size, returning=False), params)
                    if done.rowcount != count:
                        raise _NotAll
        if commits:
            cancelled = self._cancels_after()
        if not ends and not cancelled:
            return [Commit.COMMITTED] * len(batch)  # the usual batch: no lookup per item
        return [
            True
            if type(item) is Finish
            else Commit.CANCEL_REQUESTED
            if item.execution_id in cancelled
            else Commit.COMMITTED
            for item in batch
        ]

    def _cancels_after(self) -> set[str]:
        """The executions with a cancel requested, read once the batch is committed: a plain
        WAL read, outside the transaction and `_writing`. Inside, its step let go of the GIL
        and then waited for it behind the busy loop thread with the lock held, while every
        other writer of the process (a `run()` start) waited on the lock. It sees every
        request committed before the batch (what the read inside saw: nothing commits while
        the batch holds the file's write lock) and any committed since, which the caller
        would otherwise learn at its next commit. A read that fails here does not undo the
        durable batch: its commits answer COMMITTED, and the heartbeat, which reads the
        cancel requests too (`cancel_requests`), tells their executions."""
        try:
            with self._connection() as conn:
                # A cancel request is rare: one read of the (indexed, usually empty) set.
                return {
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM executions WHERE status = 'running' "
                        "AND cancel_requested = 1"
                    ).fetchall()
                }
        except (StoreError, sqlite3.Error):
            return set()

    def _write_each(self, batch: list[CheckpointCommit | Finish]) -> list[Commit | bool]:
        """A batch in which some row is not written (a lease lost, a call already final):
        RETURNING names the rows that were, so each item gets its own answer."""
        commits = [c for c in batch if isinstance(c, CheckpointCommit)]
        ends = [f for f in batch if isinstance(f, Finish)]
        logged = any(c.events for c in commits)
        written: dict[tuple[str, str], Any] = {}
        ended: set[str] = set()
        # One statement is a transaction of its own; more share one.
        alone = (
            len(commits) <= _MOST_ROWS
            and len(ends) <= _MOST_ROWS
            and (bool(commits) + bool(ends) + logged == 1)
        )
        with self._connection() if alone else self._transaction() as conn:
            if commits:
                for size, params, _ in _batch_rows(commits, _COMMIT_WIDTH, _commit_params):
                    for r in self._run(conn, _checkpoints_statement(size), params).fetchall():
                        written[(r[0], r[1])] = r[2]
            if logged:
                events = [
                    event_params(e)
                    for c in commits
                    if (c.execution_id, c.row.position) in written
                    for e in c.events
                ]
                self._executemany(conn, INSERT_EVENT, events)
            if ends:
                for size, params, _ in _batch_rows(ends, _END_WIDTH, _end_params):
                    found = self._run(conn, _ends_statement(size), params).fetchall()
                    ended.update(r[0] for r in found)
        outcomes: list[Commit | bool] = []
        for item in batch:
            if isinstance(item, Finish):
                outcomes.append(item.execution_id in ended)
                continue
            cancel = written.get((item.execution_id, item.row.position))
            outcomes.append(
                Commit.LOST if cancel is None else Commit.CANCEL_REQUESTED if cancel
                else Commit.COMMITTED
            )  # fmt: skip
        return outcomes

    def _finish_one(self, item: Finish) -> bool:
        return SqlStore.finish(
            self, item.execution_id, item.token, status=item.status, result=item.result,
            error=item.error, now=item.now,
        )  # fmt: skip

    def _executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.readonly:
            raise self._refuse_write()
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

    def _tables(self, conn: Connection) -> set[str]:
        return {r[0] for r in self._run(conn, "SELECT name FROM sqlite_master WHERE type='table'")}

    def maintain(self) -> None:
        if self.readonly:
            return
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


def _look_uri(path: str, head: bytes) -> str:
    """The URI to look at a file with before opening it as a store (`_inspect`): like
    `_open_uri`, except that a WAL database without a -wal file is read `immutable=1`, as
    the file alone. Nobody has it open then (SQLite removes the -wal when the last
    connection closes, and its writers change the file only by checkpointing a -wal), and a
    `mode=ro` reader would leave -wal and -shm files beside another application's database."""
    if _wal_mode(head) and not os.path.exists(path + "-wal"):
        return f"file:{urllib.parse.quote(path)}?immutable=1"
    return _open_uri(path, head)


def _wal_mode(head: bytes) -> bool:
    # Byte 18 of the header is 2 for a WAL database, 1 for a rollback-journal one (which
    # mode=ro reads without making any file).
    return len(head) > 18 and head[18] == 2


def _open_uri(path: str, head: bytes) -> str:
    """The URI that reads a database without writing: `mode=ro`, which sees what writers
    commit meanwhile (and, for a WAL database, makes the -wal and -shm files beside it if
    they are missing, as every reader of one does). On a read-only file system those cannot
    be made: a WAL database whose -wal is gone or empty (closed cleanly, so nothing is in
    it) opens `immutable=1` instead, which reads the file alone; one whose -wal holds
    commits is read with `mode=ro` only when its -shm is there too, since `immutable` would
    not see them."""
    uri = f"file:{urllib.parse.quote(path)}"
    if not (_wal_mode(head) and _read_only(path)):
        return uri + "?mode=ro"
    try:
        logged = os.path.getsize(path + "-wal") > 0
    except OSError:
        logged = False
    if not logged:
        return uri + "?immutable=1"
    if not os.path.exists(path + "-shm"):
        raise StoreReadOnly(
            f"{path} is on a read-only file system with commits in its {path}-wal file but "
            f"no {path}-shm file, and SQLite cannot read that log without it. Copy the three "
            "files to writable storage (or remount read-write) and open that."
        )
    return uri + "?mode=ro"


def classify(
    exc: sqlite3.Error, store: SQLiteStore, doing: str = ""
) -> StoreError | StoreOpenedReadOnly:
    """A driver error of the SQLite database `store` as the `StoreError` it means."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _READONLY and store.readonly:
        return store._refuse_write()
    where = f"the SQLite database {store.path}" + (f" ({doing})" if doing else "")
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    said = f"{name}: {exc}"
    if primary in (_BUSY, _LOCKED):
        return StoreBusy(
            f"{where} stayed locked by another connection for over the busy timeout "
            f"({store.busy_timeout:g}s) [{said}]. Another process holds a long write "
            "transaction; end it, or raise the timeout (configure(busy_timeout=...) or "
            "TETHER_BUSY_TIMEOUT). Executions are retried, then released, never failed."
        )
    if primary == _FULL:
        return StoreFull(
            f"the disk holding {where} is full [{said}]. Free space: executions released "
            "meanwhile continue by themselves once it can be written again."
        )
    if primary == _READONLY or (primary in (_CANTOPEN, _IOERR) and _read_only(store.path)):
        return StoreReadOnly(
            f"{where} is read-only [{said}]. Make the file, its directory and its -wal and "
            "-shm files writable (or remount the file system read-write); executions "
            "released meanwhile continue once it is."
        )
    if primary in (_CORRUPT, _NOTADB):
        corrupt = StoreCorrupt(
            f"{where} is damaged [{said}]: tether stops writing to it. Restore it from a "
            "backup (or salvage it with `sqlite3 FILE .recover`) and start again."
        )
        store._corrupt = corrupt
        return corrupt
    if primary in (_IOERR, _CANTOPEN, _NOMEM, _PROTOCOL):
        return StoreUnavailable(
            f"{where} could not be read or written [{said}]: the disk or file system failed. "
            "Executions are retried, then released, never failed."
        )
    return StoreError(f"{where} failed [{said}]")


def _read_only(path: str) -> bool:
    """Whether the file system holding `path` is mounted read-only (SQLite then fails to
    open its -shm file and says only "unable to open database file")."""
    try:
        return bool(os.statvfs(os.path.dirname(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
    it sits on the hot path of every checkpoint commit. A driver error raised in its block
    leaves it classified (see `classify`)."""

    __slots__ = ("conn", "store")

    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error):
            raise classify(exc, self.store) from exc
