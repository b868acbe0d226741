"""The HTTP API (`/api/v1`), a page of glue over `tether.Client`.

Reads need a `read` token, changes an `operate` one (see `_auth`). Values from clients are
JSON: they are validated (a wait's schema, a flow's signature) and stored as data, never
unpickled or imported. Routes are plain `def`s: FastAPI runs them on its thread pool,
where the Client's blocking store calls belong.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from .._memory import api as memory
from .._ops.client import Client
from .._runtime.flow import Flow
from ..errors import InputValidationError, MemoryKeyError, UsageError
from . import _dashboard, _errors, _flows, _memories, _metrics, _stream, _views
from ._auth import Principal, principal

API = "/api/v1"
# Checkpoint calls in one execution record by default: their results are decoded and sent,
# so an execution with thousands of calls is read a window at a time.
CHECKPOINT_PAGE = 100


class ErrorDetail(BaseModel):
    type: str = Field(description="The error's class, e.g. WaitAlreadyResolved.")
    message: str = Field(description="What went wrong and what to do.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors (422): type, loc, msg."
    )


class ErrorBody(BaseModel):
    error: ErrorDetail


# Every route answers errors in one shape (see _errors.py); the OpenAPI document says so.
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 422)
}


class InputBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any = Field(description="The input, as JSON; validated against the wait's schema.")


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str | int = Field(alias="from", description="Fork point: name, name#k or position.")
    overrides: dict[str, Any] = Field(default_factory=dict)
    args: list[Any] | dict[str, Any] | None = None


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(default=None, min_length=1, description="Deduplication key.")
    queue: str | None = Field(default=None, pattern=r"\S", description="Default: the flow's.")
    priority: int = 0


class MemoryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any
    if_version: int | None = Field(default=None, ge=0)


def _reader(request: Request) -> Principal:
    return principal(request.app.state.client, request, "read")


def _operator(request: Request) -> Principal:
    return principal(request.app.state.client, request, "operate")


# Module level: with postponed annotations FastAPI resolves these names in this module.
Reader = Annotated[Principal, Depends(_reader)]
Operator = Annotated[Principal, Depends(_operator)]


def create_app(
    client: Client,
    flows: dict[str, Flow[..., Any]] | None = None,
    *,
    poll: float = 0.25,
    stream_seconds: float = 300.0,
) -> FastAPI:
    """The API over `client`'s store; `flows` are those it may start by name."""
    known = dict(flows or {})
    app = FastAPI(
        title="tether",
        summary="Durable executions: inspect, give input, start and operate them.",
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    app.state.client = client
    _errors.install(app)
    api = APIRouter(prefix=API, responses=_ERRORS)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, Any]:
        client.list(limit=1)  # the store answers
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics(who: Reader) -> PlainTextResponse:
        return PlainTextResponse(
            _metrics.render(client.stats()), media_type="text/plain; version=0.0.4"
        )

    # --- executions -----------------------------------------------------------------------

    @api.get("/executions", tags=["executions"])
    def list_executions(
        who: Reader,
        status: Annotated[list[str] | None, Query()] = None,
        flow: str | None = None,
        parent: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        statuses = [s for item in status or [] for s in item.split(",") if s] or None
        page = client.page(statuses, flow, limit, parent=parent, cursor=cursor)
        return {"items": [_views.execution_json(r) for r in page.items], "next": page.next}

    @api.get("/executions/{execution_id}", tags=["executions"])
    def get_execution(
        who: Reader,
        execution_id: str,
        checkpoint_offset: Annotated[int, Query(ge=0)] = 0,
        checkpoint_limit: Annotated[int, Query(ge=1, le=10_000)] = CHECKPOINT_PAGE,
    ) -> dict[str, Any]:
        """The record. `checkpoints` holds at most `checkpoint_limit` calls from
        `checkpoint_offset` on, in program order; `checkpoint_count` is how many there are,
        `checkpoints_next` the offset of the next window (null: none)."""
        record = client.get(
            execution_id, checkpoint_offset=checkpoint_offset, checkpoint_limit=checkpoint_limit
        )
        body = _views.execution_json(record, full=True)
        total = record.checkpoint_count or 0
        body["checkpoint_count"] = total
        end = checkpoint_offset + checkpoint_limit
        body["checkpoints_next"] = end if end < total else None
        return body

    @api.get("/executions/{execution_id}/logs", tags=["executions"])
    def logs(
        who: Reader,
        execution_id: str,
        checkpoint: str | None = None,
        after: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        records = client.logs(execution_id, checkpoint=checkpoint, after=after)
        return {"items": [_views.log_json(r) for r in records]}

    @api.get("/executions/{execution_id}/events", tags=["executions"])
    def events(
        who: Reader,
        request: Request,
        execution_id: str,
        after: Annotated[int | None, Query(ge=0)] = None,
    ) -> StreamingResponse:
        client.summary(execution_id)  # 404 before the stream starts
        last = request.headers.get("last-event-id")
        if after is None:
            try:
                after = int(last) if last else 0
            except ValueError:
                raise UsageError(f"Last-Event-ID {last!r} is not an event id") from None
        stream = _stream.events(client, execution_id, after, poll=poll, max_seconds=stream_seconds)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    @api.post("/executions/{execution_id}/cancel", tags=["operate"])
    def cancel(who: Operator, execution_id: str) -> dict[str, Any]:
        return {"id": execution_id, "status": client.cancel(execution_id).value}

    @api.post("/executions/{execution_id}/resume", tags=["operate"])
    def resume(who: Operator, execution_id: str) -> dict[str, Any]:
        client.resume(execution_id)
        return _views.execution_json(client.summary(execution_id))

    @api.post("/executions/{execution_id}/retry", tags=["operate"])
    def retry(who: Operator, execution_id: str) -> dict[str, Any]:
        client.retry(execution_id)
        return _views.execution_json(client.summary(execution_id))

    @api.post("/executions/{execution_id}/replay", tags=["operate"])
    def replay(who: Operator, execution_id: str, body: ReplayBody) -> dict[str, Any]:
        handle = client.replay(
            execution_id, from_=body.from_, overrides=body.overrides, args=body.args
        )
        return _views.execution_json(client.summary(handle.id))

    @api.get("/usage", tags=["executions"])
    def usage(
        who: Reader, flow: str | None = None, since: dt.datetime | None = None
    ) -> dict[str, Any]:
        """Tokens, requests and cost of every execution's model calls (of `flow`, created
        since `since`)."""
        return {
            "flow": flow,
            "since": _views.iso(since),
            "usage": _views.usage_json(client.usage(flow=flow, since=since)),
        }

    # --- waits ----------------------------------------------------------------------------

    @api.get("/waits", tags=["waits"])
    def waits(
        who: Reader, flow: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        return {"items": [_views.wait_json(w) for w in client.pending_waits(flow, limit)]}

    @api.post("/executions/{execution_id}/waits/{name}", tags=["waits"])
    def give_input(who: Operator, execution_id: str, name: str, body: InputBody) -> dict[str, Any]:
        try:
            text = json.dumps(body.value, ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN or Infinity: Python's parser takes them, JSON has none
            raise InputValidationError(
                "input holds NaN or Infinity, which JSON has no place for; send a number, "
                "null or a string"
            ) from None
        return _views.wait_json(client.input_json(execution_id, name, text, by=who.name))

    # --- flows ----------------------------------------------------------------------------

    @api.get("/flows", tags=["flows"])
    def list_flows(who: Reader) -> dict[str, Any]:
        return {"items": [_flows.describe(f) for _, f in sorted(known.items())]}

    @api.post("/flows/{name}/executions", tags=["flows"], status_code=201)
    def start(who: Operator, name: str, body: StartBody) -> dict[str, Any]:
        flow = _flows.find(known, name)
        args, kwargs = _flows.bind(flow, body.args, body.kwargs)
        starter = flow.options(queue=body.queue, key=body.key, priority=body.priority)
        handle = starter.enqueue(*args, **kwargs)
        return _views.execution_json(client.summary(handle.id))

    # --- memory ---------------------------------------------------------------------------

    @api.get("/memory", tags=["memory"])
    def list_memory(
        who: Reader,
        scope: memory.Scope | None = None,
        scope_id: str | None = None,
        prefix: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        entries = _memories.entries(scope, scope_id, prefix, limit)
        return {"items": [_views.memory_json(e) for e in entries]}

    @api.get("/memory/{scope}/{scope_id}/{key:path}", tags=["memory"])
    def read_memory(
        who: Reader,
        scope: memory.Scope,
        scope_id: str,
        key: str,
        version: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        found = memory._find(key, version=version, **_memories.where(scope, scope_id))
        if found is None or (found.deleted and version is None):
            raise MemoryKeyError(f"no memory key {key!r} in {scope} {scope_id!r}")
        return _views.memory_json(found, memory._stored_json(found))

    @api.put("/memory/{scope}/{scope_id}/{key:path}", tags=["memory"])
    def write_memory(
        who: Operator, scope: memory.Scope, scope_id: str, key: str, body: MemoryBody
    ) -> dict[str, Any]:
        where = _memories.where(scope, scope_id)
        written = memory.set(key, body.value, **where, if_version=body.if_version)
        found = memory._find(key, version=written, **where)
        assert found is not None
        return _views.memory_json(found)

    @api.delete("/memory/{scope}/{scope_id}/{key:path}", tags=["memory"])
    def delete_memory(
        who: Operator, scope: memory.Scope, scope_id: str, key: str
    ) -> dict[str, Any]:
        """Delete a key: a tombstone version is written (its history keeps every version)."""
        where = _memories.where(scope, scope_id)
        written = memory.delete(key, **where)
        found = memory._find(key, version=written, **where)
        assert found is not None
        return _views.memory_json(found)

    app.include_router(api)
    app.include_router(_dashboard.router(client, poll=poll, stream_seconds=stream_seconds))
    app.mount("/static", StaticFiles(packages=[("tether.server", "static")]), name="static")
    return app
