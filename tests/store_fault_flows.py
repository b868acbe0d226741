"""Flows for the store-fault tests (tests/test_store_faults.py, tests/test_pg_faults.py): each
step records that it ran, and a hook the test sets (`FAULT`) breaks the store at a chosen
point, once."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import tether

# Calls that really ran (not replayed), by label; and the fault to inject once, by where.
RAN: Counter[str] = Counter()
FAULT: dict[str, Callable[[], None]] = {}
# Async steps wait here (off the loop) once the test sets it up: executions started one by
# one then run their steps together, and commit in shared batches.
GATE: dict[str, threading.Event] = {}


def reset() -> None:
    RAN.clear()
    FAULT.clear()
    GATE.clear()


def _inject(where: str) -> None:
    hook = FAULT.pop(where, None)
    if hook is not None:
        hook()


@tether.checkpoint
def step(label: str) -> str:
    RAN[label] += 1
    _inject(f"in {label}")  # its commit is the first write after the fault
    return f"{label} done " + "x" * 2000


@tether.flow
def three_steps() -> list[str]:
    out = [step("a"), step("b"), step("c")]
    _inject("before the end")  # the execution's end is the next write
    return [s[:6] for s in out]


@tether.checkpoint
async def astep(label: str) -> str:
    RAN[label] += 1
    gate = GATE.get("open")
    if gate is not None:
        await asyncio.to_thread(gate.wait, 60)
    await asyncio.sleep(0)
    _inject(f"in {label}")
    return f"{label} done " + "x" * 2000


@tether.flow
async def gathered_steps() -> list[str]:
    # Branches that really await, each committing its own row (in shared batches).
    first = await asyncio.gather(astep("a1"), astep("a2"), astep("a3"))
    second = await astep("b")
    _inject("before the end")
    return [s[:7] for s in [*first, second]]


@tether.flow
async def async_one(i: int) -> str:
    return (await astep(f"n{i}"))[:6]


@tether.flow
async def async_end(i: int) -> str:
    # No checkpoint: once the gate opens, the executions' ends are their next writes, queued
    # together for the group commit.
    await asyncio.to_thread(GATE["open"].wait, 60)
    _inject(f"end {i}")
    return f"e{i} ended"


@tether.flow
def one_step(label: str) -> Any:
    return step(label)[:6]


@tether.flow
def waits_for_go() -> str:
    return step(str(tether.wait("go")))[:6]
