"""The production store: PostgreSQL through psycopg 3 and a connection pool.

Every query lives in `_sql.SqlStore`; this module supplies connections from a
pool (autocommit, so a single statement is its own transaction), transactions,
the `%s` placeholder style, row locks (`FOR UPDATE`, and `FOR UPDATE SKIP
LOCKED` so that claimers never wait on each other), and an advisory lock that
serializes schema migrations when several workers start at once.

Checkpoint commits and executions' ends are the one query written here: those
of the executions this process runs are *group committed* (`_group_commit.py`),
many in one fenced statement, because a statement and its commit cost far more
than a row (round trip, transaction, WAL flush), and the time one commit takes
is what lets the next batch gather.

Install the driver with `pip install -e '.[postgres]'` in a clone of tether.
"""

from __future__ import annotations

import asyncio
import threading
import time
import typing
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from ..errors import (
    CommitUnknown,
    ConfigurationError,
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
from ._json_bytes import json_bytes as _json
from ._redact import redact
from ._sql import (
    CHECKPOINT_FIELDS,
    RELEASED,
    Connection,
    SqlStore,
    checkpoint_values,
    event_params,
    to_format_style,
)

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

# pg_advisory_xact_lock key for migrations: any constant unique to tether.
_MIGRATION_LOCK = 0x7E7E_7E01


# The stored fields of a checkpoint and of an event, in column order; a batch travels as one
# JSON array per row: [execution id, token, *checkpoint fields] / [*event fields].
_EVENT_FIELDS = [f.name for f in fields(EventRow) if f.name != "id"]
_PG_TYPES = {int: "bigint", float: "double precision"}  # anything else is text


def _from_json(row_type: type, names: Sequence[str], *, first: int = 0) -> str:
    """`(r->>i)::type AS name` for each field: the i-th element of the JSON array `r`, typed
    after the row dataclass's annotation."""
    hints = typing.get_type_hints(row_type)
    out = []
    for i, name in enumerate(names, start=first):
        kinds = [t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None)]
        cast = _PG_TYPES.get(kinds[0])
        out.append(f"(r->>{i})::{cast} AS {name}" if cast else f"r->>{i} AS {name}")
    return ", ".join(out)


# A checkpoint row's stored fields, as `checkpoint_values` gives them (see `_read_back`).
_READ_BACK = ", ".join(f"c.{c}" for c in CHECKPOINT_FIELDS)
_FINISH_IDS = "ARRAY(SELECT r->>0 FROM jsonb_array_elements(%(finishes)s::jsonb) r)"


@lru_cache(maxsize=4)
def _group_statement(*, events: bool, finishes: bool) -> str:
    """One statement for a batch of checkpoint commits (as `_sql.RECORD_CHECKPOINT` is for
    one) and of executions' ends (as `SqlStore.finish`; keep the two in step).

    Rows come in as JSON arrays (measured cheaper for the client than an array parameter per
    column), so the text does not change with the batch size and stays a prepared statement.
    Each checkpoint row is fenced by the join on its execution's lease token; a 'retrying' row
    is replaced, a final one never; a checkpoint's events are written only if its row is; an
    execution finishes only under its token. It is one statement, so one transaction. The
    result names the checkpoint rows written with their executions' cancel requests, then the
    executions finished (position NULL). Columns come from CHECKPOINT_COLUMNS and types from
    CheckpointRow/EventRow, so a new field needs no edit here."""
    columns = ", ".join(CHECKPOINT_FIELDS)
    sql = (
        "WITH batch AS (SELECT r->>0 AS execution_id, r->>1 AS token, "
        f"{_from_json(CheckpointRow, CHECKPOINT_FIELDS, first=2)} "
        "FROM jsonb_array_elements(%(rows)s::jsonb) r), "
        f"written AS (INSERT INTO checkpoints (execution_id, {columns}) "
        f"SELECT b.execution_id, {', '.join(f'b.{c}' for c in CHECKPOINT_FIELDS)} FROM batch b "
        # The fence: one primary-key probe per row (LIMIT 1 keeps it a nested loop).
        "CROSS JOIN LATERAL (SELECT 1 FROM executions e WHERE e.id = b.execution_id "
        "AND e.lease_token = b.token LIMIT 1) held "
        "ON CONFLICT (execution_id, position) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in CHECKPOINT_FIELDS if c != "position")
        + " WHERE checkpoints.status = 'retrying' RETURNING execution_id, position, "
        "(SELECT cancel_requested FROM executions e WHERE e.id = checkpoints.execution_id))"
    )
    if events:
        sql += (
            f", logged AS (INSERT INTO events ({', '.join(_EVENT_FIELDS)}) "
            f"SELECT {', '.join(f'v.{c}' for c in _EVENT_FIELDS)} FROM (SELECT n, "
            f"{_from_json(EventRow, _EVENT_FIELDS)} "
            "FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS x(r, n)) v "
            "JOIN written w ON w.execution_id = v.execution_id AND w.position = v.position "
            "ORDER BY v.n)"  # ids (the events' order) follow the order they were logged in
        )
    if finishes:
        sql += (
            ", finished AS (UPDATE executions x SET status = f.status, result = f.result, "
            f"error = f.error, {RELEASED}, wake_at = NULL, finished_at = f.now, "
            "updated_at = f.now "
            f"FROM (SELECT {_from_json(Finish, Finish.COLUMNS)} "
            "FROM jsonb_array_elements(%(finishes)s::jsonb) r) f "
            "WHERE x.id = f.execution_id AND x.lease_token = f.token "
            # A child's end locks its parent (migration 0010): written alone, one such lock
            # per transaction, so that two batches never lock parents in opposite orders.
            "AND x.parent_id IS NULL "
            # The ids again as an array: the planner then finds the rows by primary key
            # instead of hashing the batch against a scan of every execution.
            f"AND x.id = ANY({_FINISH_IDS}) RETURNING x.id), "
            "alone AS (SELECT a.id FROM executions a "
            f"WHERE a.id = ANY({_FINISH_IDS}) AND a.parent_id IS NOT NULL)"
        )
    sql += " SELECT * FROM written"
    if finishes:
        # A finish is reported with position NULL; one left to write alone with '' (no
        # position is empty).
        sql += " UNION ALL SELECT id, NULL, NULL FROM finished"
        sql += " UNION ALL SELECT id, '', NULL FROM alone"
    return sql


@lru_cache(maxsize=4)
def _prepared_group_statement(*, events: bool, finishes: bool) -> tuple[bytes, bytes, list[str]]:
    """`_group_statement` for libpq: its name when prepared, its text with `$n` parameters,
    and the names of the parameters in that order."""
    sql = _group_statement(events=events, finishes=finishes)
    order = ["rows", *(["events"] if events else []), *(["finishes"] if finishes else [])]
    for i, key in enumerate(order, start=1):
        sql = sql.replace(f"%({key})s", f"${i}")
    return f"tether_group_{int(events)}{int(finishes)}".encode(), sql.encode(), order


class PostgresStore(SqlStore):
    dialect = "postgres"
    lock_row = " FOR UPDATE"
    share_row = " FOR SHARE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    # An uncorrelated ARRAY(...) is computed once and probed on the primary key; `IN (...)`
    # can be planned as a join that reads every row the branch matches.
    in_window = "e.id = ANY(ARRAY({}))"
    by_positions = ("(execution_id, position) IN ({})", True)

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 32,
        connect_timeout: float = 10,
        readonly: bool = False,
    ) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise ConfigurationError(
                f"{redact(url)!r} needs the PostgreSQL driver: pip install -e '.[postgres]' in a "
                f"clone of tether, or pip install 'psycopg[binary,pool]' ({exc})"
            ) from exc
        self.url = url
        self.readonly = readonly
        self._listen: Any = None
        self._listen_lock = threading.Lock()
        # Kept by the group committer, with the statements prepared on it: only its leader of
        # the moment uses them.
        self._commit_conn: Any = None
        self._commit_prepared: set[bytes] = set()
        # One cursor per pooled connection for single-row statements: creating a psycopg
        # cursor costs about as much client CPU as running a short statement.
        self._cursors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._cursors_lock = threading.Lock()
        # None: a finish to write alone (an execution with a parent, see _group_statement).
        self._group: GroupCommit[CheckpointCommit | Finish, Commit | None] = GroupCommit(
            self._write_group,
            key=None,
            shared=(StoreUnavailable, StoreCorrupt),
            rejoins=rejoins,
        )
        # Connection-level failures (server restart, network) mean "try again later"; every
        # driver error is classified (`classify`) before it leaves the store.
        self._unavailable: tuple[type[BaseException], ...] = (psycopg.OperationalError,)
        self._driver_error: type[Exception] = psycopg.Error
        self._pq: Any = psycopg.pq
        self._errors: Any = psycopg.errors
        self._pool: ConnectionPool[Any] = ConnectionPool(
            conninfo=url,
            min_size=1,
            max_size=max_connections,
            kwargs={"autocommit": True},
            timeout=connect_timeout,
            open=False,
            name="tether",
            # Read-only: the server itself refuses every write of this store's sessions, so
            # none can slip through (and a role allowed only SELECT works as well).
            configure=_read_only_session if readonly else None,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except Exception as exc:
            self._pool.close()
            raise StoreError(
                f"cannot connect to PostgreSQL at {redact(url)}: {redact(str(exc), url)}. Is "
                "the server running, and does the URL name an existing database and user?"
            ) from exc
        try:
            if readonly:
                self._check_readable()
            else:
                self._migrate()
        except BaseException:
            self.close()
            raise

    @property
    def url_shown(self) -> str:
        return redact(self.url)

    def _tables(self, conn: Connection) -> set[str]:
        # The schema unqualified names resolve to first: where tether's tables are made.
        found = self._run(
            conn, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        return {r[0] for r in found.fetchall()}

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._driver_error as exc:
            raise self._down(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        if self.readonly:
            raise _refuse_write(self.url)
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except self._driver_error as exc:
            raise self._down(exc) from exc

    def _down(self, exc: BaseException) -> StoreError | StoreOpenedReadOnly:
        # The pool replaces broken connections by itself; callers retry the operation.
        if self.readonly and getattr(exc, "sqlstate", None) == "25006":
            return _refuse_write(self.url)
        return classify(exc, redact(self.url), self.url)

    def _cursor(self, conn: Any) -> Any:
        with self._cursors_lock:
            cursor = self._cursors.get(conn)
            if cursor is None:
                cursor = self._cursors[conn] = conn.cursor()
            return cursor

    def _one(self, sql: str, params: Any = ()) -> Any:
        with self._connection() as conn:
            return self._cursor(conn).execute(self._sql(sql), params).fetchone()

    def _count(self, sql: str, params: Any = ()) -> int:
        with self._connection() as conn:
            return int(self._cursor(conn).execute(self._sql(sql), params).rowcount)

    def _executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with conn.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.executemany(self._sql(sql), rows)

    def _sql(self, text: str) -> str:
        return to_format_style(text)

    # --- group commits: checkpoints and finishes ----------------------------------------

    def record_checkpoint(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Commit:
        # The writer read back what a LOST commit found (see _write_group).
        return cast(
            Commit, self._group.commit(CheckpointCommit(execution_id, token, row, tuple(events)))
        )

    def record_checkpoint_async(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Awaitable[Commit]:
        """The same batches: a caller on an event loop queues its row and resumes when the
        batch that wrote it is durable; the committer's thread writes for it. The future
        itself, not a coroutine around it: what a LOST commit found is read back by the
        writer (see _write_group), so nothing is left to do on the loop."""
        # The writer answers a checkpoint with a Commit (None only for a finish).
        return self._group.commit_async(  # type: ignore[return-value]
            CheckpointCommit(execution_id, token, row, tuple(events))
        )

    def _read_back(self, execution_id: str, token: str, row: CheckpointRow) -> Commit:
        """What a fenced commit that wrote nothing (LOST) really found. After a commit whose
        reply was lost (CommitUnknown), the retry finds the row its first try wrote and
        writes nothing: this row, still under our lease, is that commit, not a lost lease.
        Only read when a commit is LOST, which is rare, so the common path pays nothing."""
        found = self._one(
            f"SELECT {_READ_BACK}, e.cancel_requested FROM checkpoints c "
            "JOIN executions e ON e.id = c.execution_id "
            "WHERE c.execution_id = ? AND c.position = ? AND e.lease_token = ?",
            (execution_id, row.position, token),
        )
        # Every field equal: this very row (times to the microsecond, attempts included).
        if found is None or tuple(found[:-1]) != tuple(checkpoint_values(row)):
            return Commit.LOST
        return Commit.CANCEL_REQUESTED if found[-1] else Commit.COMMITTED

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
        # An execution ends in the same statement as other executions' checkpoints: one
        # commit less per execution.
        item = Finish(execution_id, token, status, result, error, now)
        return self._finished(item, self._group.commit(item))

    async def finish_async(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        result: str | None,
        error: str | None,
        now: float,
    ) -> bool:
        item = Finish(execution_id, token, status, result, error, now)
        outcome = await self._group.commit_async(item)
        if outcome:
            return True  # the common case: no thread
        return await asyncio.to_thread(self._finished, item, outcome)

    def _finished(self, item: Finish, outcome: Commit | None) -> bool:
        """Whether the group commit's `outcome` of a finish means it is recorded."""
        if outcome is None:
            # A child: its end also resolves its parent's wait and locks the parent's row;
            # written in a statement of its own (see _group_statement).
            done = super().finish(
                item.execution_id, item.token, status=item.status, result=item.result,
                error=item.error, now=item.now,
            )  # fmt: skip
        else:
            done = bool(outcome)
        if done:
            return True
        # As for a checkpoint (`_read_back`): a retry after a lost reply finds the end its
        # first try wrote (this status at this very time, the lease released).
        found = self._one(
            "SELECT status, finished_at, lease_token FROM executions WHERE id = ?",
            (item.execution_id,),
        )
        return found is not None and (found[0], found[1], found[2]) == (
            item.status, item.now, None,
        )  # fmt: skip

    def _write_group(self, batch: list[CheckpointCommit | Finish]) -> list[Commit | None]:
        commits = [c for c in batch if isinstance(c, CheckpointCommit)]
        finishes = [(f.execution_id, f.token, f.status, f.result, f.error, f.now)
                    for f in batch if isinstance(f, Finish)]  # fmt: skip
        params = {
            "rows": _json([(c.execution_id, c.token, *checkpoint_values(c.row)) for c in commits])
        }
        events = [event_params(e) for c in commits for e in c.events]
        if events:
            params["events"] = _json(events)
        if finishes:
            params["finishes"] = _json(finishes)
        name, sql, order = _prepared_group_statement(events=bool(events), finishes=bool(finishes))
        # Autocommit: the statement is its own transaction. The group committer's connection
        # is kept rather than checked out of the pool for every batch.
        try:
            written = self._execute_prepared(name, sql, [params[key] for key in order])
        except self._unavailable as exc:
            if getattr(exc, "sqlstate", None):
                # The server answered with an error (a lock timeout, say): nothing committed.
                raise self._down(exc) from exc
            self._drop_commit_connection()
            # The statement may have committed before the reply was lost: the callers retry,
            # and a retry that finds its row already written reads it back (`_read_back`).
            raise CommitUnknown(
                f"the connection to PostgreSQL at {redact(self.url)} was lost with a commit "
                f"in flight [{redact(f'{type(exc).__name__}: {str(exc).strip()}', self.url)}]; "
                "whether it committed is read back when it is retried"
            ) from exc
        except self._driver_error as exc:
            raise self._down(exc) from exc
        outcomes: list[Commit | None] = []
        for item in batch:
            if type(item) is Finish and item.key + " " in written:
                outcomes.append(None)
                continue
            cancel = written.get(item.key)
            if cancel is None:
                outcomes.append(self._lost(item) if type(item) is CheckpointCommit else Commit.LOST)
            else:
                outcomes.append(Commit.CANCEL_REQUESTED if cancel else Commit.COMMITTED)
        return outcomes

    def _lost(self, item: CheckpointCommit) -> Commit:
        """What a LOST checkpoint commit of a batch really found (`_read_back`), read here on
        the writer's thread so that its caller on a loop awaits the batch's future alone. A
        read that fails is this item's fault alone: its caller raises it (and retries)."""
        try:
            return self._read_back(item.execution_id, item.token, item.row)
        except Exception as exc:
            item.raised = exc
            return Commit.LOST

    def _execute_prepared(self, name: bytes, sql: bytes, params: list[bytes]) -> dict[str, bool]:
        """Run the committer's statement on its kept connection through libpq directly: the
        statement is prepared once per connection, and each batch is one blocking call (the
        GIL is released while it waits) with text parameters and text results. That skips
        psycopg's per-call machinery (cursor, query conversion, adaptation, row making),
        which costs more client CPU than the call itself. Errors are raised as psycopg
        raises them: OperationalError when the connection is lost.

        Returns the rows as {key: cancel requested}, the key a `Waiting` item's (see
        `_group_statement` for the rows): `execution id position` for a checkpoint written,
        the execution id for an end, the id and a space for an end to write alone. Strings
        and bools only: no object per row for the collector to walk."""
        conn = self._commit_conn
        try:
            if conn is None or conn.closed:
                conn = self._commit_conn = self._pool.getconn()
                self._commit_prepared = set()
            pgconn, encoding = conn.pgconn, conn.info.encoding
            if name not in self._commit_prepared:
                self._check(pgconn.prepare(name, sql), pgconn, encoding)
                self._commit_prepared.add(name)
        except self._driver_error as exc:
            # Nothing was sent to be committed yet: a plain outage, not an unknown commit.
            self._drop_commit_connection()
            raise self._down(exc) from exc
        if encoding != "utf-8":  # a database not in UTF8: re-encode the JSON text for it
            params = [p.decode().encode(encoding) for p in params]
        result = pgconn.exec_prepared(name, params)
        self._check(result, pgconn, encoding)
        written: dict[str, bool] = {}
        value = result.get_value
        for i in range(result.ntuples):
            execution_id = value(i, 0).decode(encoding)
            position = value(i, 1)
            key = (
                execution_id if position is None else f"{execution_id} {position.decode(encoding)}"
            )
            # cancel_requested as text: NULL for an end, '0' or '1' for a checkpoint.
            written[key] = value(i, 2) not in (None, b"0")
        return written

    def _check(self, result: Any, pgconn: Any, encoding: str) -> None:
        """Raise what psycopg would for a failed libpq call."""
        pq = self._pq
        if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return
        if pgconn.status != pq.ConnStatus.OK:
            message = (result.error_message or pgconn.error_message).decode(encoding, "replace")
            raise self._unavailable[0](message.strip() or "the connection to the server was lost")
        raise self._errors.error_from_result(result, encoding=encoding)

    def _drop_commit_connection(self) -> None:
        conn, self._commit_conn = self._commit_conn, None
        if conn is not None:
            # Closed first: its prepared statements must not follow it back into the pool.
            with suppress(Exception):
                conn.close()
            with suppress(Exception):
                self._pool.putconn(conn)  # the pool replaces a closed connection

    def _json_rows(self, names: Sequence[str], param: str) -> str:
        columns = ", ".join(f"r ->> {i} AS {name}" for i, name in enumerate(names))
        return f"(SELECT {columns} FROM json_array_elements(:{param}::json) r)"

    def _json_keys(self, column: str, param: str) -> str:
        # The planner guesses 100 rows for any set-returning function, and may hash them and
        # scan every execution to join; an array of the keys is found by the index.
        return (
            f"AND {column} = ANY(ARRAY(SELECT r ->> 0 FROM json_array_elements(:{param}::json) r))"
        )

    def _lock_queue(self, conn: Connection, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tether-queue:{name}",))

    def _lock_for_migration(self, conn: Connection) -> None:
        conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")

    # --- notifications ------------------------------------------------------------------

    notifies = True

    def wait_for_work(self, timeout: float) -> None:
        """Block on LISTEN until the trigger reports a runnable execution, or `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            listener = self._listener()
            for _ in listener.notifies(timeout=max(0.0, timeout), stop_after=1):
                break
        except self._driver_error:
            # The server went away (or refused LISTEN): drop the connection (a new one is
            # made next time) and wait out the timeout instead, as a polling worker would.
            self._close_listener()
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _listener(self) -> Any:
        with self._listen_lock:
            if self._listen is None or self._listen.closed:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=True)
                conn.execute("LISTEN tether_runnable")
                self._listen = conn
            return self._listen

    def _close_listener(self) -> None:
        with self._listen_lock:
            if self._listen is not None:
                with suppress(Exception):
                    self._listen.close()
                self._listen = None

    @property
    def closed(self) -> bool:
        return bool(self._pool.closed)

    def close(self) -> None:
        self._close_listener()
        self._drop_commit_connection()
        self._pool.close()


# SQLSTATE classes and codes (PostgreSQL's appendix A) that say what a failure means.
_BUSY_STATES = {"40001", "40P01", "55P03", "55006"}
_CORRUPT_STATES = {"XX001", "XX002"}


def classify(exc: BaseException, where: str, url: str | None = None) -> StoreError:
    """A psycopg error as the `StoreError` it means (the PostgreSQL dialect's hook).
    Connection-level failures and a server out of resources are transient
    (`StoreUnavailable`: retried, then the execution is released); damaged data is
    `StoreCorrupt`; anything else (a constraint, a bug) a plain `StoreError`."""
    state = getattr(exc, "sqlstate", None) or ""
    # The driver's message may quote the URL or a piece of it (`url`: hidden there too).
    said = redact(f"{type(exc).__name__}: {str(exc).strip()}", url)
    server = f"PostgreSQL at {where}"
    if state == "53100":
        return StoreFull(
            f"{server} is out of disk space [{said}]. Free space on the server: executions "
            "released meanwhile continue by themselves once it accepts writes."
        )
    if state == "25006":
        return StoreReadOnly(
            f"{server} accepts no writes [{said}]: a standby or a read-only server. Point "
            "TETHER_DB at the primary; executions released meanwhile continue once it does."
        )
    if state in _BUSY_STATES:
        return StoreBusy(f"{server} could not take a lock in time [{said}]; retried.")
    if state in _CORRUPT_STATES:
        return StoreCorrupt(
            f"{server} reports damaged data [{said}]. Check the server's log and restore "
            "the damaged table from a backup."
        )
    if isinstance(exc, StoreError):
        return exc
    operational = type(exc).__name__ in ("OperationalError", "PoolTimeout") or any(
        c.__name__ == "OperationalError" for c in type(exc).__mro__
    )
    if operational or state[:2] in ("08", "53", "57", "58"):
        return StoreUnavailable(
            f"{server} is unavailable [{said}]. Is the server running and reachable? "
            "Executions are retried, then released, never failed."
        )
    return StoreError(f"{server} failed [{said}]")


def _read_only_session(conn: Any) -> None:
    conn.execute("SET default_transaction_read_only = on")


def _refuse_write(url: str) -> StoreOpenedReadOnly:
    return StoreOpenedReadOnly(
        f"the store at {redact(url)} was opened read-only (readonly=True, or a reading "
        "command): nothing was written. Open it without readonly to write."
    )
