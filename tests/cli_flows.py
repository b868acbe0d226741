"""Flows for tests/test_cli.py, at module level so that `resume`, `retry` and `replay` can
import them again by their recorded path, from the test process or a child process."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tether

log = logging.getLogger("cli_flows")


@tether.checkpoint
def greet(name: str) -> str:
    print(f"greeting {name}")
    return f"hello {name}"


@tether.checkpoint
def shout(text: str) -> str:
    print(f"shouting {text}")
    log.warning("loud: %s", text)
    return text.upper() + "!"


@tether.flow
def greeting(name: str) -> str:
    return shout(greet(name))


@tether.flow
def napping(seconds: float) -> str:
    draft = greet("nap")
    tether.sleep(seconds)
    return shout(draft)


@tether.checkpoint
def fragile(flag: str) -> str:
    """Fails while the flag file is missing (and creates it): the first run fails, a retry
    succeeds."""
    path = Path(flag)
    if not path.exists():
        path.write_text("failed once\n")
        raise RuntimeError("the first run fails")
    return "recovered"


@tether.flow
def fails_once(flag: str) -> str:
    first = greet("retry")
    return f"{first}; {fragile(flag)}"


@tether.checkpoint
def explode(what: str) -> str:
    raise ValueError(f"{what} is broken on purpose")


@tether.flow
def broken(what: str) -> str:
    greet(what)
    return explode(what)


@tether.flow
def approval(topic: str) -> str:
    draft = greet(topic)
    if tether.wait("approve", schema=bool, question=f"publish {draft!r}?"):
        return shout(draft)
    return "rejected"


LONG_WAIT = "approve-the-quarterly-budget-for-the-platform-team-in-the-emea-region-2027"


@tether.flow
def long_named_wait(topic: str) -> str:
    greet(topic)
    return str(tether.wait(LONG_WAIT, schema=bool, question=f"publish {topic}?"))


@tether.flow
def choosing(question: str) -> str:
    return tether.wait("side", schema=str, question=question)


@tether.checkpoint
def through_gate(gate: str) -> str:
    """Blocks until the gate file exists (at most 30 s), so a test can look at the execution
    while it runs."""
    deadline = time.monotonic() + 30
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.01)
    print("the gate opened")
    return "through"


@tether.flow
def gated(gate: str) -> str:
    greet("gate")
    passed = through_gate(gate)
    greet("after")
    return passed
