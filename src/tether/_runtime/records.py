"""What `Client` returns: read-only views of stored executions and checkpoint calls.

Stored values are decoded on first access (`.result`), so listing or inspecting
an execution never needs the user's types to be importable until a value is
actually read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .._core import publish as _publish
from .._core import serde as _serde
from .._core.status import CheckpointStatus, Status
from .._spend import budget as _budget
from .._spend import usage as _usage
from .._spend.budget import Budget
from .._spend.usage import Usage
from ..store import CheckpointRow, EventRow, ExecutionRow, MessageRow, WaitRow
from . import deadlines as _deadlines


def _time(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


# Event kinds that are what checkpoints printed or logged, not notes about the execution.
OUTPUT_KINDS = ("output", "log", "truncated")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A recorded error: the original type name, message and formatted traceback."""

    type: str
    message: str
    traceback: str

    @classmethod
    def from_text(cls, text: str | None) -> ErrorInfo | None:
        if text is None:
            return None
        info = _serde.error_info(text)
        return cls(info["type"], info["message"], info["traceback"])


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a checkpoint call. `error` is None for the one that succeeded."""

    attempt: int
    started_at: dt.datetime
    finished_at: dt.datetime
    error: str | None

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


# The metadata key under which a replay marks the calls and waits it copied from its source.
COPIED_FROM = "tether.copied_from"


@dataclass(frozen=True)
class CheckpointRecord:
    """One recorded checkpoint call of an execution. `usage` is what the model calls made in
    it spent, all attempts together (None when it made none). `copied_from`: the execution
    a replay copied this call from (its timings are the original's; it did not run here)."""

    position: str
    name: str
    status: CheckpointStatus
    attempts: tuple[Attempt, ...]
    started_at: dt.datetime
    finished_at: dt.datetime
    metadata: dict[str, Any]
    error: ErrorInfo | None
    fingerprint: str
    result_json: str | None = field(repr=False)
    usage: Usage | None = None
    copied_from: str | None = None

    @property
    def duration(self) -> float:
        """Seconds from the first attempt's start to the recorded outcome."""
        return (self.finished_at - self.started_at).total_seconds()

    @cached_property
    def result(self) -> Any:
        """The recorded value, decoded (None when the call failed)."""
        if self.result_json is None:
            return None
        where = f"result of checkpoint {self.name!r} at position {self.position}"
        return _serde.loads(self.result_json, root=where)

    @classmethod
    def from_row(cls, row: CheckpointRow) -> CheckpointRecord:
        started = _time(row.started_at) or dt.datetime.now(dt.UTC)
        finished = _time(row.finished_at) or started
        if row.attempts:
            attempts = tuple(
                Attempt(
                    int(a["attempt"]),
                    _time(a["started_at"]) or started,
                    _time(a["finished_at"]) or finished,
                    a.get("error"),
                )
                for a in _serde.loads(row.attempts)
            )
        else:
            attempts = (Attempt(1, started, finished, None),)
        metadata, usage = _usage.split(_serde.loads(row.metadata) if row.metadata else {})
        copied_from = metadata.pop(COPIED_FROM, None)
        return cls(
            position=row.position,
            name=row.name,
            status=CheckpointStatus(row.status),
            attempts=attempts,
            started_at=started,
            finished_at=finished,
            metadata=metadata,
            error=ErrorInfo.from_text(row.error),
            fingerprint=row.fingerprint,
            result_json=row.result,
            usage=usage,
            copied_from=copied_from if isinstance(copied_from, str) else None,
        )


SLEPT = "slept"  # how a finished sleep reads (stored as timed_out)


@dataclass(frozen=True)
class WaitRecord:
    """A wait (or sleep) of an execution: what it asks, and the input it got.

    `status` is `pending`, `resolved` (input recorded), `timed_out` or `cancelled`; a sleep
    that is over is `slept` (the store keeps `timed_out` for it, as it always has: its
    deadline passed). `json_schema` describes the input expected; `deadline` is when it
    times out (a sleep: when it wakes). `copied_from`: the execution a replay copied this
    wait from (its times are the original's; nothing waited here).
    """

    execution_id: str
    flow: str | None
    name: str
    position: str
    kind: str
    status: str
    question: Any
    json_schema: dict[str, Any] | None
    metadata: dict[str, Any]
    deadline: dt.datetime | None
    created_at: dt.datetime
    resolved_at: dt.datetime | None
    resolved_by: str | None
    value_json: str | None = field(default=None, repr=False)
    copied_from: str | None = None
    question_json: str | None = field(default=None, repr=False)

    @cached_property
    def value(self) -> Any:
        """The input given (decoded), or None."""
        if self.value_json is None:
            return None
        return _serde.loads(self.value_json, root=f"input of wait {self.name!r}")

    @classmethod
    def from_row(cls, row: WaitRow, flow: str | None = None) -> WaitRecord:
        metadata = _serde.loads(row.metadata) if row.metadata else {}
        copied_from = metadata.pop(COPIED_FROM, None) if isinstance(metadata, dict) else None
        return cls(
            execution_id=row.execution_id,
            flow=flow,
            name=row.name,
            position=row.position,
            kind=row.kind,
            status=SLEPT if row.kind == "sleep" and row.status == "timed_out" else row.status,
            question=(
                _serde.loads(row.question, root=f"question of wait {row.name!r}")
                if row.question
                else None
            ),
            json_schema=_serde.loads(row.json_schema) if row.json_schema else None,
            metadata=metadata,
            deadline=_time(row.deadline),
            created_at=_time(row.created_at) or dt.datetime.now(dt.UTC),
            resolved_at=_time(row.resolved_at),
            resolved_by=row.resolved_by,
            value_json=row.value,
            copied_from=copied_from if isinstance(copied_from, str) else None,
            question_json=row.question,
        )


@dataclass(frozen=True)
class MessageRecord:
    """Input sent to a wait with `Client.send()`, and what became of it.

    `status` is `sent` (stored: the flow has not reached the wait yet), `delivered` (the
    wait got it as its input) or `rejected` (it did not match the wait's schema, `error`
    says why; the wait stays pending for other input).
    """

    execution_id: str
    name: str
    status: str
    sent_by: str | None
    sent_at: dt.datetime
    delivered_at: dt.datetime | None
    error: str | None
    value_json: str | None = field(default=None, repr=False)

    @cached_property
    def value(self) -> Any:
        """The value sent (decoded)."""
        if self.value_json is None:
            return None
        return _serde.loads(self.value_json, root=f"message for wait {self.name!r}")

    @classmethod
    def from_row(cls, row: MessageRow) -> MessageRecord:
        return cls(
            execution_id=row.execution_id,
            name=row.name,
            status=row.status,
            sent_by=row.sent_by,
            sent_at=_time(row.sent_at) or dt.datetime.now(dt.UTC),
            delivered_at=_time(row.delivered_at),
            error=row.error,
            value_json=row.value,
        )


@dataclass(frozen=True, slots=True)
class LogRecord:
    """Output a checkpoint call printed (`stream` stdout/stderr) or a logging record
    (`stream` "log", with `level` and `logger`), in the order it happened."""

    id: int
    at: dt.datetime
    position: str | None
    checkpoint: str | None
    stream: str
    level: str
    message: str
    logger: str | None
    attempt: int | None

    @classmethod
    def from_row(cls, row: EventRow, checkpoint: str | None) -> LogRecord:
        data = _serde.loads(row.data) if row.data else {}
        stream = "log" if row.kind == "log" else row.level if row.kind == "output" else "tether"
        return cls(
            id=row.id or 0,
            at=_time(row.at) or dt.datetime.now(dt.UTC),
            position=row.position,
            checkpoint=checkpoint,
            stream=stream,
            level=row.level,
            message=row.message,
            logger=data.get("logger"),
            attempt=data.get("attempt"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """Something noted on an execution: a warning (changed arguments, say) or a message.
    `id` increases in the order events were added (`Client.events(after=...)`)."""

    at: dt.datetime
    position: str | None
    level: str
    kind: str
    message: str
    id: int = 0

    @classmethod
    def from_row(cls, row: EventRow) -> Event:
        at = _time(row.at) or dt.datetime.now(dt.UTC)
        return cls(at, row.position, row.level, row.kind, row.message, row.id or 0)


@dataclass(frozen=True)
class ExecutionRecord:
    """One execution as stored. `checkpoints`, `events`, `waits` and `children` are filled by
    `Client.get()`; `Client.list()` leaves them empty to stay cheap. `parent_id` is the
    execution whose flow code started this one (a child flow), if any.

    `usage` (filled by `Client.get()`, None from `Client.list()`) is what the execution's
    model calls spent: the sum over its checkpoint calls, failed attempts included; replayed
    calls ran nothing and count once. `budget` is the limit it runs under, if any.
    """

    id: str
    flow: str
    status: Status
    import_path: str
    attempt: int
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    owner: str | None
    lease_expires: dt.datetime | None
    cancel_requested: bool
    parent_id: str | None
    replay_of: str | None
    metadata: dict[str, Any]
    error: ErrorInfo | None
    checkpoints: tuple[CheckpointRecord, ...] = ()
    events: tuple[Event, ...] = ()
    waits: tuple[WaitRecord, ...] = ()
    wake_at: dt.datetime | None = None
    # What runs right now: [{"position", "name", "since"}] (refreshed every second or so).
    progress: list[dict[str, Any]] = field(default_factory=list)
    # Filled by Client.list(): succeeded checkpoint calls, and the first pending wait.
    checkpoints_done: int | None = None
    pending_wait: str | None = None
    result_json: str | None = field(default=None, repr=False)
    args_json: str = field(default="", repr=False)
    usage: Usage | None = None
    budget: Budget | None = None
    # Filled by Client.get(): the executions this one started from its flow code (child
    # flows), oldest first, as Client.list() shows them. Their parent_id is this id.
    children: tuple[ExecutionRecord, ...] = ()
    # Filled by Client.get(): input sent to waits with Client.send(), oldest first.
    messages: tuple[MessageRecord, ...] = ()
    # When it is cancelled as timed out (ExecutionTimedOut), if it has a deadline; a
    # relative one not fixed yet (it counts from the first start) is `deadline_after`
    # seconds. `not_before`: a queued execution is not started before then (a delayed
    # start, or the pause of a crash loop).
    deadline: dt.datetime | None = None
    deadline_after: float | None = None
    not_before: dt.datetime | None = None

    @property
    def undelivered_messages(self) -> list[MessageRecord]:
        """Messages sent to waits the flow has not reached yet (filled by `Client.get()`)."""
        return [m for m in self.messages if m.status == "sent"]

    @property
    def published_calls(self) -> dict[str, CheckpointRecord]:
        """Per key the call that published its latest value (`tether.publish`; its `result`
        is the value), from the checkpoint calls `Client.get()` fills in."""
        latest: dict[str, CheckpointRecord] = {}
        for cp in self.checkpoints:
            if cp.name.startswith(_publish.PREFIX) and cp.status is CheckpointStatus.SUCCEEDED:
                key = cp.name[len(_publish.PREFIX) :]
                if key not in latest or cp.finished_at >= latest[key].finished_at:
                    latest[key] = cp
        return latest

    @cached_property
    def published(self) -> dict[str, Any]:
        """The latest value published per key (`tether.publish`), decoded (filled by
        `Client.get()`; `Client.get_published()` waits for one)."""
        return {key: cp.result for key, cp in self.published_calls.items()}

    # Filled by Client.get(): how many checkpoint calls the execution recorded; more than
    # len(checkpoints) when get() was asked for a window of them.
    checkpoint_count: int | None = None

    @property
    def child_waits(self) -> list[WaitRecord]:
        """The waits for child flows, resolved or not (their `value` is the child's outcome
        as recorded here; `metadata["execution"]` is the child's id)."""
        return [w for w in self.waits if w.kind == "child"]

    @property
    def pending_waits(self) -> list[WaitRecord]:
        """The waits that have no input yet (filled by `Client.get()`)."""
        return [w for w in self.waits if w.status == "pending"]

    @property
    def warnings(self) -> list[str]:
        """Messages of tether's warnings about the execution (arguments changed on resume, a
        flow that could not be imported...), not what its checkpoints logged."""
        return [
            e.message for e in self.events if e.level == "warning" and e.kind not in OUTPUT_KINDS
        ]

    @property
    def duration(self) -> float | None:
        """Seconds from first start to finish (or to now, while unfinished)."""
        if self.started_at is None:
            return None
        end = self.finished_at or dt.datetime.now(dt.UTC)
        return (end - self.started_at).total_seconds()

    @cached_property
    def result(self) -> Any:
        """The flow's return value, decoded (None unless it succeeded)."""
        if self.result_json is None:
            return None
        return _serde.loads(self.result_json, root=f"result of execution {self.id}")

    @cached_property
    def args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional and keyword arguments the execution was started with."""
        decoded = _serde.loads(self.args_json, root=f"arguments of execution {self.id}")
        return tuple(decoded["args"]), dict(decoded["kwargs"])

    @classmethod
    def from_row(
        cls,
        row: ExecutionRow,
        checkpoints: list[CheckpointRow] | None = None,
        events: list[EventRow] | None = None,
        waits: list[WaitRow] | None = None,
        children: list[ExecutionRecord] | None = None,
        messages: list[MessageRow] | None = None,
    ) -> ExecutionRecord:
        created = _time(row.created_at) or dt.datetime.now(dt.UTC)
        calls = tuple(CheckpointRecord.from_row(c) for c in checkpoints or ())
        return cls(
            id=row.id,
            flow=row.flow,
            status=Status(row.status),
            import_path=row.import_path,
            attempt=row.attempt,
            created_at=created,
            updated_at=_time(row.updated_at) or created,
            started_at=_time(row.started_at),
            finished_at=_time(row.finished_at),
            owner=row.owner,
            lease_expires=_time(row.lease_expires),
            cancel_requested=row.cancel_requested,
            parent_id=row.parent_id,
            replay_of=row.replay_of,
            metadata=_serde.loads(row.metadata) if row.metadata else {},
            error=ErrorInfo.from_text(row.error),
            checkpoints=calls,
            events=tuple(Event.from_row(e) for e in events or ()),
            waits=tuple(WaitRecord.from_row(w, row.flow) for w in waits or ()),
            wake_at=_time(row.wake_at),
            progress=_serde.loads(row.progress) if row.progress else [],
            checkpoints_done=(
                row.checkpoints_done
                if checkpoints is None
                else sum(1 for c in checkpoints if c.status == "succeeded")
            ),
            pending_wait=row.pending_wait,
            result_json=row.result,
            args_json=row.args,
            # Each call's usage is decoded once, by CheckpointRecord.from_row.
            usage=None
            if checkpoints is None
            else _usage.total(c.usage for c in calls) + _usage.forgotten(events or ()),
            budget=_budget.from_options(row.options),
            children=tuple(children or ()),
            messages=tuple(MessageRecord.from_row(m) for m in messages or ()),
            checkpoint_count=None if checkpoints is None else len(checkpoints),
            deadline=_time(row.deadline),
            deadline_after=_deadlines.after(row.options) if row.deadline is None else None,
            not_before=_time(row.not_before),
        )
