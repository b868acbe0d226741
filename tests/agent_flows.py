"""Agent-shaped flows for tests that run in child processes.

Every live checkpoint run appends a line to the file named by $SIDE_EFFECTS, so a
test can count how often each step really ran. $CRASH_AT / $CRASH_PHASE make the
process kill itself with SIGKILL at one checkpoint boundary:
`before` (flow code about to call step k), `inside` (step k's body, after its side
effect), `after` (step k's result just committed).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import tether
from helpers import record_side_effect
from tether._core import checkpoint as _checkpoint


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_point() -> tuple[str, str] | None:
    at = os.environ.get("CRASH_AT")  # a position as tether writes it: "3", "3.1.2"
    return (at, os.environ.get("CRASH_PHASE", "inside")) if at is not None else None


def _maybe_crash(position: str | int, phase: str) -> None:
    """`position`: the recorded position, or the flow body's call count (flow code counts)."""
    point = _crash_point()
    if point == (str(position), phase):
        _kill()


def _after_commit(run: Any, position: str) -> None:
    _maybe_crash(position, "after")


if _crash_point() is not None:
    _checkpoint._after_commit = _after_commit


def _side_effect(label: str) -> None:
    position = record_side_effect(label)
    assert position is not None
    _maybe_crash(position, "inside")


@tether.checkpoint
def plan(topic: str) -> list[str]:
    _side_effect("plan")
    return [f"{topic} history", f"{topic} theory", f"{topic} practice"]


@tether.checkpoint(retries=2, backoff=0)
def search(query: str) -> dict[str, Any]:
    _side_effect("search")
    return {"query": query, "hits": [f"{query} #{i}" for i in range(3)]}


@tether.checkpoint
def summarize(results: list[dict[str, Any]]) -> str:
    _side_effect("summarize")
    return "; ".join(r["hits"][0] for r in results)


@tether.checkpoint
def write_report(summary: str) -> str:
    _side_effect("write_report")
    return f"REPORT: {summary}"


@tether.flow
def research_agent(topic: str) -> str:
    queries = plan(topic) if _before(0) else []
    results = []
    for i, q in enumerate(queries):
        _before(1 + i)
        results.append(search(q))
    _before(4)
    summary = summarize(results)
    _before(5)
    return write_report(summary)


STEPS = 6  # checkpoint calls in research_agent


def _before(position: int) -> bool:
    _maybe_crash(position, "before")
    return True


@tether.checkpoint
def wait_for_file(path: str) -> str:
    _side_effect("wait_for_file")
    deadline = time.monotonic() + 60
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)
    return Path(path).read_text()


@tether.checkpoint
def after_wait(text: str) -> str:
    _side_effect("after_wait")
    return text.upper()


@tether.flow
def blocking_flow(path: str) -> str:
    return after_wait(wait_for_file(path))


@tether.checkpoint
def tick(i: int) -> int:
    return i


@tether.flow
def many_ticks(n: int) -> int:
    return sum(tick(i) for i in range(n))


# --- code that "changes" between a crash and its resume, chosen by $VARIANT -------------


@tether.checkpoint
def fetch(x: int) -> int:
    _side_effect("fetch")
    return x * 10


@tether.checkpoint
def enrich(x: int) -> int:
    _side_effect("enrich")
    return x + 1


@tether.checkpoint
def renamed_step(x: int) -> int:
    _side_effect("renamed_step")
    return x + 2


@tether.flow
def evolving_flow(x: int) -> Any:
    variant = os.environ.get("VARIANT", "original")
    first = fetch(x)
    if variant == "renamed":
        second = renamed_step(first)
    elif variant == "new-args":
        second = enrich(first + 5)
    elif variant == "swallow":
        try:
            second = renamed_step(first)
        except tether.DivergenceError:
            return "swallowed"
    else:
        second = enrich(first)
    _maybe_crash(2, "before")
    return [first, second, fetch(second)]
