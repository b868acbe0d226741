"""TetherDurability: Pydantic AI's durable-execution capability, on tether checkpoints."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic_ai import CallToolsNode, DeferredToolRequests, DeferredToolResults, ToolApproved
from pydantic_ai.capabilities.abstract import (
    AgentNode,
    WrapRunHandler,
)
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    CallableOperationBackend,
    DurabilityEngineSpec,
    DurableOperationConfig,
    DurableOperationId,
    ModelCompactMessagesId,
    ModelRequestId,
    OperationConfigRole,
    ToolsetCallToolId,
    ToolsetValidateToolArgumentsId,
    conversation_id_from_run_id,
)
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tool_manager import ToolManager
from pydantic_ai.tools import AgentDepsT, RunContext, ToolDefinition

import tether
from tether._core.config import settings
from tether._core.positions import Pin, pin
from tether.errors import LeaseLost, Released, SerializationError, Suspended

from ._deferred import wait_for_deferred
from ._metering import RequestSteps, metered_unit
from ._units import (
    CheckpointOptions,
    DispatchOrder,
    Slot,
    TetherOperationNamer,
    checked_options,
    in_flow,
    options_from_metadata,
    request_key,
    unit_checkpoint,
)


@tether.checkpoint(name="agent_run")
def _agent_run() -> dict[str, str]:
    """Recorded once per agent run inside a flow, so a resumed run keeps its run id (and the
    conversation id and start time derived from it)."""
    return {"run_id": str(uuid.uuid4()), "started_at": datetime.now(UTC).isoformat()}


@tether.checkpoint(name="poll_wait")
def _poll_wake_at(seconds: float) -> float:
    """Recorded once per short wait between polls: its wake-up time, so a resumed flow waits
    only what is left of it (nothing, once it has passed) instead of the whole wait again."""
    return settings().clock() + seconds


# The longest step of an in-process wait between polls: the wake-up time is checked against
# the configured clock after each step, so the wait follows that clock (tests move it).
_POLL_STEP = 1.0

# What suspends or hands back a flow that Pydantic AI must let through (`durable_sleep`
# raises `Suspended`; a checkpoint boundary can raise the others): the execution is run again
# by replay, which continues the background job the flow was polling rather than cancelling
# it. `Cancelled` is not among them: a cancelled execution is not run again.
CONTROL_FLOW_ERRORS: tuple[type[BaseException], ...] = (Suspended, Released, LeaseLost)


def _engine_spec_options() -> dict[str, Any]:
    """Spec fields of newer Pydantic AI releases, when the installed one has them."""
    known = {field.name for field in fields(DurabilityEngineSpec)}
    options: dict[str, Any] = {}
    if "control_flow_error_types" in known:  # Pydantic AI 2.78
        options["control_flow_error_types"] = CONTROL_FLOW_ERRORS
    return options


def _not_storable(error: Exception) -> BaseException:
    return SerializationError(f"a result of an agent operation cannot be stored as JSON: {error}")


def _run_context(values: tuple[object, ...]) -> RunContext[Any] | None:
    for value in values:
        if isinstance(value, RunContext):
            return value
    return None


def _scope(ctx: RunContext[Any]) -> str:
    return f"{tether.current().execution_id}:{ctx.run_id}"


class _OperationConfig(DurableOperationConfig[CheckpointOptions]):
    """Checkpoint options per operation: the model's, the tools' (with per-tool metadata),
    tether's defaults for the rest. Tool argument validators run inline, in flow code."""

    def __init__(
        self,
        *,
        model: CheckpointOptions,
        tool: CheckpointOptions,
        resolve_tool: Callable[[object | None, str], CheckpointOptions | Literal[False]],
    ) -> None:
        self._model = model
        self._tool = tool
        self._resolve_tool = resolve_tool

    def base(
        self, role: OperationConfigRole, *, operation_id: DurableOperationId
    ) -> CheckpointOptions:
        if role == "model":
            return self._model
        if role == "tool":
            return self._tool
        return {}

    def for_tool(
        self,
        role: OperationConfigRole,
        *,
        operation_id: DurableOperationId,
        tool: object | None,
        tool_name: str,
    ) -> CheckpointOptions | Literal[False]:
        if isinstance(operation_id, ToolsetValidateToolArgumentsId):
            # A validator is ordinary code: it runs again on resume like the rest of the flow,
            # and a checkpoint per validation would only add positions.
            return False
        return self._resolve_tool(tool, tool_name)


class TetherOperationBackend(CallableOperationBackend[CheckpointOptions]):
    """Runs each durable operation's body as one call of a tether checkpoint."""

    def __init__(self, *, config: _OperationConfig, order: DispatchOrder) -> None:
        super().__init__(namer=TetherOperationNamer(), config=config)
        self._order = order
        self._steps = RequestSteps()

    def forget(self, scope: str) -> None:
        """An agent run ended: drop what was kept about its requests."""
        self._steps.forget(scope)

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: CheckpointOptions,
    ) -> object:
        key: object = None
        if isinstance(operation_id, ToolsetCallToolId):
            ctx = _run_context(cache_key)
            if ctx is not None and ctx.tool_call_id is not None:
                key = ctx.tool_call_id
                if in_flow():
                    # Reserved under the name the model called it by (a prefixed toolset's
                    # tool too), in the model's order: see `before_node_run`.
                    reserved = self._order.take(_scope(ctx), ctx.tool_call_id, ctx)
                    if reserved is not None:
                        return await reserved.run(body, _tool_args(cache_key))
        elif isinstance(operation_id, ModelRequestId):
            key = request_key(next((v for v in cache_key if isinstance(v, list)), None))
            # Checked against the budget before it starts, metered when it returns: only a
            # live request runs the body, so a replayed one is neither. A request continuing
            # its step's response adds no request (`RequestSteps`).
            ctx = _run_context(cache_key)
            step = (_scope(ctx), ctx.run_step) if ctx is not None and in_flow() else None
            counted = step is None or self._steps.counts(*step)
            body = metered_unit(body, operation_id.model_name, cache_key, counted=counted)
            result = await unit_checkpoint(name, config)(key, Slot(body))
            if step is not None:
                self._steps.made(*step)
            return result
        elif isinstance(operation_id, ModelCompactMessagesId):
            # Compaction is a model request too (its response carries usage); its input is
            # not in the cache key, so the budget check counts only what was spent.
            body = metered_unit(body, operation_id.model_name, ())
        # Outside a flow (or inside a checkpoint) the checkpoint is a plain call.
        tool_args = _tool_args(cache_key) if isinstance(operation_id, ToolsetCallToolId) else None
        return await unit_checkpoint(name, config)(key, Slot(body, tool_args))


def _tool_args(cache_key: tuple[object, ...]) -> object:
    """A tool call's arguments in its cache key (name, arguments, run context, tool)."""
    return cache_key[1] if len(cache_key) > 1 else None


@dataclass(init=False, kw_only=True)
class TetherDurability(BaseDurabilityCapability[AgentDepsT]):
    """Makes an agent durable inside `@tether.flow`s: each model request and each tool call is
    one recorded checkpoint call.

    ```python
    agent = Agent(model, tools=[search], capabilities=[TetherDurability()])
    # or, for an agent that exists already:  agent = tether.ai.durable(agent)
    ```

    Inside a flow, model requests are recorded as `model_request` (`model_request_stream` when
    streamed) and tool calls as `tool:<name>`; a resumed flow gets their recorded results
    back without calling the model or the tool again. The tool calls of one turn run
    concurrently but take their positions in the order the model made them. Deferred tool
    calls (`requires_approval=True`, `ApprovalRequired`, `CallDeferred`) become
    `tether.wait`s named `approve:<tool_call_id>` (input: `True`, `False` or an `Approval`)
    or `result:<tool_call_id>` (input: the tool's result). Outside a flow the agent behaves
    exactly as without this capability and nothing is recorded.

    - `model_checkpoint` / `tool_checkpoint`: checkpoint options (`retries`, `backoff`,
      `timeout`, `retry_on`) for model requests and tool calls. One tool's options come from
      its metadata: `Tool(..., metadata={'tether': {'retries': 3}})`, or
      `{'tether': False}` to run it inline, unrecorded (it then runs again on resume).
    - `wait_for_deferred`: answer deferred tool calls with waits (default). With False, the
      run ends with `DeferredToolRequests` output as it does without the capability.
    - `deferred_timeout`: seconds a deferred call may wait; an approval then counts as
      denied and an external call as failed.
    - `models`: extra `Model` instances a run may select by key or instance inside a flow.
    - `inline_poll_wait`: the waits between polls of a model's background job (an OpenAI
      background response, a batch) are durable inside a flow (Pydantic AI 2.78 and later). A
      wait of up to this many seconds (default 30) stays in the process, with its wake-up time
      recorded as a `poll_wait` checkpoint call, so a resumed flow does not wait it again; a
      longer one is a `tether.sleep`: the execution suspends, holding nothing, and resumes by
      replay when it is due. Every suspension replays the flow from the top, so short polls
      (OpenAI's 2 s) are cheaper in the process; 0 suspends on every wait.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="tether",
        durable_unit_noun="checkpoint",
        durable_container_noun="flow",
        # Recorded results are plain JSON: readable in `tether executions show`, no pickle, and
        # decoded by the same typed adapters live and on resume.
        codec=JSON_CODEC,
        serialization_failure=_not_storable,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={
            "function": "enter-always",
            "mcp": "enter-in-durable-unit",
            "dynamic": "enter-never",
        },
        tool_call_result_upgrade_lenient=False,
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        # A toolset passed to one run was never wrapped: its calls would not be recorded.
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        tool_config_key="tether",
        **_engine_spec_options(),
    )

    def __init__(
        self,
        *,
        model_checkpoint: CheckpointOptions | None = None,
        tool_checkpoint: CheckpointOptions | None = None,
        wait_for_deferred: bool = True,
        deferred_timeout: float | None = None,
        models: Mapping[str, Model] | None = None,
        inline_poll_wait: float = 30.0,
    ) -> None:
        # The name only labels error messages: checkpoint names do not include it.
        super().__init__(models=models, event_stream_handler=None, name="agent")
        self._model_checkpoint = checked_options(model_checkpoint, "model_checkpoint")
        self._tool_checkpoint = checked_options(tool_checkpoint, "tool_checkpoint")
        self._wait_for_deferred = wait_for_deferred
        if deferred_timeout is not None and deferred_timeout < 0:
            raise tether.UsageError(f"deferred_timeout must be 0 or more, not {deferred_timeout}")
        self._deferred_timeout = deferred_timeout
        if inline_poll_wait < 0:
            raise tether.UsageError(f"inline_poll_wait must be 0 or more, not {inline_poll_wait}")
        self._inline_poll_wait = inline_poll_wait
        self._backend: TetherOperationBackend | None = None
        self._order = DispatchOrder()
        self._run_starts: dict[str, datetime] = {}
        self._pins: dict[str, Pin] = {}

    # --- binding ----------------------------------------------------------------------

    def _bind_to_agent(self, agent: Any) -> None:
        # Per bound copy: `for_agent` copies this object, and copies must not share state.
        self._order = DispatchOrder()
        self._run_starts = {}
        self._pins = {}
        base = self._tool_checkpoint

        def resolve_tool(tool: object | None, tool_name: str) -> CheckpointOptions | Literal[False]:
            tool_def = getattr(tool, "tool_def", None)
            metadata = tool_def.metadata if isinstance(tool_def, ToolDefinition) else None
            return options_from_metadata(base, metadata, tool_name)

        self._backend = TetherOperationBackend(
            config=_OperationConfig(
                model=self._model_checkpoint, tool=self._tool_checkpoint, resolve_tool=resolve_tool
            ),
            order=self._order,
        )
        super()._bind_to_agent(agent)

    def get_durable_operation_backend(self) -> TetherOperationBackend:
        if self._backend is None:
            raise tether.UsageError(
                "TetherDurability is not bound to an agent: pass it to Agent(capabilities=[...]) "
                "or use tether.ai.durable(agent)"
            )
        return self._backend

    # --- the durable container is a flow ----------------------------------------------

    @property
    def in_durable_context(self) -> bool:
        return in_flow()

    def get_default_run_id(self) -> str | None:
        if not in_flow():
            return None
        recorded = _agent_run()
        run_id = recorded["run_id"]
        # Pydantic AI makes tasks of its own for a run (capabilities, lifecycle hooks,
        # streams, tool runs), as many as its version and timing have it; the run's recorded
        # calls are put in order here instead (tool calls reserved in the model's order), so
        # those tasks share the caller's branch rather than number one each. Called in the
        # caller's task, before any of them exists; released when the run ends.
        self._pins[run_id] = pin()
        self._run_starts[run_id] = datetime.fromisoformat(recorded["started_at"])
        return run_id

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if in_flow() else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        return self._run_starts.get(run_id) if in_flow() else None

    async def wrap_run(
        self, ctx: RunContext[AgentDepsT], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        if not in_flow():
            return await handler()
        try:
            return await super().wrap_run(ctx, handler=handler)
        finally:
            pinned = self._pins.pop(ctx.run_id, None) if ctx.run_id is not None else None
            if pinned is not None:
                pinned.release()
            self._order.release(_scope(ctx))
            if self._backend is not None:
                self._backend.forget(_scope(ctx))
            if ctx.run_id is not None:
                self._run_starts.pop(ctx.run_id, None)

    async def durable_sleep(self, seconds: float) -> None:
        """Wait between polls of a model's background job (Pydantic AI calls this in flow code
        from 2.78 on; older releases wait in the process, unrecorded). See `inline_poll_wait`."""
        if not in_flow():  # not flow code: nothing to record the wait in
            await asyncio.sleep(max(seconds, 0))
            return
        if seconds <= 0:
            return
        if seconds > self._inline_poll_wait:
            tether.sleep(seconds)  # suspends until due; a resumed flow passes it at once
            return
        wake_at = _poll_wake_at(seconds)
        clock = settings().clock
        left = wake_at - clock()
        while left > 0:
            await asyncio.sleep(min(left, _POLL_STEP))
            left = wake_at - clock()

    # --- positions of concurrent tool calls -------------------------------------------

    async def before_node_run(
        self, ctx: RunContext[AgentDepsT], *, node: AgentNode[AgentDepsT]
    ) -> AgentNode[AgentDepsT]:
        if not in_flow():
            return node
        scope = _scope(ctx)
        self._order.release(scope)  # what the previous node reserved and did not use
        if not isinstance(node, CallToolsNode):
            return node
        # The turn's tool calls run as concurrent tasks, which reach their checkpoints in
        # whatever order they are scheduled. Their positions are taken here instead, before
        # any of them starts (also under `run_stream`, which runs the node while streaming
        # it), in the order of the model's response.
        calls = node.model_response.tool_calls
        results = node.tool_call_results
        tool_manager = ctx.tool_manager
        if tool_manager is not None and tool_manager.tools is None:
            # A run that starts from deferred tool results (the continuation pattern: a second
            # `run(message_history=..., deferred_tool_results=...)`) comes straight to this
            # node; its tools are prepared only when the node runs. The turn's positions are
            # taken when its first call arrives, before that call's own (`DispatchOrder`).
            self._order.defer(
                scope,
                lambda call_ctx: self._reserve_turn(
                    scope, calls, results, getattr(call_ctx, "tool_manager", None)
                ),
            )
            return node
        self._reserve_turn(scope, calls, results, tool_manager)
        return node

    def _reserve_turn(
        self,
        scope: str,
        calls: list[ToolCallPart],
        results: Mapping[str, object] | None,
        tool_manager: ToolManager[Any] | None,
    ) -> None:
        if tool_manager is None or tool_manager.tools is None:
            return  # no tools to look up: the calls take positions as they reach the backend
        for call in calls:
            if results is not None and not isinstance(results.get(call.tool_call_id), ToolApproved):
                continue  # resuming deferred calls: only the approved ones run
            tool_def = tool_manager.get_tool_def(call.tool_name)
            if tool_def is None or (results is None and tool_def.kind != "function"):
                continue  # output, external or unapproved tools are not called now
            self._reserve(scope, call.tool_call_id, call.tool_name, tool_def)

    def _reserve(
        self, scope: str, tool_call_id: str, tool_name: str, tool_def: ToolDefinition
    ) -> None:
        options = options_from_metadata(self._tool_checkpoint, tool_def.metadata, tool_name)
        if options is not False:
            self._order.reserve(scope, tool_call_id, f"tool:{tool_name}", options)

    # --- deferred tool calls: tether waits --------------------------------------------

    async def handle_deferred_tool_calls(
        self, ctx: RunContext[AgentDepsT], *, requests: DeferredToolRequests
    ) -> DeferredToolResults | None:
        if not self._wait_for_deferred or not in_flow():
            return None
        results, approved = wait_for_deferred(requests, timeout=self._deferred_timeout)
        scope = _scope(ctx)
        for call in approved:
            tool_def = ctx.tool_manager.get_tool_def(call.tool_name) if ctx.tool_manager else None
            if tool_def is not None:
                self._reserve(scope, call.tool_call_id, call.tool_name, tool_def)
        return results
