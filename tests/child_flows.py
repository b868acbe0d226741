"""Child flows for tests that run in this process and in child processes.

`charge` appends `<position> charge` to the file named by $SIDE_EFFECTS (see helpers), so a
test counts how often a child's side effect really ran across crashes. $CRASH_AFTER_COMMIT
(`<flow>:<position>`) makes the process SIGKILL itself right after that checkpoint of that
flow committed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import tether
from helpers import record_side_effect
from tether._core import checkpoint as _checkpoint


def _after_commit(run: Any, position: str) -> None:
    if os.environ.get("CRASH_AFTER_COMMIT") == f"{run.flow}:{position}":
        os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("CRASH_AFTER_COMMIT"):
    _checkpoint._after_commit = _after_commit


@tether.checkpoint
def charge(amount: int) -> int:
    record_side_effect(f"charge-{amount}")
    return amount * 10


@tether.flow
def pay(amount: int) -> int:
    return charge(amount) + 1


@tether.flow
async def apay(amount: int) -> int:
    return charge(amount) + 2


@tether.flow
def order(amount: int) -> int:
    """A sync parent calling its child directly."""
    return pay(amount) * 2


@tether.flow
def order_via_handle(amount: int) -> int:
    handle = pay.run(amount)
    return handle.result() * 2


@tether.flow
async def aorder(amount: int) -> list[int]:
    """An async parent: a direct await, a gather of two children, an awaited handle."""
    one = await apay(amount)
    two = await asyncio.gather(apay(amount + 1), apay(amount + 2))
    handle = pay.run(amount + 3)
    return [one, *two, await handle]


@tether.checkpoint
def until_ended(execution_id: str) -> str:
    """Blocks until the execution has ended; $CRASH_WHEN_CHILD_ENDED then kills the process."""
    client = tether.Client()
    while not client.get(execution_id).status.finished:
        time.sleep(0.01)
    if os.environ.get("CRASH_WHEN_CHILD_ENDED"):
        os.kill(os.getpid(), signal.SIGKILL)
    return "ended"


@tether.flow
def order_after_child_ended(amount: int) -> int:
    """Starts the child, lets it end before awaiting it (a crash fits in between)."""
    handle = pay.run(amount)
    until_ended(handle.id)
    return handle.result() * 2


@tether.flow
def order_enqueued(amount: int) -> int:
    """The child runs on a worker; the parent waits for it holding nothing."""
    return pay.enqueue(amount).result() * 2


@tether.flow
def refuse(reason: str) -> None:
    raise ValueError(reason)


@tether.flow
def order_catching(reason: str) -> str:
    try:
        refuse(reason)
    except tether.ExecutionFailed as exc:
        return f"caught {exc.error_type}: {exc.message}"
    return "not raised"


@tether.flow
def refuse_unless(path: str) -> str:
    if not Path(path).exists():
        raise ValueError("not yet")
    return charge(1) and "ok"


@tether.flow
def order_failing(path: str) -> str:
    return f"child says {refuse_unless(path)}"


@tether.checkpoint
def tick(i: int) -> int:
    time.sleep(0.02)
    return i


@tether.flow
def long_child(n: int) -> int:
    return sum(tick(i) for i in range(n))


@tether.flow
def order_long(n: int) -> int:
    return long_child(n)


@tether.flow
def grand_order(n: int) -> int:
    return order_long(n)
