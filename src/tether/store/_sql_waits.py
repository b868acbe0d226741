"""The SQL store's waits: input waits and timers of executions."""

from __future__ import annotations

import json
from typing import Any

from ._base import (
    PendingWaitRow,
    WaitRow,
)
from ._positions import sort_key
from ._sql_common import _FINISHED, WAIT_COLUMNS, SqlBase


class WaitsSql(SqlBase):
    """The SQL store's waits: input waits and timers of executions."""

    def _insert_if_held(self, conn: Any, token: str, row: WaitRow) -> bool:
        """Insert a wait (kept as it is if one of that name exists) while `token` holds its
        execution, locked for the transaction. False, writing nothing, if it does not."""
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

    def create_wait(self, token: str, row: WaitRow) -> bool:
        with self._transaction() as conn:
            return self._insert_if_held(conn, token, row)

    def await_child(self, token: str, row: WaitRow, child_id: str) -> WaitRow | None:
        with self._transaction() as conn:
            # The child's row first, held until this commits: its end (which resolves the
            # wait in its own transaction) either committed before this reads it, or waits
            # for this wait row to be committed and then finds it. Child before parent, the
            # order of every lock taken on both (migration 0010).
            child = self._run(
                conn,
                f"SELECT status, result, error FROM executions WHERE id = ?{self.share_row}",
                (child_id,),
            ).fetchone()
            if not self._insert_if_held(conn, token, row):
                return None
            if child is None or child[0] in _FINISHED:
                # Ended already (or gone: pruned), so no end is coming to resolve it.
                outcome = (
                    {"status": child[0], "result": child[1], "error": child[2]}
                    if child is not None
                    else {"status": "missing", "result": None, "error": None}
                )
                self._run(
                    conn,
                    "UPDATE waits SET status = 'resolved', value = ?, resolved_by = ?, "
                    "resolved_at = ? WHERE execution_id = ? AND name = ? AND status = 'pending'",
                    (json.dumps(outcome), child_id, row.created_at, row.execution_id, row.name),
                )
            found = self._run(
                conn,
                f"SELECT {WAIT_COLUMNS} FROM waits WHERE execution_id = ? AND name = ?",
                (row.execution_id, row.name),
            ).fetchone()
            return WaitRow(*found)

    def get_waits(self, execution_id: str) -> list[WaitRow]:
        rows = self._all(
            f"SELECT {WAIT_COLUMNS} FROM waits WHERE execution_id = ?", (execution_id,)
        )
        # Positions are text ("3.1.2"): program order is theirs, not the text's.
        return sorted((WaitRow(*r) for r in rows), key=lambda row: sort_key(row.position))

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
