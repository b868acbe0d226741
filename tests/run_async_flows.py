"""Flows for the run_async tests, in this process and in child processes.

`step` appends `<position> step-<i>` to the file named by $SIDE_EFFECTS (see helpers) and,
with $GATE_FILE set, holds until that file exists, so a test can kill a process while a
started execution is in flight. `started` runs children with `run_async` from flow code.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import tether
from helpers import record_side_effect


@tether.checkpoint
async def step(i: int) -> int:
    record_side_effect(f"step-{i}")
    if os.environ.get("GATE_FILE"):
        await asyncio.to_thread(_hold)
    await asyncio.sleep(0.001)
    return i * 10


def _hold() -> None:
    gate = Path(os.environ["GATE_FILE"])
    while not gate.exists():
        time.sleep(0.01)


@tether.flow
async def agent(i: int) -> int:
    return sum([await step(i), await step(i + 1)])


@tether.checkpoint
def sync_step(i: int) -> int:
    time.sleep(0.001)
    return i + 100


@tether.flow
def sync_agent(i: int) -> int:
    return sync_step(i)


@tether.flow
async def keyed(i: int) -> int:
    return i


@tether.flow
async def started(i: int) -> list[int]:
    """A parent starting two children with run_async (gathered) and awaiting each."""
    first, second = await asyncio.gather(agent.run_async(i), agent.run_async(i + 2))
    return [await first, await second]


@tether.flow
async def failing(i: int) -> int:
    await step(i)
    raise ValueError(f"failing {i}")
