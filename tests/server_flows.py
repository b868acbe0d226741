"""Flows for tests/test_server_api.py: started over HTTP by a `tether server` and run by a
`tether worker`, both importing this module."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import tether


@dataclasses.dataclass
class Report:
    title: str
    pages: tuple[int, ...]


@tether.checkpoint
def greet(name: str, times: int) -> str:
    for i in range(times):
        print(f"greeting {name} {i}")
    return f"hello {name}"


@tether.flow
def greeting(name: str, times: int = 1) -> str:
    return greet(name, times)


@tether.flow
def many_steps(count: int) -> int:
    for i in range(count):
        greet(f"step {i}", 0)
    return count


@tether.flow
def report(title: str) -> Report:
    return Report(greet(title, 1), (1, 2))


@tether.flow
def approval(topic: str) -> str:
    draft = greet(topic, 1)
    if tether.wait("approve", schema=bool, question=f"publish {draft!r}?"):
        return f"published {draft}"
    return "rejected"


def _first_run_fails(flag: str) -> str:
    path = Path(flag)
    if not path.exists():
        path.write_text("failed once\n")
        raise RuntimeError("the first run fails")
    return "recovered"


@tether.checkpoint
def fragile(flag: str) -> str:
    """Fails while the flag file is missing (and creates it): a retry succeeds."""
    return _first_run_fails(flag)


@tether.flow
def fails_once(flag: str) -> str:
    return fragile(flag)


@tether.checkpoint
async def astep(branch: int, step: int) -> str:
    await asyncio.sleep(0)
    if step == 0:
        tether.record_usage(model="house-model", input_tokens=10, output_tokens=2)
    return f"step {branch}.{step}"


@tether.checkpoint
async def afragile(flag: str) -> str:
    """`fragile`, awaited."""
    await asyncio.sleep(0)
    return _first_run_fails(flag)


@tether.flow
async def fanned_then_fragile(branches: int, steps: int, flag: str) -> str:
    """Gathered branches of many calls each (the first of each with usage), then a call that
    fails on the first run."""

    async def branch(number: int) -> None:
        for step in range(steps):
            await astep(number, step)

    await asyncio.gather(*(branch(n) for n in range(branches)))
    return await afragile(flag)


@tether.checkpoint
def ask(question: str) -> str:
    tether.record_usage(model="house-model", input_tokens=100, output_tokens=20, cost_usd=0.5)
    return f"answer to {question}"


@tether.flow
def asking(question: str) -> str:
    return ask(question)
