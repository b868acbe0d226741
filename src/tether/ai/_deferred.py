"""Deferred tool calls answered by tether waits: human approval and external results.

Inside a flow, each call the agent defers becomes a `tether.wait`: the execution is
suspended (status `waiting`, nothing held) until input arrives from any process, then
the agent run continues where it was, as Pydantic AI's `handle_deferred_tool_calls`
hook intends. All the waits of one turn are created before the flow suspends, so every
pending call of the turn is visible at once in `Client().pending_waits()`.

```python
client = tether.Client()
for wait in client.pending_waits():  # wait.question: {"kind", "tool", "args", "tool_call_id"}
    client.input(wait.execution_id, wait.name, True)                 # approve:<id>
    client.input(wait.execution_id, wait.name, False)                # ...or deny
    client.input(wait.execution_id, wait.name,
                 {"approved": False, "message": "Use the archive instead"})
    client.input(wait.execution_id, wait.name,
                 {"approved": True, "override_args": {"query": "narrower"}})
```
A `result:<id>` wait (a `CallDeferred` tool, run elsewhere) takes the tool's result as input.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_ai import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
from pydantic_ai.exceptions import ToolFailed
from pydantic_ai.messages import ToolCallPart

import tether
from tether.errors import Suspended


class Approval(BaseModel):
    """Approve or deny a tool call; a denial can tell the model why, an approval can change
    the call's arguments. Plain `true`/`false` input works too."""

    approved: bool
    message: str | None = None
    """For a denial: what the model is told (default: 'The tool call was denied.')."""
    override_args: dict[str, Any] | None = None
    """For an approval: the arguments to call the tool with instead of the model's."""


# Waits store their schema as an import path: keep it the public one, whatever module
# the class lives in.
Approval.__module__ = "tether.ai"

APPROVAL_SCHEMA = bool | Approval


class _TimedOut:
    def __repr__(self) -> str:
        return "TIMED_OUT"


_TIMED_OUT = _TimedOut()


def approval_wait_name(tool_call_id: str) -> str:
    return f"approve:{tool_call_id}"


def result_wait_name(tool_call_id: str, kind: str) -> str:
    return f"{'answer' if kind == 'question' else 'result'}:{tool_call_id}"


def wait_for_deferred(
    requests: DeferredToolRequests, *, timeout: float | None
) -> tuple[DeferredToolResults, list[ToolCallPart]]:
    """Answer every deferred call with a tether wait; the results and the approved calls.

    Raises `Suspended` (after creating the waits of every call still unanswered) when some
    call has no input yet.
    """
    results = DeferredToolResults()
    approved: list[ToolCallPart] = []
    suspended: Suspended | None = None
    for call in requests.approvals:
        try:
            value = tether.wait(
                approval_wait_name(call.tool_call_id),
                schema=APPROVAL_SCHEMA,
                question=_question(call, "approval", requests),
                timeout=timeout,
                default=_TIMED_OUT,
            )
        except Suspended as signal:
            suspended = suspended or signal
            continue
        decision = _approval(value, timeout)
        results.approvals[call.tool_call_id] = decision
        if isinstance(decision, ToolApproved):
            approved.append(call)
    for call in requests.calls:
        kind = _kind(requests, call.tool_call_id)
        try:
            value = tether.wait(
                result_wait_name(call.tool_call_id, kind),
                question=_question(call, kind, requests),
                timeout=timeout,
                default=_TIMED_OUT,
            )
        except Suspended as signal:
            suspended = suspended or signal
            continue
        if value is _TIMED_OUT:
            value = ToolFailed(f"No result for this tool call arrived within {timeout:g}s.")
        results.calls[call.tool_call_id] = value
    if suspended is not None:
        raise suspended
    return results, approved


def _kind(requests: DeferredToolRequests, tool_call_id: str) -> str:
    # Pydantic AI before 2.78 has no questions (`CallDeferred(kind='question')`) and no
    # `DeferredToolRequests.kind`: every deferred call there waits for an external result.
    kind = getattr(requests, "kind", None)
    return "external" if kind is None else str(kind(tool_call_id))


def _question(call: ToolCallPart, kind: str, requests: DeferredToolRequests) -> dict[str, Any]:
    question: dict[str, Any] = {
        "kind": kind,
        "tool": call.tool_name,
        "args": call.args_as_dict(),
        "tool_call_id": call.tool_call_id,
    }
    metadata = requests.metadata.get(call.tool_call_id)
    if metadata:
        question["metadata"] = metadata
    return question


def _approval(value: Any, timeout: float | None) -> ToolApproved | ToolDenied:
    if value is _TIMED_OUT:
        return ToolDenied(f"The tool call was not approved within {timeout:g}s.")
    if isinstance(value, Approval):
        if value.approved:
            return ToolApproved(override_args=value.override_args)
        return ToolDenied(value.message) if value.message else ToolDenied()
    return ToolApproved() if value else ToolDenied()
