"""Deadlines and delayed starts: the start options that put an execution in time.

A **deadline** is stored on the execution row as an absolute time on the timers' clock
(`settings().clock`, the one wait deadlines use), so any process can act on it:

- a running execution past it stops at its next boundary (a checkpoint call, a wait, a child
  start: `Run.boundary`), where a `Client.cancel` would stop it too;
- a suspension sets `wake_at` no later than it, so a parked execution, held by nobody, is
  claimed at its deadline like a due timer by whatever process runs a waker or a worker, and
  `prepare` ends it there before running anything.

Either way it ends `cancelled`, with an `ExecutionTimedOut` recorded as its error, and its
unfinished descendants are cancelled in the same transaction (`Store.time_out`).

A relative deadline counts from the first start: an execution inserted already running
(`run()` in a process with an executor) gets the absolute time at once; one that is queued
(`enqueue`, a delayed start) keeps the seconds in its options until its first claim fixes it.

A **delayed start** is the execution row's `not_before`, the column crash-loop backoff uses:
queued and not claimable before that time (real time, like leases and claims).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from .._core import serde as _serde
from .._core.config import settings
from .._core.persist import persist
from ..errors import ExecutionTimedOut, UsageError
from ..store import ExecutionRow, Store

log = logging.getLogger("tether.engine")

# The key of a relative deadline not fixed yet, in the execution's stored options.
_AFTER = "deadline_after"


def duration(value: Any, what: str) -> float:
    """Seconds from a number or a timedelta; UsageError for anything else or a negative."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise UsageError(
            f"{what} is a number of seconds or a datetime.timedelta, not {value!r}"
            + ("; give a datetime as not_before=" if what == "delay" else "")
        )
    if not seconds >= 0:  # NaN too
        raise UsageError(f"{what} must not be negative (got {seconds:g} s)")
    return seconds


def moment(value: dt.datetime, what: str) -> float:
    """Epoch seconds of an aware datetime; UsageError for a naive one (whose zone tether
    would have to guess, and a worker in another zone would read differently)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(
            f"{what} {value.isoformat()} has no time zone; give an aware datetime, e.g. "
            "datetime.now(timezone.utc) + timedelta(minutes=5), or a number of seconds"
        )
    return value.timestamp()


def not_before(delay: Any, at: Any, now: float) -> float | None:
    """The earliest start from `delay=` (seconds, timedelta) or `not_before=` (a datetime)."""
    if delay is not None and at is not None:
        raise UsageError("give delay= or not_before=, not both")
    if delay is not None:
        seconds = duration(delay, "delay")
        return now + seconds if seconds > 0 else None
    if at is not None:
        if not isinstance(at, dt.datetime):
            raise UsageError(f"not_before is an aware datetime.datetime, not {at!r}")
        return moment(at, "not_before")
    return None


def checked_deadline(value: Any) -> float | dt.datetime | None:
    """A deadline as given to `@tether.flow` or `.options()`: seconds (> 0) or an aware
    datetime (checked against the clock when an execution starts)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        moment(value, "deadline")
        return value
    seconds = duration(value, "deadline")
    if seconds == 0:
        raise UsageError("a deadline of 0 s would end the execution before it starts; give more")
    return seconds


def place(row: ExecutionRow, deadline: float | dt.datetime | None, *, started: bool) -> None:
    """Put the deadline on a new execution's row: an absolute one as it is, a relative one
    from now when the row is inserted already running, else kept in its options until the
    first claim (`fix`)."""
    if deadline is None:
        return
    clock = settings().clock
    if isinstance(deadline, dt.datetime):
        at = moment(deadline, "deadline")
        if at <= clock():
            raise UsageError(
                f"deadline {deadline.isoformat()} is already past; give a later time, or a "
                "duration in seconds (counted from the execution's start)"
            )
        row.deadline = at
    elif started:
        row.deadline = clock() + deadline
    else:
        options = json.loads(row.options) if row.options else {}
        options[_AFTER] = deadline
        row.options = json.dumps(options)


def after(options: str | None) -> float | None:
    """A relative deadline not fixed yet, from an execution's stored options."""
    if not options or _AFTER not in options:
        return None
    value = json.loads(options).get(_AFTER)
    return float(value) if isinstance(value, int | float) else None


def fix(store: Store, row: ExecutionRow, token: str) -> bool:
    """At a claim: fix a relative deadline that is not fixed yet (the first start). False
    if the lease is gone."""
    if row.deadline is not None:
        return True
    seconds = after(row.options)
    if seconds is None:
        return True
    deadline = settings().clock() + seconds
    if not persist(lambda: store.set_deadline(row.id, token, deadline)):
        return False
    row.deadline = deadline
    return True


def settled(row: ExecutionRow) -> bool:
    """Whether claiming the row has nothing to write about its deadline: none to fix, none
    past (the engine's prepare may then run on an event loop, which must not write)."""
    if row.deadline is None:
        return after(row.options) is None
    return settings().clock() < row.deadline


def words(deadline: float) -> str:
    return dt.datetime.fromtimestamp(deadline, dt.UTC).isoformat(timespec="milliseconds")


def time_out(store: Store, execution_id: str, token: str, deadline: float) -> bool:
    """End the execution held by `token` as timed out, with its descendants. False if the
    lease is gone."""
    error = ExecutionTimedOut(
        f"execution {execution_id} passed its deadline ({words(deadline)}) and was cancelled, "
        "with its unfinished children; give it a later deadline, or none, to let it finish"
    )
    text = _serde.error_to_text(error)
    now = settings().clock()
    log.info("execution %s: past its deadline (%s): cancelled", execution_id, words(deadline))
    return persist(lambda: store.time_out(execution_id, token, error=text, now=now))


def timed_out(error: str | None) -> bool:
    """Whether a cancelled execution's recorded error says its deadline passed."""
    return error is not None and _serde.error_info(error).get("type", "").endswith(
        "ExecutionTimedOut"
    )
