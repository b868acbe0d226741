"""The workload of benchmarks/on_ray.py: imported by name (``--import _ray_flows``) by the fleet
worker, the ``--ray`` worker and the Ray tasks alike (benchmarks/ on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import tether

_TEXT = "x" * 128


@tether.checkpoint
async def bench_step(execution: int, i: int) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"execution": execution, "step": i, "text": _TEXT}


# A small share of a CPU: many executions fit one Ray node, as many fit one worker's loop.
@tether.flow(resources={"num_cpus": 0.01})
async def bench_flow(execution: int, checkpoints: int) -> int:
    for i in range(checkpoints):
        await bench_step(execution, i)
    return checkpoints


@tether.checkpoint
async def mark(path: str) -> int:
    with open(path, "a") as f:  # noqa: ASYNC230 - one line, before the flow blocks
        f.write(f"{os.getpid()}\n")
    return os.getpid()


@tether.checkpoint
async def hold(release: str) -> str:
    while not Path(release).exists():  # noqa: ASYNC110, ASYNC240 - set by the benchmark
        await asyncio.sleep(0.01)
    return "released"


# Runs only on a node that has the `victim` resource: the node the benchmark removes.
@tether.flow(resources={"num_cpus": 0.01, "resources": {"victim": 0.01}})
async def pinned(marks: str, release: str) -> str:
    await mark(marks)
    await hold(release)  # in flight when its node dies: marks again where it is taken over
    await mark(marks)
    return "done"
