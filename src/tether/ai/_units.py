"""Durable units as tether checkpoint calls: names, options, and the call itself.

Each Pydantic AI durable operation (a model request, a tool call, ...) runs as one call of a
tether checkpoint named after the operation. One `Checkpoint` object is kept per name and
options; its function runs whatever body it is handed, so the same checkpoint serves every
call of that name. A call can also be *reserved*: the checkpoint is called (which takes its
position, in program order) before the body is known, and the body is supplied when the
operation actually runs, possibly in another asyncio task. That is how parallel tool calls get
positions in the order the model made them, whatever order their tasks reach the tool.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Literal, TypeAlias, TypedDict, TypeVar

from pydantic_ai.durable_exec import (
    CapabilityOperationId,
    DurableOperationId,
    DurableOperationNamer,
    EventStreamHandlerId,
    ModelCancelSuspendedResponseId,
    ModelCompactMessagesId,
    ModelRequestId,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.durable_exec._operation_names import DurableInvocationName
from pydantic_ai.messages import ModelMessagesTypeAdapter

import tether
from tether._core.context import current_frame, current_run

Body: TypeAlias = Callable[[], Awaitable[object]]
K = TypeVar("K")
V = TypeVar("V")


class CheckpointOptions(TypedDict, total=False):
    """Options of the checkpoints an agent's model requests or tool calls run as.

    The same options as `@tether.checkpoint(...)`: `retries` extra attempts after a failure
    whose type matches `retry_on`, `backoff` seconds before the second attempt (doubling), and
    `timeout` seconds per attempt.
    """

    retries: int
    backoff: float
    timeout: float | None
    retry_on: type[BaseException] | tuple[type[BaseException], ...]


OPTION_KEYS = frozenset(CheckpointOptions.__annotations__)


def in_flow() -> bool:
    """True in flow code: inside a running flow and not inside one of its checkpoints.

    Inside a checkpoint (a tool that runs another agent, say) everything runs inline as part
    of that checkpoint, exactly as a nested `@tether.checkpoint` call does.
    """
    # Called by Pydantic AI on every node and operation: two lookups, no Current built.
    return current_run.get() is not None and current_frame.get() is None


# Names of operations that Pydantic AI releases after tether's floor added.
_LATER_OPERATIONS = {
    "ModelCountTokensId": "count_tokens",  # Pydantic AI 2.78
}


class TetherOperationNamer(DurableOperationNamer):
    """Checkpoint names of Pydantic AI's durable operations.

    Recorded names are compatibility data: an execution recorded under one name diverges when
    resumed by code that calls another name at the same position. They are short and readable
    (`model_request`, `tool:search`) and do not include the agent's name.
    """

    def operation_name(self, operation_id: DurableOperationId) -> str:
        match operation_id:
            case ModelRequestId(streaming=True):
                return "model_request_stream"
            case ModelRequestId():
                return "model_request"
            case ModelCompactMessagesId():
                return "compact_messages"
            case ModelCancelSuspendedResponseId():
                return "cancel_suspended_response"
            case EventStreamHandlerId():
                return "event_stream_handler"
            case CapabilityOperationId(capability_id=capability_id, operation=operation):
                return f"capability:{capability_id}.{operation}"
            case ToolsetGetToolsId(toolset_id=toolset_id):
                return f"get_tools:{toolset_id}"
            case ToolsetGetInstructionsId(toolset_id=toolset_id):
                return f"get_instructions:{toolset_id}"
            case ToolsetValidateToolArgumentsId():
                return "validate"
            case ToolsetCallToolId():
                return "tool"
            case _:
                # The union grows in minor releases of Pydantic AI. Operations newer than the
                # floor release are named by their class's name here (the floor cannot import
                # them); one not listed keeps that name. tests/test_ai_names.py pins them all.
                kind = type(operation_id).__name__
                return _LATER_OPERATIONS.get(kind, kind)

    def invocation_name(
        self, operation_id: DurableOperationId, *, label: str | None
    ) -> DurableInvocationName:
        name = self.operation_name(operation_id)
        if label is not None and isinstance(
            operation_id, ToolsetCallToolId | ToolsetValidateToolArgumentsId
        ):
            name = f"{name}:{label}"
        return DurableInvocationName(name)


# --- the checkpoint every unit runs as ---------------------------------------------------


class Slot:
    """Carries a unit's body into its checkpoint call. Its default repr keeps the call's
    argument fingerprint stable across processes (tether fingerprints it by type name)."""

    __slots__ = ("body", "tool_args")

    def __init__(self, body: Body | None = None, tool_args: object = None) -> None:
        self.body = body
        # A tool call's arguments as the model gave them: how a replay test (tether.testing)
        # matches the call with a recorded one. Not part of the fingerprint (the default repr).
        self.tool_args = tool_args


async def _run_unit(key: object, slot: Slot) -> object:
    # `key` only feeds the argument fingerprint (tether warns when a resumed call's differs).
    body = slot.body
    assert body is not None, "a reserved unit ran before its body was supplied"
    return await body()


class CheckpointCache(Generic[K, V]):
    """Checkpoints made once per key, the first time one is asked for (from any thread)."""

    def __init__(self) -> None:
        self._found: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        found = self._found.get(key)
        if found is None:
            with self._lock:
                found = self._found.get(key)
                if found is None:
                    found = self._found[key] = make()
        return found


UnitCheckpoint: TypeAlias = tether.Checkpoint[[object, Slot], Coroutine[Any, Any, object]]
_checkpoints: CheckpointCache[tuple[Any, ...], UnitCheckpoint] = CheckpointCache()


def unit_checkpoint(name: str, options: CheckpointOptions) -> UnitCheckpoint:
    """The checkpoint that runs units called `name` with these options (one per pair)."""
    cache_key = (
        name,
        options.get("retries", 0),
        options.get("backoff", 1.0),
        options.get("timeout"),
        options.get("retry_on", Exception),
    )
    return _checkpoints.get(
        cache_key,
        lambda: tether.checkpoint(
            name=name,
            retries=cache_key[1],
            backoff=cache_key[2],
            timeout=cache_key[3],
            retry_on=cache_key[4],
        )(_run_unit),
    )


def request_key(messages: object) -> str | None:
    """A stable digest of what a model request adds to the conversation: its last message,
    without timestamps and run ids (which differ on every run). Only this turn's message is
    hashed, so a long conversation costs the same per request as a short one."""
    if not isinstance(messages, list) or not messages:
        return None
    try:
        dumped = ModelMessagesTypeAdapter.dump_python([messages[-1]], mode="json")
        text = json.dumps(_stable(dumped), sort_keys=True, default=str)
    except Exception:  # a value Pydantic cannot dump: no argument check for this request
        return None
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return f"{len(messages)}:{digest}"


_VOLATILE = frozenset({"timestamp", "run_id", "conversation_id"})


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


# --- reservations: positions in the model's order for calls that run concurrently ------


class Reserved:
    """A checkpoint call whose position is taken and whose body comes later."""

    __slots__ = ("call", "slot")

    def __init__(self, slot: Slot, call: Coroutine[Any, Any, object]) -> None:
        self.slot = slot
        self.call = call

    async def run(self, body: Body, tool_args: object = None) -> object:
        self.slot.body = body
        self.slot.tool_args = tool_args
        return await self.call

    def close(self) -> None:
        self.call.close()  # never started: nothing was recorded at its position


class DispatchOrder:
    """Reserved tool-call checkpoints, by (scope, tool call id), consumed first in first out.

    A scope is one agent run of one execution. Reservations are made in program order (when a
    turn's tool calls are about to run, and when approvals arrive); each tool call that reaches
    the backend takes its own. Whatever is left when the turn ends is closed.

    A turn whose tools are not known yet (a run that starts from deferred tool results: the
    graph prepares its tools only once the turn runs) leaves a *deferred* reservation instead:
    the first of its calls to reach the backend makes the turn's reservations, all at once and
    in the model's order, before it takes its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], deque[Reserved]] = {}
        self._deferred: dict[str, Callable[[Any], None]] = {}
        self._deferring = threading.Lock()  # one deferred turn reserved at a time

    def defer(self, scope: str, reserve: Callable[[Any], None]) -> None:
        """Reserve with `reserve(run_context)` when the scope's first tool call arrives (its
        run context then has the prepared tool manager)."""
        with self._lock:
            self._deferred[scope] = reserve

    def reserve(self, scope: str, tool_call_id: str, name: str, options: CheckpointOptions) -> None:
        slot = Slot()
        call = unit_checkpoint(name, options)(tool_call_id, slot)  # the position is taken here
        with self._lock:
            self._pending.setdefault((scope, tool_call_id), deque()).append(Reserved(slot, call))

    def take(self, scope: str, tool_call_id: str, run_context: object = None) -> Reserved | None:
        if self._deferred:
            with self._deferring:
                with self._lock:
                    reserve = self._deferred.pop(scope, None)
                if reserve is not None:
                    reserve(run_context)
        with self._lock:
            queue = self._pending.get((scope, tool_call_id))
            if not queue:
                return None
            reserved = queue.popleft()
            if not queue:
                del self._pending[(scope, tool_call_id)]
        return reserved

    def release(self, scope: str) -> None:
        with self._lock:
            keys = [key for key in self._pending if key[0] == scope]
            dropped = [self._pending.pop(key) for key in keys]
            self._deferred.pop(scope, None)
        for queue in dropped:
            for reserved in queue:
                reserved.close()


def checked_options(options: CheckpointOptions | None, what: str) -> CheckpointOptions:
    """A copy of `options`, refusing keys that are not checkpoint options."""
    unknown = set(options or {}) - OPTION_KEYS
    if unknown:
        raise tether.UsageError(
            f"{what} has unknown checkpoint options {sorted(unknown)}; "
            f"use {', '.join(sorted(OPTION_KEYS))}"
        )
    return CheckpointOptions(**(options or {}))


def options_from_metadata(
    base: CheckpointOptions, metadata: dict[str, Any] | None, tool_name: str
) -> CheckpointOptions | Literal[False]:
    """A tool's checkpoint options: `base`, updated by its `{'tether': {...}}` metadata, or
    False when the metadata is `{'tether': False}` (the tool then runs inline, unrecorded)."""
    from pydantic_ai.exceptions import UserError

    value = (metadata or {}).get("tether")
    if value is None:
        return base
    if value is False:
        return False
    if not isinstance(value, dict) or not set(value) <= OPTION_KEYS:
        raise UserError(
            f"tool {tool_name!r} has invalid 'tether' metadata {value!r}: use False (run inline, "
            f"not recorded) or a dict of checkpoint options ({', '.join(sorted(OPTION_KEYS))})"
        )
    merged: CheckpointOptions = {**base, **value}
    return merged
