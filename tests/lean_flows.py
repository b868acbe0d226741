"""Flows whose live executions and checkpoint calls tests/test_lean.py counts objects of: agent
shapes (gathered branches that really await, a wait inside a checkpoint) and a sync flow."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import tether
from helpers import allocations_kept

# Parked executions wait here; `arrived` counts those that reached the gate.
_gate: dict[str, Any] = {"event": None, "arrived": 0, "thread_gate": threading.Event()}
# Per measured flow run: allocations kept over its measured calls (see `allocations_kept`).
kept: list[int] = []


def reset() -> None:
    _gate.update(event=None, arrived=0, free=False)
    _gate["thread_gate"] = threading.Event()


def arrived() -> int:
    return int(_gate["arrived"])


def open_gate(loop: asyncio.AbstractEventLoop | None) -> None:
    if loop is not None and _gate["event"] is not None:
        loop.call_soon_threadsafe(_gate["event"].set)
    _gate["thread_gate"].set()


def next_step(loop: asyncio.AbstractEventLoop) -> None:
    """Let the executions parked at the gate go on, to park at a new gate (`stepping`)."""
    event = _gate["event"]
    _gate.update(event=None, arrived=0)
    loop.call_soon_threadsafe(event.set)


def free_all(loop: asyncio.AbstractEventLoop) -> None:
    """Let every execution through the gate, now and at every step to come."""
    _gate["free"] = True
    open_gate(loop)


async def _wait_at_gate() -> None:
    if _gate.get("free"):
        return
    # Made on the loop that awaits it, by the first execution to arrive.
    if _gate["event"] is None:
        _gate["event"] = asyncio.Event()
    _gate["arrived"] += 1
    await _gate["event"].wait()


@tether.checkpoint
async def think(i: int) -> int:
    await asyncio.sleep(0)  # really awaits: the branches interleave
    return i


@tether.checkpoint
async def held_in_call(i: int) -> int:
    await _wait_at_gate()
    return i


@tether.checkpoint
def work(i: int) -> int:
    return i


async def _branch(i: int) -> int:
    await think(i)
    return await think(i + 1)


@tether.flow
async def between_calls(i: int) -> int:
    """Parks in flow code, after a call and two gathered branches."""
    await think(i)
    await asyncio.gather(_branch(1), _branch(2))
    await _wait_at_gate()
    return i


@tether.flow
async def inside_call(i: int) -> int:
    """Parks inside a checkpoint call, after the same calls as `between_calls`."""
    await think(i)
    await asyncio.gather(_branch(1), _branch(2))
    return await held_in_call(i)


@tether.flow
async def stepping(i: int) -> int:
    """Three calls one after another, each parked at the gate inside its body (where a model
    call would await), until `next_step`."""
    for step in range(3):
        await held_in_call(step)
    return i


@tether.flow
def sync_between_calls(i: int) -> int:
    work(i)
    with _lock:
        _gate["arrived"] += 1
    _gate["thread_gate"].wait(120)
    return i


_lock = threading.Lock()


@tether.flow
async def many_calls(n: int, branches: int) -> int:
    """`n` calls in each of `branches` gathered branches; the allocations they kept (the
    collector is off while a test counts) go to `kept`."""

    async def branch(b: int) -> None:
        for i in range(n):
            await think(i)

    await think(-1)  # the first call of an execution sets things up once
    before = allocations_kept()
    await asyncio.gather(*(branch(b) for b in range(branches)))
    kept.append(allocations_kept() - before)
    return n


@tether.flow
def sync_many_calls(n: int) -> int:
    work(-1)
    before = allocations_kept()
    for i in range(n):
        work(i)
    kept.append(allocations_kept() - before)
    return n


@tether.flow
def collector_settings() -> list[int]:
    """The thresholds of the process that runs it, and whether its startup was frozen."""
    import gc

    return [*gc.get_threshold(), gc.get_freeze_count()]


@tether.checkpoint(retries=1, backoff=3600)
def fails_then_pauses_an_hour() -> None:
    raise ValueError("not yet")


@tether.flow
def pausing_between_attempts() -> None:
    fails_then_pauses_an_hour()
