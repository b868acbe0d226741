"""Flows whose code raises what is not an Exception, kills its own process or stops the event
loop, and well-behaved agents to run beside them (imported by the fault tests and by the
worker processes they start)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import tether


def _raise(kind: str) -> None:
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt("raised by code")
    if kind == "cancel":
        raise asyncio.CancelledError("nobody cancelled this task")
    if kind == "generator-exit":
        raise GeneratorExit
    raise AssertionError(kind)


# --- well-behaved agents: gathered branches that really await ---------------------------


@tether.checkpoint
async def fetch(i: int, part: str) -> str:
    await asyncio.sleep(0.001)
    return f"{part}{i}"


@tether.flow
async def good_agent(i: int) -> list[str]:
    async def branch(part: str) -> str:
        first = await fetch(i, part)
        return first + await fetch(i, part + part)

    return list(await asyncio.gather(branch("a"), branch("b")))


@tether.checkpoint
def fetch_sync(i: int) -> int:
    time.sleep(0.001)
    return i * 2


@tether.flow
def good_sync_agent(i: int) -> list[int]:
    return fetch_sync.map([i, i + 1])


# --- poison: BaseExceptions from user code -----------------------------------------------


@tether.checkpoint
async def explode(kind: str) -> None:
    await asyncio.sleep(0.001)
    _raise(kind)


@tether.flow
async def poison_agent(kind: str) -> str:
    async def other() -> str:
        return await fetch(0, "x")

    # A sibling branch that really awaits while the poison one raises.
    results = await asyncio.gather(other(), explode(kind))
    return str(results)


@tether.checkpoint(retries=2, backoff=0.0, retry_on=BaseException)
async def explode_retried(kind: str) -> None:
    await asyncio.sleep(0.001)
    _raise(kind)


@tether.flow
async def poison_retried(kind: str) -> None:
    await fetch(0, "before")
    await explode_retried(kind)


@tether.checkpoint
def explode_sync(kind: str) -> None:
    _raise(kind)


@tether.flow
def poison_sync_agent(kind: str) -> None:
    fetch_sync(1)
    explode_sync(kind)


@tether.flow
async def poison_body(kind: str) -> None:
    """Raised by flow code itself, in a gathered branch, outside any checkpoint."""

    async def branch() -> None:
        await fetch(0, "y")
        _raise(kind)

    await asyncio.gather(branch(), fetch(1, "z"))


# --- a flow that kills the process holding it ------------------------------------------


@tether.checkpoint
def kill_own_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@tether.flow
def crash_looper() -> str:
    kill_own_process()
    return "never"


# --- the event loop itself stopped or held ---------------------------------------------


@tether.checkpoint
async def park(i: int) -> int:
    # Holds the execution here until another process takes it over (it does not park there).
    if os.environ.get("FAULT_PARK") == "1":
        await asyncio.sleep(3600)
    return i


@tether.flow
async def parked_agent(i: int) -> dict[str, Any]:
    value = await park(i)
    return {"value": value, "pid": os.getpid()}


@tether.checkpoint
async def stop_the_loop() -> None:
    asyncio.get_running_loop().stop()
    await asyncio.sleep(3600)


@tether.flow
async def loop_stopper() -> None:
    await stop_the_loop()


# --- a flow with many short steps, for hand-backs ----------------------------------------


@tether.checkpoint
def tick(i: int) -> int:
    time.sleep(0.05)
    return i


@tether.flow
def ticker(n: int) -> int:
    return sum(tick(i) for i in range(n))


@tether.checkpoint
async def block_the_loop() -> None:
    time.sleep(3600)  # noqa: ASYNC251 (a blocking call in an async checkpoint: the loop stops turning)


@tether.flow
async def loop_blocker() -> None:
    await block_the_loop()


# --- cancellations asyncio starts stay cancellations --------------------------------------


@tether.checkpoint
async def fail_soon() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("first branch failed")


@tether.checkpoint
async def wait_long(label: str) -> str:
    await asyncio.sleep(3600)
    return label


@tether.flow
async def cancelled_by_asyncio() -> str:
    try:
        async with asyncio.timeout(0.05):
            await wait_long("timed out")
    except TimeoutError:
        pass
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(fail_soon())
            group.create_task(wait_long("cancelled by its group"))
    except ExceptionGroup as caught:
        return f"caught {[str(e) for e in caught.exceptions]}"
    return "not reached"


@tether.checkpoint
def kill_if_told() -> str:
    if os.environ.get("FAULT_KILL") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@tether.flow
def crashes_where_told() -> str:
    return kill_if_told()
