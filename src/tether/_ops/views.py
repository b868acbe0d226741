"""Records as plain JSON data: what the CLI's `--json`, the HTTP API and the MCP server
return for executions, checkpoint calls, waits, events and logs, defined once.

Stored values are decoded the safe way (`_core.serde`: nothing is imported or called; a
class this process does not have comes back as `StoredValue`, i.e. its `type_name`, `kind`
and `data`) and converted back to JSON. Timestamps are ISO 8601 in UTC; positions are
shown as people write them (`display`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any

import pydantic_core

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


def iso(moment: dt.datetime | None) -> str | None:
    """A timestamp for JSON output (UTC, ISO 8601)."""
    return moment.isoformat() if moment is not None else None


def plain(decode: Callable[[], Any], stored: str | Callable[[], str | None] | None) -> Any:
    """A stored value as plain JSON data: decoded with its types and converted back to
    JSON (tuples and sets as lists, dates as ISO strings, models and dataclasses as dicts).
    If it cannot be decoded here (its class is not importable, say), the stored JSON as is.

    `stored` is the stored JSON (None: no value), or a function that reads it, called only
    when the value cannot be decoded."""
    if stored is None:
        return None
    try:
        return pydantic_core.to_jsonable_python(decode(), fallback=repr, bytes_mode="base64")
    except Exception:
        text = stored() if callable(stored) else stored
        return None if text is None else json.loads(text)


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    """Usage as plain data; `cost_complete` says whether `cost_usd` is the whole cost."""
    if usage is None:
        return None
    data = _usage.encode(usage)
    data.setdefault("cache_read_tokens", 0)
    data.setdefault("cache_write_tokens", 0)
    data.setdefault("unpriced_requests", 0)
    data["total_tokens"] = usage.total_tokens
    data["cost_complete"] = usage.cost_complete
    return data


# --- records as JSON-ready dicts --------------------------------------------------------------


def error_json(error: ErrorInfo | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def execution_json(record: ExecutionRecord, *, full: bool = False) -> dict[str, Any]:
    """An execution as plain data. `full` adds its arguments, checkpoint calls, waits and
    events (what `Client.get()` returns)."""
    data: dict[str, Any] = {
        "id": record.id,
        "flow": record.flow,
        "status": record.status.value,
        "attempts": record.attempt,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "duration": record.duration,
        "owner": record.owner,
        "cancel_requested": record.cancel_requested,
        "replay_of": record.replay_of,
        "parent_id": record.parent_id,
        "result": plain(lambda: record.result, record.result_json),
        "error": error_json(record.error),
        "running": progress_json(record),
        "wake_at": iso(record.wake_at),
    }
    if not full:
        data["checkpoints_done"] = record.checkpoints_done
        data["pending_wait"] = record.pending_wait
        return data
    data.update(
        import_path=record.import_path,
        updated_at=iso(record.updated_at),
        lease_expires=iso(record.lease_expires),
        metadata=record.metadata,
        args=plain(lambda: _args(record), record.args_json) if record.args_json else None,
        checkpoints_done=record.checkpoints_done,
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
        messages=[message_json(m) for m in record.messages],
        published={
            key: plain(functools.partial(_result, cp), cp.result_json)
            for key, cp in record.published_calls.items()
        },
    )
    return data


def _result(cp: CheckpointRecord) -> Any:
    return cp.result


def message_json(message: MessageRecord) -> dict[str, Any]:
    """A message sent to a wait (`Client.send`), as plain data."""
    return {
        "execution_id": message.execution_id,
        "name": message.name,
        "status": message.status,
        "value": plain(lambda: message.value, message.value_json),
        "sent_by": message.sent_by,
        "sent_at": iso(message.sent_at),
        "delivered_at": iso(message.delivered_at),
        "error": message.error,
    }


def warnings(record: ExecutionRecord) -> list[str]:
    """The warnings noted on the execution (changed arguments on resume, a flow that could
    not be imported...), trimmed for display."""
    return [message.strip() for message in record.warnings]


def _args(record: ExecutionRecord) -> dict[str, Any]:
    args, kwargs = record.args
    return {"args": list(args), "kwargs": kwargs}


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
        "result": plain(lambda: cp.result, cp.result_json),
        "error": error_json(cp.error),
        "metadata": cp.metadata,
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
        "question": pydantic_core.to_jsonable_python(w.question, fallback=repr),
        "json_schema": w.json_schema,
        "metadata": w.metadata,
        "deadline": iso(w.deadline),
        "since": iso(w.created_at),
        "resolved_at": iso(w.resolved_at),
        "resolved_by": w.resolved_by,
        "value": plain(lambda: w.value, w.value_json),
        "copied_from": w.copied_from,
    }


def event_json(e: Event) -> dict[str, Any]:
    return {
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


def progress_json(record: ExecutionRecord) -> list[dict[str, Any]]:
    """The checkpoint calls running now (only while the execution is running)."""
    if record.status is not Status.RUNNING:
        return []
    # Progress is published about once a second: drop calls recorded since.
    done = {cp.position for cp in record.checkpoints if cp.status != "retrying"}
    return [
        {"position": _shown(p.get("position")), "name": p.get("name"), "since": iso(_since(p))}
        for p in record.progress
        if p.get("position") not in done
    ]


def _shown(position: Any) -> Any:
    """A position from the store as people see it (other values as they are)."""
    return display(position) if isinstance(position, str) else position


def _since(entry: dict[str, Any]) -> dt.datetime | None:
    since = entry.get("since")
    return dt.datetime.fromtimestamp(since, dt.UTC) if isinstance(since, int | float) else None


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
        state["result"] = plain(lambda: record.result, record.result_json)
        state["error"] = error_json(record.error)
    return state


def _last_checkpoint(record: ExecutionRecord) -> dict[str, Any] | None:
    if not record.checkpoints:
        return None
    cp = max(record.checkpoints, key=lambda c: sort_key(c.position))
    return {"position": display(cp.position), "name": cp.name, "status": cp.status.value}
