"""The agent of tests/test_hops.py: an async flow making `STEPS` checkpoint calls in sequence,
each awaiting a timer (a model round trip), as benchmarks/concurrent_agents.py's agent does."""

from __future__ import annotations

import asyncio
from typing import Any

import tether

STEPS = 4


@tether.checkpoint
async def model_call(agent_id: int, step: int) -> int:
    await asyncio.sleep(0.001)
    return agent_id * STEPS + step


@tether.flow
async def agent(agent_id: int) -> int:
    total = 0
    for step in range(STEPS):
        total += await model_call(agent_id, step)
    return total


@tether.flow
async def fan_out(agent_id: int) -> int:
    """The same calls made at once, gathered (parallel tool calls): each a task of its own."""
    values = await asyncio.gather(*(model_call(agent_id, step) for step in range(STEPS)))
    return sum(values)


# Calls of `fan_out_parked` wait here (on the shared loop) until `release`.
_gate: dict[str, Any] = {"event": None, "arrived": 0}


def arrived() -> int:
    return int(_gate["arrived"])


def release(loop: asyncio.AbstractEventLoop) -> None:
    loop.call_soon_threadsafe(_gate["event"].set)


def reset() -> None:
    _gate.update(event=None, arrived=0)


@tether.checkpoint
async def parked_call(agent_id: int, step: int) -> int:
    if _gate["event"] is None:
        _gate["event"] = asyncio.Event()
    _gate["arrived"] += 1
    await _gate["event"].wait()
    return agent_id * STEPS + step


@tether.flow
async def fan_out_parked(agent_id: int) -> int:
    """`fan_out` whose calls wait at a gate, where a model call would await."""
    values = await asyncio.gather(*(parked_call(agent_id, step) for step in range(STEPS)))
    return sum(values)
