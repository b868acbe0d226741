"""The SQL store's waits: input waits and timers of executions."""

from __future__ import annotations

import json
from typing import Any

from ._base import (
    MessageRow,
    PendingWaitRow,
    Sent,
    WaitRow,
)
from ._positions import sort_key
from ._sql_common import _FINISHED, WAIT_COLUMNS, SqlBase

MESSAGE_COLUMNS = "execution_id, name, value, status, sent_by, sent_at, error, delivered_at"


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
                "WHERE execution_id = ? AND name = ? AND status = 'pending' AND NOT EXISTS "
                "(SELECT 1 FROM messages WHERE execution_id = ? AND name = ? AND status = 'sent')",
                (status, value, by, now, execution_id, name, execution_id, name),
            )
            if cursor.rowcount != 1:
                return False
            self._wake(conn, execution_id, now)
            return True

    def _wake(self, conn: Any, execution_id: str, now: float) -> None:
        self._run(
            conn,
            "UPDATE executions SET status = 'queued', wake_at = NULL, updated_at = ? "
            "WHERE id = ? AND status = 'waiting'",
            (now, execution_id),
        )

    def send_message(self, row: MessageRow, *, validated: bool, now: float) -> Sent:
        execution_id, name = row.execution_id, row.name
        with self._transaction() as conn:
            # The execution row's lock orders this against input (resolve_wait), the flow
            # recording the wait (create_wait) and suspend(): each sees the other's write.
            found = self._run(
                conn,
                f"SELECT status FROM executions WHERE id = ?{self.lock_row}",
                (execution_id,),
            ).fetchone()
            if found is None:
                return Sent.NOT_FOUND
            if found[0] in _FINISHED:
                return Sent.FINISHED
            wait = self._run(
                conn,
                "SELECT kind, status FROM waits WHERE execution_id = ? AND name = ?",
                (execution_id, name),
            ).fetchone()
            waiting = self._run(
                conn,
                "SELECT 1 FROM messages WHERE execution_id = ? AND name = ? AND status = 'sent'",
                (execution_id, name),
            ).fetchone()
            if waiting is not None:
                return Sent.DUPLICATE
            if wait is not None:
                if wait[0] != "input":
                    return Sent.NOT_INPUT
                if wait[1] != "pending":
                    return Sent.ANSWERED
                if not validated:
                    return Sent.VALIDATE
                self._run(
                    conn,
                    "UPDATE waits SET status = 'resolved', value = ?, resolved_by = ?, "
                    "resolved_at = ? WHERE execution_id = ? AND name = ?",
                    (row.value, row.sent_by, now, execution_id, name),
                )
                self._wake(conn, execution_id, now)
                return Sent.DELIVERED
            # A delivered or rejected message of a wait that is gone (a retry forgot it) is
            # replaced: the wait will be reached anew.
            self._run(
                conn,
                "INSERT INTO messages (execution_id, name, value, status, sent_by, sent_at) "
                "VALUES (?, ?, ?, 'sent', ?, ?) ON CONFLICT (execution_id, name) DO UPDATE SET "
                "value = excluded.value, status = 'sent', sent_by = excluded.sent_by, "
                "sent_at = excluded.sent_at, error = NULL, delivered_at = NULL",
                (execution_id, name, row.value, row.sent_by, now),
            )
            # A waiting execution runs again, so a wait it reaches next finds the message.
            self._wake(conn, execution_id, now)
            return Sent.STORED

    def get_messages(self, execution_id: str) -> list[MessageRow]:
        rows = self._all(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE execution_id = ? ORDER BY sent_at",
            (execution_id,),
        )
        return [MessageRow(*r) for r in rows]

    def deliver_message(
        self,
        execution_id: str,
        token: str,
        name: str,
        *,
        value: str | None,
        error: str | None,
        now: float,
    ) -> bool:
        with self._transaction() as conn:
            held = self._run(
                conn,
                f"SELECT 1 FROM executions WHERE id = ? AND lease_token = ?{self.lock_row}",
                (execution_id, token),
            ).fetchone()
            if held is None:
                return False
            sender = self._run(
                conn,
                "UPDATE messages SET status = ?, error = ?, delivered_at = ? "
                "WHERE execution_id = ? AND name = ? AND status = 'sent' RETURNING sent_by",
                ("rejected" if value is None else "delivered", error, now, execution_id, name),
            ).fetchone()
            if sender is not None and value is not None:
                self._run(
                    conn,
                    "UPDATE waits SET status = 'resolved', value = ?, resolved_by = ?, "
                    "resolved_at = ? WHERE execution_id = ? AND name = ? AND status = 'pending'",
                    (value, sender[0], now, execution_id, name),
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
