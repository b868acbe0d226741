"""Flows for tests/test_dashboard.py: run by a `tether worker` (or the test process) and
answered in a browser through `tether server`'s dashboard."""

from __future__ import annotations

import enum
import time
from pathlib import Path

import pydantic

import tether


class Tone(enum.Enum):
    FORMAL = "formal"
    CASUAL = "casual"


class Plan(pydantic.BaseModel):
    title: str
    pages: int = pydantic.Field(ge=1, description="How many pages the report may take.")
    tone: Tone
    urgent: bool = False
    note: str | None = None


@tether.checkpoint
def draft(topic: str) -> str:
    print(f"drafting {topic}")
    tether.record_usage(model="house-model", input_tokens=120, output_tokens=30, cost_usd=0.25)
    return f"a draft about {topic}"


@tether.checkpoint
def publish(text: str, gate: str) -> str:
    """Holds until the test creates `gate` (an empty string: at once), so the test sees the
    execution running before it finishes."""
    path = Path(gate) if gate else None
    while path is not None and not path.exists():
        time.sleep(0.02)
    return f"published {text}"


@tether.flow
def approval(topic: str, gate: str = "") -> str:
    text = draft(topic)
    if tether.wait("approve", schema=bool, question=f"publish {text!r}?"):
        return publish(text, gate)
    return "rejected"


@tether.flow
def planning(topic: str) -> str:
    text = draft(topic)
    plan = tether.wait("plan", schema=Plan, question={"draft": text, "asks": "plan the report"})
    return f"{plan.title}: {plan.pages} pages, {plan.tone.value}"


@tether.flow
def quick(n: int) -> int:
    return n * 2
