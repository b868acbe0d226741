"""Flows for tests/test_stored_data.py: executions whose stored rows a test then rewrites as
an attacker would, and a flow that catches a recorded ValueError live and after a resume."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

import tether


class Verdict(BaseModel):
    approved: bool
    reason: str = ""


@tether.checkpoint
def step(i: int) -> str:
    return f"step {i}"


@tether.flow
def three_steps() -> str:
    return " / ".join(step(i) for i in range(3))


@tether.flow
def asks_for_a_verdict(topic: str) -> str:
    draft = step(0)
    verdict = tether.wait("review", schema=Verdict, question=f"publish {draft} on {topic}?")
    return f"{type(verdict).__name__} approved={verdict.approved}"


@tether.checkpoint
def rejects(value: str) -> str:
    raise ValueError(f"{value} is not acceptable")


@tether.checkpoint
def until_gate(gate: str) -> str:
    """Blocks until the gate file exists (at most 30 s): a test kills the process meanwhile."""
    deadline = time.monotonic() + 30
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "through"


@tether.flow
def catches_value_error(gate: str) -> str:
    try:
        rejects("draft 7")
        taken = "no error"
    except ValueError as exc:
        taken = f"except ValueError: {exc}"
    except Exception as exc:  # the path a resumed flow took when the error lost its class
        taken = f"except Exception: {type(exc).__name__}: {exc}"
    until_gate(gate)
    return taken


@tether.flow
def catches_then_waits() -> str:
    try:
        rejects("draft 7")
        taken = "no error"
    except ValueError as exc:
        taken = f"except ValueError: {exc}"
    except Exception as exc:
        taken = f"except Exception: {type(exc).__name__}: {exc}"
    tether.wait("go", schema=bool)
    return taken
