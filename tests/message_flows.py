"""Flows that wait for a message which may arrive early, for tests across processes.

Each slow step holds until the file named by $GATE_FILE exists (so a test sends while the
flow is busy before its wait), and every live checkpoint run appends a line to
$SIDE_EFFECTS, so tests count how often each step really ran, across processes and crashes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import tether
from helpers import record_side_effect

GATE_SECONDS = 60.0


def _gate_open() -> bool:
    gate = os.environ.get("GATE_FILE")
    return gate is None or Path(gate).exists()


@tether.checkpoint
def slow(label: str) -> str:
    record_side_effect(f"slow-{label}", pid=True)
    deadline = time.monotonic() + GATE_SECONDS
    while not _gate_open() and time.monotonic() < deadline:
        time.sleep(0.01)
    return label


@tether.checkpoint
async def slow_async(label: str) -> str:
    record_side_effect(f"slow-{label}", pid=True)
    deadline = time.monotonic() + GATE_SECONDS
    # Polls a file that the test (another process) creates: no event to await across processes.
    while not _gate_open() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return label


@tether.checkpoint
def finish(label: str, amount: int) -> str:
    record_side_effect(f"finish-{label}", pid=True)
    return f"{label} paid {amount}"


@tether.flow
def pay_flow(order: str) -> str:
    slow(order)
    amount = tether.wait("paid", schema=int)
    return finish(order, amount)


@tether.flow
async def gathered_pay_flow(orders: list[str]) -> list[str]:
    async def one(order: str) -> str:
        await slow_async(order)
        amount = tether.wait(f"paid-{order}", schema=int)
        return finish(order, amount)

    return list(await asyncio.gather(*(one(order) for order in orders)))


@tether.flow
def progress_flow(steps: int) -> str:
    tether.publish("plan", [f"step-{i}" for i in range(steps)])
    for i in range(steps):
        slow(f"step-{i}")
        tether.publish("progress", i + 1)
    return "done"
