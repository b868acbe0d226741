"""Flows with deadlines and delayed starts, for tests across processes and workers.

Every live checkpoint run appends a line to $SIDE_EFFECTS (when set), so tests count how
often each step really ran, whichever process ran it.
"""

from __future__ import annotations

import asyncio

import tether
from helpers import record_side_effect


@tether.checkpoint
def step(label: str) -> str:
    record_side_effect(f"step-{label}")
    return label


@tether.checkpoint
async def step_async(label: str) -> str:
    record_side_effect(f"step-{label}")
    await asyncio.sleep(0)
    return label


@tether.flow
def waits_for_input(label: str) -> str:
    step(label)
    return str(tether.wait("answer", schema=str))


@tether.flow
async def waits_for_input_async(label: str) -> str:
    await step_async(label)
    return str(tether.wait("answer", schema=str))


@tether.flow(deadline=1.5)
def approval(topic: str) -> str:
    """Starts a child that waits too (never awaited), then waits for approval."""
    waits_for_input.run(f"{topic}-child")
    step(topic)
    if not tether.wait("approve", schema=bool):
        return "rejected"
    return step(f"{topic}-published")


@tether.flow(deadline=1.5)
async def gathered(topic: str) -> list[str]:
    """Two child flows at once, really awaited together; each waits for input."""
    return list(
        await asyncio.gather(
            waits_for_input_async(f"{topic}-a"), waits_for_input_async(f"{topic}-b")
        )
    )


@tether.flow
def delayed(label: str) -> str:
    return step(label)
