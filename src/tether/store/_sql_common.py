"""The SQL store's shared ground: columns and statements used by more than one aggregate,
the DB-API protocols, and `SqlBase` (dialect hooks and statement helpers).

The store is written once for every database and split by aggregate (`_sql_executions`,
`_sql_claims`, `_sql_waits`, `_sql_checkpoints`, `_sql_memory`, `_sql_migrations`);
`_sql.SqlStore` composes the parts. Queries are portable SQL (written with `?` and `:name`
placeholders); a dialect subclass (`sqlite.py`, `postgres.py`) supplies only what differs.
No `if sqlite:` branches live here.
"""

from __future__ import annotations

import abc
import operator
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any, Protocol

from ._base import (
    EventRow,
    ExecutionRow,
    Store,
)

EXECUTION_COLUMNS = (
    "id, flow, import_path, script, args, status, result, error, owner, lease_token, "
    "lease_expires, attempt, cancel_requested, created_at, updated_at, started_at, "
    "finished_at, parent_id, replay_of, metadata, options, wake_at, progress, queue, priority, "
    "dedup_key, takeovers, not_before, deadline"
)
CHECKPOINT_COLUMNS = (
    "position, name, fingerprint, status, result, error, attempts, started_at, finished_at, "
    "metadata"
)
CHECKPOINT_FIELDS = [c.strip() for c in CHECKPOINT_COLUMNS.split(",")]
# A CheckpointRow's values in CHECKPOINT_COLUMNS order: every insert builds its rows with it.
checkpoint_values = operator.attrgetter(*CHECKPOINT_FIELDS)
WAIT_COLUMNS = (
    "execution_id, name, position, kind, status, schema_ref, json_schema, question, metadata, "
    "deadline, value, resolved_by, created_at, resolved_at"
)
_FINISHED = ("succeeded", "failed", "cancelled")

# What an UPDATE sets when an execution stops being held (it ends, is handed back, parks or
# is reset): every write that lets go of a lease uses this, the group commit's finish too.
RELEASED = "owner = NULL, lease_token = NULL, lease_expires = NULL, progress = NULL"

# Fenced: the row is written only while the lease token still holds the execution, in the
# same statement (one implicit transaction), so a process that lost its lease writes nothing.
# A row left by failed attempts ('retrying') is replaced; a final one is never overwritten.
# RETURNING reports a pending cancel, so the holder learns of it with no extra read.
_RECORD = f"""
INSERT INTO checkpoints (execution_id, {CHECKPOINT_COLUMNS})
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE EXISTS (SELECT 1 FROM executions WHERE id = ? AND lease_token = ?{{}})
ON CONFLICT (execution_id, position) DO UPDATE SET
    name = excluded.name, fingerprint = excluded.fingerprint, status = excluded.status,
    result = excluded.result, error = excluded.error, attempts = excluded.attempts,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    metadata = excluded.metadata
WHERE checkpoints.status = 'retrying'
"""
RECORD_CHECKPOINT = (
    _RECORD.format("")
    + "RETURNING (SELECT cancel_requested FROM executions WHERE id = checkpoints.execution_id)\n"
)
# The common case of the same write without RETURNING, which is dear on SQLite (it builds a
# scratch table for it: about a third of a lone checkpoint's CPU). It writes only while no
# cancel is pending either, so its row count alone says COMMITTED; when it writes nothing,
# RECORD_CHECKPOINT (the fence alone) tells a pending cancel from a lost lease or a final
# row, and is the write then.
RECORD_CHECKPOINT_UNCANCELLED = _RECORD.format(" AND cancel_requested = 0")
# The same for the most common row, a first attempt's success without metadata, with its
# NULLs written in: sqlite3 binds None only after failing to find an adapter for it (two
# attribute lookups that raise), a cost of a third of the statement's own binding. Its
# parameters: execution id, position, name, fingerprint, status, result, started_at,
# finished_at, then the execution id and the token.
RECORD_PLAIN_CHECKPOINT = RECORD_CHECKPOINT_UNCANCELLED.replace(
    "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?", "SELECT ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, NULL", 1
)

INSERT_EVENT = (
    "INSERT INTO events (execution_id, position, at, level, kind, message, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What SqlStore needs of a DB-API connection (sqlite3 and psycopg both fit)."""

    def execute(self, sql: Any, params: Any = ...) -> Any: ...


class SqlBase(Store, abc.ABC):
    """What every part of the SQL store stands on: the dialect's hooks and the statement
    helpers. The parts (one per aggregate) derive from it; `SqlStore` composes them."""

    #: appended to a SELECT of one row about to be updated (Postgres: FOR UPDATE)
    lock_row: str = ""
    #: appended to a SELECT of one row that must not change until the transaction ends
    #: (Postgres: FOR SHARE)
    share_row: str = ""
    #: appended to the row-picking subquery of a claim (Postgres: FOR UPDATE SKIP LOCKED)
    skip_locked: str = ""
    # `e.id` among the ids a subquery returns, in a form the planner answers by primary key.
    in_window: str = "e.id IN ({})"
    #: the folder under store/migrations/ holding this dialect's DDL
    dialect: str = ""
    # Calls of one execution at a few positions, answered by primary key: (clause, whether
    # each position comes with the execution id). PostgreSQL's generic plan of
    # `execution_id = $1 AND position IN (...)` reads every call of the execution and
    # filters; a list of (id, position) pairs is an index lookup each.
    by_positions: tuple[str, bool] = ("execution_id = ? AND position IN ({})", False)

    # --- dialect hooks ------------------------------------------------------------------

    @abc.abstractmethod
    def _connection(self) -> AbstractContextManager[Connection]:
        """A connection in autocommit mode: each statement is its own transaction."""

    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[Connection]:
        """A connection inside a write transaction, committed on exit (rolled back on error)."""

    @abc.abstractmethod
    def _executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def _sql(self, text: str) -> str:
        """Translate `?` / `:name` placeholders to the driver's style (identity by default)."""
        return text

    def _json_rows(self, names: Sequence[str], param: str) -> str:
        """A table (a subquery) of the JSON array of arrays in the named parameter `param`:
        element i of each array as the text column `names[i]`. One parameter whatever the
        number of rows, so a statement over thousands of rows is still one."""
        columns = ", ".join(f"r.value ->> {i} AS {name}" for i, name in enumerate(names))
        return f"(SELECT {columns} FROM json_each(:{param}) r)"

    def _json_keys(self, column: str, param: str) -> str:
        """An extra condition (`AND ...`, or nothing) that `column` is the first element of one
        of those arrays, for a database that would otherwise not find a join's rows by the
        column's index. SQLite drives the join from the JSON rows by itself."""
        return ""

    def _lock_queue(self, conn: Connection, name: str) -> None:
        """Serialize claims from one queue until the transaction ends (SQLite: its write
        transactions are serialized already)."""

    def _lock_for_migration(self, conn: Connection) -> None:
        """Serialize migrations between processes starting at once."""

    def _run(self, conn: Connection, sql: str, params: Any = ()) -> Any:
        return conn.execute(self._sql(sql), params)

    def _one(self, sql: str, params: Any = ()) -> Any:
        with self._connection() as conn:
            return self._run(conn, sql, params).fetchone()

    def _all(self, sql: str, params: Any = ()) -> list[Any]:
        with self._connection() as conn:
            return list(self._run(conn, sql, params).fetchall())

    def _count(self, sql: str, params: Any = ()) -> int:
        with self._connection() as conn:
            return int(self._run(conn, sql, params).rowcount)


def marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def conditions(
    equal: Sequence[tuple[str, object]], prefix: tuple[str, str | None]
) -> tuple[list[str], list[Any]]:
    """The conditions of a filtered read and their parameters: `column = ?` for each
    (column, value) in `equal` whose value is not None, and for `prefix` (column, text), a
    column that starts with a non-empty text."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in equal:
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    column, start = prefix
    if start:
        # substr, not LIKE: no escaping of % and _, and the same in both databases.
        where.append(f"substr({column}, 1, CAST(? AS INTEGER)) = ?")
        params.extend((len(start), start))
    return where, params


def event_params(e: EventRow) -> tuple[Any, ...]:
    return (e.execution_id, e.position, e.at, e.level, e.kind, e.message, e.data)


def execution_row(r: Sequence[Any]) -> ExecutionRow:
    row = ExecutionRow(*r)
    row.cancel_requested = bool(row.cancel_requested)
    return row


_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@lru_cache(maxsize=512)
def to_format_style(sql: str) -> str:
    """`?` -> `%s`, `:name` -> `%(name)s` (the pyformat style of psycopg)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))
