"""The agent of tests/test_hops.py: an async flow making `STEPS` checkpoint calls in sequence,
each awaiting a timer (a model round trip), as benchmarks/concurrent_agents.py's agent does."""

from __future__ import annotations

import asyncio

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
