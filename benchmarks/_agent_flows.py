"""The tether agent of benchmarks/concurrent_agents.py.

An async flow making ``STEPS`` sequential checkpoint calls, each a simulated model round trip
(``await asyncio.sleep(MODEL_S)``) returning a small dict; the flow returns the sum of the
values, ``agent_id * STEPS * STEPS + sum(range(STEPS))``. It lives in an importable module (not
the script, which runs as ``__main__``) as _tether_flows does; the DBOS and LangGraph twins are
defined in the script's worker functions, so their processes never import tether.
"""

from __future__ import annotations

import asyncio

import tether

STEPS = 10
MODEL_S = 0.05


@tether.checkpoint
async def model_call(agent_id: int, step: int) -> dict[str, int]:
    await asyncio.sleep(MODEL_S)
    return {"agent": agent_id, "step": step, "value": agent_id * STEPS + step}


@tether.flow
async def agent(agent_id: int) -> int:
    total = 0
    for step in range(STEPS):
        total += (await model_call(agent_id, step))["value"]
    return total
