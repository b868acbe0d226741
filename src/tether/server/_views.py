"""Records as JSON-ready dicts for the HTTP API.

Stored values (results, arguments, inputs, memory) are shown with `serde.to_data`: plain
JSON data, a tagged value as `{"type_name", "kind", "data"}`, never the stored envelope,
and nothing restored, imported or unpickled, whatever the server process has loaded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pydantic_core

from .._core import serde as _serde
from .._core import waits as _waits
from .._core.positions import display
from .._core.status import Status
from .._memory.api import MemoryVersion
from .._ops.tokens import TokenInfo
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
    return None if moment is None else moment.isoformat()


def data(value: Any) -> Any:
    """A value that was decoded already (a question, metadata) as JSON data: a class
    this process lacks (`StoredValue`) as its type name, kind and data."""

    def fallback(obj: Any) -> Any:
        if isinstance(obj, _serde.StoredValue):
            return {"type_name": obj.type_name, "kind": obj.kind, "data": data(obj.data)}
        return {"type_name": f"{type(obj).__module__}:{type(obj).__qualname__}", "data": None}

    if isinstance(value, _serde.StoredValue):
        return fallback(value)
    return pydantic_core.to_jsonable_python(value, fallback=fallback, bytes_mode="base64")


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
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
    """An execution; `full` adds what `Client.get()` reads: arguments, checkpoint calls,
    waits, events, usage, children and lineage."""
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
        "result": _serde.to_data(record.result_json),
        "error": error_json(record.error),
        "checkpoints_done": record.checkpoints_done,
        "pending_wait": record.pending_wait,
    }
    if not full:
        return shown
    shown.update(
        import_path=record.import_path,
        args=_serde.to_data(record.args_json) if record.args_json else None,
        metadata=data(record.metadata),
        running=_running(record),
        checkpoints=[checkpoint_json(cp) for cp in record.checkpoints],
        waits=[wait_json(w) for w in record.waits],
        usage=usage_json(record.usage),
        budget=None if record.budget is None else dataclasses.asdict(record.budget),
        events=[event_json(e) for e in record.events],
        children=[execution_json(c) for c in record.children],
        lineage={"parent_id": record.parent_id, "replay_of": record.replay_of},
        messages=[message_json(m) for m in record.messages],
        published={
            key: _serde.to_data(cp.result_json) for key, cp in record.published_calls.items()
        },
    )
    return shown


def message_json(m: MessageRecord) -> dict[str, Any]:
    """A message sent to a wait (`Client.send`): `sent`, `delivered` or `rejected`."""
    return {
        "execution_id": m.execution_id,
        "name": m.name,
        "status": m.status,
        "value": _serde.to_data(m.value_json),
        "sent_by": m.sent_by,
        "sent_at": iso(m.sent_at),
        "delivered_at": iso(m.delivered_at),
        "error": m.error,
    }


def _running(record: ExecutionRecord) -> list[dict[str, Any]]:
    if record.status is not Status.RUNNING:
        return []
    done = {cp.position for cp in record.checkpoints if cp.status != "retrying"}
    return [
        {"position": _shown(p.get("position")), "name": p.get("name"), "since": p.get("since")}
        for p in record.progress
        if isinstance(p, dict) and p.get("position") not in done
    ]


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
        "result": _serde.to_data(cp.result_json),
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
        "question": _serde.to_data(w.question_json),
        "json_schema": w.json_schema,
        "metadata": data(w.metadata),
        "deadline": iso(w.deadline),
        "since": iso(w.created_at),
        "resolved_at": iso(w.resolved_at),
        "resolved_by": w.resolved_by,
        "value": _serde.to_data(w.value_json),
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


def memory_json(version: MemoryVersion, value_json: str | None = None) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "key": version.key,
        "scope": version.scope,
        "scope_id": version.scope_id,
        "version": version.version,
        "deleted": version.deleted,
        "created_at": iso(version.created_at),
        "size": version.size,
        "length": version.length,
        "execution_id": version.execution_id,
        "position": None if version.position is None else display(version.position),
    }
    if value_json is not None or version.deleted:
        shown["value"] = _serde.to_data(value_json)
    return shown


def token_json(token: TokenInfo) -> dict[str, Any]:
    return {
        "name": token.name,
        "scope": token.scope,
        "created_at": iso(token.created_at),
        "revoked_at": iso(token.revoked_at),
    }


def _shown(position: Any) -> Any:
    return display(position) if isinstance(position, str) else position
