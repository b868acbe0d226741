"""Trees of child flows and an application's flows, for tests that kill processes and recover.

`charge` is the side effect: it applies a charge once per idempotency key (a file created
exclusively under $CHARGES, as a payment API deduplicates by key) and appends a line per run
to $CHARGES/runs.log. While it runs, it holds a marker file for its key naming its pid: a run
that finds the marker of another live process notes an overlap (the same call running in two
processes at once) in $CHARGES/overlaps.log. $KILL_AFTER_COMMITS=k makes the process SIGKILL
itself right after its k-th checkpoint commit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import tether
from tether._core import checkpoint as _checkpoint

_commits = 0
_count_lock = threading.Lock()


def _after_commit(run: Any, position: str) -> None:
    global _commits
    with _count_lock:
        _commits += 1
        if _commits == int(os.environ["KILL_AFTER_COMMITS"]):
            os.kill(os.getpid(), signal.SIGKILL)


if os.environ.get("KILL_AFTER_COMMITS"):
    _checkpoint._after_commit = _after_commit


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _charge(label: str, seconds: float) -> None:
    folder = Path(os.environ["CHARGES"])
    key = tether.current().idempotency_key
    marker = folder / f"{key}.running"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = int(marker.read_text() or "0")
        if holder and holder != os.getpid() and _alive(holder):
            _append(folder / "overlaps.log", f"{label} {holder} {os.getpid()}")
        fd = os.open(marker, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    _append(folder / "runs.log", f"{label} {os.getpid()}")
    time.sleep(seconds)
    try:  # the payment API: applied once per idempotency key
        os.close(os.open(folder / f"{key}.applied", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        _append(folder / "applied.log", label)
    except FileExistsError:
        pass
    marker.unlink(missing_ok=True)


@tether.checkpoint
async def acharge(label: str) -> str:
    await asyncio.to_thread(_charge, label, 0.01)
    return label


@tether.checkpoint
async def aslow(label: str) -> str:
    await asyncio.to_thread(_charge, label, 0.05)
    return label


@tether.checkpoint
def charge(label: str) -> str:
    _charge(label, 0.01)
    return label


@tether.checkpoint
def slow(label: str) -> str:
    _charge(label, 0.05)
    return label


# --- trees ---------------------------------------------------------------------------------


@tether.flow
async def leaf(label: str) -> str:
    return await acharge(label)


@tether.flow
async def middle(label: str) -> list[str]:
    """A child that has children of its own (nested)."""
    first = await leaf(f"{label}.a")
    rest = await asyncio.gather(leaf(f"{label}.b"), leaf(f"{label}.c"))
    return [first, *rest]


@tether.flow
async def tree(width: int) -> list[Any]:
    """Gathered children, a nested child, and a charge of its own around them."""
    start = await acharge("root.start")
    gathered = await asyncio.gather(*(leaf(f"g{i}") for i in range(width)))
    nested = await middle("m")
    return [start, *gathered, nested, await acharge("root.end")]


@tether.flow
def sync_leaf(label: str) -> str:
    return charge(label)


@tether.flow
def sync_middle(label: str) -> list[str]:
    return [sync_leaf(f"{label}.a"), sync_leaf(f"{label}.b")]


@tether.flow
def sync_tree(width: int) -> list[Any]:
    """Sync children called one by one, one of them with children of its own."""
    return [charge("root.start"), *(sync_leaf(f"g{i}") for i in range(width)), sync_middle("m")]


def tree_labels(width: int) -> set[str]:
    return {"root.start", "root.end", *(f"g{i}" for i in range(width)), "m.a", "m.b", "m.c"}


def sync_tree_labels(width: int) -> set[str]:
    return {"root.start", *(f"g{i}" for i in range(width)), "m.a", "m.b"}


# --- an application's flows ------------------------------------------------------------------


@tether.flow
async def agent(n: int, steps: int) -> int:
    """An async agent: steps that take a while, and a child flow."""
    done = 0
    for i in range(steps):
        done += len(await aslow(f"agent{n}.{i}"))
    return done + len(await leaf(f"agent{n}.child"))


@tether.flow
def worker_task(n: int, steps: int) -> int:
    """A sync execution: steps on its thread."""
    return sum(len(slow(f"task{n}.{i}")) for i in range(steps))


@tether.flow
def ask(n: int) -> str:
    """A charge, then a wait for input."""
    charge(f"ask{n}")
    return "yes" if tether.wait("approve", schema=bool) else "no"
