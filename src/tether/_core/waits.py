"""wait() and sleep(): pausing a flow without holding anything.

A wait takes a position like a checkpoint call. If its input is recorded, it
returns the input; if its deadline has passed, it returns the default (or
raises WaitTimeout into the flow). Otherwise the wait is recorded as pending
and the flow unwinds with `Suspended`, a control signal: the engine stores the
execution as `waiting` and releases it. Input (or the timer) makes it runnable
again, and whichever executor picks it up resumes it by replay, which comes
back to this call and finds the input recorded.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from pydantic import ValidationError

from ..errors import (
    DivergenceError,
    InputValidationError,
    LeaseLost,
    NotInFlowError,
    ResultTimeout,
    Suspended,
    TetherError,
    UsageError,
    WaitTimeout,
)
from ..store import WaitRow
from . import schema as _schema
from . import serde as _serde
from .config import settings
from .context import Run, current_frame, current_run


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Final = _NoDefault()

PENDING = "pending"
RESOLVED = "resolved"
TIMED_OUT = "timed_out"
INPUT = "input"
SLEEP = "sleep"
CHILD = "child"


def wait(
    name: str | None = None,
    *,
    schema: Any = None,
    question: Any = None,
    timeout: float | dt.timedelta | None = None,
    default: Any = NO_DEFAULT,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Wait for input from outside the flow: a human approval, another agent's answer, a
    webhook. Returns the input, validated against `schema`.

    ```python
    @tether.flow
    def publish(draft: str) -> str:
        if not tether.wait("approve", schema=bool, question=f"Publish this? {draft}"):
            return "rejected"
        ...
    ```

    While no input is recorded the execution is suspended: status `waiting`, and no process,
    thread or coroutine is held. `Client().input(execution_id, "approve", True)` (or the CLI)
    records the input and makes the execution runnable again.

    - `name`: unique within the execution (default: `wait-<position>`). In a loop, make it
      unique per item: `tether.wait(f"approve-{item.id}")`.
    - `schema`: a type the input must match (`bool`, a Pydantic model, `list[str]`,
      `Literal[...]`), validated with Pydantic. None accepts any JSON value.
    - `question`: JSON shown to whoever gives the input.
    - `timeout`: seconds (or a timedelta) until the wait returns `default`, or raises
      WaitTimeout inside the flow when no default is given.
    - `metadata`: JSON stored with the wait, for UIs and routing.
    """
    return _wait(name, INPUT, schema, question, timeout, default, metadata)


def sleep(duration: float | dt.timedelta, name: str | None = None) -> None:
    """A durable timer: the execution is suspended, holding nothing, until `duration` has
    passed since the first time this call was reached; then it resumes.

    The wake-up time is recorded the first time, so a resumed flow does not sleep again.
    """
    if _seconds(duration) < 0:
        raise UsageError(f"tether.sleep() needs a duration of 0 or more, not {duration!r}")
    _wait(name, SLEEP, None, None, duration, None, None)


def _wait(
    name: str | None,
    kind: str,
    schema: Any,
    question: Any,
    timeout: float | dt.timedelta | None,
    default: Any,
    metadata: dict[str, Any] | None,
) -> Any:
    call = "tether.sleep()" if kind == SLEEP else "tether.wait()"
    run = current_run.get()
    if run is None:
        raise NotInFlowError(f"{call} was called outside a running flow; call it in flow code")
    if current_frame.get() is not None:
        raise UsageError(
            f"{call} was called inside a checkpoint; wait in flow code, between checkpoints "
            "(a checkpoint must finish in one go to be recorded)"
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise UsageError(f"a wait name is a non-empty string, not {name!r}")
    position = run.take_position()
    run.boundary()
    name = name or f"{kind}-{position}"
    row = _recorded(run, name, position)
    now = settings().clock()
    if row is None:
        row = _create(run, name, position, kind, schema, question, timeout, metadata, now)
    if row.status == PENDING and kind == INPUT:
        row = _deliver(run, row, now)
    if row.status == PENDING and row.deadline is not None and row.deadline <= now:
        row = _time_out(run, row, now)
    if row.status == RESOLVED:
        return _input(row)
    if row.status == TIMED_OUT:
        if kind == SLEEP:
            return None
        if default is NO_DEFAULT:
            raise WaitTimeout(name)
        return default
    raise Suspended(run.execution_id, name, row.deadline)


def label(kind: str, name: str, position: str) -> str:
    """How a wait is shown among recorded calls (`tether executions get`), and selected as a
    fork point: `wait NAME`, `sleep` (or `sleep NAME` for a named one), `await child`."""
    if kind == SLEEP:
        return SLEEP if name == f"{SLEEP}-{position}" else f"{SLEEP} {name}"
    if kind == CHILD:
        return "await child"
    return f"wait {name}"


def _input(row: WaitRow) -> Any:
    value = _serde.loads(row.value, root=f"input of wait {row.name!r}") if row.value else None
    if row.schema_ref is None or row.value is None:
        return value
    # Validated again here, where the flow's classes are loaded: the process that gave the
    # input may not have had them (it imports nothing a stored schema names), and then it
    # checked only the rest. Validated values pass through unchanged.
    try:
        return _schema.validate(row.schema_ref, value)
    except ValidationError as exc:
        errors = _schema.errors_of(exc)
        raise InputValidationError(
            f"the input given to wait {row.name!r} does not match its schema: {_details(errors)}",
            errors,
        ) from None


def _deliver(run: Run, row: WaitRow, now: float) -> WaitRow:
    """A message sent to this wait before it was reached (`Client.send`) is delivered here,
    where the wait's schema is at hand: resolved with it if it validates, else recorded as
    rejected (with why) and the wait stays pending for other input."""
    message = next(
        (
            m
            for m in run.store.get_messages(run.execution_id)
            if m.name == row.name and m.status == "sent"
        ),
        None,
    )
    if message is None:
        return row
    value: str | None = None
    error: str | None = None
    try:
        decoded = _serde.loads(message.value, root=f"message for wait {row.name!r}")
        validated = _schema.validate(row.schema_ref, decoded)
        value = _serde.dumps(validated, root=f"input of wait {row.name!r}")
    except ValidationError as exc:
        error = _details(_schema.errors_of(exc))
    except TetherError as exc:  # a value that does not load or store here (a serde error)
        error = str(exc)
    if not run.store.deliver_message(
        run.execution_id, run.token, row.name, value=value, error=error, now=now
    ):
        run.lease_lost = True
        raise LeaseLost(run.execution_id)
    if value is None:
        run.warn(
            row.position,
            f"the message sent to wait {row.name!r} was rejected: {error}; the wait takes "
            "other input",
        )
        return row
    row.status, row.value, row.resolved_by, row.resolved_at = (
        RESOLVED, value, message.sent_by, now,
    )  # fmt: skip
    return row


def _details(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors)


def child_wait_name(child_id: str) -> str:
    """The name of a parent's wait for its child (the child's end resolves it by this name:
    store migration 0010)."""
    return f"child:{child_id}"


def reserve_child_wait(run: Run, child_id: str) -> str:
    """The position an await of the child takes, taken now (in program order). A child is
    awaited at one position per run: awaiting it again takes no new one."""
    name = child_wait_name(child_id)
    reserved = run.wait_names.get(name)
    if reserved is None:
        reserved = run.wait_names[name] = run.take_position()
    return reserved


def child_outcome(
    run: Run, child_id: str, position: str, timeout: float | dt.timedelta | None
) -> str:
    """Wait for a child execution, as a recorded wait of kind `child` at `position` (from
    `reserve_child_wait`). Returns the child's outcome as recorded in the parent (JSON text:
    status, result, error). Raises ResultTimeout when `timeout` passed first (recorded too),
    or suspends the parent (`Suspended`) until the child's end resolves the wait."""
    name = child_wait_name(child_id)
    run.boundary()
    row = _recorded(run, name, position)
    now = settings().clock()
    if row is None:
        deadline = None
        if timeout is not None:
            seconds = _seconds(timeout)
            if seconds < 0:
                raise UsageError(f"a result timeout must be 0 or more seconds, not {timeout!r}")
            deadline = now + seconds
        pending = WaitRow(
            execution_id=run.execution_id,
            name=name,
            position=position,
            kind=CHILD,
            status=PENDING,
            metadata=_serde.dumps({"execution": child_id}),
            deadline=deadline,
            created_at=now,
        )
        stored = run.store.await_child(run.token, pending, child_id)
        if stored is None:
            run.lease_lost = True
            raise LeaseLost(run.execution_id)
        run.waits[name] = row = stored
    if row.status == PENDING and row.deadline is not None and row.deadline <= now:
        row = _time_out(run, row, now)
    if row.status == RESOLVED and row.value is not None:
        return row.value
    if row.status == TIMED_OUT:
        raise ResultTimeout(f"child execution {child_id} did not finish within the timeout")
    raise Suspended(run.execution_id, name, row.deadline)


def _recorded(run: Run, name: str, position: str) -> WaitRow | None:
    used = run.wait_names.get(name)
    if used is not None and used != position:
        raise UsageError(
            f"the wait name {name!r} is used twice in this execution (positions {used} and "
            f"{position}); names are unique per execution: in a loop, add the item to the "
            f"name, e.g. tether.wait(f'{name}-{{item}}')"
        )
    run.wait_names[name] = position
    checkpoint = run.recorded.get(position)
    if checkpoint is not None:
        raise run.diverge(DivergenceError(position, checkpoint.name, f"wait {name!r}"))
    row = run.waits.get(name)
    if row is not None and row.position != position:
        raise run.diverge(
            DivergenceError(
                position,
                f"wait {name!r} at position {row.position}",
                f"wait {name!r}",
                detail=f"wait {name!r} was recorded at position {row.position} but is now "
                f"reached at position {position}; the flow's code changed around it",
            )
        )
    return row


def _create(
    run: Run,
    name: str,
    position: str,
    kind: str,
    schema: Any,
    question: Any,
    timeout: float | dt.timedelta | None,
    metadata: dict[str, Any] | None,
    now: float,
) -> WaitRow:
    schema_ref, json_schema = _schema.describe(schema)
    deadline = None
    if timeout is not None:
        seconds = _seconds(timeout)
        if seconds < 0:
            raise UsageError(f"a wait timeout must be 0 or more seconds, not {timeout!r}")
        deadline = now + seconds
    row = WaitRow(
        execution_id=run.execution_id,
        name=name,
        position=position,
        kind=kind,
        status=PENDING,
        schema_ref=schema_ref,
        json_schema=json_schema,
        question=None if question is None else _serde.dumps(question, root="question"),
        metadata=None if not metadata else _serde.dumps(metadata, root="metadata"),
        deadline=deadline,
        created_at=now,
    )
    if not run.store.create_wait(run.token, row):
        run.lease_lost = True
        raise LeaseLost(run.execution_id)
    run.waits[name] = row
    return row


def _time_out(run: Run, row: WaitRow, now: float) -> WaitRow:
    if run.store.resolve_wait(
        run.execution_id, row.name, status=TIMED_OUT, value=None, by="deadline", now=now
    ):
        row.status = TIMED_OUT
        return row
    # Input won the race against the deadline: use it.
    for fresh in run.store.get_waits(run.execution_id):
        if fresh.name == row.name:
            run.waits[row.name] = fresh
            return fresh
    return row


def _seconds(value: float | dt.timedelta) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"expected seconds (a number) or a timedelta, not {value!r}")
    return float(value)
