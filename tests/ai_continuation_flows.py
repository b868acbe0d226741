"""Agents run in segments inside one flow, for tests that run them in child processes.

The continuation pattern: a run that ends with `DeferredToolRequests` (the capability built
with `wait_for_deferred=False`), then a second run on its messages with the
`DeferredToolResults`. And a provider-paused turn (Anthropic `pause_turn`): one response
that takes two model requests. Logging and crashing work as in ai_flows.py ($AI_CALLS,
$AI_CRASH).
"""

from __future__ import annotations

from pydantic_ai import Agent, CallDeferred, DeferredToolRequests, DeferredToolResults
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

import tether
import tether.ai
from ai_flows import Jitter, _log, _tool_returns, scripted

# --- the continuation pattern -----------------------------------------------------------


def gatekeeper_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    _log("model", str(turn))
    if turn == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("list_files", {"folder": "/data"}),
                ToolCallPart("delete_file", {"path": "/data/a.csv"}),
                ToolCallPart("ask_owner", {"question": "Keep b.csv?"}),
                ToolCallPart("delete_file", {"path": "/data/c.csv"}),
            ]
        )
    return ModelResponse(parts=[TextPart(" | ".join(sorted(_tool_returns(messages))))])


gatekeeper = Agent(
    scripted(gatekeeper_model),
    name="gatekeeper",
    output_type=[str, DeferredToolRequests],
    capabilities=[Jitter()],
)


@gatekeeper.tool_plain(requires_approval=True)
async def delete_file(path: str) -> str:
    """Delete a file (needs approval)."""
    _log("tool", f"delete_file:{path}")
    return f"deleted {path}"


@gatekeeper.tool_plain
def list_files(folder: str) -> list[str]:
    """List a folder."""
    _log("tool", f"list_files:{folder}")
    return [f"{folder}/a.csv", f"{folder}/b.csv", f"{folder}/c.csv"]


@gatekeeper.tool_plain
def ask_owner(question: str) -> str:
    """Answered outside the agent."""
    raise CallDeferred()


continuing = tether.ai.durable(gatekeeper, tether.ai.TetherDurability(wait_for_deferred=False))


def decide(requests: DeferredToolRequests) -> DeferredToolResults:
    """What a person would answer: approve every deletion, answer every question."""
    results = DeferredToolResults()
    for call in requests.approvals:
        results.approvals[call.tool_call_id] = True
    for call in requests.calls:
        results.calls[call.tool_call_id] = "keep it"
    return results


async def clean_up_in_two_runs(agent: Agent[None, str | DeferredToolRequests] | object) -> str:
    """The loop DBOS and Temporal users write: run, answer the deferred calls, run again."""
    assert isinstance(agent, tether.ai.DurableAgent | Agent)
    first = await agent.run("Clean up /data")
    assert isinstance(first.output, DeferredToolRequests), first.output
    second = await agent.run(
        message_history=first.all_messages(), deferred_tool_results=decide(first.output)
    )
    assert isinstance(second.output, str), second.output
    return second.output


@tether.flow
async def clean_up_continued(note: str) -> str:
    return await clean_up_in_two_runs(continuing)


# --- a provider-paused turn: one response, two model requests ----------------------------


def pausing_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Pauses its first turn (`pause_turn`): the graph continues it with a second request."""
    last = messages[-1]
    if isinstance(last, ModelResponse) and last.state == "suspended":
        _log("model", "continued")
        return ModelResponse(
            parts=[TextPart(" and done")], usage=RequestUsage(input_tokens=7, output_tokens=3)
        )
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    _log("model", str(turn))
    if turn == 1:
        return ModelResponse(
            parts=[TextPart("searched")],
            state="suspended",
            usage=RequestUsage(input_tokens=10, output_tokens=5),
        )
    return ModelResponse(
        parts=[TextPart("answer")], usage=RequestUsage(input_tokens=20, output_tokens=2)
    )


pauser = tether.ai.durable(Agent(FunctionModel(pausing_model), name="pauser"))


@tether.flow
async def paused_turn(note: str) -> dict[str, int | str]:
    result = await pauser.run(note)
    usage = result.usage
    return {
        "output": result.output,
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }
