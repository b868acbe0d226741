"""Flows run on a Ray cluster by tests/test_ray.py: executions as Ray tasks (`tether worker
--ray`) and checkpoint bodies as Ray tasks (`runtime="ray"`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import tether
from helpers import record_side_effect


def _assigned() -> dict[str, float]:
    """The Ray resources of the task this runs in."""
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def _note(label: str, *, pid: bool = True) -> None:
    """Append `<label> <pid>` (`<label>` without `pid`) to $SIDE_EFFECTS, fsynced: a Ray
    body has no tether.current(), and `scaled_step` writes more than a position."""
    path = os.environ.get("SIDE_EFFECTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{label} {os.getpid()}\n" if pid else f"{label}\n")
            f.flush()
            os.fsync(f.fileno())


@tether.checkpoint
async def step(label: str) -> str:
    record_side_effect(label, pid=True)
    await asyncio.sleep(0.01)  # really awaits: the branches interleave
    return f"{label} done"


# Half a CPU each: two executions and a Ray checkpoint body fit the tests' 2-CPU cluster.
@tether.flow(resources={"num_cpus": 0.5})
async def gathered(n: int) -> list[str]:
    async def branch(i: int) -> str:
        first = await step(f"b{i}-first")
        return await step(f"b{i}-then-{first}")

    return list(await asyncio.gather(*(branch(i) for i in range(n))))


@tether.checkpoint
def where() -> dict[str, Any]:
    return {"pid": os.getpid(), "resources": _assigned()}


@tether.flow(resources={"num_cpus": 0.25, "resources": {"tether_node": 0.25}})
def sized() -> dict[str, Any]:
    # A sync flow: run on a thread of the task's process, as a worker would.
    return where()


@tether.checkpoint
async def flow_pid() -> int:
    return os.getpid()


# A custom resource that only the tests' cluster has (tests/test_ray.py): Ray runs the body
# only where it is.
@tether.checkpoint(runtime="ray", resources={"num_cpus": 0.5, "resources": {"tether_node": 0.5}})
async def heavy(x: int) -> dict[str, Any]:
    _note("heavy")
    await asyncio.sleep(0.01)
    return {"pid": os.getpid(), "value": x * 2, "resources": _assigned()}


@tether.checkpoint(runtime="ray", resources={"num_cpus": 0.5}, retries=1, backoff=0.01)
def flaky(marker: str) -> str:
    # Fails its first attempt (no marker yet), succeeds on the retry: retries are tether's.
    _note("flaky")
    if not os.path.exists(marker):
        Path(marker).write_text("tried")
        raise ValueError("first attempt fails")
    return "ok"


@tether.flow
async def offloaded(x: int, marker: str) -> dict[str, object]:
    here = await flow_pid()
    done = await heavy(x)
    again = flaky(marker)
    approved = tether.wait("go", schema=bool)
    return {"flow_pid": here, "heavy": done, "flaky": again, "approved": approved}


@tether.flow(resources={"num_cpus": 0.5})
async def approval(topic: str) -> str:
    draft = await step(f"draft-{topic}")
    ok = tether.wait("approve", schema=bool)
    final = await step(f"publish-{topic}")
    return f"{draft} / {final} / {ok}"


@tether.checkpoint
async def hold_until(release: str) -> str:
    # The call in flight when its Ray worker is killed: it runs again after the takeover.
    record_side_effect("hold", pid=True)
    # Polls a file: the release comes from the test process, after the kill.
    while not os.path.exists(release):  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)
    return "released"


@tether.flow(resources={"num_cpus": 0.5})
async def killable(release: str) -> list[str]:
    async def side(i: int) -> str:
        return await step(f"side{i}")

    before = list(await asyncio.gather(side(0), side(1)))
    held = await hold_until(release)
    return [*before, held, await step("after")]


@tether.checkpoint(runtime="ray", resources={"num_cpus": 0.5}, timeout=10, retries=1, backoff=0.01)
async def slow_once(marker: str) -> int:
    # The first attempt outlives the timeout (and is cancelled on the cluster); the retry
    # (whose time counts from its submission: a fresh Ray worker may have to start first)
    # returns at once.
    _note("slow_once")
    if not os.path.exists(marker):  # noqa: ASYNC240 - a test's marker file
        Path(marker).write_text("tried")  # noqa: ASYNC240
        await asyncio.sleep(120)
    return os.getpid()


@tether.flow
async def timed(marker: str) -> int:
    return await slow_once(marker)


def _node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


# Only the tests' second node has the resource `second` (tests/test_ray.py).
@tether.checkpoint(runtime="ray", resources={"num_cpus": 0.25, "resources": {"second": 0.5}})
def on_second() -> str:
    _note("on_second")
    return _node()


@tether.flow
def placed() -> str:
    return on_second()


@tether.checkpoint
async def scaled_step(n: int, i: int) -> dict[str, Any]:
    # The lease token this process runs the call under is the one its commit is fenced on,
    # so the recorded result names the lease holder that committed it. Read from tether's
    # internals: a test's attribution, not something an application needs.
    from tether._core.context import current_run

    run = current_run.get()
    assert run is not None
    key = tether.current().idempotency_key
    _note(f"{key} {run.token} {_node()}", pid=False)
    # Long enough that a node's death finds calls in flight there.
    await asyncio.sleep(0.1)
    return {"value": n * 100 + i, "token": run.token, "key": key}


SCALED_STEPS = 10


def scaled_answer(n: int) -> int:
    """The input the test gives to execution `n`'s wait."""
    return n * 7


def scaled_expected(n: int) -> int:
    """What execution `n` of `scaled` returns."""
    total = sum(n * 100 + i for i in range(SCALED_STEPS))
    return total + (scaled_answer(n) if n % 3 == 0 else 0)


@tether.flow(resources={"num_cpus": 0.25})
async def scaled(n: int) -> dict[str, Any]:
    # Ten calls; every third execution waits for input from the test, every other one
    # sleeps a moment (either ends its Ray task, and a new task resumes it).
    total = 0
    calls = []
    for i in range(SCALED_STEPS):
        done = await scaled_step(n, i)
        total += done["value"]
        calls.append((done["key"], done["token"]))
        if i == 3 and n % 3 == 0:
            total += tether.wait("answer", schema=int)
        if i == 6 and n % 2 == 0:
            tether.sleep(0.2)
    return {"total": total, "calls": calls}
