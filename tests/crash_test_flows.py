"""Flows for tests/test_crash_test.py: `crash_test` runs them in its own processes, which
import this module by name (the tests' directory is on their PYTHONPATH)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import tether


@tether.checkpoint
def double(value: int) -> int:
    return 2 * value


@tether.checkpoint
async def describe(branch: str, step: int) -> str:
    # Really awaits, a different while in every run, so branches interleave differently.
    await asyncio.sleep(random.uniform(0, 0.005))
    return f"{branch}{step}"


@tether.flow
def straight(value: int) -> int:
    total = 0
    for step in range(3):
        total += double(value + step)
    return total


@tether.flow
def twenty_steps(value: int) -> int:
    return sum(double(value + step) for step in range(20))


@tether.flow
async def gathered(prefix: str) -> list[str]:
    async def branch(name: str) -> str:
        first = await describe(f"{prefix}-{name}", 1)
        return first + "+" + await describe(f"{prefix}-{name}", 2)

    return list(await asyncio.gather(branch("a"), branch("b")))


@tether.flow
def approved(value: int) -> str:
    draft = double(value)
    if not tether.wait("approve", schema=bool, question=f"publish {draft}?"):
        return "rejected"
    return f"published {double(draft)}"


@tether.flow
def counts_visits() -> int:
    """Writes a counter file in flow code, outside any checkpoint: a resume counts again."""
    first = double(1)
    counter = Path("visits.txt")
    visits = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(visits))
    return first + double(visits)


@tether.flow
def lucky(value: int) -> float:
    """Its result depends on a random number no checkpoint recorded."""
    return double(value) + random.random()


@tether.flow
def forgets_its_record() -> int:
    """Loses its recorded calls behind tether's back (as a store restored from an old
    backup would), so a resume runs a committed call again."""
    first = double(1)
    db = tether.Client().db.removeprefix("sqlite:///")
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM checkpoints")
    connection.close()
    return first + double(2)


@tether.flow
def bill(amount: int) -> int:
    return double(amount) + 1


@tether.flow
def order(amount: int) -> int:
    """A parent whose child flow makes calls of its own."""
    return bill(amount) + double(amount)


@tether.flow
def reminds(value: int) -> int:
    """Sleeps an hour between two calls: a durable timer, which nothing waits out."""
    first = double(value)
    tether.sleep(3600)
    return first + double(first)


@tether.flow
def refuses(value: int) -> int:
    """Fails after its one call: a failure is an outcome like a result, and must survive too."""
    raise ValueError(f"refused {double(value)}")
