"""The SQL store, written once for every database.

`SqlStore` holds every query of the `Store` interface in portable SQL (written
with `?` and `:name` placeholders). A dialect subclass (`sqlite.py`,
`postgres.py`) supplies only what differs: how to get a connection, how to open
a write transaction, its placeholder style, row locking for claims, and its DDL
migrations. No `if sqlite:` branches live here.
"""

from __future__ import annotations

import abc
import operator
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple, Protocol

from ..errors import MemoryConflictError, StoreError
from ._base import (
    CheckpointRow,
    Claim,
    Commit,
    EventRow,
    ExecutionRow,
    MemoryRow,
    PendingWaitRow,
    Store,
    WaitRow,
)
from ._positions import sort_key

EXECUTION_COLUMNS = (
    "id, flow, import_path, script, args, status, result, error, owner, lease_token, "
    "lease_expires, attempt, cancel_requested, created_at, updated_at, started_at, "
    "finished_at, parent_id, replay_of, metadata, options, wake_at, progress, queue, priority, "
    "dedup_key"
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

# Runnable: queued and not (validly) leased, waiting and due, or running with a dead lease.
# Queries take the three branches one by one, each on its own partial index (migration 0008),
# rather than as one OR. The status is a literal so that the planner can prove the index's
# WHERE. Each branch: its condition, and the time its index orders it by (None: the index is
# in claim order).
RUNNABLE_BRANCHES = (
    ("status = 'queued' AND (lease_token IS NULL OR lease_expires < :now)", None),
    ("status = 'waiting' AND wake_at <= :due", "wake_at"),
    ("status = 'running' AND lease_expires < :now", "lease_expires"),
)
# Due timers and expired leases are found by time, not in claim order, so a claim takes the
# CLAIM_WINDOW earliest of them and the best of those (priority, then oldest): a backlog of
# thousands costs a claim this many rows, not the backlog. The order is exact while no more
# are due (or expired) at once; past that, timers are served about in the order they fell due.
CLAIM_WINDOW = 100

# Whether an execution (the row of an UPDATE ... RETURNING) has checkpoint calls or waits.
HAS_HISTORY = (
    "(EXISTS (SELECT 1 FROM checkpoints c WHERE c.execution_id = executions.id) "
    "OR EXISTS (SELECT 1 FROM waits w WHERE w.execution_id = executions.id))"
)

# A queue's limits (if any) allow one more start: fewer running than its concurrency, and
# fewer starts in the last rate period than its rate limit. `+r.lease_expires` keeps the
# running count off the lease-expiry index (which holds every queue's running rows): SQLite
# would otherwise read them all per candidate instead of the queue's through executions_by_queue.
UNDER_LIMITS = (
    "NOT EXISTS (SELECT 1 FROM queue_limits q WHERE q.name = e.queue AND ("
    "(q.concurrency IS NOT NULL AND (SELECT count(*) FROM executions r WHERE r.queue = e.queue "
    "AND r.status = 'running' AND +r.lease_expires >= :now) >= q.concurrency) OR "
    "(q.rate_limit IS NOT NULL AND (SELECT count(*) FROM executions s WHERE s.queue = e.queue "
    "AND s.started_at >= :now - q.rate_period) >= q.rate_limit)))"
)

# Fenced: the row is written only while the lease token still holds the execution, in the
# same statement (one implicit transaction), so a process that lost its lease writes nothing.
# A row left by failed attempts ('retrying') is replaced; a final one is never overwritten.
# RETURNING reports a pending cancel, so the holder learns of it with no extra read.
RECORD_CHECKPOINT = f"""
INSERT INTO checkpoints (execution_id, {CHECKPOINT_COLUMNS})
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

INSERT_EVENT = (
    "INSERT INTO events (execution_id, position, at, level, kind, message, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class _Pick(NamedTuple):
    """Which runnable executions a claim may take (see Store.claim_runnable)."""

    ids: Sequence[str] | None
    queues: set[str] | None
    exclude_queues: tuple[str, ...]
    exclude_flows: tuple[tuple[str, str | None], ...]


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What SqlStore needs of a DB-API connection (sqlite3 and psycopg both fit)."""

    def execute(self, sql: Any, params: Any = ...) -> Any: ...


class SqlStore(Store, abc.ABC):
    """Every query, once. Subclasses provide connections and the dialect."""

    #: appended to a SELECT of one row about to be updated (Postgres: FOR UPDATE)
    lock_row: str = ""
    #: appended to the row-picking subquery of a claim (Postgres: FOR UPDATE SKIP LOCKED)
    skip_locked: str = ""
    # `e.id` among the ids a subquery returns, in a form the planner answers by primary key.
    in_window: str = "e.id IN ({})"
    #: the folder under store/migrations/ holding this dialect's DDL
    dialect: str = ""

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

    def next_due(self) -> float | None:
        found = self._one(
            "SELECT min(wake_at) FROM executions WHERE status = 'waiting' AND wake_at IS NOT NULL"
        )
        return None if found is None or found[0] is None else float(found[0])

    def _lock_queue(self, conn: Connection, name: str) -> None:
        """Serialize claims from one queue until the transaction ends (SQLite: its write
        transactions are serialized already)."""

    def _lock_for_migration(self, conn: Connection) -> None:
        """Serialize migrations between processes starting at once."""

    # --- helpers ------------------------------------------------------------------------

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

    # --- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        folder = resources.files("tether.store").joinpath(f"migrations/{self.dialect}")
        migrations = sorted(
            (entry.name, entry.read_text()) for entry in folder.iterdir()
            if entry.name.endswith(".sql")
        )  # fmt: skip
        known = len(migrations)
        with self._transaction() as conn:
            self._lock_for_migration(conn)
            self._run(
                conn,
                "CREATE TABLE IF NOT EXISTS tether_schema ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION "
                "NOT NULL)",
            )
            found = self._run(conn, "SELECT coalesce(max(version), 0) FROM tether_schema")
            current = int(found.fetchone()[0])
            if current > known:
                raise StoreError(
                    f"{self.url} has schema version {current}, but this tether knows only "
                    f"{known}; upgrade tether to open it"
                )
            for version, (name, sql) in enumerate(migrations, start=1):
                if version <= current:
                    continue
                for statement in statements(sql):
                    self._run(conn, statement)
                self._run(
                    conn,
                    "INSERT INTO tether_schema (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )

    # --- executions ---------------------------------------------------------------------

    def create_execution(
        self,
        row: ExecutionRow,
        *,
        checkpoints: Sequence[CheckpointRow] = (),
        waits: Sequence[WaitRow] = (),
    ) -> str:
        # Without seeds or a key (every plain start) one statement is its own transaction.
        atomic = bool(checkpoints or waits or row.dedup_key)
        with self._transaction() if atomic else self._connection() as conn:
            inserted = self._run(
                conn,
                f"INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (flow, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING",
                (
                    row.id, row.flow, row.import_path, row.script, row.args, row.status,
                    row.result, row.error, row.owner, row.lease_token, row.lease_expires,
                    row.attempt, int(row.cancel_requested), row.created_at, row.updated_at,
                    row.started_at, row.finished_at, row.parent_id, row.replay_of, row.metadata,
                    row.options, row.wake_at, row.progress, row.queue, row.priority,
                    row.dedup_key,
                ),
            ).rowcount  # fmt: skip
            if inserted != 1:
                existing = self._run(
                    conn,
                    "SELECT id FROM executions WHERE flow = ? AND dedup_key = ?",
                    (row.flow, row.dedup_key),
                ).fetchone()
                return str(existing[0])
            if checkpoints:
                self._executemany(
                    conn,
                    f"INSERT INTO checkpoints (execution_id, {CHECKPOINT_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(row.id, *checkpoint_values(c)) for c in checkpoints],
                )
            if waits:
                self._executemany(
                    conn,
                    f"INSERT INTO waits ({WAIT_COLUMNS}) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(row.id, w.name, w.position, w.kind, w.status, w.schema_ref, w.json_schema,
                      w.question, w.metadata, w.deadline, w.value, w.resolved_by, w.created_at,
                      w.resolved_at) for w in waits],
                )  # fmt: skip
            return row.id

    def get_execution(self, execution_id: str) -> ExecutionRow | None:
        found = self._one(
            f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,)
        )
        return execution_row(found) if found else None

    def list_executions(
        self, *, statuses: Sequence[str] | None, flow: str | None, limit: int
    ) -> list[ExecutionRow]:
        where: list[str] = []
        params: list[Any] = []
        if statuses:
            where.append(f"status IN ({marks(statuses)})")
            params.extend(statuses)
        if flow is not None:
            where.append("flow = ?")
            params.append(flow)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        params.append(limit)
        rows = self._all(
            f"SELECT {EXECUTION_COLUMNS}, "
            "(SELECT count(*) FROM checkpoints c WHERE c.execution_id = e.id "
            " AND c.status = 'succeeded'), "
            "(SELECT w.name FROM waits w WHERE w.execution_id = e.id AND w.status = 'pending' "
            " AND w.kind = 'input' ORDER BY w.created_at LIMIT 1) "
            f"FROM executions e {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
            params,
        )
        found = []
        for r in rows:
            row = execution_row(r[:-2])
            row.checkpoints_done, row.pending_wait = int(r[-2]), r[-1]
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
        running = status == "running"
        token_test = "lease_token IS NULL" if expected_token is None else "lease_token = ?"
        params: list[Any] = [
            status, claim.owner, claim.token, claim.expires, int(running), running, now, now,
            execution_id, *from_statuses,
        ]  # fmt: skip
        if expected_token is not None:
            params.append(expected_token)
        return (
            self._count(
                "UPDATE executions SET status = ?, owner = ?, lease_token = ?, lease_expires = ?, "
                "attempt = attempt + ?, started_at = CASE WHEN ? "
                "THEN coalesce(started_at, CAST(? AS DOUBLE PRECISION)) "
                "ELSE started_at END, updated_at = ? "
                f"WHERE id = ? AND status IN ({marks(from_statuses)}) AND {token_test}",
                params,
            )
            == 1
        )

    def renew(
        self,
        execution_ids: Sequence[str],
        token_by_id: dict[str, str],
        expires: float,
        progress: dict[str, str | None] | None = None,
        *,
        refresh_before: float | None = None,
    ) -> list[tuple[str, bool]]:
        progress = progress or {}
        # lease_expires is indexed (the claim's expired-lease branch): an UPDATE that leaves
        # it alone stays HOT (no index writes), so it is moved only when due.
        # (A lease beyond `expires`, after the clock jumped back, is brought back to it.)
        expiry = "lease_expires = ?" if refresh_before is None else (
            "lease_expires = CASE WHEN lease_expires IS NULL OR lease_expires < ? "
            "OR lease_expires > ? THEN ? ELSE lease_expires END"
        )  # fmt: skip
        found: dict[str, bool] = {}
        with self._connection() as conn:
            # One statement (one transaction) per batch of leases: a heartbeat costs one round
            # trip, whatever the number of executions it holds.
            for start in range(0, len(execution_ids), _RENEW_BATCH):
                batch = execution_ids[start : start + _RENEW_BATCH]
                cases = " ".join("WHEN ? THEN CAST(? AS TEXT)" for _ in batch)
                pairs = ", ".join("(?, ?)" for _ in batch)
                params: list[Any] = [expires] if refresh_before is None else [
                    refresh_before, expires, expires,
                ]  # fmt: skip
                for execution_id in batch:
                    params += [execution_id, progress.get(execution_id)]
                params += batch
                for execution_id in batch:
                    params += [execution_id, token_by_id[execution_id]]
                # `id IN` finds the rows by primary key; the pairs then check the tokens.
                rows = self._run(
                    conn,
                    f"UPDATE executions SET {expiry}, progress = CASE id {cases} END "
                    f"WHERE id IN ({marks(batch)}) AND (id, lease_token) IN (VALUES {pairs}) "
                    "RETURNING id, cancel_requested",
                    params,
                ).fetchall()
                found.update((str(r[0]), bool(r[1])) for r in rows)
        return [(i, found[i]) for i in execution_ids if i in found]

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
        return (
            self._count(
                f"UPDATE executions SET status = ?, result = ?, error = ?, {RELEASED}, "
                "wake_at = NULL, finished_at = ?, updated_at = ? WHERE id = ? AND lease_token = ?",
                (status, result, error, now, now, execution_id, token),
            )
            == 1
        )

    def release(self, execution_id: str, token: str, *, status: str, now: float) -> bool:
        return (
            self._count(
                f"UPDATE executions SET status = ?, {RELEASED}, updated_at = ? "
                "WHERE id = ? AND lease_token = ?",
                (status, now, execution_id, token),
            )
            == 1
        )

    def request_cancel(self, execution_id: str, *, now: float) -> str | None:
        with self._transaction() as conn:
            found = self._run(
                conn,
                f"SELECT status, lease_token FROM executions WHERE id = ?{self.lock_row}",
                (execution_id,),
            ).fetchone()
            if found is None:
                return None
            status, token = found
            if status in _FINISHED:
                return str(status)
            if token is None:
                self._run(
                    conn,
                    "UPDATE executions SET status = 'cancelled', cancel_requested = 1, "
                    "wake_at = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, execution_id),
                )
                self._cancel_waits(conn, execution_id, now)
                return "cancelled"
            self._run(
                conn,
                "UPDATE executions SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                (now, execution_id),
            )
            return str(status)

    def _cancel_waits(self, conn: Connection, execution_id: str, now: float) -> None:
        self._run(
            conn,
            "UPDATE waits SET status = 'cancelled', resolved_at = ? "
            "WHERE execution_id = ? AND status = 'pending'",
            (now, execution_id),
        )

    def set_metadata(self, execution_id: str, token: str, metadata: str, now: float) -> bool:
        return (
            self._count(
                "UPDATE executions SET metadata = ?, updated_at = ? "
                "WHERE id = ? AND lease_token = ?",
                (metadata, now, execution_id, token),
            )
            == 1
        )

    def leased_on_host(self, *, prefix: str, now: float) -> list[ExecutionRow]:
        rows = self._all(
            f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE status IN ('queued', 'running') "
            "AND lease_expires >= ? AND substr(owner, 1, ?) = ? ORDER BY created_at",
            (now, len(prefix), prefix),
        )
        return [execution_row(r) for r in rows]

    def suspend(
        self, execution_id: str, token: str, *, wait: str, wake_at: float | None, now: float
    ) -> bool:
        # Lock the execution row first, then read the wait with a fresh statement: input
        # (resolve_wait) takes the same lock, so one of the two always sees the other. A
        # single UPDATE ... NOT EXISTS would read the wait from a snapshot that can predate
        # an input committed meanwhile (Postgres, READ COMMITTED) and park it forever.
        with self._transaction() as conn:
            held = self._run(
                conn,
                "SELECT cancel_requested FROM executions WHERE id = ? AND lease_token = ?"
                f"{self.lock_row}",
                (execution_id, token),
            ).fetchone()
            if held is None:
                return False
            answered = self._run(
                conn,
                "SELECT 1 FROM waits WHERE execution_id = ? AND name = ? AND status != 'pending'",
                (execution_id, wait),
            ).fetchone()
            if answered is not None:
                return False  # the holder runs the flow again and finds the input
            if held[0]:
                # A cancel requested while it ran wins: park it as cancelled, not waiting.
                self._run(
                    conn,
                    f"UPDATE executions SET status = 'cancelled', wake_at = NULL, {RELEASED}, "
                    "finished_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, execution_id),
                )
                self._cancel_waits(conn, execution_id, now)
            else:
                self._run(
                    conn,
                    f"UPDATE executions SET status = 'waiting', wake_at = ?, {RELEASED}, "
                    "updated_at = ? WHERE id = ?",
                    (wake_at, now, execution_id),
                )
            return True

    def claim_runnable(
        self,
        claim: Claim,
        *,
        now: float,
        due: float,
        ids: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] = (),
        exclude_flows: Sequence[tuple[str, str | None]] = (),
    ) -> ExecutionRow | None:
        if ids is not None and not ids:
            return None
        wanted = None if queues is None else set(queues) - set(exclude_queues)
        pick = _Pick(ids, wanted, tuple(exclude_queues), tuple(exclude_flows))
        # Queues without limits need no coordination: one atomic statement claims (and
        # leaves the limited queues out by itself, so the usual claim is one round trip).
        found = self._claim(claim, now, due, pick, unlimited=True)
        if found is not None:
            return found
        # A limited queue is claimed from under a per-queue lock, so that concurrent
        # claimers count each other's claims against its concurrency and rate limits.
        limited = {name for (name,) in self._all("SELECT name FROM queue_limits")}
        limited -= set(exclude_queues)
        for name in sorted(limited if wanted is None else limited & wanted):
            with self._transaction() as conn:
                self._lock_queue(conn, name)
                found = self._claim(claim, now, due, pick._replace(queues={name}), conn=conn)
            if found is not None:
                return found
        return None

    def _claim(
        self,
        claim: Claim,
        now: float,
        due: float,
        pick: _Pick,
        *,
        unlimited: bool = False,
        conn: Connection | None = None,
    ) -> ExecutionRow | None:
        params: dict[str, Any] = {
            "owner": claim.owner, "token": claim.token, "expires": claim.expires, "now": now,
            "due": due,
        }  # fmt: skip
        where: list[str] = []
        if unlimited:
            where.append("queue NOT IN (SELECT name FROM queue_limits)")
        for label, column, values, negate in (
            ("id", "id", pick.ids, False), ("q", "queue", pick.queues, False),
            ("xq", "queue", pick.exclude_queues, True),
        ):  # fmt: skip
            if values is None or (negate and not values):
                continue
            if not values:
                return None
            names = [f":{label}{i}" for i in range(len(values))]
            params.update(zip((n[1:] for n in names), values, strict=True))
            where.append(f"{column} {'NOT ' if negate else ''}IN ({', '.join(names)})")
        for i, (import_path, script) in enumerate(pick.exclude_flows):
            params[f"xp{i}"], params[f"xs{i}"] = import_path, script or ""
            where.append(f"NOT (import_path = :xp{i} AND coalesce(script, '') = :xs{i})")
        if not unlimited:
            where.append(UNDER_LIMITS)  # the unlimited claim leaves limited queues out
        # One branch per way of being runnable, each on its partial index: queued rows are
        # walked in claim order and the first row it can take is locked (Postgres: skipping
        # rows other claimers hold); due timers and expired leases are taken from a window of
        # the earliest ones. So a claim never scans or sorts the whole table, nor every
        # waiting or running row; the best of the (at most three) rows is taken. One
        # statement: the row is picked and taken atomically (SQLite serializes writers).
        # RETURNING says whether anything is recorded for the execution, so its first run
        # need not load its (no) checkpoint calls and waits.
        filters = " AND ".join(where)
        picks = []
        for i, (branch, by_time) in enumerate(RUNNABLE_BRANCHES):
            rows = f"executions e WHERE {branch} AND {filters}"
            if by_time is not None:
                # The window (see CLAIM_WINDOW) is read without locking anything; then its
                # best row that no other claimer holds is locked (and the branch's condition
                # checked again on it, in case it changed meanwhile). Locking inside the
                # window would lock all its rows and leave concurrent claimers nothing.
                window = (
                    f"SELECT e.id FROM {rows} ORDER BY {by_time} LIMIT {CLAIM_WINDOW}"
                )  # fmt: skip
                rows = f"executions e WHERE {self.in_window.format(window)} AND {branch}"
            picks.append(
                f"SELECT * FROM (SELECT id, priority, created_at FROM {rows} "
                f"ORDER BY priority DESC, created_at LIMIT 1{self.skip_locked}) AS b{i}"
            )
        branches = " UNION ALL ".join(picks)
        sql = (
            "UPDATE executions SET status = 'running', owner = :owner, lease_token = :token, "
            "lease_expires = :expires, attempt = attempt + 1, wake_at = NULL, "
            "started_at = coalesce(started_at, :now), updated_at = :now "
            f"WHERE id = (SELECT id FROM ({branches}) AS c "
            "ORDER BY priority DESC, created_at LIMIT 1) "
            f"RETURNING {EXECUTION_COLUMNS}, {HAS_HISTORY}"
        )
        if conn is not None:
            found = self._run(conn, sql, params).fetchone()
        else:
            found = self._one(sql, params)
        if not found:
            return None
        row = execution_row(found[:-1])
        row.has_history = bool(found[-1])
        return row

    def set_queue_limits(
        self,
        name: str,
        *,
        concurrency: int | None,
        rate_limit: int | None,
        rate_period: float | None,
        now: float,
    ) -> None:
        with self._connection() as conn:
            if concurrency is None and rate_limit is None:
                self._run(conn, "DELETE FROM queue_limits WHERE name = ?", (name,))
                return
            self._run(
                conn,
                "INSERT INTO queue_limits (name, concurrency, rate_limit, rate_period, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, "
                "rate_period = excluded.rate_period, updated_at = excluded.updated_at",
                (name, concurrency, rate_limit, rate_period, now),
            )

    def runnable(
        self, *, now: float, due: float, limit: int, queues: Sequence[str] | None = None
    ) -> list[ExecutionRow]:
        params: dict[str, Any] = {"now": now, "due": due, "limit": limit}
        among = ""
        if queues is not None:
            if not queues:
                return []
            names = [f":q{i}" for i in range(len(queues))]
            params.update(zip((n[1:] for n in names), queues, strict=True))
            among = f"AND queue IN ({', '.join(names)})"
        # One branch per way of being runnable, each ordered and limited on its own index,
        # instead of one OR that makes the database scan and sort every execution.
        union = " UNION ALL ".join(
            f"SELECT * FROM (SELECT {EXECUTION_COLUMNS} FROM executions WHERE {branch} {among} "
            f"ORDER BY priority DESC, created_at LIMIT :limit) AS b{i}"
            for i, (branch, _) in enumerate(RUNNABLE_BRANCHES)
        )
        rows = self._all(f"{union} ORDER BY priority DESC, created_at LIMIT :limit", params)
        return [execution_row(r) for r in rows]

    # --- waits --------------------------------------------------------------------------

    def create_wait(self, token: str, row: WaitRow) -> bool:
        with self._transaction() as conn:
            held = self._run(
                conn,
                f"SELECT 1 FROM executions WHERE id = ? AND lease_token = ?{self.lock_row}",
                (row.execution_id, token),
            ).fetchone()
            if held is None:
                return False
            self._run(
                conn,
                f"INSERT INTO waits ({WAIT_COLUMNS}) VALUES "
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
        rows = self._all(
            f"SELECT {WAIT_COLUMNS} FROM waits WHERE execution_id = ?", (execution_id,)
        )
        # Positions are text ("3.1.2"): program order is theirs, not the text's.
        return sorted((WaitRow(*r) for r in rows), key=_wait_order)

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
        with self._transaction() as conn:
            # The execution row's lock orders this against suspend() (see there).
            self._run(
                conn, f"SELECT 1 FROM executions WHERE id = ?{self.lock_row}", (execution_id,)
            )
            cursor = self._run(
                conn,
                "UPDATE waits SET status = ?, value = ?, resolved_by = ?, resolved_at = ? "
                "WHERE execution_id = ? AND name = ? AND status = 'pending'",
                (status, value, by, now, execution_id, name),
            )
            if cursor.rowcount != 1:
                return False
            self._run(
                conn,
                "UPDATE executions SET status = 'queued', wake_at = NULL, updated_at = ? "
                "WHERE id = ? AND status = 'waiting'",
                (now, execution_id),
            )
            return True

    def pending_waits(self, *, flow: str | None, limit: int) -> list[PendingWaitRow]:
        columns = ", ".join(f"w.{c.strip()}" for c in WAIT_COLUMNS.split(","))
        clause = "AND e.flow = ?" if flow is not None else ""
        params: tuple[Any, ...] = (flow, limit) if flow is not None else (limit,)
        rows = self._all(
            f"SELECT {columns}, e.flow FROM waits w JOIN executions e ON e.id = w.execution_id "
            "WHERE w.status = 'pending' AND w.kind = 'input' "
            f"AND e.status NOT IN ('succeeded', 'failed', 'cancelled') {clause} "
            "ORDER BY w.created_at LIMIT ?",
            params,
        )
        return [PendingWaitRow(WaitRow(*r[:-1]), r[-1]) for r in rows]

    # --- checkpoints --------------------------------------------------------------------

    def get_checkpoints(self, execution_id: str) -> list[CheckpointRow]:
        rows = self._all(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE execution_id = ?",
            (execution_id,),
        )
        # Positions are text ("3.1.2"): program order is theirs, not the text's.
        return sorted((CheckpointRow(*r) for r in rows), key=_checkpoint_order)

    def record_checkpoint(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Commit:
        params = (execution_id, *checkpoint_values(row), execution_id, token)
        if not events:
            # The hot path: one statement, its own transaction.
            found = self._one(RECORD_CHECKPOINT, params)
        else:
            with self._transaction() as conn:
                found = self._run(conn, RECORD_CHECKPOINT, params).fetchone()
                if found is not None:
                    self._executemany(conn, INSERT_EVENT, [event_params(e) for e in events])
        if found is None:
            return Commit.LOST
        return Commit.CANCEL_REQUESTED if found[0] else Commit.COMMITTED

    def reset_for_retry(
        self, execution_id: str, *, positions: Sequence[str], waits: Sequence[str], now: float
    ) -> bool:
        with self._transaction() as conn:
            cursor = self._run(
                conn,
                f"UPDATE executions SET status = 'queued', result = NULL, error = NULL, "
                f"{RELEASED}, wake_at = NULL, cancel_requested = 0, finished_at = NULL, "
                "updated_at = ? "
                "WHERE id = ? AND status = 'failed'",
                (now, execution_id),
            )
            if cursor.rowcount != 1:
                return False
            for column, table, keys in (
                ("position", "checkpoints", positions),
                ("name", "waits", waits),
            ):
                self._executemany(
                    conn,
                    f"DELETE FROM {table} WHERE execution_id = ? AND {column} = ?",
                    [(execution_id, key) for key in keys],
                )
            return True

    def prune(self, *, before: float, statuses: Sequence[str], dry_run: bool) -> int:
        where = f"status IN ({marks(statuses)}) AND finished_at < ?"
        params = (*statuses, before)
        with self._transaction() as conn:
            if dry_run:
                found = self._run(conn, f"SELECT count(*) FROM executions WHERE {where}", params)
                return int(found.fetchone()[0])
            ids = [
                (r[0],)
                for r in self._run(conn, f"SELECT id FROM executions WHERE {where}", params)
                .fetchall()
            ]  # fmt: skip
            for table, column in (
                ("checkpoints", "execution_id"), ("waits", "execution_id"),
                ("events", "execution_id"), ("executions", "id"),
            ):  # fmt: skip
                self._executemany(conn, f"DELETE FROM {table} WHERE {column} = ?", ids)
            return len(ids)

    # --- events -------------------------------------------------------------------------

    def add_event(self, event: EventRow) -> None:
        with self._connection() as conn:
            self._run(conn, INSERT_EVENT, event_params(event))

    def get_events(
        self, execution_id: str, *, after: int = 0, kinds: Sequence[str] | None = None
    ) -> list[EventRow]:
        clause = f"AND kind IN ({marks(kinds)})" if kinds else ""
        rows = self._all(
            "SELECT execution_id, position, at, level, kind, message, data, id FROM events "
            f"WHERE execution_id = ? AND id > ? {clause} ORDER BY id",
            (execution_id, after, *(kinds or ())),
        )
        return [EventRow(*r) for r in rows]

    # --- memory (tether.memory) ---------------------------------------------------------

    def put_memory(
        self,
        row: MemoryRow,
        blobs: Sequence[tuple[str, str]] = (),
        *,
        fence: tuple[str, str] | None = None,
        if_version: int | None = None,
    ) -> MemoryRow | None:
        params = (
            row.scope, row.scope_id, row.key, int(row.deleted), row.blob, row.base_version,
            row.items, row.length, row.size, row.created_at, row.writer_execution,
            row.writer_position, row.idempotency_key, row.scope, row.scope_id, row.key,
            if_version,
        )  # fmt: skip
        with self._transaction() as conn:
            if fence is not None:
                # Locked (Postgres) so that a takeover cannot commit between this check and
                # the write: a process that lost its lease writes nothing, as with checkpoints.
                held = self._run(
                    conn,
                    f"SELECT 1 FROM executions WHERE id = ? AND lease_token = ?{self.lock_row}",
                    fence,
                ).fetchone()
                if held is None:
                    return None
            if blobs:
                # In hash order: writers sharing blobs take their index locks (Postgres) in
                # the same order, so they wait for each other instead of deadlocking.
                self._executemany(
                    conn,
                    "INSERT INTO blobs (hash, data) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    sorted(dict(blobs).items()),
                )
            for _ in range(_MEMORY_WRITE_TRIES):
                if row.idempotency_key is not None:
                    found = self._run(
                        conn,
                        f"SELECT {MEMORY_COLUMNS} FROM memory WHERE idempotency_key = ?",
                        (row.idempotency_key,),
                    ).fetchone()
                    if found is not None:
                        return memory_row(found)
                inserted = self._run(conn, INSERT_MEMORY, params).fetchone()
                if inserted is not None:
                    return memory_row(inserted)
                if if_version is not None:
                    latest = self._run(
                        conn,
                        "SELECT coalesce(max(version), 0) FROM memory "
                        "WHERE scope = ? AND scope_id = ? AND key = ?",
                        (row.scope, row.scope_id, row.key),
                    ).fetchone()[0]
                    if int(latest) != if_version:
                        raise MemoryConflictError(row.key, if_version, int(latest))
                # Another writer took that version number, or wrote this idempotency key.
                # (Postgres, READ COMMITTED: ON CONFLICT waited for it to commit, and the next
                # statement sees it; SQLite serializes writers, so this does not happen.)
        raise StoreError(
            f"could not store a version of memory key {row.key!r} after "
            f"{_MEMORY_WRITE_TRIES} tries: too many concurrent writers of that key"
        )

    def get_memory(
        self, scope: str, scope_id: str, key: str, version: int | None = None
    ) -> MemoryRow | None:
        which = "" if version is None else "AND version = ? "
        params = (scope, scope_id, key) if version is None else (scope, scope_id, key, version)
        found = self._one(
            f"SELECT {MEMORY_COLUMNS} FROM memory WHERE scope = ? AND scope_id = ? AND key = ? "
            f"{which}ORDER BY version DESC LIMIT 1",
            params,
        )
        return memory_row(found) if found else None

    def memory_versions(
        self, scope: str, scope_id: str, key: str, *, up_to: int | None = None
    ) -> list[MemoryRow]:
        which = "" if up_to is None else "AND version <= ? "
        params = (scope, scope_id, key) if up_to is None else (scope, scope_id, key, up_to)
        rows = self._all(
            f"SELECT {MEMORY_COLUMNS} FROM memory WHERE scope = ? AND scope_id = ? AND key = ? "
            f"{which}ORDER BY version DESC",
            params,
        )
        return [memory_row(r) for r in rows]

    def list_memory(
        self, *, scope: str | None, scope_id: str | None, prefix: str | None, limit: int
    ) -> list[MemoryRow]:
        where = ["m.deleted = 0"]
        params: list[Any] = []
        if scope is not None:
            where.append("m.scope = ?")
            params.append(scope)
        if scope_id is not None:
            where.append("m.scope_id = ?")
            params.append(scope_id)
        if prefix:
            # substr, not LIKE: no escaping of % and _ in keys, the same in both databases.
            where.append("substr(m.key, 1, CAST(? AS INTEGER)) = ?")
            params.extend((len(prefix), prefix))
        params.append(limit)
        rows = self._all(
            f"SELECT {MEMORY_COLUMNS} FROM memory m WHERE {' AND '.join(where)} AND m.version = "
            "(SELECT max(x.version) FROM memory x WHERE x.scope = m.scope "
            "AND x.scope_id = m.scope_id AND x.key = m.key) "
            "ORDER BY m.scope, m.scope_id, m.key LIMIT ?",
            params,
        )
        return [memory_row(r) for r in rows]

    def get_blobs(self, hashes: Sequence[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, str] = {}
        with self._connection() as conn:
            for start in range(0, len(wanted), _BLOB_BATCH):
                batch = wanted[start : start + _BLOB_BATCH]
                rows = self._run(
                    conn, f"SELECT hash, data FROM blobs WHERE hash IN ({marks(batch)})", batch
                ).fetchall()
                found.update((str(h), str(d)) for h, d in rows)
        return found


def marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def event_params(e: EventRow) -> tuple[Any, ...]:
    return (e.execution_id, e.position, e.at, e.level, e.kind, e.message, e.data)


def execution_row(r: Sequence[Any]) -> ExecutionRow:
    row = ExecutionRow(*r)
    row.cancel_requested = bool(row.cancel_requested)
    return row


def statements(sql: str) -> Iterator[str]:
    """Split a migration file into statements: on semicolons, except inside $$ bodies."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    text = "\n".join(lines)
    current: list[str] = []
    for i, chunk in enumerate(text.split("$$")):
        if i % 2:  # inside a $$ ... $$ body
            current.append(f"$${chunk}$$")
            continue
        parts = chunk.split(";")
        current.append(parts[0])
        for part in parts[1:]:
            statement = "".join(current)
            if statement.strip():
                yield statement
            current = [part]
    if "".join(current).strip():
        yield "".join(current)


_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@lru_cache(maxsize=512)
def to_format_style(sql: str) -> str:
    """`?` -> `%s`, `:name` -> `%(name)s` (the pyformat style of psycopg)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))


# --- memory (tether.memory) -------------------------------------------------------------------

MEMORY_COLUMNS = (
    "scope, scope_id, key, version, deleted, blob, base_version, items, length, size, "
    "created_at, writer_execution, writer_position, idempotency_key"
)

# The next version number of the key is computed in the statement that inserts it; a
# concurrent writer that took the same number makes it insert nothing (ON CONFLICT), and the
# caller tries again. The last parameter (if not NULL) is the version the key must be at.
# NULL integers are cast: Postgres types a bare NULL parameter as text.
INSERT_MEMORY = f"""
INSERT INTO memory ({MEMORY_COLUMNS})
SELECT ?, ?, ?, m.latest + 1, ?, ?, CAST(? AS INTEGER), ?, CAST(? AS INTEGER),
    ?, ?, ?, CAST(? AS INTEGER), ?
FROM (SELECT coalesce(max(version), 0) AS latest FROM memory
      WHERE scope = ? AND scope_id = ? AND key = ?) AS m
WHERE m.latest = coalesce(CAST(? AS INTEGER), m.latest)
ON CONFLICT DO NOTHING
RETURNING {MEMORY_COLUMNS}
"""

_MEMORY_WRITE_TRIES = 1000
# Leases renewed per statement (3 parameters each: well under SQLite's parameter limit).
_RENEW_BATCH = 200
_BLOB_BATCH = 500


def memory_row(r: Sequence[Any]) -> MemoryRow:
    row = MemoryRow(*r)
    row.deleted = bool(row.deleted)
    return row


def _checkpoint_order(row: CheckpointRow) -> tuple[tuple[int, int | str], ...]:
    return sort_key(row.position)


def _wait_order(row: WaitRow) -> tuple[tuple[int, int | str], ...]:
    return sort_key(row.position)
