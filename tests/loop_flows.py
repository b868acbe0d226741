"""Async flows for the shared event loop's tests (imported by the test process and by the
child processes those tests start)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import weakref
from typing import Any

import tether
from helpers import record_side_effect
from tether._core import checkpoint as _checkpoint

# --- many executions at once -----------------------------------------------------------

# Executions that entered `meet`, and the event set once `expected` of them have: an
# execution that never runs concurrently with the others would wait forever.
_met: dict[str, Any] = {"count": 0, "event": None, "expected": 0}


def expect_meeting(n: int) -> None:
    _met.update(count=0, event=None, expected=n)


@tether.checkpoint
async def meet(i: int) -> dict[str, Any]:
    if _met["event"] is None:
        _met["event"] = asyncio.Event()
    _met["count"] += 1
    if _met["count"] >= _met["expected"]:
        _met["event"].set()
    await asyncio.wait_for(_met["event"].wait(), timeout=120)
    return {"i": i, "thread": threading.get_ident(), "name": threading.current_thread().name}


@tether.checkpoint
async def double(x: int) -> dict[str, Any]:
    await asyncio.sleep(0.001)
    return {"value": x * 2, "thread": threading.get_ident()}


@tether.flow
async def meeting(i: int) -> dict[str, Any]:
    first = await meet(i)
    second = await double(i)
    return {"value": second["value"], "threads": [first["thread"], second["thread"]],
            "name": first["name"]}  # fmt: skip


@tether.flow
async def meet_and_end(i: int) -> int:
    """Ends as soon as all the expected executions are in it: they all end together."""
    if _met["event"] is None:
        _met["event"] = asyncio.Event()
    _met["count"] += 1
    if _met["count"] >= _met["expected"]:
        _met["event"].set()
    await asyncio.wait_for(_met["event"].wait(), timeout=120)
    return i


# --- a Suspended in one gathered branch while another is mid-checkpoint ------------------

calls: list[str] = []
_blocked_once: dict[str, bool] = {}


@tether.checkpoint
async def slow_step(x: int) -> int:
    calls.append("slow_step started")
    try:
        if not _blocked_once.get("slow"):
            _blocked_once["slow"] = True
            await asyncio.Event().wait()  # the first time: never returns on its own
        return x + 1
    except asyncio.CancelledError:
        calls.append("slow_step cancelled")
        raise


async def _waiting_branch() -> Any:
    await asyncio.sleep(0)
    return tether.wait("go")


@tether.flow
async def gather_with_wait(x: int) -> list[Any]:
    return list(await asyncio.gather(slow_step(x), _waiting_branch()))


# --- cancel one among many -------------------------------------------------------------

gate: dict[str, bool] = {"open": False}


@tether.checkpoint
async def held_step(i: int) -> int:
    while not gate["open"]:  # noqa: ASYNC110 - the gate is opened from another thread
        await asyncio.sleep(0.005)
    return i


@tether.flow
async def gated(i: int, steps: int) -> int:
    total = 0
    for _ in range(steps):
        total += await held_step(i)
    return total


# --- slow callbacks --------------------------------------------------------------------


@tether.checkpoint
async def sleeps_blocking(seconds: float) -> str:
    time.sleep(seconds)  # noqa: ASYNC251 - the bug the watchdog is for
    return "slept"


@tether.flow
async def blocks_the_loop(seconds: float) -> str:
    return await sleeps_blocking(seconds)


@tether.checkpoint
def sleeps_blocking_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@tether.flow
async def blocks_the_loop_sync(seconds: float) -> str:
    """A sync checkpoint called from an async flow runs on the loop thread: it blocks it."""
    return sleeps_blocking_sync(seconds)


@tether.checkpoint
async def awaits_briefly(i: int) -> int:
    await asyncio.sleep(0.01)
    return i


async def _blocks_in_a_branch(seconds: float) -> list[Any]:
    return list(await asyncio.gather(awaits_briefly(2), sleeps_blocking(seconds)))


@tether.flow
async def blocks_in_a_nested_branch(seconds: float) -> list[Any]:
    """The blocking call in a nested gathered branch, beside siblings that really await."""
    return list(await asyncio.gather(awaits_briefly(1), _blocks_in_a_branch(seconds)))


def _step(n: int) -> int:
    return n + 1


@tether.checkpoint
async def burns_cpu(seconds: float) -> int:
    # Pure Python the whole time, no C call that waits: the code the watchdog sees changes
    # at every sample (this loop, `_step`), the checkpoint's call stays the same.
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n = _step(n)
    return n


@tether.flow
async def burns_the_loop(seconds: float) -> int:
    return await burns_cpu(seconds)


@tether.checkpoint
async def short_burst(i: int, seconds: float) -> int:
    # A short CPU burst, then a real await: alone it blocks nothing, but hundreds of them
    # ready at once make one long turn of the loop.
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass
    await asyncio.sleep(0)
    return i


async def _bursts(first: int, n: int, seconds: float) -> int:
    return sum(await asyncio.gather(*(short_burst(i, seconds) for i in range(first, first + n))))


@tether.flow
async def many_bursts(n: int, seconds: float) -> int:
    """`n` gathered branches in two nested gathers, each a short burst: a busy loop."""
    half = n // 2
    parts = await asyncio.gather(_bursts(0, half, seconds), _bursts(half, n - half, seconds))
    return sum(parts)


# --- a process killed with many executions in flight ----------------------------------

STEADY_STEPS = 10


@tether.checkpoint
async def steady_step(i: int, step: int) -> int:
    record_side_effect(tether.current().execution_id)
    await asyncio.sleep(0.01)
    return i * 100 + step


@tether.flow
async def steady(i: int) -> int:
    total = 0
    for step in range(STEADY_STEPS):
        total += await steady_step(i, step)
    return total


def steady_expected(i: int) -> int:
    return sum(i * 100 + step for step in range(STEADY_STEPS))


_commits = {"n": 0}


def _kill_after_commits(run: Any, position: str) -> None:
    _commits["n"] += 1
    if _commits["n"] >= int(os.environ["KILL_AFTER_COMMITS"]):
        os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("KILL_AFTER_COMMITS"):
    _checkpoint._after_commit = _kill_after_commits


# --- max_async: executions beyond it wait for a slot ---------------------------------------

# How many executions of `limited` are in its body now, and the most that were at once.
slots_seen = {"inside": 0, "peak": 0}
slot_gate = threading.Event()


@tether.flow
async def limited(i: int) -> int:
    slots_seen["inside"] += 1
    slots_seen["peak"] = max(slots_seen["peak"], slots_seen["inside"])
    await asyncio.to_thread(slot_gate.wait, 60)
    slots_seen["inside"] -= 1
    return i


# --- tasks a flow body leaves behind ------------------------------------------------------

left_behind: list[str] = []


async def _outlives_its_flow(i: int) -> None:
    try:
        await asyncio.Event().wait()  # nobody sets it: only a cancel ends this task
    except asyncio.CancelledError:
        left_behind.append(f"{i} cancelled")
        raise


@tether.flow
async def leaves_a_task(i: int) -> int:
    asyncio.get_running_loop().create_task(_outlives_its_flow(i))
    await double(i)
    return i


@tether.flow
async def blocks_after_bursts(seconds: float) -> list[Any]:
    """A turn busy with 150 short bursts first, then a blocking call in the same turn: the
    watch that found the loop busy still finds the call that blocks it."""
    bursts = [short_burst(i, 0.002) for i in range(150)]
    return list(await asyncio.gather(*bursts, sleeps_blocking(seconds)))


# --- an execution waiting on what nothing else holds ----------------------------------------

# The futures `unreferenced_wait` awaits, held only weakly here (asyncio holds tasks only
# weakly too): the execution's task, and so its future, must be kept alive by tether itself.
unheld: weakref.WeakValueDictionary[int, asyncio.Future[int]] = weakref.WeakValueDictionary()


@tether.flow
async def unreferenced_wait(i: int) -> int:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    unheld[i] = future
    return await future
