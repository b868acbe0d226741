"""The HTTP API (`/api/v1`), a page of glue over `tether.Client`.

Reads need a `read` token, changes an `operate` one (see `_auth`). Values from clients are
JSON: they are validated (a wait's schema, a flow's signature) and stored as data, never
unpickled or imported. Routes are plain `def`s: FastAPI runs them on its thread pool,
where the Client's blocking store calls belong.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route

from .._memory import api as memory
from .._memory.views import memory_json
from .._ops import views
from .._ops.client import Client
from .._runtime.flow import Flow
from ..errors import InputValidationError, MemoryKeyError, UsageError
from . import _dashboard, _errors, _flows, _mcp, _memories, _metrics, _stream
from . import _schemas as _s
from ._auth import Principal, principal

API = "/api/v1"
# Ids and versions are 64-bit in both stores: a larger number is a 422, not a driver error.
_INT64 = 2**63 - 1
# Checkpoint calls in one execution record by default: their results are decoded and sent,
# so an execution with thousands of calls is read a window at a time.
CHECKPOINT_PAGE = 100
# Status counts beside a list stop at this many each: exact counts of 100,000 executions
# cost more than the page itself.
COUNT_CAP = 10_000


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


# One message of the stream; `data` is JSON text (an event record, or the status).
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["event", "status", "end"]},
        "id": {"type": "string"},
        "data": {"type": "string"},
    },
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
    # No NUL: PostgreSQL text cannot hold one.
    key: str | None = Field(default=None, pattern=r"^[^\x00]+$", description="Deduplication key.")
    queue: str | None = Field(
        default=None, pattern=r"^[^\x00]*\S[^\x00]*$", description="Default: the flow's."
    )
    priority: int = Field(default=0, ge=-(2**31), le=2**31 - 1, description="Higher runs first.")
    delay: float | None = Field(default=None, ge=0, description="Seconds before it may start.")
    not_before: dt.datetime | None = Field(
        default=None, description="Not started before this time (with a time zone)."
    )
    deadline: float | dt.datetime | None = Field(
        default=None,
        description="Seconds from its first start, or a time (with a time zone): past it, it "
        "is cancelled as timed out. Default: the flow's.",
    )


class MemoryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Any
    if_version: int | None = Field(default=None, ge=0, lt=memory.MAX_VERSION)


def _answers(model: type[BaseModel], status: int = 200, *, body: bool = False) -> dict[str, Any]:
    """A route's success documented as `model`, without converting what the route returns
    through it (see `_schemas`); `body`: the route takes a JSON body (415 otherwise)."""
    responses: dict[int | str, dict[str, Any]] = {status: {"model": model}}
    if body:
        responses[415] = {"model": ErrorBody, "description": "Not sent as application/json."}
    return {"response_model": None, "responses": responses}


def _plain(body: dict[str, Any]) -> JSONResponse:
    """A body of plain JSON data (what `views` builds), sent as FastAPI would send it but
    without its `jsonable_encoder` walk over every value: a third of the time of an
    execution record with 100 calls went there, to change nothing."""
    return JSONResponse(body)


def _no_nul(request: Request) -> None:
    """Refuse a NUL character in the path or the query (400): no id, name or key holds one,
    and PostgreSQL cannot even compare text with it (its driver fails, a 500 otherwise)."""
    given = [*request.path_params.values(), *request.query_params.values()]
    if any("\x00" in str(value) for value in given):
        raise UsageError(
            f"{request.url.path}: a path or query parameter contains a NUL character (%00), "
            "which no id, name or key can hold"
        )


def _json_only(request: Request) -> None:
    """Refuse a POST or PUT that is not `application/json` (415), body or not.

    A page on any site can make a visitor's browser send a form or a `fetch` in `no-cors`
    mode to `http://127.0.0.1:8787` with no preflight, but only as urlencoded, multipart or
    plain text (or with no content type at all). While no token exists the API lets
    loopback callers in unauthenticated, so such a request would cancel an execution or
    start a flow from the visitor's browser. From another origin, a JSON content type needs
    a CORS preflight, which this server never grants: only real clients send one."""
    if request.method not in ("POST", "PUT"):
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise HTTPException(
        415,
        f"{request.method} {request.url.path} takes JSON: send Content-Type: application/json"
        f" (even with no body), not {media or 'no content type'}",
    )


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
    mcp_mode: str = "read",
) -> FastAPI:
    """The API over `client`'s store; `flows` are those it may start by name. `mcp_mode`:
    the MCP tools (`/mcp`) a client without a token gets, which only a loopback client of a
    server with no token is (`read`, or `operate`)."""
    known = dict(flows or {})
    mcp = _mcp.McpEndpoint(client, mcp_mode)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mcp.running():
            yield

    app = FastAPI(
        lifespan=lifespan,
        title="tether",
        summary="Durable executions: inspect, give input, start and operate them.",
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    app.state.client = client
    _errors.install(app)
    api = APIRouter(
        prefix=API, responses=_ERRORS, dependencies=[Depends(_no_nul), Depends(_json_only)]
    )

    @app.get("/healthz", tags=["ops"], **_answers(_s.HealthOut))
    def healthz() -> dict[str, Any]:
        client.list(limit=1)  # the store answers
        return {"status": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def metrics(who: Reader) -> PlainTextResponse:
        return PlainTextResponse(
            _metrics.render(client.stats()), media_type="text/plain; version=0.0.4"
        )

    # --- executions -----------------------------------------------------------------------

    @api.get("/executions", tags=["executions"], **_answers(_s.ExecutionPageOut))
    def list_executions(
        who: Reader,
        status: Annotated[list[str] | None, Query()] = None,
        flow: str | None = None,
        parent: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: str | None = None,
        queue: str | None = None,
        id_prefix: str | None = None,
        counts: bool = False,
    ) -> JSONResponse:
        """Newest first. `id_prefix`: only ids that start with it. `counts=true` adds the
        number of executions of each status among those the other filters select."""
        statuses = [s for item in status or [] for s in item.split(",") if s] or None
        page = client.page(
            statuses,
            flow,
            limit,
            parent=parent,
            cursor=cursor,
            queue=queue,
            id_prefix=id_prefix or None,
        )
        body: dict[str, Any] = {
            "items": [views.execution_json(r) for r in page.items],
            "next": page.next,
        }
        if counts:
            found = client.status_counts(
                COUNT_CAP, flow=flow, parent=parent, queue=queue, id_prefix=id_prefix or None
            )
            body["counts"] = {s.value: n for s, n in found.items()}
            body["counts_cap"] = COUNT_CAP
        return _plain(body)

    @api.get("/executions/{execution_id}", tags=["executions"], **_answers(_s.ExecutionDetailOut))
    def get_execution(
        who: Reader,
        execution_id: str,
        checkpoint_offset: Annotated[int, Query(ge=0)] = 0,
        checkpoint_limit: Annotated[int, Query(ge=1, le=10_000)] = CHECKPOINT_PAGE,
    ) -> JSONResponse:
        """The record. `checkpoints` holds at most `checkpoint_limit` calls from
        `checkpoint_offset` on, in program order; `checkpoint_count` is how many there are,
        `checkpoints_next` the offset of the next window (null: none)."""
        record = client.get(
            execution_id, checkpoint_offset=checkpoint_offset, checkpoint_limit=checkpoint_limit
        )
        body = views.execution_json(record, full=True)
        total = record.checkpoint_count or 0
        body["checkpoint_count"] = total
        end = checkpoint_offset + checkpoint_limit
        body["checkpoints_next"] = end if end < total else None
        return _plain(body)

    @api.get("/executions/{execution_id}/logs", tags=["executions"], **_answers(_s.LogsOut))
    def logs(
        who: Reader,
        execution_id: str,
        checkpoint: str | None = None,
        after: Annotated[int, Query(ge=0, le=_INT64)] = 0,
    ) -> dict[str, Any]:
        records = client.logs(execution_id, checkpoint=checkpoint, after=after)
        return {"items": [views.log_json(r) for r in records]}

    @api.get(
        "/executions/{execution_id}/events",
        tags=["executions"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-Sent Events: `event`, `status`, then `end`.",
                "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            }
        },
    )
    def events(
        who: Reader,
        request: Request,
        execution_id: str,
        after: Annotated[int | None, Query(ge=0, le=_INT64)] = None,
    ) -> StreamingResponse:
        client.summary(execution_id)  # 404 before the stream starts
        last = request.headers.get("last-event-id")
        if after is None:
            try:
                after = int(last) if last else 0
            except ValueError:
                after = -1
            if not 0 <= after <= _INT64:
                raise UsageError(f"Last-Event-ID {last!r} is not an event id")
        stream = _stream.events(client, execution_id, after, poll=poll, max_seconds=stream_seconds)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    @api.post(
        "/executions/{execution_id}/cancel",
        tags=["operate"],
        **_answers(_s.CancelledOut, body=True),
    )
    def cancel(who: Operator, execution_id: str) -> dict[str, Any]:
        return {"id": execution_id, "status": client.cancel(execution_id).value}

    @api.post(
        "/executions/{execution_id}/resume",
        tags=["operate"],
        **_answers(_s.ExecutionOut, body=True),
    )
    def resume(who: Operator, execution_id: str) -> dict[str, Any]:
        client.resume(execution_id)
        return views.execution_json(client.summary(execution_id))

    @api.post(
        "/executions/{execution_id}/retry", tags=["operate"], **_answers(_s.ExecutionOut, body=True)
    )
    def retry(who: Operator, execution_id: str) -> dict[str, Any]:
        client.retry(execution_id)
        return views.execution_json(client.summary(execution_id))

    @api.post(
        "/executions/{execution_id}/replay",
        tags=["operate"],
        **_answers(_s.ExecutionOut, body=True),
    )
    def replay(who: Operator, execution_id: str, body: ReplayBody) -> dict[str, Any]:
        handle = client.replay(
            execution_id, from_=body.from_, overrides=body.overrides, args=body.args
        )
        return views.execution_json(client.summary(handle.id))

    @api.get("/usage", tags=["executions"], **_answers(_s.UsageTotalsOut))
    def usage(
        who: Reader, flow: str | None = None, since: dt.datetime | None = None
    ) -> dict[str, Any]:
        """Tokens, requests and cost of every execution's model calls (of `flow`, created
        since `since`)."""
        return {
            "flow": flow,
            "since": views.iso(since),
            "usage": views.usage_json(client.usage(flow=flow, since=since)),
        }

    # --- waits ----------------------------------------------------------------------------

    @api.get("/waits", tags=["waits"], **_answers(_s.WaitsOut))
    def waits(
        who: Reader, flow: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        return {"items": [views.wait_json(w) for w in client.pending_waits(flow, limit)]}

    @api.post(
        "/executions/{execution_id}/waits/{name}", tags=["waits"], **_answers(_s.WaitOut, body=True)
    )
    def give_input(who: Operator, execution_id: str, name: str, body: InputBody) -> dict[str, Any]:
        return views.wait_json(client.input_json(execution_id, name, _json_text(body), by=who.name))

    @api.post(
        "/executions/{execution_id}/messages/{name}",
        tags=["waits"],
        **_answers(_s.MessageOut, body=True),
    )
    def send(who: Operator, execution_id: str, name: str, body: InputBody) -> dict[str, Any]:
        """Input for the wait `name` whether the flow waits there now or reaches it later
        (`Client.send`): a webhook's callback that may come first."""
        record = client.send_json(execution_id, name, _json_text(body), by=who.name)
        return views.message_json(record)

    # --- flows ----------------------------------------------------------------------------

    @api.get("/flows", tags=["flows"], **_answers(_s.FlowsOut))
    def list_flows(who: Reader) -> dict[str, Any]:
        return {"items": [_flows.describe(f) for _, f in sorted(known.items())]}

    @api.post(
        "/flows/{name}/executions",
        tags=["flows"],
        status_code=201,
        **_answers(_s.ExecutionOut, 201, body=True),
    )
    def start(who: Operator, name: str, body: StartBody) -> dict[str, Any]:
        flow = _flows.find(known, name)
        args, kwargs = _flows.bind(flow, body.args, body.kwargs)
        starter = flow.options(
            queue=body.queue,
            key=body.key,
            priority=body.priority,
            delay=body.delay,
            not_before=body.not_before,
            deadline=body.deadline,
        )
        handle = starter.enqueue(*args, **kwargs)
        return views.execution_json(client.summary(handle.id))

    # --- schedules ------------------------------------------------------------------------

    @api.get("/schedules", tags=["schedules"], **_answers(_s.SchedulesOut))
    def list_schedules(who: Reader) -> dict[str, Any]:
        return {"items": [views.schedule_json(s) for s in client.schedules()]}

    @api.post("/schedules/{name}/pause", tags=["schedules"], **_answers(_s.ScheduleOut, body=True))
    def pause_schedule(who: Operator, name: str) -> dict[str, Any]:
        return views.schedule_json(client.pause_schedule(name))

    @api.post("/schedules/{name}/resume", tags=["schedules"], **_answers(_s.ScheduleOut, body=True))
    def resume_schedule(who: Operator, name: str) -> dict[str, Any]:
        return views.schedule_json(client.resume_schedule(name))

    # --- memory ---------------------------------------------------------------------------

    @api.get("/memory", tags=["memory"], **_answers(_s.MemoriesOut))
    def list_memory(
        who: Reader,
        scope: memory.Scope | None = None,
        scope_id: str | None = None,
        prefix: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        entries = _memories.entries(scope, scope_id, prefix, limit)
        return {"items": [memory_json(e) for e in entries]}

    @api.get("/memory/{scope}/{scope_id}/{key:path}", tags=["memory"], **_answers(_s.MemoryOut))
    def read_memory(
        who: Reader,
        scope: memory.Scope,
        scope_id: str,
        key: str,
        version: Annotated[int | None, Query(ge=1, le=memory.MAX_VERSION)] = None,
    ) -> dict[str, Any]:
        found = memory._find(key, version=version, **_memories.where(scope, scope_id))
        if found is None or (found.deleted and version is None):
            raise MemoryKeyError(f"no memory key {key!r} in {scope} {scope_id!r}")
        return memory_json(found, with_value=True)

    @api.put(
        "/memory/{scope}/{scope_id}/{key:path}",
        tags=["memory"],
        **_answers(_s.MemoryOut, body=True),
    )
    def write_memory(
        who: Operator, scope: memory.Scope, scope_id: str, key: str, body: MemoryBody
    ) -> dict[str, Any]:
        where = _memories.where(scope, scope_id)
        written = memory.set(key, body.value, **where, if_version=body.if_version)
        found = memory._find(key, version=written, **where)
        assert found is not None
        return memory_json(found)

    @api.delete("/memory/{scope}/{scope_id}/{key:path}", tags=["memory"], **_answers(_s.MemoryOut))
    def delete_memory(
        who: Operator, scope: memory.Scope, scope_id: str, key: str
    ) -> dict[str, Any]:
        """Delete a key: a tombstone version is written (its history keeps every version)."""
        where = _memories.where(scope, scope_id)
        written = memory.delete(key, **where)
        found = memory._find(key, version=written, **where)
        assert found is not None
        return memory_json(found)

    app.include_router(api)
    app.router.routes.append(Route(_mcp.PATH, mcp, include_in_schema=False))
    app.include_router(_dashboard.router(client, poll=poll, stream_seconds=stream_seconds))
    app.mount("/static", StaticFiles(packages=[("tether.server", "static")]), name="static")
    return app


def _json_text(body: InputBody) -> str:
    try:
        return json.dumps(body.value, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity: Python's parser takes them, JSON has none
        raise InputValidationError(
            "input holds NaN or Infinity, which JSON has no place for; send a number, "
            "null or a string"
        ) from None
