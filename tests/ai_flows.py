"""Durable Pydantic AI agents in flows, for tests that run them in child processes.

The model is a scripted `FunctionModel`: no provider, no network. Every model request and
every tool call that really runs appends `<position> <label>` to the file named by
$AI_CALLS (fsynced), so a test can count what ran across processes and crashes. $AI_CRASH
names one call, `model:<n>` or `tool:<n>` (the n-th of its kind to run in this process,
from 1), inside which the process kills itself with SIGKILL, after logging it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic_ai import Agent, ApprovalRequired, CallDeferred, FunctionToolset, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.tools import ToolDefinition

import tether
import tether.ai

_ran: dict[str, int] = {}
_ran_lock = threading.Lock()  # sync tools run in threads, several at once


def _log(kind: str, label: str) -> None:
    """Record one call that really runs (and crash in it when $AI_CRASH says so)."""
    with _ran_lock:
        _ran[kind] = count = _ran.get(kind, 0) + 1
    try:
        position = tether.current().position
    except tether.NotInFlowError:
        position = None
    path = os.environ.get("AI_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(f"{position} {kind}:{label}\n")
            f.flush()
            os.fsync(f.fileno())
    if os.environ.get("AI_CRASH") == f"{kind}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


# --- the research agent: three tools, one turn of parallel calls ------------------------


def _tool_returns(messages: list[ModelMessage]) -> list[str]:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return [str(p.content) for p in last.parts if isinstance(p, ToolReturnPart)]


def research_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Turn 1: search. Turn 2: fetch, fetch and search at once. Turn 3: summarize. Then the
    answer, built from everything the tools returned."""
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    _log("model", str(turn))
    if turn == 1:
        return ModelResponse(parts=[ToolCallPart("search", {"query": "durable execution"})])
    if turn == 2:
        return ModelResponse(
            parts=[
                ToolCallPart("fetch", {"url": "https://a.example/1"}),
                ToolCallPart("fetch", {"url": "https://b.example/2"}),
                ToolCallPart("search", {"query": "crash recovery"}),
            ]
        )
    if turn == 3:
        notes = " + ".join(_tool_returns(messages))
        return ModelResponse(parts=[ToolCallPart("summarize", {"notes": notes})])
    return ModelResponse(parts=[TextPart(f"REPORT: {_tool_returns(messages)[0]}")])


def scripted(script: Callable[[list[ModelMessage], AgentInfo], ModelResponse]) -> FunctionModel:
    """A FunctionModel playing `script`, also when a run streams (text in two chunks, tool
    calls as deltas)."""

    async def stream(
        messages: list[ModelMessage], info: AgentInfo
    ) -> AsyncIterator[str | DeltaToolCalls]:
        response = script(messages, info)
        for part in response.parts:
            if isinstance(part, TextPart):
                middle = len(part.content) // 2
                yield part.content[:middle]
                yield part.content[middle:]
        calls = response.tool_calls
        if calls:
            yield {
                i: DeltaToolCall(
                    call.tool_name, call.args_as_json_str(), tool_call_id=call.tool_call_id
                )
                for i, call in enumerate(calls)
            }

    return FunctionModel(script, stream_function=stream)


class Jitter(AbstractCapability[Any]):
    """Delays each tool call by a random few milliseconds before it runs, so concurrent tool
    calls reach their checkpoints in a different order on every run."""

    async def before_tool_execute(
        self, ctx: RunContext[Any], *, call: ToolCallPart, tool_def: ToolDefinition, args: Any
    ) -> Any:
        await asyncio.sleep(random.uniform(0, 0.02))
        return args


research_agent = Agent(
    scripted(research_model),
    name="researcher",
    capabilities=[Jitter()],
)


@research_agent.tool_plain
async def search(query: str) -> list[str]:
    """Search the web."""
    _log("tool", f"search:{query}")
    return [f"{query} result {i}" for i in range(2)]


@research_agent.tool_plain
def fetch(url: str) -> str:
    """Fetch a page (a sync tool: Pydantic AI runs it in a thread)."""
    _log("tool", f"fetch:{url}")
    return f"page {url.rsplit('/', 1)[-1]}"


@research_agent.tool_plain
async def summarize(notes: str) -> str:
    """Summarize notes."""
    _log("tool", "summarize")
    return f"summary of ({notes})"


durable_research = tether.ai.durable(research_agent)


@tether.flow
async def research(topic: str) -> str:
    result = await durable_research.run(f"Research {topic}")
    return result.output


@tether.flow
def research_sync(topic: str) -> str:
    return durable_research.run_sync(f"Research {topic}").output


@tether.flow
async def research_streamed(topic: str) -> str:
    async with durable_research.run_stream(f"Research {topic}") as stream:
        return await stream.get_output()


@tether.flow
async def research_iter(topic: str) -> str:
    async with durable_research.iter(f"Research {topic}") as run:
        async for _node in run:
            pass
    assert run.result is not None
    return run.result.output


@tether.checkpoint
def research_in_one_step(topic: str) -> str:
    """The durable agent run inside a checkpoint: it runs inline, as part of the step."""
    return durable_research.run_sync(f"Research {topic}").output


@tether.flow
def research_as_one_step(topic: str) -> str:
    return research_in_one_step(topic)


# --- the approval agent: one tool that needs a human's approval --------------------------


def approval_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    _log("model", str(turn))
    if turn == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("delete_file", {"path": "/data/old.csv"}),
                ToolCallPart("list_files", {"folder": "/data"}),
            ]
        )
    return ModelResponse(parts=[TextPart(" | ".join(_tool_returns(messages)))])


janitor = Agent(scripted(approval_model), name="janitor")


@janitor.tool_plain(requires_approval=True)
def delete_file(path: str) -> str:
    """Delete a file (needs a human's approval)."""
    _log("tool", f"delete_file:{path}")
    return f"deleted {path}"


@janitor.tool_plain
def list_files(folder: str) -> list[str]:
    """List a folder."""
    _log("tool", f"list_files:{folder}")
    return [f"{folder}/old.csv", f"{folder}/new.csv"]


approval_agent = tether.ai.durable(janitor)


@tether.flow
async def clean_up(folder: str) -> str:
    return (await approval_agent.run(f"Clean up {folder}")).output


impatient_agent = tether.ai.durable(janitor, tether.ai.TetherDurability(deferred_timeout=0))


@tether.flow
async def clean_up_now(folder: str) -> str:
    return (await impatient_agent.run(f"Clean up {folder}")).output


# --- a tool that asks for approval itself, only for some arguments -----------------------


def transfer_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    _log("model", str(turn))
    if turn == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("transfer", {"amount": 50}),
                ToolCallPart("transfer", {"amount": 5000}),
            ]
        )
    return ModelResponse(parts=[TextPart(" | ".join(_tool_returns(messages)))])


bank = Agent(scripted(transfer_model), name="bank")


@bank.tool
def transfer(ctx: RunContext[None], amount: int) -> str:
    """Move money; large amounts need approval."""
    if amount > 1000 and not ctx.tool_call_approved:
        raise ApprovalRequired(metadata={"reason": "large transfer"})
    _log("tool", f"transfer:{amount}")
    return f"sent {amount}"


transfer_agent = tether.ai.durable(bank)


@tether.flow
async def pay(note: str) -> str:
    return (await transfer_agent.run(note)).output


# --- a prefixed toolset: tools are named as the model calls them ---------------------------


def mirror_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if len(messages) == 1:
        names = sorted(tool.name for tool in info.function_tools)
        return ModelResponse(parts=[ToolCallPart(name, {"n": i}) for i, name in enumerate(names)])
    return ModelResponse(parts=[TextPart(" ".join(_tool_returns(messages)))])


web = FunctionToolset[None](id="web")


@web.tool_plain
def get(n: int) -> str:
    return f"got {n}"


@web.tool_plain
async def put(n: int) -> str:
    await asyncio.sleep(0.01)  # finishes after `get`, started before it: order is by position
    return f"put {n}"


mirror = tether.ai.durable(Agent(scripted(mirror_model), toolsets=[web.prefixed("web")]))


@tether.flow
async def mirror_calls(note: str) -> str:
    return (await mirror.run(note)).output


# --- an agent built with the capability itself -----------------------------------------


def oracle_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("42")])


oracle = Agent(scripted(oracle_model), capabilities=[tether.ai.TetherDurability()])


@tether.flow
async def ask_oracle(question: str) -> str:
    return (await oracle.run(question)).output


# --- a tool run elsewhere, and per-tool checkpoint options -----------------------------


def errand_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    _log("model", str(turn))
    if turn == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("flaky_lookup", {"key": "k"}),
                ToolCallPart("clock", {}),
                ToolCallPart("ask_accountant", {"question": "Can we afford it?"}),
            ]
        )
    return ModelResponse(parts=[TextPart(" | ".join(_tool_returns(messages)))])


errands = Agent(scripted(errand_model), name="errands")
_flaky_failures = {"left": 0}


@errands.tool_plain(metadata={"tether": {"retries": 2, "backoff": 0}})
def flaky_lookup(key: str) -> str:
    """Look a key up (fails twice, then succeeds, when $AI_FLAKY is set)."""
    _log("tool", "flaky_lookup")
    if _flaky_failures["left"] > 0:
        _flaky_failures["left"] -= 1
        raise ConnectionError("lookup service unavailable")
    return f"value of {key}"


@errands.tool_plain(metadata={"tether": False})
def clock() -> str:
    """Not recorded: runs again on every resume."""
    _log("tool", "clock")
    return "noon"


@errands.tool_plain
def ask_accountant(question: str) -> str:
    """Answered by someone outside the agent."""
    raise CallDeferred(metadata={"team": "finance"})


durable_errands = tether.ai.durable(
    errands, tether.ai.TetherDurability(model_checkpoint={"timeout": 60})
)


@tether.flow
async def run_errands(note: str) -> str:
    _flaky_failures["left"] = 2 if os.environ.get("AI_FLAKY") else 0
    return (await durable_errands.run(note)).output
