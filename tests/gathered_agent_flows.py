"""Durable Pydantic AI agents gathered in one flow, for tests that run them in child processes.

Two different agents, `scout` and `critic`, whose scripted models (async `FunctionModel`s)
answer from the messages they see: the user prompt and the tools' returns. A response or a
tool result that reached the wrong agent changes what it does next (a tool it does not
have, other arguments, another output). Model functions and tools make real awaits (random
sleeps), so the two runs interleave differently on every run and on every resume.

Every model request, tool call and plain checkpoint body that really runs appends
`<position> <kind>:<label>` to the file named by $AI_CALLS (fsynced). Kinds are `a.model`,
`a.tool` (the scout), `b.model`, `b.tool` (the critic) and `step` (plain checkpoints).
$AI_CRASH names one call, `<kind>:<n>` (the n-th of its kind to run in this process, from
1), inside which the process kills itself with SIGKILL, after logging it.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

import tether
import tether.ai

# Every call that really runs is logged (and crashed in) as in ai_flows.
from ai_flows import Jitter, _log


async def _pause() -> None:
    await asyncio.sleep(random.uniform(0.001, 0.02))


def _prompt(messages: list[ModelMessage]) -> str:
    for part in messages[0].parts:
        if isinstance(part, UserPromptPart) and isinstance(part.content, str):
            return part.content
    raise AssertionError(f"no user prompt in {messages[0]!r}")


def _tool_returns(messages: list[ModelMessage]) -> list[str]:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return [str(p.content) for p in last.parts if isinstance(p, ToolReturnPart)]


def _turn(messages: list[ModelMessage]) -> int:
    return sum(isinstance(m, ModelResponse) for m in messages) + 1


# --- the scout: survey, two probes at once, chart, report -------------------------------


async def scout_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = _turn(messages)
    prompt = _prompt(messages)
    _log("a.model", f"{prompt.removeprefix('Scout ')}:{turn}")
    await _pause()
    if turn == 1:
        area = prompt.removeprefix("Scout ")
        return ModelResponse(parts=[ToolCallPart("survey", {"area": area})])
    if turn == 2:
        (sites,) = _tool_returns(messages)
        first, second = sites.split(",")
        return ModelResponse(
            parts=[
                ToolCallPart("probe", {"site": first}),
                ToolCallPart("probe", {"site": second}),
            ]
        )
    if turn == 3:
        return ModelResponse(parts=[ToolCallPart("chart", {"notes": _tool_returns(messages)})])
    (chart,) = _tool_returns(messages)
    return ModelResponse(parts=[TextPart(f"SCOUT[{prompt}]: {chart}")])


scout_agent = Agent(FunctionModel(scout_model), name="scout", capabilities=[Jitter()])


@scout_agent.tool_plain
async def survey(area: str) -> str:
    """Survey an area: two sites worth probing."""
    _log("a.tool", f"survey:{area}")
    await _pause()
    return f"{area}-north,{area}-south"


@scout_agent.tool_plain
async def probe(site: str) -> str:
    """Probe one site."""
    _log("a.tool", f"probe:{site}")
    await _pause()
    return f"{site} depth {len(site)}"


@scout_agent.tool_plain
async def chart(notes: list[str]) -> str:
    """Chart the notes."""
    _log("a.tool", f"chart:{notes[0].split('-')[0]}")
    await _pause()
    return "chart(" + "; ".join(notes) + ")"


durable_scout = tether.ai.durable(scout_agent)


# --- the critic: two ratings at once, a citation (a sync tool), a verdict ---------------


async def critic_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = _turn(messages)
    prompt = _prompt(messages)
    _log("b.model", str(turn))
    await _pause()
    text = prompt.removeprefix("Critique ")
    if turn == 1:
        return ModelResponse(
            parts=[
                ToolCallPart("rate", {"aspect": "clarity", "text": text}),
                ToolCallPart("rate", {"aspect": "rigor", "text": text}),
            ]
        )
    if turn == 2:
        return ModelResponse(
            parts=[ToolCallPart("cite", {"claim": " & ".join(_tool_returns(messages))})]
        )
    (citation,) = _tool_returns(messages)
    return ModelResponse(parts=[TextPart(f"CRITIC[{prompt}]: {citation}")])


critic_agent = Agent(FunctionModel(critic_model), name="critic")


@critic_agent.tool_plain
async def rate(aspect: str, text: str) -> str:
    """Rate one aspect of a text."""
    _log("b.tool", f"rate:{aspect}")
    await _pause()
    return f"{aspect}={len(text) % 7 + len(aspect)}"


@critic_agent.tool_plain
def cite(claim: str) -> str:
    """Find a citation for a claim (a sync tool: Pydantic AI runs it in a thread)."""
    _log("b.tool", "cite")
    time.sleep(random.uniform(0.001, 0.02))
    return f"[{claim}] (Doe 2024)"


durable_critic = tether.ai.durable(critic_agent)


# --- flows -------------------------------------------------------------------------------


@tether.flow
async def pair(place: str, text: str) -> dict[str, str]:
    """The two agents gathered in the flow body."""
    scouted, critiqued = await asyncio.gather(
        durable_scout.run(f"Scout {place}"), durable_critic.run(f"Critique {text}")
    )
    return {"a": scouted.output, "b": critiqued.output}


@tether.flow
async def trio(place: str, text: str, other: str) -> dict[str, str]:
    """Three runs gathered: the same durable agent twice (one capability, two runs at once)
    and the critic between them."""
    first, critiqued, second = await asyncio.gather(
        durable_scout.run(f"Scout {place}"),
        durable_critic.run(f"Critique {text}"),
        durable_scout.run(f"Scout {other}"),
    )
    return {"a": first.output, "b": critiqued.output, "c": second.output}


@tether.checkpoint
async def note(label: str) -> str:
    """A plain async checkpoint call."""
    _log("step", label)
    await _pause()
    return f"noted({label})"


async def scout_between_notes(place: str) -> str:
    before = await note(f"before {place}")
    output = (await durable_scout.run(f"Scout {place}")).output
    after = await note(f"after {output}")
    return f"{before} | {output} | {after}"


@tether.flow
async def nested(place: str, text: str) -> dict[str, Any]:
    """An agent run inside a gathered helper that makes a checkpoint call before and after
    it; the critic gathered beside it; one more checkpoint call in the flow body after."""
    scouted, critiqued = await asyncio.gather(
        scout_between_notes(place), durable_critic.run(f"Critique {text}")
    )
    closing = await note("closing")
    return {"a": scouted, "b": critiqued.output, "closing": closing}
