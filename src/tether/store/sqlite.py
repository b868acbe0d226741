"""The embedded store: one SQLite file in WAL mode, shared safely by threads and processes.

Durability: WAL with `synchronous=NORMAL` (the default) makes every commit
survive the death of the process (SIGKILL, OOM kill), which is the failure a
durable runtime exists for; a power cut may lose the last commits but never
corrupts the file. `durability="full"` syncs every commit to disk instead.

Concurrency: each thread gets its own connection. Multi-statement writes take
the write lock up front (`BEGIN IMMEDIATE`) so two writers never deadlock on a
read-to-write upgrade, and a generous busy timeout rides out lock contention
between processes instead of failing with "database is locked".
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from importlib import resources
from typing import Any

from ..errors import ConfigurationError, StoreError
from ._base import (
    CheckpointRow,
    Claim,
    Commit,
    EventRow,
    ExecutionRow,
    PendingWaitRow,
    Store,
    WaitRow,
)

_BUSY_TIMEOUT_MS = 60_000
# Readers that overlap without pause keep SQLite from restarting the WAL, so it can grow
# large under a burst of work; past this size `maintain()` checkpoints and truncates it.
_WAL_LIMIT = 64 * 1024 * 1024

_EXECUTION_COLUMNS = (
    "id, flow, import_path, script, args, status, result, error, owner, lease_token, "
    "lease_expires, attempt, cancel_requested, created_at, updated_at, started_at, "
    "finished_at, parent_id, replay_of, metadata, options, wake_at, progress"
)
_WAIT_COLUMNS = (
    "execution_id, name, position, kind, status, schema_ref, json_schema, question, metadata, "
    "deadline, value, resolved_by, created_at, resolved_at"
)
# Runnable: queued and not (validly) leased, waiting and due, or running with a dead lease.
_RUNNABLE = (
    "((status = 'queued' AND (lease_token IS NULL OR lease_expires < :now)) "
    "OR (status = 'waiting' AND wake_at <= :due) "
    "OR (status = 'running' AND lease_expires < :now))"
)
_CHECKPOINT_COLUMNS = (
    "position, name, fingerprint, status, result, error, attempts, started_at, finished_at, "
    "metadata"
)

# Fenced: the row is written only while the lease token still holds the execution, in the
# same statement (one implicit transaction), so a process that lost its lease writes nothing.
# A row left by failed attempts ('retrying') is replaced; a final one is never overwritten.
_RECORD_CHECKPOINT = f"""
INSERT INTO checkpoints (execution_id, {_CHECKPOINT_COLUMNS})
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE EXISTS (SELECT 1 FROM executions WHERE id = ? AND lease_token = ?)
ON CONFLICT (execution_id, position) DO UPDATE SET
    name = excluded.name, fingerprint = excluded.fingerprint, status = excluded.status,
    result = excluded.result, error = excluded.error, attempts = excluded.attempts,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    metadata = excluded.metadata
WHERE checkpoints.status = 'retrying'
RETURNING (SELECT cancel_requested FROM executions WHERE id = checkpoints.execution_id)
"""


def path_from_url(url: str) -> str:
    rest = url.partition("://")[2]
    path = rest[1:] if rest.startswith("/") else rest
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ConfigurationError(
            f"{url!r} names no file; an in-memory database is not durable. "
            "Use sqlite:///path/to/tether.db"
        )
    return os.path.abspath(path)


class SQLiteStore(Store):
    def __init__(self, url: str, *, durability: str = "normal") -> None:
        if durability not in ("normal", "full"):
            raise ConfigurationError(f"durability must be 'normal' or 'full', not {durability!r}")
        self.url = url
        self.path = path_from_url(url)
        self._synchronous = "FULL" if durability == "full" else "NORMAL"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
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
        if conn is None:
            if self._closed:
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
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for conn in self._all:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

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

    # --- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        migrations = sorted(
            (entry.name, entry.read_text())
            for entry in resources.files("tether.store").joinpath("migrations/sqlite").iterdir()
            if entry.name.endswith(".sql")
        )
        known = len(migrations)
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tether_schema ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM tether_schema").fetchone()
            current = int(row[0])
            if current > known:
                raise StoreError(
                    f"{self.path} has schema version {current}, but this tether knows only "
                    f"{known}; upgrade tether to open it"
                )
            for version, (name, sql) in enumerate(migrations, start=1):
                if version <= current:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO tether_schema (version, name, applied_at) "
                    "VALUES (?, ?, julianday('now'))",
                    (version, name),
                )

    # --- executions ---------------------------------------------------------------------

    def create_execution(
        self,
        row: ExecutionRow,
        *,
        checkpoints: Sequence[CheckpointRow] = (),
        waits: Sequence[WaitRow] = (),
    ) -> None:
        # Without seeds (every plain start) one statement is its own transaction.
        with self._write() if checkpoints or waits else nullcontext(self._conn()) as conn:
            conn.execute(
                f"INSERT INTO executions ({_EXECUTION_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id, row.flow, row.import_path, row.script, row.args, row.status,
                    row.result, row.error, row.owner, row.lease_token, row.lease_expires,
                    row.attempt, int(row.cancel_requested), row.created_at, row.updated_at,
                    row.started_at, row.finished_at, row.parent_id, row.replay_of, row.metadata,
                    row.options, row.wake_at, row.progress,
                ),
            )  # fmt: skip
            for c in checkpoints:
                conn.execute(
                    f"INSERT INTO checkpoints (execution_id, {_CHECKPOINT_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.id, c.position, c.name, c.fingerprint, c.status, c.result, c.error,
                     c.attempts, c.started_at, c.finished_at, c.metadata),
                )  # fmt: skip
            for w in waits:
                conn.execute(
                    f"INSERT INTO waits ({_WAIT_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.id, w.name, w.position, w.kind, w.status, w.schema_ref, w.json_schema,
                     w.question, w.metadata, w.deadline, w.value, w.resolved_by, w.created_at,
                     w.resolved_at),
                )  # fmt: skip

    def get_execution(self, execution_id: str) -> ExecutionRow | None:
        found = (
            self._conn()
            .execute(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,))
            .fetchone()
        )
        return _execution(found) if found else None

    def list_executions(
        self, *, statuses: Sequence[str] | None, flow: str | None, limit: int
    ) -> list[ExecutionRow]:
        where: list[str] = []
        params: list[Any] = []
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if flow is not None:
            where.append("flow = ?")
            params.append(flow)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.append(limit)
        rows = (
            self._conn()
            .execute(
                f"SELECT {_EXECUTION_COLUMNS}, "
                "(SELECT count(*) FROM checkpoints c WHERE c.execution_id = e.id "
                " AND c.status = 'succeeded'), "
                "(SELECT w.name FROM waits w WHERE w.execution_id = e.id AND w.status = 'pending' "
                " AND w.kind = 'input' ORDER BY w.position LIMIT 1) "
                f"FROM executions e {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                params,
            )
            .fetchall()
        )
        found = []
        for r in rows:
            row = _execution(r[:-2])
            row.checkpoints_done, row.pending_wait = r[-2], r[-1]
            found.append(row)
        return found

    def claim(
        self,
        execution_id: str,
        claim: Claim,
        *,
        from_statuses: Sequence[str],
        expected_token: str | None,
        now: float,
        status: str = "running",
    ) -> bool:
        marks = ", ".join("?" * len(from_statuses))
        running = status == "running"
        cursor = self._conn().execute(
            "UPDATE executions SET status = ?, owner = ?, lease_token = ?, lease_expires = ?, "
            "attempt = attempt + ?, started_at = CASE WHEN ? THEN coalesce(started_at, ?) "
            "ELSE started_at END, cancel_requested = cancel_requested, updated_at = ? "
            f"WHERE id = ? AND status IN ({marks}) AND lease_token IS ?",
            (
                status,
                claim.owner,
                claim.token,
                claim.expires,
                int(running),
                running,
                now,
                now,
                execution_id,
                *from_statuses,
                expected_token,
            ),
        )
        return cursor.rowcount == 1

    def renew(
        self,
        execution_ids: Sequence[str],
        token_by_id: dict[str, str],
        expires: float,
        progress: dict[str, str | None] | None = None,
    ) -> list[tuple[str, bool]]:
        held: list[tuple[str, bool]] = []
        progress = progress or {}
        with self._write() as conn:
            for execution_id in execution_ids:
                found = conn.execute(
                    "UPDATE executions SET lease_expires = ?, progress = ? "
                    "WHERE id = ? AND lease_token = ? RETURNING cancel_requested",
                    (expires, progress.get(execution_id), execution_id,
                     token_by_id[execution_id]),
                ).fetchone()  # fmt: skip
                if found is not None:
                    held.append((execution_id, bool(found[0])))
        return held

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
        cursor = self._conn().execute(
            "UPDATE executions SET status = ?, result = ?, error = ?, owner = NULL, "
            "lease_token = NULL, lease_expires = NULL, wake_at = NULL, progress = NULL, "
            "finished_at = ?, "
            "updated_at = ? "
            "WHERE id = ? AND lease_token = ?",
            (status, result, error, now, now, execution_id, token),
        )
        return cursor.rowcount == 1

    def release(self, execution_id: str, token: str, *, status: str, now: float) -> bool:
        cursor = self._conn().execute(
            "UPDATE executions SET status = ?, owner = NULL, lease_token = NULL, "
            "lease_expires = NULL, progress = NULL, updated_at = ? "
            "WHERE id = ? AND lease_token = ?",
            (status, now, execution_id, token),
        )
        return cursor.rowcount == 1

    def request_cancel(self, execution_id: str, *, now: float) -> str | None:
        with self._write() as conn:
            found = conn.execute(
                "SELECT status, lease_token FROM executions WHERE id = ?", (execution_id,)
            ).fetchone()
            if found is None:
                return None
            status, token = found
            if status in ("succeeded", "failed", "cancelled"):
                return str(status)
            if token is None:
                conn.execute(
                    "UPDATE executions SET status = 'cancelled', cancel_requested = 1, "
                    "wake_at = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, execution_id),
                )
                conn.execute(
                    "UPDATE waits SET status = 'cancelled', resolved_at = ? "
                    "WHERE execution_id = ? AND status = 'pending'",
                    (now, execution_id),
                )
                return "cancelled"
            conn.execute(
                "UPDATE executions SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                (now, execution_id),
            )
            return str(status)

    def set_metadata(self, execution_id: str, token: str, metadata: str, now: float) -> bool:
        cursor = self._conn().execute(
            "UPDATE executions SET metadata = ?, updated_at = ? WHERE id = ? AND lease_token = ?",
            (metadata, now, execution_id, token),
        )
        return cursor.rowcount == 1

    def orphans(self, *, statuses: Sequence[str]) -> list[ExecutionRow]:
        marks = ", ".join("?" * len(statuses))
        rows = (
            self._conn()
            .execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE status IN ({marks}) "
                "ORDER BY created_at",
                tuple(statuses),
            )
            .fetchall()
        )
        return [_execution(r) for r in rows]

    def suspend(
        self, execution_id: str, token: str, *, wait: str, wake_at: float | None, now: float
    ) -> bool:
        with self._write() as conn:
            # A cancel requested while it ran wins: park it as cancelled, not waiting.
            found = conn.execute(
                "UPDATE executions SET "
                "status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'waiting' END, "
                "wake_at = CASE WHEN cancel_requested THEN NULL ELSE ? END, "
                "finished_at = CASE WHEN cancel_requested THEN ? ELSE finished_at END, "
                "owner = NULL, lease_token = NULL, lease_expires = NULL, progress = NULL, "
                "updated_at = ? WHERE id = ? AND lease_token = ? AND NOT EXISTS "
                "(SELECT 1 FROM waits WHERE execution_id = ? AND name = ? AND status != 'pending') "
                "RETURNING status",
                (wake_at, now, now, execution_id, token, execution_id, wait),
            ).fetchone()
            if found is None:
                return False
            if found[0] == "cancelled":
                conn.execute(
                    "UPDATE waits SET status = 'cancelled', resolved_at = ? "
                    "WHERE execution_id = ? AND status = 'pending'",
                    (now, execution_id),
                )
            return True

    def claim_runnable(
        self, claim: Claim, *, now: float, due: float, ids: Sequence[str] | None = None
    ) -> ExecutionRow | None:
        params: dict[str, Any] = {
            "owner": claim.owner, "token": claim.token, "expires": claim.expires, "now": now,
            "due": due,
        }  # fmt: skip
        among = ""
        if ids is not None:
            if not ids:
                return None
            marks = ", ".join(f":id{i}" for i in range(len(ids)))
            among = f"AND id IN ({marks})"
            params.update({f"id{i}": v for i, v in enumerate(ids)})
        # One statement: SQLite serializes writers, so two claimers never get the same row.
        found = (
            self._conn()
            .execute(
                "UPDATE executions SET status = 'running', owner = :owner, lease_token = :token, "
                "lease_expires = :expires, attempt = attempt + 1, wake_at = NULL, "
                "started_at = coalesce(started_at, :now), updated_at = :now "
                "WHERE id = (SELECT id FROM executions WHERE "
                f"{_RUNNABLE} {among} ORDER BY created_at LIMIT 1) "
                f"RETURNING {_EXECUTION_COLUMNS}",
                params,
            )
            .fetchone()
        )
        return _execution(found) if found else None

    def runnable(self, *, now: float, due: float, limit: int) -> list[ExecutionRow]:
        rows = (
            self._conn()
            .execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE {_RUNNABLE} "
                "ORDER BY created_at LIMIT :limit",
                {"now": now, "due": due, "limit": limit},
            )
            .fetchall()
        )
        return [_execution(r) for r in rows]

    # --- waits --------------------------------------------------------------------------

    def create_wait(self, token: str, row: WaitRow) -> bool:
        with self._write() as conn:
            held = conn.execute(
                "SELECT 1 FROM executions WHERE id = ? AND lease_token = ?",
                (row.execution_id, token),
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                f"INSERT INTO waits ({_WAIT_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (execution_id, name) DO NOTHING",
                (
                    row.execution_id, row.name, row.position, row.kind, row.status,
                    row.schema_ref, row.json_schema, row.question, row.metadata, row.deadline,
                    row.value, row.resolved_by, row.created_at, row.resolved_at,
                ),
            )  # fmt: skip
            return True

    def get_waits(self, execution_id: str) -> list[WaitRow]:
        rows = (
            self._conn()
            .execute(
                f"SELECT {_WAIT_COLUMNS} FROM waits WHERE execution_id = ? ORDER BY position",
                (execution_id,),
            )
            .fetchall()
        )
        return [WaitRow(*r) for r in rows]

    def resolve_wait(
        self,
        execution_id: str,
        name: str,
        *,
        status: str,
        value: str | None,
        by: str | None,
        now: float,
    ) -> bool:
        if status not in ("resolved", "timed_out"):
            raise ValueError(f"a wait resolves as 'resolved' or 'timed_out', not {status!r}")
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE waits SET status = ?, value = ?, resolved_by = ?, resolved_at = ? "
                "WHERE execution_id = ? AND name = ? AND status = 'pending'",
                (status, value, by, now, execution_id, name),
            )
            if cursor.rowcount != 1:
                return False
            conn.execute(
                "UPDATE executions SET status = 'queued', wake_at = NULL, updated_at = ? "
                "WHERE id = ? AND status = 'waiting'",
                (now, execution_id),
            )
            return True

    def pending_waits(self, *, flow: str | None, limit: int) -> list[PendingWaitRow]:
        columns = ", ".join(f"w.{c.strip()}" for c in _WAIT_COLUMNS.split(","))
        clause = "AND e.flow = ?" if flow is not None else ""
        params: tuple[Any, ...] = (flow, limit) if flow is not None else (limit,)
        rows = (
            self._conn()
            .execute(
                f"SELECT {columns}, e.flow FROM waits w JOIN executions e ON e.id = w.execution_id "
                "WHERE w.status = 'pending' AND w.kind = 'input' "
                f"AND e.status NOT IN ('succeeded', 'failed', 'cancelled') {clause} "
                "ORDER BY w.created_at LIMIT ?",
                params,
            )
            .fetchall()
        )
        return [PendingWaitRow(WaitRow(*r[:-1]), r[-1]) for r in rows]

    # --- checkpoints --------------------------------------------------------------------

    def get_checkpoints(self, execution_id: str) -> list[CheckpointRow]:
        rows = (
            self._conn()
            .execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE execution_id = ? "
                "ORDER BY position",
                (execution_id,),
            )
            .fetchall()
        )
        return [CheckpointRow(*r) for r in rows]

    def record_checkpoint(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Commit:
        params = (
            execution_id, row.position, row.name, row.fingerprint, row.status, row.result,
            row.error, row.attempts, row.started_at, row.finished_at, row.metadata,
            execution_id, token,
        )  # fmt: skip
        if not events:
            # The hot path: one statement, its own transaction.
            found = self._conn().execute(_RECORD_CHECKPOINT, params).fetchone()
        else:
            with self._write() as conn:
                found = conn.execute(_RECORD_CHECKPOINT, params).fetchone()
                if found is not None:
                    conn.executemany(_INSERT_EVENT, [_event_params(e) for e in events])
        if found is None:
            return Commit.LOST
        return Commit.CANCEL_REQUESTED if found[0] else Commit.COMMITTED

    def reset_for_retry(self, execution_id: str, *, from_position: int, now: float) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE executions SET status = 'queued', result = NULL, error = NULL, "
                "owner = NULL, lease_token = NULL, lease_expires = NULL, wake_at = NULL, "
                "cancel_requested = 0, finished_at = NULL, progress = NULL, updated_at = ? "
                "WHERE id = ? AND status = 'failed'",
                (now, execution_id),
            )
            if cursor.rowcount != 1:
                return False
            for table in ("checkpoints", "waits"):
                conn.execute(
                    f"DELETE FROM {table} WHERE execution_id = ? AND position >= ?",
                    (execution_id, from_position),
                )
            return True

    def prune(self, *, before: float, statuses: Sequence[str], dry_run: bool) -> int:
        marks = ", ".join("?" * len(statuses))
        where = f"status IN ({marks}) AND finished_at < ?"
        params = (*statuses, before)
        with self._write() as conn:
            if dry_run:
                found = conn.execute(
                    f"SELECT count(*) FROM executions WHERE {where}", params
                ).fetchone()
                return int(found[0])
            ids = [r[0] for r in conn.execute(f"SELECT id FROM executions WHERE {where}", params)]
            for table, column in (
                ("checkpoints", "execution_id"), ("waits", "execution_id"),
                ("events", "execution_id"), ("executions", "id"),
            ):  # fmt: skip
                conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])
            return len(ids)

    # --- events -------------------------------------------------------------------------

    def add_event(self, event: EventRow) -> None:
        self._conn().execute(_INSERT_EVENT, _event_params(event))

    def get_events(
        self, execution_id: str, *, after: int = 0, kinds: Sequence[str] | None = None
    ) -> list[EventRow]:
        clause = f"AND kind IN ({', '.join('?' * len(kinds))})" if kinds else ""
        rows = (
            self._conn()
            .execute(
                "SELECT execution_id, position, at, level, kind, message, data, id FROM events "
                f"WHERE execution_id = ? AND id > ? {clause} ORDER BY id",
                (execution_id, after, *(kinds or ())),
            )
            .fetchall()
        )
        return [EventRow(*r) for r in rows]


_INSERT_EVENT = (
    "INSERT INTO events (execution_id, position, at, level, kind, message, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _event_params(e: EventRow) -> tuple[Any, ...]:
    return (e.execution_id, e.position, e.at, e.level, e.kind, e.message, e.data)


def _execution(r: tuple[Any, ...]) -> ExecutionRow:
    row = ExecutionRow(*r)
    row.cancel_requested = bool(row.cancel_requested)
    return row


def _statements(sql: str) -> Iterator[str]:
    # Migration files hold plain DDL with no semicolons inside statements.
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    for statement in "\n".join(lines).split(";"):
        if statement.strip():
            yield statement
