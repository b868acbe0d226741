"""Schedules as an operator sees them: listed, paused and resumed through `Client`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .._core.config import settings
from ..errors import ScheduleNotFound
from ..store import ScheduleRow, Store


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A scheduled flow's schedule (`@tether.flow(schedule=...)`) as the store has it.

    `spec` is the cron string (UTC) or `every <seconds>s`; `last_tick` the latest tick fired
    or passed over (by the catch-up policy, or while paused); `next_tick` the one after it.
    A schedule is in the store once a worker that loaded its flow has run."""

    name: str
    spec: str
    paused: bool
    last_tick: dt.datetime
    next_tick: dt.datetime

    @classmethod
    def from_row(cls, row: ScheduleRow) -> ScheduleRecord:
        return cls(
            row.name,
            row.spec,
            row.paused,
            dt.datetime.fromtimestamp(row.last_tick, dt.UTC),
            dt.datetime.fromtimestamp(row.next_tick, dt.UTC),
        )


def set_paused(store: Store, name: str, paused: bool) -> ScheduleRecord:
    # The timer clock, as the workers' ticks use (tests move it by hand).
    if not store.set_schedule_paused(name, paused, now=settings().clock()):
        known = ", ".join(r.name for r in store.list_schedules())
        raise ScheduleNotFound(
            f"no schedule named {name!r} (schedules: {known or 'none'}). A schedule is named "
            "after its flow and appears once a worker (or tether.launch() process) that "
            "loaded the flow has run against this store; `tether schedules list` shows them"
        )
    row = store.get_schedule(name)
    assert row is not None  # just updated; schedules are never deleted
    return ScheduleRecord.from_row(row)
