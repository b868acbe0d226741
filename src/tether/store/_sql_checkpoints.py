"""The SQL store's checkpoint calls and events (and pruning what is finished)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import (
    CheckpointOutline,
    CheckpointRow,
    Commit,
    EventRow,
    memory_write_key,
)
from ._positions import sort_key
from ._sql_common import (
    CHECKPOINT_COLUMNS,
    INSERT_EVENT,
    RECORD_CHECKPOINT,
    RECORD_CHECKPOINT_UNCANCELLED,
    RECORD_PLAIN_CHECKPOINT,
    RELEASED,
    SqlBase,
    checkpoint_values,
    event_params,
    marks,
)

# A member read off an Enum class goes through its metaclass's attribute hook: once here.
_COMMITTED = Commit.COMMITTED

# Positions per statement of get_checkpoints_at: well under either database's parameter limit.
_POSITIONS_PER_READ = 500


class CheckpointsSql(SqlBase):
    """The SQL store's checkpoint calls and events (and pruning what is finished)."""

    def usage_records(self, *, flow: str | None, since: float | None) -> list[str]:
        where, params = "", list[Any]()  # the same filter, once per half of the UNION
        if flow is not None:
            where += " AND e.flow = ?"
            params.append(flow)
        if since is not None:
            where += " AND e.created_at >= ?"
            params.append(since)
        rows = self._all(
            "SELECT c.metadata FROM checkpoints c JOIN executions e ON e.id = c.execution_id "
            f"WHERE c.metadata LIKE ?{where} "
            "UNION ALL SELECT v.data FROM events v JOIN executions e ON e.id = v.execution_id "
            f"WHERE v.kind = 'retry' AND v.data IS NOT NULL{where}",
            ['%"tether.usage"%', *params, *params],
        )
        return [str(r[0]) for r in rows]

    def get_checkpoints(self, execution_id: str) -> list[CheckpointRow]:
        rows = self._all(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE execution_id = ?",
            (execution_id,),
        )
        # Positions are text ("3.1.2"): program order is theirs, not the text's.
        return sorted((CheckpointRow(*r) for r in rows), key=lambda row: sort_key(row.position))

    def latest_call(self, execution_id: str, name: str) -> CheckpointRow | None:
        found = self._one(
            f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE execution_id = ? AND name = ? "
            "AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 1",
            (execution_id, name),
        )
        return None if found is None else CheckpointRow(*found)

    def checkpoint_outline(self, execution_id: str) -> CheckpointOutline:
        # One walk over the calls bringing back only small values: a call's result stays in
        # the database, and so does metadata without usage (most of it; the LIKE is
        # `usage_records`'). Faster than a query per figure on both databases (PostgreSQL
        # plans a UNION of two with parallel workers, costly on a busy machine).
        rows = self._all(
            "SELECT position, CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END, "
            "CASE WHEN metadata LIKE ? THEN metadata END "
            "FROM checkpoints WHERE execution_id = ?",
            ('%"tether.usage"%', execution_id),
        )
        positions = [str(position) for position, _, _ in rows]
        program_order(positions)
        usage = [(str(p), str(m)) for p, _, m in rows if m is not None]
        usage.sort(key=lambda pair: sort_key(pair[0]))
        return CheckpointOutline(
            positions=positions,
            succeeded=sum(int(done) for _, done, _ in rows),
            usage=[m for _, m in usage],
        )

    def get_checkpoints_at(
        self, execution_id: str, positions: Sequence[str]
    ) -> list[CheckpointRow]:
        clause, pairs = self.by_positions
        rows: list[Any] = []
        for start in range(0, len(positions), _POSITIONS_PER_READ):
            chunk = positions[start : start + _POSITIONS_PER_READ]
            if pairs:
                listed = ", ".join("(?, ?)" for _ in chunk)
                params: list[Any] = [v for p in chunk for v in (execution_id, p)]
            else:
                listed, params = marks(chunk), [execution_id, *chunk]
            rows += self._all(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE {clause.format(listed)}",
                params,
            )
        return sorted((CheckpointRow(*r) for r in rows), key=lambda row: sort_key(row.position))

    def record_checkpoint(
        self, execution_id: str, token: str, row: CheckpointRow, events: Sequence[EventRow] = ()
    ) -> Commit:
        if row.error is None and row.attempts is None and row.metadata is None:
            statement = RECORD_PLAIN_CHECKPOINT
            given = (
                execution_id, row.position, row.name, row.fingerprint, row.status, row.result,
                row.started_at, row.finished_at, execution_id, token,
            )  # fmt: skip
        else:
            statement = RECORD_CHECKPOINT_UNCANCELLED
            given = (execution_id, *checkpoint_values(row), execution_id, token)
        if not events:
            # The hot path: one statement, its own transaction, told apart by its row count.
            if self._count(statement, given):
                return _COMMITTED
        else:
            with self._transaction() as conn:
                if self._run(conn, statement, given).rowcount:
                    self._executemany(conn, INSERT_EVENT, [event_params(e) for e in events])
                    return Commit.COMMITTED
        return self._record_checkpoint_again(
            (execution_id, *checkpoint_values(row), execution_id, token), events
        )

    def _record_checkpoint_again(
        self, params: tuple[Any, ...], events: Sequence[EventRow]
    ) -> Commit:
        """The write when the common statement wrote nothing: a cancel is pending (the row is
        still written, and the holder told), the lease is lost, or the row is final already
        (LOST for both). Fenced on its own, so what changed in between cannot slip past it."""
        with self._transaction() as conn:
            found = self._run(conn, RECORD_CHECKPOINT, params).fetchone()
            if found is None:
                return Commit.LOST
            if events:
                self._executemany(conn, INSERT_EVENT, [event_params(e) for e in events])
        return Commit.CANCEL_REQUESTED if found[0] else Commit.COMMITTED

    def reset_for_retry(
        self, execution_id: str, *, positions: Sequence[str], waits: Sequence[str], now: float
    ) -> bool:
        with self._transaction() as conn:
            cursor = self._run(
                conn,
                f"UPDATE executions SET status = 'queued', result = NULL, error = NULL, "
                f"{RELEASED}, wake_at = NULL, cancel_requested = 0, finished_at = NULL, "
                "takeovers = 0, not_before = NULL, updated_at = ? "
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
            # The versions stay (they were written, and may have been read); only their
            # claim to the position goes, so the retried call writes its value again.
            self._executemany(
                conn,
                "UPDATE memory SET idempotency_key = NULL WHERE idempotency_key = ?",
                [(memory_write_key(execution_id, position),) for position in positions],
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
                ("messages", "execution_id"), ("events", "execution_id"),
                ("executions", "id"),
            ):  # fmt: skip
                self._executemany(conn, f"DELETE FROM {table} WHERE {column} = ?", ids)
            return len(ids)

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


def program_order(positions: list[str]) -> None:
    """Sort stored positions in program order, in place."""
    if all(p.isdigit() for p in positions):
        # Calls of the flow body only (`17`): sort_key's order without its parsing.
        positions.sort(key=int)
    else:
        positions.sort(key=sort_key)
