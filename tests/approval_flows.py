"""Flows with waits, for tests that run workers and clients in separate processes.

Every live checkpoint run appends a line to $SIDE_EFFECTS (position, name and pid), so
tests can count how often each step really ran, across processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import tether
from helpers import record_side_effect


def _side_effect(label: str) -> None:
    record_side_effect(label, pid=True)


@tether.checkpoint
def write_draft(topic: str) -> str:
    _side_effect("write_draft")
    return f"draft on {topic}"


@tether.checkpoint
def publish(text: str) -> str:
    _side_effect("publish")
    return f"published {text}"


@tether.flow
def approval_flow(topic: str) -> str:
    text = write_draft(topic)
    if not tether.wait("approve", schema=bool, question=text):
        return "rejected"
    return publish(text)


@tether.checkpoint
def slow_step(i: int, seconds: float) -> int:
    _side_effect(f"slow_step-{i}")
    gate = os.environ.get("GATE_FILE")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if gate and Path(gate).exists():
            break
        time.sleep(0.01)
    return i


@tether.flow
def slow_flow(steps: int, seconds: float) -> int:
    return sum(slow_step(i, seconds) for i in range(steps))


@tether.flow
def nap_flow(seconds: float) -> str:
    before = write_draft("nap")
    tether.sleep(seconds)
    return f"{before} then woke"
