"""The names tether records for an agent's durable operations, pinned.

Recorded names are compatibility data: a flow resumed by code that calls another name at a
recorded position diverges. An upgrade of tether or of Pydantic AI must not re-key executions
in flight, so every name is written out here; a change to one is a migration, decided on
purpose, never a side effect of a rename.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import durable_exec

import ai_flows
import tether
from tether.ai import TetherOperationNamer
from tether.ai._deferred import approval_wait_name, result_wait_name

# (operation id class, its fields, the checkpoint name recorded, with a tool label: the name)
OPERATIONS: list[tuple[str, dict[str, Any], str, str]] = [
    ("ModelRequestId", {"model_name": "gpt-x"}, "model_request", "model_request"),
    (
        "ModelRequestId",
        {"model_name": "gpt-x", "streaming": True},
        "model_request_stream",
        "model_request_stream",
    ),
    ("ModelCompactMessagesId", {"model_name": "gpt-x"}, "compact_messages", "compact_messages"),
    (
        "ModelCancelSuspendedResponseId",
        {"model_name": "gpt-x"},
        "cancel_suspended_response",
        "cancel_suspended_response",
    ),
    ("ModelCountTokensId", {"model_name": "gpt-x"}, "count_tokens", "count_tokens"),
    ("EventStreamHandlerId", {}, "event_stream_handler", "event_stream_handler"),
    (
        "CapabilityOperationId",
        {"capability_id": "memo", "operation": "load"},
        "capability:memo.load",
        "capability:memo.load",
    ),
    (
        "ToolsetGetToolsId",
        {"toolset_kind": "mcp", "toolset_id": "files"},
        "get_tools:files",
        "get_tools:files",
    ),
    (
        "ToolsetGetInstructionsId",
        {"toolset_id": "files"},
        "get_instructions:files",
        "get_instructions:files",
    ),
    (
        "ToolsetValidateToolArgumentsId",
        {"toolset_kind": "function", "toolset_id": "tools"},
        "validate",
        "validate:search",
    ),
    (
        "ToolsetCallToolId",
        {"toolset_kind": "function", "toolset_id": "tools"},
        "tool",
        "tool:search",
    ),
]


@pytest.mark.parametrize(
    ("kind", "fields", "name", "labelled"),
    OPERATIONS,
    ids=[f"{kind}-{name}" for kind, _, name, _ in OPERATIONS],
)
def test_each_operation_has_its_pinned_name(
    kind: str, fields: dict[str, Any], name: str, labelled: str
) -> None:
    cls = getattr(durable_exec, kind, None)
    if cls is None:
        pytest.skip(f"this Pydantic AI has no {kind}")
    operation_id = cls(**fields)
    namer = TetherOperationNamer()
    assert namer.operation_name(operation_id) == name
    # The invocation's operation name is what the checkpoint call is recorded as.
    assert namer.invocation_name(operation_id, label="search").operation_name == labelled
    assert namer.invocation_name(operation_id, label=None).operation_name == name


def test_every_operation_pydantic_ai_has_is_pinned() -> None:
    # A release that adds an operation fails here until its name is chosen and pinned above
    # (unlisted, it would be recorded under its class name).
    known = {name for name in durable_exec.__all__ if name.endswith("Id")}
    assert known - {"DurableOperationId"} <= {kind for kind, _, _, _ in OPERATIONS}


def test_wait_names_of_deferred_tool_calls_are_pinned() -> None:
    assert approval_wait_name("call_1") == "approve:call_1"
    assert result_wait_name("call_1", "external") == "result:call_1"
    assert result_wait_name("call_1", "question") == "answer:call_1"


def test_an_agent_run_records_the_pinned_names(db_url: str) -> None:
    handle = ai_flows.research.run("names")
    handle.result(timeout=60)
    names = {call.name for call in tether.Client().get(handle.id).checkpoints}
    assert names == {"agent_run", "model_request", "tool:search", "tool:fetch", "tool:summarize"}
