"""Flows for the replay-suite tests (tests/test_replay_suites.py): tools that count their
calls (a side effect the replay must not repeat), gathered branches, a child flow, a tool
that fails, and a durable Pydantic AI agent on a FunctionModel.

`VERSION` stands for the code changing between the recording and the replay: the flows read
it in flow code (ordinary Python between checkpoints).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import tether
import tether.ai

VERSION = int(os.environ.get("REPLAY_FLOWS_VERSION", "1"))  # the CLI tests set it
CALLS: Counter[str] = Counter()  # live calls of each tool in this process


@tether.checkpoint
async def fetch(url: str) -> str:
    CALLS["fetch"] += 1
    await asyncio.sleep(0)
    return f"page<{url}>"


@tether.checkpoint
def charge(order: str, cents: int) -> str:
    CALLS["charge"] += 1
    return f"receipt-{order}-{cents}"


@tether.checkpoint
def audit(note: str) -> str:
    CALLS["audit"] += 1
    return f"audited {note}"


@tether.checkpoint
def flaky(order: str) -> str:
    CALLS["flaky"] += 1
    raise ValueError(f"card declined for {order}")


@tether.flow
def billing(order: str) -> str:
    receipt = charge(order, 4200 if VERSION != 3 else 4300)
    if VERSION == 4:
        raise RuntimeError("the refactor broke billing")
    return receipt


@tether.flow
async def research(order: str) -> dict[str, object]:
    tether.log(customer=order.split("-")[0])
    pages = await asyncio.gather(fetch(f"a/{order}"), fetch(f"b/{order}"))
    receipt = billing(order)  # a child flow
    summary = " + ".join(pages)
    if VERSION == 2:
        summary = summary.upper()
        audit(summary)
    return {"summary": summary, "receipt": receipt}


@tether.flow
def declined(order: str) -> str:
    try:
        return flaky(order)
    except ValueError:
        if VERSION == 2:
            return "recovered"
        raise


@tether.flow
def nothing(order: str) -> None:
    charge(order, 1)


# --- a durable agent ------------------------------------------------------------------------


def lookup(city: str) -> str:
    """The weather in a city."""
    CALLS["lookup"] += 1
    return f"sunny in {city}"


def _weather_model(city: str, prefix: str) -> FunctionModel:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = [
            part
            for message in messages
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        ]
        if not returned:
            return ModelResponse(parts=[ToolCallPart("lookup", {"city": city})])
        return ModelResponse(parts=[TextPart(f"{prefix}: {returned[-1].content}")])

    return FunctionModel(respond)


agent = tether.ai.durable(Agent(_weather_model("Paris", "report"), tools=[lookup], name="weather"))

# Another model, for replays with `model=`: same tool call, other words.
OTHER_MODEL = _weather_model("Paris", "forecast")
# One that asks the tool about another city: a call the recording cannot answer.
NEW_ARGS_MODEL = _weather_model("Oslo", "report")


@tether.flow
async def weather(question: str) -> str:
    result = await agent.run(question)
    if VERSION == 7:
        return result.output.upper()  # the new code shouts the agent's answer
    return result.output


@tether.flow
def approved(order: str) -> str:
    name = "approve" if VERSION != 5 else "approve-twice"
    if not tether.wait(name, schema=bool):
        return "rejected"
    return charge(order, 100)


@tether.flow
def patient(order: str) -> str:
    if VERSION == 6:
        tether.sleep(3600)  # the new code waits an hour
    return charge(order, 7)


def _two_cities_model(prefix: str) -> FunctionModel:
    """Asks about two cities in one response: the agent runs both tool calls at once."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = sorted(
            str(part.content)
            for message in messages
            for part in message.parts
            if isinstance(part, ToolReturnPart)
        )
        if not returned:
            return ModelResponse(
                parts=[
                    ToolCallPart("lookup", {"city": "Paris"}),
                    ToolCallPart("lookup", {"city": "Rome"}),
                ]
            )
        return ModelResponse(parts=[TextPart(f"{prefix}: {'; '.join(returned)}")])

    return FunctionModel(respond)


pair_agent = tether.ai.durable(Agent(_two_cities_model("both"), tools=[lookup], name="pair"))
OTHER_PAIR_MODEL = _two_cities_model("together")


@tether.flow
async def two_cities(question: str) -> str:
    result = await pair_agent.run(question)
    return result.output


# An agent built with the durability capability itself (not through `durable(agent)`), and a
# flow that picks the model of each run: both ways a model reaches a durable agent's run.
built_agent = tether.ai.durable(
    Agent(
        _weather_model("Paris", "report"),
        tools=[lookup],
        name="built",
        capabilities=[tether.ai.TetherDurability()],
    )
)


@tether.flow
async def built_weather(question: str) -> str:
    result = await built_agent.run(question)
    return result.output


@tether.flow
async def weather_on(question: str, other: bool) -> str:
    result = await agent.run(question, model=OTHER_MODEL if other else None)
    return result.output
