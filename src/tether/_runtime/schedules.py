"""Schedules: when a scheduled flow's ticks fall, and firing each tick once across a fleet.

A tick is fired by one store transaction (`Store.fire_schedule`) that moves the schedule's
last tick forward only from the value this process read (a compare-and-swap) and, in the
same transaction, inserts the tick's execution, whose deduplication key is the tick. Two
workers racing for one tick therefore make one execution: the loser's swap finds the last
tick already moved and inserts nothing, and even a loser that read earlier still meets the
unique (flow, key) of the execution the winner inserted.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._core.status import Status
from ..errors import UsageError
from ..store import Claim, ExecutionRow, ScheduleRow, Store
from .engine import Runnable

Catchup = Literal["latest", "all", "none"]
CATCHUP: tuple[Catchup, ...] = ("latest", "all", "none")
# `catchup="all"` fires at most this many missed ticks per round, so a long outage of a
# frequent schedule cannot make one transaction of millions of rows; later rounds go on.
MAX_TICKS_PER_ROUND = 100
# `catchup="none"`: a tick seen due later than this is skipped, not fired (a worker that is
# up fires a tick well within it, even when busy).
NONE_GRACE_SECONDS = 30.0
# The execution key of a tick: one execution per (flow, tick).
KEY_PREFIX = "tick:"


@dataclass(frozen=True)
class Spec:
    """A parsed schedule: a cron expression (UTC) or an interval aligned to the epoch."""

    text: str  # as stored and shown: the cron string, or "every <seconds>s"
    cron: str | None = None
    interval: float | None = None

    def latest_at_or_before(self, t: float) -> float:
        """The last tick at or before `t`."""
        if self.interval is not None:
            return math.floor(t / self.interval) * self.interval
        prev = float(_croniter(self.cron, t).get_prev(float))
        following = float(_croniter(self.cron, prev).get_next(float))
        return following if following <= t else prev

    def after(self, t: float) -> float:
        """The first tick strictly after `t`."""
        if self.interval is not None:
            return (math.floor(t / self.interval) + 1) * self.interval
        return float(_croniter(self.cron, t).get_next(float))


def _croniter(expression: str | None, start: float) -> Any:
    from croniter import croniter  # imported only when a cron schedule is used

    return croniter(expression, dt.datetime.fromtimestamp(start, dt.UTC), second_at_beginning=True)


def parse(schedule: object, flow: str) -> Spec:
    """A `schedule=` value checked, or UsageError saying what to give instead."""
    if isinstance(schedule, dt.timedelta):
        seconds = schedule.total_seconds()
        if seconds <= 0:
            raise UsageError(
                f"flow {flow!r}: a schedule interval must be positive, not {schedule!r}; "
                "give e.g. schedule=timedelta(minutes=5)"
            )
        # Exact (the text is how a changed spec is recognised): 60 -> "every 60s", 0.25 ->
        # "every 0.25s", never rounded.
        shown = int(seconds) if seconds.is_integer() else seconds
        return Spec(f"every {shown!r}s", interval=seconds)
    if isinstance(schedule, str):
        try:
            from croniter import croniter
        except ImportError:  # pragma: no cover - croniter is a dependency of tether
            raise UsageError(
                f"flow {flow!r}: a cron schedule needs the croniter package "
                "(pip install croniter), or give an interval: schedule=timedelta(...)"
            ) from None
        fields = schedule.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(schedule, second_at_beginning=True):
            raise UsageError(
                f"flow {flow!r}: {schedule!r} is not a cron expression. Give five fields "
                "(minute hour day-of-month month day-of-week, in UTC), e.g. '0 9 * * *' for "
                "09:00 every day, or six with a leading seconds field, e.g. '*/10 * * * * *' "
                "for every 10 seconds"
            )
        return Spec(" ".join(fields), cron=" ".join(fields))
    raise UsageError(
        f"flow {flow!r}: schedule= takes a cron string (e.g. '0 9 * * *') or a "
        f"datetime.timedelta interval, not {schedule!r}"
    )


def check_catchup(catchup: object, flow: str) -> Catchup:
    for known in CATCHUP:
        if catchup == known:
            return known
    raise UsageError(
        f"flow {flow!r}: catchup= is one of {', '.join(map(repr, CATCHUP))} "
        f"(what to fire for ticks missed while no worker ran), not {catchup!r}"
    )


def tick_key(tick: float) -> str:
    """The execution key of a tick: its UTC time, to the microsecond when not whole."""
    return KEY_PREFIX + dt.datetime.fromtimestamp(tick, dt.UTC).isoformat().replace("+00:00", "Z")


def due_ticks(spec: Spec, catchup: Catchup, last: float, now: float) -> tuple[list[float], float]:
    """The ticks to fire now, after the schedule's last tick `last`, and the new last tick
    (`last` when nothing is due)."""
    latest = spec.latest_at_or_before(now)
    if latest <= last:
        return [], last
    if catchup == "latest":
        return [latest], latest
    if catchup == "none":
        return ([latest] if now - latest <= NONE_GRACE_SECONDS else []), latest
    ticks: list[float] = []
    tick = spec.after(last)
    while tick <= now and len(ticks) < MAX_TICKS_PER_ROUND:
        ticks.append(tick)
        tick = spec.after(tick)
    return ticks, ticks[-1]


@dataclass(frozen=True)
class Scheduled:
    """A flow's schedule as this process declared it (`@tether.flow(schedule=...)`)."""

    name: str
    spec: Spec
    catchup: Catchup
    flow: Runnable
    # A new queued row of the flow's execution for a tick, given (tick, now).
    make_row: Callable[[float, float], ExecutionRow]


_declared: dict[str, Scheduled] = {}
_declared_lock = threading.Lock()


def declare(scheduled: Scheduled) -> None:
    with _declared_lock:
        _declared[scheduled.name] = scheduled


def declared() -> list[Scheduled]:
    with _declared_lock:
        return list(_declared.values())


class Firer:
    """Fires the due ticks of the schedules declared in this process, for one process's
    loop (a worker's, or the executor's waker in a `tether.launch()` process)."""

    def __init__(self, schedules: Sequence[Scheduled] | None = None) -> None:
        # The schedules it fires: those given, else every one declared in this process.
        self._schedules = None if schedules is None else list(schedules)
        # Schedule name -> the time before which it has nothing due (as last read).
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def next_due(self) -> float | None:
        """The earliest time a declared schedule may have a tick due (None: none declared)."""
        with self._lock:
            pending = [self._next.get(s.name, 0.0) for s in self._declared()]
        return min(pending) if pending else None

    def _declared(self) -> list[Scheduled]:
        return declared() if self._schedules is None else self._schedules

    def fire(
        self, store: Store, now: float, claim: Callable[[], Claim] | None = None
    ) -> list[tuple[Scheduled, ExecutionRow]]:
        """Fire what is due of every declared schedule; returns the executions made. They
        are queued for a worker's claim, or, given `claim`, recorded running under a lease
        of it for the caller to start."""
        made: list[tuple[Scheduled, ExecutionRow]] = []
        for scheduled in self._declared():
            with self._lock:
                if now < self._next.get(scheduled.name, 0.0):
                    continue
            made.extend((scheduled, row) for row in self._fire_one(store, scheduled, now, claim))
        return made

    def _fire_one(
        self, store: Store, scheduled: Scheduled, now: float, claim: Callable[[], Claim] | None
    ) -> list[ExecutionRow]:
        spec = scheduled.spec
        row = store.get_schedule(scheduled.name)
        if row is None or row.spec != spec.text:
            # First seen (or its spec changed): it starts from now, firing no tick of the
            # past; a changed spec keeps the last tick, so nothing fires twice.
            last = spec.latest_at_or_before(now) if row is None else row.last_tick
            store.ensure_schedule(
                ScheduleRow(scheduled.name, spec.text, False, last, spec.after(max(last, now)),
                            now),
            )  # fmt: skip
            row = store.get_schedule(scheduled.name)
            if row is None:  # pragma: no cover - just written
                return []
        last = row.last_tick
        if row.resumed_at is not None and not row.paused:
            # Ticks that came due while it was paused (and no worker passed them then).
            last = max(last, spec.latest_at_or_before(row.resumed_at))
        ticks, new_last = due_ticks(spec, scheduled.catchup, last, now)
        following = spec.after(max(new_last, now))
        if new_last == row.last_tick:
            with self._lock:
                self._next[scheduled.name] = following
            return []
        # A paused schedule moves past its ticks without firing them: resuming it fires
        # nothing that came due while it was paused.
        rows = [] if row.paused else [scheduled.make_row(t, now) for t in ticks]
        if claim is not None:
            for made in rows:
                lease = claim()
                made.owner, made.lease_token, made.lease_expires = (
                    lease.owner, lease.token, lease.expires,
                )  # fmt: skip
                made.status, made.attempt, made.started_at = Status.RUNNING, 1, made.created_at
        inserted = store.fire_schedule(
            scheduled.name, expected_last=row.last_tick, last_tick=new_last,
            next_tick=following, rows=rows, now=now,
        )  # fmt: skip
        caught_up = new_last >= spec.latest_at_or_before(now)
        with self._lock:
            # Lost to another process, or more missed ticks left (catchup="all"): look
            # again next round; else nothing is due before the following tick.
            self._next[scheduled.name] = following if inserted is not None and caught_up else now
        ids = set(inserted or ())
        return [r for r in rows if r.id in ids]
