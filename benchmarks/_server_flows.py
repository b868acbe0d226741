"""tether flows for benchmarks/server.py: the seeds whose stored rows the benchmark copies.

Each flow is run for real once, so the rows copied into the store (arguments, results, errors,
waits, events) are exactly what tether writes; only their ids and times change in the copies.
Importing this module requires tether; the benchmark script imports it in its child processes.
"""

from __future__ import annotations

from typing import Any

import tether
from _payload import payload


@tether.checkpoint
def plan(i: int) -> dict[str, Any]:
    return payload(i)


@tether.checkpoint
def search(i: int) -> dict[str, Any]:
    return payload(i + 1)


@tether.checkpoint
def write(i: int) -> dict[str, Any]:
    return payload(i + 2)


@tether.flow
def research(i: int) -> str:
    plan(i)
    search(i)
    write(i)
    return f"report {i}"


@tether.flow
def approval(i: int) -> str:
    plan(i)
    ok = tether.wait("approve", schema=bool, question=f"publish draft {i}?")
    return "published" if ok else "rejected"


@tether.flow
def broken(i: int) -> str:
    plan(i)
    raise ValueError(f"the source of item {i} is gone")
