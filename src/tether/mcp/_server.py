"""The MCP tools, each a few lines over `Client` and `_ops.views`.

The descriptions are what an assistant reads to choose a tool and fill its arguments:
they say what a tool returns and when to use it, in tether's words (execution, checkpoint
call, wait). Annotations are evaluated at import (no `from __future__ import annotations`):
the SDK reads them to build each tool's JSON Schema.
"""

import contextlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from .._memory import api as _memory
from .._memory.views import memory_json
from .._ops import views
from .._ops.client import Client
from ..errors import TetherError

_INSTRUCTIONS = """\
tether records AI agents as durable executions. An execution is one run of a @tether.flow;
each @tether.checkpoint call in it is recorded with its result (its position, e.g. `3` or
`1.0`, says where in the flow it happened). An execution's status is queued, running,
waiting (for input, a timer or a child flow), succeeded, failed or cancelled. A waiting
execution asks a question with a JSON Schema for the answer: list_pending_waits shows them.
Stored values are returned as JSON data; a value whose class this server does not know comes
back as {"type_name", "kind", "data"}. Ids can be shortened to any unique prefix. An
`attention` field, when present, says why nobody moves an execution forward and what to do.
"""

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_OPERATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
_CANCEL = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)

ExecutionId = Annotated[
    str, Field(description="The execution id, or a unique prefix of it (from list_executions).")
]
Status = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]

#: Where `tether server` puts the name of the token an HTTP request carries, in the
#: request's ASGI scope: the name that input given through that request is recorded with.
GIVER = "tether.giver"
_STDIO_GIVER = "mcp"  # over stdio there is no token: the assistant is whoever ran `tether mcp`


def _giver(ctx: Context) -> str:
    try:
        request = ctx.request_context.request
    except ValueError:  # no request context: called outside the SDK's dispatch
        return _STDIO_GIVER
    scope = getattr(request, "scope", None)
    name = scope.get(GIVER) if isinstance(scope, dict) else None
    return name if isinstance(name, str) else _STDIO_GIVER


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """A user mistake comes back as a tool error with tether's message, which says what to
    do; anything else is a crash the SDK reports without details."""
    try:
        yield
    except TetherError as exc:
        raise ToolError(f"{type(exc).__name__}: {exc}") from exc


def build_server(client: Client, mode: Literal["read", "operate"]) -> MCPServer:
    """The MCP server over `client`: reading tools always, operating tools in `operate`."""
    server: MCPServer = MCPServer(
        "tether", instructions=_INSTRUCTIONS, log_level="WARNING", version=_version()
    )

    def record(execution_id: str, *, full: bool = True) -> dict[str, Any]:
        found = client.get(execution_id)
        data = views.execution_json(found, full=full)
        note = client.attention(found)
        if note is not None:
            data["attention"] = note
        return data

    @server.tool(annotations=_READ)
    def list_executions(
        status: Annotated[
            list[Status] | None, Field(description="Only executions with one of these statuses.")
        ] = None,
        flow: Annotated[str | None, Field(description="Only executions of this flow.")] = None,
        parent: Annotated[
            str | None, Field(description="Only the child flows this execution started.")
        ] = None,
        queue: Annotated[str | None, Field(description="Only executions of this queue.")] = None,
        id_prefix: Annotated[
            str | None, Field(description="Only executions whose id starts with this.")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many.")] = 50,
        cursor: Annotated[
            str | None,
            Field(
                description="The `next` of a previous call with the same filters: the page "
                "after it."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """List executions, newest first: id, flow, status, timings, how many checkpoint calls
        succeeded, the pending wait's name, a delayed start (`not_before`) and deadline, and
        `attention` when one looks stuck (its process died or its lease expired). `next`,
        when not null, is the cursor of the following page. Use get_execution for one
        execution's full record."""
        with _tool_errors():
            found = client.page(
                status,
                flow,
                limit,
                parent=parent,
                cursor=cursor,
                queue=queue,
                id_prefix=id_prefix or None,
            )
            items = []
            for r in found.items:
                data = views.execution_json(r)
                note = client.attention(r)
                if note is not None:
                    data["attention"] = note
                items.append(data)
            return {"executions": items, "next": found.next}

    @server.tool(annotations=_READ)
    def get_execution(execution_id: ExecutionId) -> dict[str, Any]:
        """One execution in full: status, arguments, result or error, every checkpoint call
        in program order (position, name, status, attempts with their errors, duration,
        result, model usage), its waits (question, JSON Schema, input given and by whom),
        events and warnings, child flows, usage and cost totals."""
        with _tool_errors():
            return record(client.resolve_id(execution_id))

    @server.tool(annotations=_READ)
    def read_logs(
        execution_id: ExecutionId,
        checkpoint: Annotated[
            str | None,
            Field(
                description="Only this checkpoint: a name (all its calls), `name#k` (its "
                "k-th call) or a position."
            ),
        ] = None,
        after: Annotated[
            int, Field(ge=0, description="Only records after this log id (to read new ones).")
        ] = 0,
    ) -> dict[str, Any]:
        """What an execution's checkpoint calls printed (stdout, stderr) and logged (Python
        logging), in order, each with its position, checkpoint name and log id. A call's
        output is recorded when the call finishes."""
        with _tool_errors():
            found = client.logs(client.resolve_id(execution_id), checkpoint=checkpoint, after=after)
            return {"logs": [views.log_json(r) for r in found]}

    @server.tool(annotations=_READ)
    def list_pending_waits(
        flow: Annotated[str | None, Field(description="Only waits of this flow.")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many.")] = 100,
    ) -> dict[str, Any]:
        """The waits that need input (a flow called tether.wait), oldest first: execution id,
        wait name, the question asked, the JSON Schema the answer must match, and the
        deadline. Answer one with give_input (operate mode)."""
        with _tool_errors():
            return {"waits": [views.wait_json(w) for w in client.pending_waits(flow, limit)]}

    @server.tool(annotations=_READ)
    def read_memory(
        key: Annotated[
            str | None,
            Field(description="The key to read; leave it out to list the keys that exist."),
        ] = None,
        namespace: Annotated[str | None, Field(description="A namespace's memory.")] = None,
        flow: Annotated[str | None, Field(description="A flow's shared memory.")] = None,
        execution_id: Annotated[str | None, Field(description="One execution's memory.")] = None,
        version: Annotated[
            int | None, Field(ge=1, description="This version of the key, not the latest.")
        ] = None,
    ) -> dict[str, Any]:
        """Read durable memory (tether.memory): versioned values kept per namespace, per flow
        or per execution (give exactly one of them). With a key: its value and version
        (`found` false when it does not exist or was deleted); without: the keys with their
        latest version and size."""
        with _tool_errors():
            if execution_id is not None:
                execution_id = client.resolve_id(execution_id)
            scope: dict[str, Any] = {
                "namespace": namespace,
                "flow": flow,
                "execution_id": execution_id,
            }
            if key is None:
                entries = _memory.entries(**scope)
                return {"keys": [memory_json(e) for e in entries]}
            if version is None:
                latest = _memory.latest(key, **scope)
                if latest is None or latest.deleted:
                    return {"key": key, "found": False}
                return {"found": True, **memory_json(latest, with_value=True)}
            for entry in _memory.history(key, **scope):
                if entry.version == version:
                    return {"found": not entry.deleted, **memory_json(entry, with_value=True)}
            return {"key": key, "found": False}

    @server.tool(annotations=_READ)
    def list_schedules() -> dict[str, Any]:
        """The flows that run on a schedule (@tether.flow(schedule=...)), by name: the spec
        (cron in UTC, or `every <seconds>s`), whether it is paused, and the last and next
        tick (UTC). A schedule is listed once a worker that loaded its flow has run. Each
        tick starts one execution of the flow (list_executions with flow=name shows them)."""
        with _tool_errors():
            return {"schedules": [views.schedule_json(s) for s in client.schedules()]}

    if mode == "operate":
        _operating_tools(server, client, record)
    return server


def _operating_tools(
    server: MCPServer, client: Client, record: Callable[..., dict[str, Any]]
) -> None:
    @server.tool(annotations=_OPERATE)
    def give_input(
        execution_id: ExecutionId,
        value: Annotated[
            Any,
            Field(
                description="The answer, as JSON matching the wait's JSON Schema (true/false "
                "for an approval)."
            ),
        ],
        wait: Annotated[
            str | None,
            Field(description="The wait's name; may be left out when only one is pending."),
        ] = None,
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        """Answer a waiting execution's question (see list_pending_waits). The value is
        validated against the wait's JSON Schema: a mismatch is an error and records nothing.
        The execution then continues in the process that started it, if that still runs, or
        in a `tether worker`; `continues` says which, and what to do if nobody will."""
        with _tool_errors():
            full_id = client.resolve_id(execution_id)
            # Asked first: once the input is in, the execution may be running, or even done.
            then = client.continuation(full_id)
            who = _STDIO_GIVER if ctx is None else _giver(ctx)
            given = client.input(full_id, wait, value, by=who)
            return {
                "wait": views.wait_json(given),
                "continues": {"live": then.live, "message": then.message},
            }

    @server.tool(annotations=_CANCEL)
    def cancel_execution(execution_id: ExecutionId) -> dict[str, Any]:
        """Cancel an execution and its unfinished child flows. One that nobody runs
        (queued, waiting) is cancelled at once; a running one stops at its next checkpoint
        boundary. Returns the status after the request."""
        with _tool_errors():
            full_id = client.resolve_id(execution_id)
            return {"id": full_id, "status": client.cancel(full_id).value}

    @server.tool(annotations=_OPERATE)
    def resume_execution(execution_id: ExecutionId) -> dict[str, Any]:
        """Hand an unfinished execution whose process is gone (see `attention`) to the
        workers: it is queued, and a `tether worker` runs the flow again from the top,
        recorded checkpoint calls returning their results. Refused while a live process
        still runs it."""
        with _tool_errors():
            handle = client.resume(client.resolve_id(execution_id))
            return record(handle.id, full=False)

    @server.tool(annotations=_OPERATE)
    def retry_execution(execution_id: ExecutionId) -> dict[str, Any]:
        """Run a failed execution again under the same id, with the current code: recorded
        results are reused, the checkpoint call that failed and everything after it run
        again. It is queued for a `tether worker`. Only failed executions can be retried;
        replay_execution forks any other."""
        with _tool_errors():
            handle = client.retry(client.resolve_id(execution_id))
            return record(handle.id, full=False)

    @server.tool(annotations=_OPERATE)
    def replay_execution(
        execution_id: ExecutionId,
        from_step: Annotated[
            str,
            Field(
                description="Where the new execution starts running live: a checkpoint name "
                "(its first call), `name#k`, a position as get_execution shows it, or a wait "
                "(`wait approve`) or sleep. Calls before it reuse their recorded results."
            ),
        ],
        overrides: Annotated[
            dict[str, Any] | None,
            Field(
                description="Recorded results to replace, before from_step: {checkpoint "
                "name or position: value}."
            ),
        ] = None,
        args: Annotated[
            list[Any] | dict[str, Any] | None,
            Field(description="New flow arguments: a list (positional) or object (keywords)."),
        ] = None,
    ) -> dict[str, Any]:
        """Fork an execution into a new one (the original is untouched) that reuses its
        recorded results up to from_step and runs live from there, queued for a `tether
        worker`. Returns the new execution (its `replay_of` is the source)."""
        with _tool_errors():
            handle = client.replay(
                client.resolve_id(execution_id), from_=from_step, overrides=overrides, args=args
            )
            return record(handle.id, full=False)

    ScheduleName = Annotated[
        str, Field(description="The schedule's name: its flow's name (see list_schedules).")
    ]

    @server.tool(annotations=_OPERATE)
    def pause_schedule(name: ScheduleName) -> dict[str, Any]:
        """Pause a schedule on every worker: its ticks pass without starting executions, and
        resuming later does not fire the ticks that passed. Executions already started are
        not touched. Returns the schedule as list_schedules shows it."""
        with _tool_errors():
            return views.schedule_json(client.pause_schedule(name))

    @server.tool(annotations=_OPERATE)
    def resume_schedule(name: ScheduleName) -> dict[str, Any]:
        """Resume a paused schedule: its next tick starts an execution again (the ticks that
        passed while it was paused are not fired). Returns the schedule as list_schedules
        shows it."""
        with _tool_errors():
            return views.schedule_json(client.resume_schedule(name))


def _version() -> str:
    try:
        return importlib.metadata.version("tether")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
