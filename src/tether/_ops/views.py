"""Records as plain JSON data, defined once for every surface: the CLI's `--json`, the HTTP
API and the dashboard, and the MCP server return executions, checkpoint calls, waits,
events, logs and tokens in these shapes.

Stored values (results, arguments, inputs, wait questions) follow one rule, `as_data()`: the
stored text as plain JSON data (`serde.to_data`), never restored, imported or unpickled, so
the same row reads the same whatever the reading process has loaded. A tagged value (a
dataclass, model, enum, named tuple, path) is `{"type_name", "kind", "data"}`, never the
stored `{"$t": ...}` envelope. Timestamps are ISO 8601 in UTC; positions are shown as
people write them (`display`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pydantic_core

from .._core import serde as _serde
from .._core import waits as _waits
from .._core.positions import display, sort_key
from .._core.status import Status
from .._runtime.records import (
    CheckpointRecord,
    ErrorInfo,
    Event,
    ExecutionRecord,
    LogRecord,
    MessageRecord,
    WaitRecord,
)
from .._spend import usage as _usage
from .._spend.usage import Usage
from .schedules import ScheduleRecord
from .tokens import TokenInfo


def iso(moment: dt.datetime | None) -> str | None:
    """A timestamp for JSON output (UTC, ISO 8601)."""
    return None if moment is None else moment.isoformat()


def as_data(stored: str | None) -> Any:
    """A stored value as JSON data (None: no value). Tuples and sets are lists, dates ISO
    text, bytes base64, a tagged value `{"type_name", "kind", "data"}`; see `serde.to_data`."""
    return _serde.to_data(stored)


def data(decoded: Any) -> Any:
    """A value decoded already (metadata) as JSON data: a class this process lacks
    (`StoredValue`) as its type name, kind and data, as `as_data()` shows it."""

    def fallback(obj: Any) -> Any:
        if isinstance(obj, _serde.StoredValue):
            return {"type_name": obj.type_name, "kind": obj.kind, "data": data(obj.data)}
        return {"type_name": f"{type(obj).__module__}:{type(obj).__qualname__}", "data": None}

    if isinstance(decoded, _serde.StoredValue):
        return fallback(decoded)
    return pydantic_core.to_jsonable_python(decoded, fallback=fallback, bytes_mode="base64")


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    """Usage as plain data; `cost_complete` says whether `cost_usd` is the whole cost."""
    if usage is None:
        return None
    shown = _usage.encode(usage)
    for key in ("cache_read_tokens", "cache_write_tokens", "unpriced_requests"):
        shown.setdefault(key, 0)
    shown["total_tokens"] = usage.total_tokens
    shown["cost_complete"] = usage.cost_complete
    return shown


def error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def execution_json(record: ExecutionRecord, *, full: bool = False) -> dict[str, Any]:
    """An execution as plain data. `full` adds what `Client.get()` reads: its arguments,
    metadata, checkpoint calls, waits, events, usage, budget, warnings, children and
    lineage."""
    shown: dict[str, Any] = {
        "id": record.id,
        "flow": record.flow,
        "status": record.status.value,
        "attempts": record.attempt,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "duration": record.duration,
        "owner": record.owner,
        "lease_expires": iso(record.lease_expires),
        "cancel_requested": record.cancel_requested,
        "parent_id": record.parent_id,
        "replay_of": record.replay_of,
        "wake_at": iso(record.wake_at),
        "deadline": iso(record.deadline),
        "deadline_after": record.deadline_after,
        "not_before": iso(record.not_before),
        "result": as_data(record.result_json),
        "error": error_json(record.error),
        "running": progress_json(record),
        "checkpoints_done": record.checkpoints_done,
        "pending_wait": record.pending_wait,
    }
    if not full:
        return shown
    shown.update(
        import_path=record.import_path,
        args=args_json(record),
        metadata=data(record.metadata),
        checkpoints=[checkpoint_json(cp) for cp in record.checkpoints],
        waits=[wait_json(w) for w in record.waits],
        usage=usage_json(record.usage),
        budget=(
            None
            if record.budget is None
            else {
                "max_tokens": record.budget.max_tokens,
                "max_cost_usd": record.budget.max_cost_usd,
            }
        ),
        warnings=warnings(record),
        events=[event_json(e) for e in record.events],
        children=[execution_json(c) for c in record.children],
        lineage={"parent_id": record.parent_id, "replay_of": record.replay_of},
        messages=[message_json(m) for m in record.messages],
        published={key: as_data(cp.result_json) for key, cp in record.published_calls.items()},
    )
    return shown


def args_json(record: ExecutionRecord) -> Any:
    """The arguments an execution was started with, `{"args": [...], "kwargs": {...}}`
    (None when none were recorded)."""
    return as_data(record.args_json) if record.args_json else None


def message_json(message: MessageRecord) -> dict[str, Any]:
    """A message sent to a wait (`Client.send`): `sent`, `delivered` or `rejected`."""
    return {
        "execution_id": message.execution_id,
        "name": message.name,
        "status": message.status,
        "value": as_data(message.value_json),
        "sent_by": message.sent_by,
        "sent_at": iso(message.sent_at),
        "delivered_at": iso(message.delivered_at),
        "error": message.error,
    }


def warnings(record: ExecutionRecord) -> list[str]:
    """The warnings noted on the execution (changed arguments on resume, a flow that could
    not be imported...), trimmed for display."""
    return [message.strip() for message in record.warnings]


def checkpoint_json(cp: CheckpointRecord) -> dict[str, Any]:
    return {
        "position": display(cp.position),
        "name": cp.name,
        "status": cp.status.value,
        "attempts": [
            {
                "attempt": a.attempt,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "duration": a.duration,
                "error": a.error,
            }
            for a in cp.attempts
        ],
        "started_at": iso(cp.started_at),
        "finished_at": iso(cp.finished_at),
        "duration": cp.duration,
        "result": as_data(cp.result_json),
        "error": error_json(cp.error),
        "metadata": data(cp.metadata),
        "usage": usage_json(cp.usage),
        "copied_from": cp.copied_from,
    }


def wait_json(w: WaitRecord) -> dict[str, Any]:
    return {
        "execution_id": w.execution_id,
        "flow": w.flow,
        "name": w.name,
        "position": display(w.position),
        "label": _waits.label(w.kind, w.name, w.position),
        "kind": w.kind,
        "status": w.status,
        "question": as_data(w.question_json),
        "json_schema": w.json_schema,
        "metadata": data(w.metadata),
        "deadline": iso(w.deadline),
        "since": iso(w.created_at),
        "resolved_at": iso(w.resolved_at),
        "resolved_by": w.resolved_by,
        "value": as_data(w.value_json),
        "copied_from": w.copied_from,
    }


def event_json(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "position": _shown(e.position),
        "level": e.level,
        "kind": e.kind,
        "message": e.message,
    }


def log_json(r: LogRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "at": iso(r.at),
        "position": _shown(r.position),
        "checkpoint": r.checkpoint,
        "stream": r.stream,
        "level": r.level,
        "logger": r.logger,
        "attempt": r.attempt,
        "message": r.message,
    }


def token_json(token: TokenInfo) -> dict[str, Any]:
    """A token as listed: never its secret (only a hash of it is stored)."""
    return {
        "name": token.name,
        "scope": token.scope,
        "created_at": iso(token.created_at),
        "revoked_at": iso(token.revoked_at),
    }


def schedule_json(schedule: ScheduleRecord) -> dict[str, Any]:
    """A schedule as listed: its spec, paused flag, last and next tick."""
    return {
        "name": schedule.name,
        "spec": schedule.spec,
        "paused": schedule.paused,
        "last_tick": iso(schedule.last_tick),
        "next_tick": iso(schedule.next_tick),
    }


def progress_json(record: ExecutionRecord) -> list[dict[str, Any]]:
    """The checkpoint calls running now (only while the execution is running)."""
    if record.status is not Status.RUNNING:
        return []
    # Progress is published about once a second: drop calls recorded since.
    done = {cp.position for cp in record.checkpoints if cp.status != "retrying"}
    return [
        {
            "position": _shown(p.get("position")),
            "name": p.get("name"),
            "since": iso(progress_since(p)),
        }
        for p in record.progress
        if isinstance(p, dict) and p.get("position") not in done
    ]


def progress_since(entry: dict[str, Any]) -> dt.datetime | None:
    """When a progress entry's call started (its `since` is seconds since the epoch)."""
    moment = entry.get("since")
    return dt.datetime.fromtimestamp(moment, dt.UTC) if isinstance(moment, int | float) else None


def _shown(position: Any) -> Any:
    """A position from the store as people see it (other values as they are)."""
    return display(position) if isinstance(position, str) else position


def watch_state(record: ExecutionRecord) -> dict[str, Any]:
    """One line of `watch --json`: where the execution is now."""
    state: dict[str, Any] = {
        "id": record.id,
        "flow": record.flow,
        "status": record.status.value,
        "checkpoints_done": record.checkpoints_done or 0,
        "last_checkpoint": _last_checkpoint(record),
        "running": progress_json(record),
        "pending_waits": [w.name for w in record.pending_waits],
        "duration": record.duration,
    }
    if record.status.finished:
        state["result"] = as_data(record.result_json)
        state["error"] = error_json(record.error)
    return state


def _last_checkpoint(record: ExecutionRecord) -> dict[str, Any] | None:
    if not record.checkpoints:
        return None
    cp = max(record.checkpoints, key=lambda c: sort_key(c.position))
    return {"position": display(cp.position), "name": cp.name, "status": cp.status.value}
