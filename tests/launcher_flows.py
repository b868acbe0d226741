"""Flows for the launcher tests: runners (`tether worker --execution ID`) import this module.

Every checkpoint body appends `<execution> <position> <label> <pid> <time>` to the file named
by $SIDE_EFFECTS, so a test can count how often each step really ran and in which process.
A step with a gate waits until the file `$GATE_DIR/<gate>` exists. With $IMPORT_GATE set,
importing this module waits until that file exists: a runner that has not claimed anything
yet, for as long as a test needs one.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import tether


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


if os.environ.get("IMPORT_GATE"):
    _wait_for(Path(os.environ["IMPORT_GATE"]))


def _note(label: str) -> None:
    path = os.environ.get("SIDE_EFFECTS")
    if not path:
        return
    now = tether.current()
    line = f"{now.execution_id} {now.position} {label} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@tether.checkpoint
async def fetch(topic: str) -> str:
    _note(f"fetch-{topic}")
    await asyncio.sleep(0.05)  # a branch that really awaits, as a model call does
    return f"notes-on-{topic}"


@tether.flow
async def gathered(topic: str) -> list[str]:
    async def angle(name: str) -> str:
        notes = await fetch(f"{topic}-{name}")
        return await fetch(f"{notes}-summary")

    return list(await asyncio.gather(angle("a"), angle("b")))


@tether.flow
def child_report(topic: str) -> str:
    return step(f"child-{topic}")


@tether.flow
def parent(topic: str) -> str:
    first = step(f"parent-{topic}")
    return f"{first} + {child_report(topic)}"


@tether.checkpoint
def step(label: str, gate: int | None = None) -> str:
    _note(label)
    if gate is not None:
        _wait_for(Path(os.environ["GATE_DIR"]) / str(gate))
    return label


@tether.flow
def gated(steps: int) -> list[str]:
    """Step i waits for the gate file `i`."""
    return [step(f"gated-{i}", i) for i in range(steps)]


@tether.flow
def approval(topic: str) -> str:
    draft = step(f"draft-{topic}")
    if not tether.wait("approve", schema=bool, question=draft):
        return "rejected"
    return step(f"publish-{topic}")


@tether.flow
def napper(seconds: float) -> str:
    before = step("before-nap")
    tether.sleep(seconds)  # a durable timer: the runner exits, a new one runs the rest
    return f"{before} then {step('after-nap')}"
