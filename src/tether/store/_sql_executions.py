"""The SQL store's executions: create, read, list, finish, release, cancel, suspend."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ..errors import StoreCorrupt, StoreUnavailable, UsageError
from ._base import (
    CheckpointRow,
    ChildStart,
    EventRow,
    ExecutionRow,
    ExecutionStats,
    WaitRow,
)
from ._group_commit import GroupCommit
from ._sql_common import (
    _FINISHED,
    CHECKPOINT_COLUMNS,
    EXECUTION_COLUMNS,
    INSERT_EVENT,
    RELEASED,
    WAIT_COLUMNS,
    Connection,
    SqlBase,
    checkpoint_values,
    conditions,
    event_params,
    execution_row,
    marks,
)

# One placeholder per column of EXECUTION_COLUMNS.
_ROW_MARKS = ", ".join("?" * len(EXECUTION_COLUMNS.split(",")))
# A new execution; nothing when one of its flow holds its deduplication key already.
_INSERT = (
    f"INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({_ROW_MARKS}) "
    "ON CONFLICT (flow, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING"
)
_STARTS_LOCK = threading.Lock()
# Held while a thread writes a start of its own, outside the group commit (see
# create_execution). One for the process, not per store: it only picks a path.
_ALONE = threading.Lock()


def _values(row: ExecutionRow) -> tuple[Any, ...]:
    """`row` in the order of EXECUTION_COLUMNS."""
    return (
        row.id, row.flow, row.import_path, row.script, row.args, row.status, row.result,
        row.error, row.owner, row.lease_token, row.lease_expires, row.attempt,
        int(row.cancel_requested), row.created_at, row.updated_at, row.started_at,
        row.finished_at, row.parent_id, row.replay_of, row.metadata, row.options, row.wake_at,
        row.progress, row.queue, row.priority, row.dedup_key, row.takeovers, row.not_before,
        row.deadline,
    )  # fmt: skip


def _start_key(row: ExecutionRow) -> Hashable:
    # Two starts of one key never share a batch: the second finds the first's row.
    return row.id if row.dedup_key is None else (row.flow, row.dedup_key)


def _never(row: ExecutionRow) -> bool:
    return False  # a start's caller does not come back with another item at once


class ExecutionsSql(SqlBase):
    """The SQL store's executions: create, read, list, finish, release, cancel, suspend."""

    # Starts without seeds, group committed (made on first use).
    _starts: GroupCommit[ExecutionRow, str] | None = None

    def create_execution(
        self,
        row: ExecutionRow,
        *,
        checkpoints: Sequence[CheckpointRow] = (),
        waits: Sequence[WaitRow] = (),
    ) -> str:
        if checkpoints or waits:
            return self._create_one(row, checkpoints, waits)
        # A start while no other thread's is being written (a loop of `run()` calls, one
        # thread) writes at once, without the group commit's bookkeeping; one that arrives
        # while another is written goes through the group commit, so the starts of many
        # threads share transactions instead of queuing on the write lock for one each.
        # Not the checkpoint writer's group commit, even while its batch holds the lock:
        # there a start waits for the rest of that batch and then all of the next, where
        # here it writes one row after the rest (measured: see CHANGELOG, Unreleased).
        if _ALONE.acquire(blocking=False):
            try:
                if row.dedup_key is None:
                    # One statement, its own transaction: no connection or result wrapper
                    # to build for it (a loop of `run()` pays this once per start). Without
                    # a key nothing can make it insert nothing: an id taken raises.
                    self._count(_INSERT, _values(row))
                    return row.id
                return self._create_one(row)
            finally:
                _ALONE.release()
        return self._start_group().commit(row)

    def _create_one(
        self,
        row: ExecutionRow,
        checkpoints: Sequence[CheckpointRow] = (),
        waits: Sequence[WaitRow] = (),
    ) -> str:
        # Without seeds or a key (every plain start) one statement is its own transaction.
        atomic = bool(checkpoints or waits or row.dedup_key)
        with self._transaction() if atomic else self._connection() as conn:
            found = self._insert_execution(conn, row)
            if found != row.id:
                return found
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

    def _insert_execution(self, conn: Connection, row: ExecutionRow) -> str:
        """Insert `row`; the id of the execution of its flow holding its key if one does."""
        if self._run(conn, _INSERT, _values(row)).rowcount == 1:
            return row.id
        existing = self._run(
            conn,
            "SELECT id FROM executions WHERE flow = ? AND dedup_key = ?",
            (row.flow, row.dedup_key),
        ).fetchone()
        return str(existing[0])

    def create_execution_async(
        self, row: ExecutionRow, *, then: Callable[[str | None], None] | None = None
    ) -> asyncio.Future[str]:
        return self._start_group().commit_async(row, then)

    def _start_group(self) -> GroupCommit[ExecutionRow, str]:
        starts = self._starts
        if starts is None:
            with _STARTS_LOCK:
                if self._starts is None:
                    # The same group commit as checkpoints': whatever starts arrive while a
                    # batch is written go in the next one, written by a waiting thread or,
                    # for callers on event loops, the committer's own.
                    self._starts = GroupCommit(
                        self._write_starts,
                        key=_start_key,
                        shared=(StoreUnavailable, StoreCorrupt),
                        rejoins=_never,
                    )
                starts = self._starts
        return starts

    def _write_starts(self, batch: list[ExecutionRow]) -> list[str]:
        """A batch of starts in one transaction: the keyless rows together (`_insert_new`),
        a keyed one alone (its conflict names the execution that holds the key)."""
        if len(batch) == 1:
            return [self._create_one(batch[0])]
        with self._transaction() as conn:
            self._insert_new(conn, [_values(r) for r in batch if r.dedup_key is None])
            return [
                row.id if row.dedup_key is None else self._insert_execution(conn, row)
                for row in batch
            ]

    def _insert_new(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert keyless execution rows (in EXECUTION_COLUMNS order) in one go; a dialect
        may do it in fewer statements."""
        if rows:
            self._executemany(conn, _INSERT, rows)

    def start_child(
        self, parent_id: str, token: str, child: ExecutionRow, start: CheckpointRow
    ) -> ChildStart:
        with self._transaction() as conn:
            held = self._run(
                conn,
                "SELECT cancel_requested FROM executions WHERE id = ? AND lease_token = ?"
                f"{self.lock_row}",
                (parent_id, token),
            ).fetchone()
            if held is None:
                return ChildStart.LOST
            if held[0]:
                return ChildStart.CANCEL_REQUESTED
            # The child's id is derived from the parent and the call's position: a retried
            # parent that starts the same call again finds it here.
            inserted = self._run(
                conn,
                f"INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({_ROW_MARKS}) "
                "ON CONFLICT DO NOTHING",
                (
                    child.id, child.flow, child.import_path, child.script, child.args,
                    child.status, child.result, child.error, child.owner, child.lease_token,
                    child.lease_expires, child.attempt, int(child.cancel_requested),
                    child.created_at, child.updated_at, child.started_at, child.finished_at,
                    parent_id, child.replay_of, child.metadata, child.options, child.wake_at,
                    child.progress, child.queue, child.priority, child.dedup_key,
                    child.takeovers, child.not_before, child.deadline,
                ),
            ).rowcount  # fmt: skip
            self._run(
                conn,
                f"INSERT INTO checkpoints (execution_id, {CHECKPOINT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (execution_id, position) DO NOTHING",
                (parent_id, *checkpoint_values(start)),
            )
            return ChildStart.STARTED if inserted == 1 else ChildStart.EXISTED

    def get_execution(self, execution_id: str) -> ExecutionRow | None:
        found = self._one(
            f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,)
        )
        return execution_row(found) if found else None

    def execution_ids(self, prefix: str, *, limit: int) -> list[str]:
        # substr, not LIKE: no escaping of % and _, the same in both databases. It scans,
        # but only a lookup by a prefix that is not a whole id comes here.
        rows = self._all(
            "SELECT id FROM executions WHERE substr(id, 1, CAST(? AS INTEGER)) = ? "
            "ORDER BY id LIMIT ?",
            (len(prefix), prefix, limit),
        )
        return sorted(r[0] for r in rows)  # in code point order, whatever the collation

    def list_executions(
        self,
        *,
        statuses: Sequence[str] | None,
        flow: str | None,
        limit: int,
        parent: str | None = None,
        before: tuple[float, str] | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
    ) -> list[ExecutionRow]:
        where, params = _selection(flow=flow, parent=parent, queue=queue, id_prefix=id_prefix)
        if before is not None:
            # Keyset: the page goes on after the last row seen, whatever was inserted since.
            # `created_at <= ?` repeats what the OR implies, as a range both databases start
            # the index scan at: with the OR alone they walk every newer row to get there.
            where.append("created_at <= ? AND (created_at < ? OR (created_at = ? AND id < ?))")
            params.extend((before[0], before[0], before[0], before[1]))
        if statuses:
            where.append(f"status IN ({marks(statuses)})")
            params.extend(statuses)
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

    def count_by_status(
        self,
        statuses: Sequence[str],
        *,
        cap: int,
        flow: str | None = None,
        parent: str | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
    ) -> dict[str, int]:
        if not statuses:
            return {}
        for status in statuses:
            if not status.isalpha():
                raise ValueError(f"not a status: {status!r}")
        limit = int(cap)
        where, selected = _selection(flow=flow, parent=parent, queue=queue, id_prefix=id_prefix)
        extra = "".join(f" AND {w}" for w in where)
        # One capped count per status, each an index range read of at most `cap` entries: a
        # GROUP BY over every execution costs as much as the table is big (tens of ms at
        # 100,000 rows), and a page that shows the counts is loaded again and again. Statuses
        # and the cap are literals (checked above): once PostgreSQL switched the prepared
        # statement to its generic plan (`status = $1 LIMIT $2`), it scanned the table.
        parts = " UNION ALL ".join(
            f"SELECT '{status}', (SELECT count(*) FROM "
            f"(SELECT 1 FROM executions WHERE status = '{status}'{extra} LIMIT {limit}) AS s{i})"
            for i, status in enumerate(statuses)
        )
        return {str(s): int(n) for s, n in self._all(parts, selected * len(statuses))}

    def execution_stats(self) -> ExecutionStats:
        with self._connection() as conn:
            counts = self._run(
                conn, "SELECT status, queue, count(*) FROM executions GROUP BY status, queue"
            ).fetchall()
            oldest = self._run(
                conn, "SELECT min(updated_at) FROM executions WHERE status = 'queued'"
            ).fetchone()
            waits = self._run(
                conn,
                "SELECT count(*) FROM waits w JOIN executions e ON e.id = w.execution_id "
                "WHERE w.status = 'pending' AND w.kind = 'input' "
                f"AND e.status NOT IN ({marks(_FINISHED)})",
                _FINISHED,
            ).fetchone()
        return ExecutionStats(
            counts={(str(s), str(q)): int(n) for s, q, n in counts},
            queued_since=None if oldest[0] is None else float(oldest[0]),
            pending_waits=int(waits[0]),
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
        return (
            self._count(
                f"UPDATE executions SET status = ?, result = ?, error = ?, {RELEASED}, "
                "wake_at = NULL, finished_at = ?, updated_at = ? WHERE id = ? AND lease_token = ?",
                (status, result, error, now, now, execution_id, token),
            )
            == 1
        )

    def release(
        self,
        execution_id: str,
        token: str,
        *,
        status: str,
        now: float,
        not_before: float | None = None,
    ) -> bool:
        # A release without a backoff keeps not_before: it marks that the backoff of the
        # current crash loop was served (see the engine's crash-loop check).
        after = "not_before" if not_before is None else "?"
        params: tuple[Any, ...] = (status, now, execution_id, token)
        if not_before is not None:
            params = (status, not_before, now, execution_id, token)
        return (
            self._count(
                f"UPDATE executions SET status = ?, not_before = {after}, {RELEASED}, "
                "updated_at = ? WHERE id = ? AND lease_token = ?",
                params,
            )
            == 1
        )

    def request_cancel(self, execution_id: str, *, now: float) -> str | None:
        with self._transaction() as conn:
            # Descendants first, deepest first, each locked before any is changed: a child's
            # end locks its parent (the trigger of migration 0010), so rows are always locked
            # child before parent and a cancel never deadlocks with a finishing child. A
            # child cancelled at once resolves its parent's wait for it.
            descendants = self._descendants(conn, execution_id)
            for descendant, state in [(d, self._locked_state(conn, d)) for d in descendants]:
                if state is not None:
                    self._cancel_one(conn, descendant, state, now)
            state = self._locked_state(conn, execution_id)
            if state is None:
                return None
            status = self._cancel_one(conn, execution_id, state, now)
            # A child started between the read above and the lock on its parent (a start
            # after that lock sees the cancel and starts nothing).
            for late in self._descendants(conn, execution_id):
                if late not in descendants:
                    found = self._locked_state(conn, late)
                    if found is not None:
                        self._cancel_one(conn, late, found, now)
            return status

    def set_deadline(self, execution_id: str, token: str, deadline: float) -> bool:
        return (
            self._count(
                "UPDATE executions SET deadline = ? WHERE id = ? AND lease_token = ?",
                (deadline, execution_id, token),
            )
            == 1
        )

    def time_out(self, execution_id: str, token: str, *, error: str, now: float) -> bool:
        with self._transaction() as conn:
            # Descendants first, each locked before any is changed, then the execution
            # itself: the order request_cancel keeps, so the two never deadlock.
            descendants = self._descendants(conn, execution_id)
            for descendant, state in [(d, self._locked_state(conn, d)) for d in descendants]:
                if state is not None:
                    self._cancel_one(conn, descendant, state, now)
            ended = self._run(
                conn,
                "UPDATE executions SET status = 'cancelled', result = NULL, error = ?, "
                f"cancel_requested = 1, wake_at = NULL, {RELEASED}, finished_at = ?, "
                "updated_at = ? WHERE id = ? AND lease_token = ?",
                (error, now, now, execution_id, token),
            ).rowcount
            if ended != 1:
                return False
            self._cancel_waits(conn, execution_id, now)
            for late in self._descendants(conn, execution_id):
                if late not in descendants:
                    found = self._locked_state(conn, late)
                    if found is not None:
                        self._cancel_one(conn, late, found, now)
            return True

    def _descendants(self, conn: Connection, execution_id: str) -> list[str]:
        """The unfinished descendants of an execution, deepest first."""
        rows = self._run(
            conn,
            "WITH RECURSIVE tree (id, depth) AS ("
            "SELECT id, 1 FROM executions WHERE parent_id = ? "
            "UNION ALL SELECT e.id, t.depth + 1 FROM executions e "
            "JOIN tree t ON e.parent_id = t.id) "
            "SELECT t.id FROM tree t JOIN executions x ON x.id = t.id "
            f"WHERE x.status NOT IN ({marks(_FINISHED)}) ORDER BY t.depth DESC, t.id",
            (execution_id, *_FINISHED),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _locked_state(self, conn: Connection, execution_id: str) -> tuple[str, str | None] | None:
        found = self._run(
            conn,
            f"SELECT status, lease_token FROM executions WHERE id = ?{self.lock_row}",
            (execution_id,),
        ).fetchone()
        return None if found is None else (str(found[0]), found[1])

    def _cancel_one(
        self, conn: Connection, execution_id: str, state: tuple[str, str | None], now: float
    ) -> str:
        status, token = state
        if status in _FINISHED:
            return status
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
        return status

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

    def suspend(
        self,
        execution_id: str,
        token: str,
        *,
        wait: str,
        wake_at: float | None,
        now: float,
        note: EventRow | None = None,
    ) -> bool:
        if note is not None and note.execution_id != execution_id:
            raise UsageError(
                f"the note of suspending execution {execution_id} names execution "
                f"{note.execution_id}: build it for the execution being suspended"
            )
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
                if note is not None:
                    # In this transaction: no reader ever sees it waiting without its note.
                    self._run(conn, INSERT_EVENT, event_params(note))
            return True


def _selection(
    *, flow: str | None, parent: str | None, queue: str | None, id_prefix: str | None
) -> tuple[list[str], list[Any]]:
    """The conditions (and their parameters) that a list and its status counts share, so
    that the counts beside a filtered list count what that list holds."""
    return conditions((("parent_id", parent), ("flow", flow), ("queue", queue)), ("id", id_prefix))
