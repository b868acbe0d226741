"""The SQL store's schedules: per scheduled flow its spec, paused flag, last and next tick;
a tick fired as one compare-and-swap together with its execution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._base import ExecutionRow, ScheduleRow
from ._sql_common import EXECUTION_COLUMNS, SqlBase

_COLUMNS = "name, spec, paused, last_tick, next_tick, updated_at, resumed_at"
_FIELDS = [c.strip() for c in EXECUTION_COLUMNS.split(",")]
_MARKS = ", ".join("?" * len(_FIELDS))


def _values(row: ExecutionRow) -> tuple[Any, ...]:
    # By column name, so a column added to executions is carried here too.
    return tuple(
        int(row.cancel_requested) if f == "cancel_requested" else getattr(row, f) for f in _FIELDS
    )


def _row(r: Sequence[Any]) -> ScheduleRow:
    resumed = None if r[6] is None else float(r[6])
    return ScheduleRow(r[0], r[1], bool(r[2]), float(r[3]), float(r[4]), float(r[5]), resumed)


class SchedulesSql(SqlBase):
    """The SQL store's schedules."""

    def ensure_schedule(self, row: ScheduleRow) -> None:
        with self._connection() as conn:
            self._run(
                conn,
                f"INSERT INTO schedules ({_COLUMNS}) VALUES (?, ?, 0, ?, ?, ?, NULL) "
                "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                "next_tick = excluded.next_tick, updated_at = excluded.updated_at "
                "WHERE schedules.spec <> excluded.spec",
                (row.name, row.spec, row.last_tick, row.next_tick, row.updated_at),
            )

    def get_schedule(self, name: str) -> ScheduleRow | None:
        found = self._one(f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (name,))
        return None if found is None else _row(found)

    def list_schedules(self) -> list[ScheduleRow]:
        return [_row(r) for r in self._all(f"SELECT {_COLUMNS} FROM schedules ORDER BY name")]

    def set_schedule_paused(self, name: str, paused: bool, *, now: float) -> bool:
        return (
            self._count(
                "UPDATE schedules SET paused = ?, updated_at = ?, "
                "resumed_at = CASE WHEN ? = 0 AND paused = 1 THEN ? ELSE resumed_at END "
                "WHERE name = ?",
                (int(paused), now, int(paused), now, name),
            )
            == 1
        )

    def fire_schedule(
        self,
        name: str,
        *,
        expected_last: float,
        last_tick: float,
        next_tick: float,
        rows: Sequence[ExecutionRow],
        now: float,
    ) -> list[str] | None:
        with self._transaction() as conn:
            moved = self._run(
                conn,
                "UPDATE schedules SET last_tick = ?, next_tick = ?, updated_at = ? "
                "WHERE name = ? AND last_tick = ?" + (" AND paused = 0" if rows else ""),
                (last_tick, next_tick, now, name, expected_last),
            ).rowcount
            if moved != 1:
                return None
            inserted: list[str] = []
            for row in rows:  # one per tick, usually one per round
                if (
                    self._run(
                        conn,
                        f"INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({_MARKS}) "
                        "ON CONFLICT (flow, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING",
                        _values(row),
                    ).rowcount
                    == 1
                ):
                    inserted.append(row.id)
            return inserted
