"""Flows that interpret a generated "program", for the crash property tests.

A program is JSON: `{"log": "/path/to/effects.log", "steps": [step, ...]}` where a step is

- `{"op": "cp", "name": "a"|"b"|"c", "value": v}`: one checkpoint call, returns `compute(name, v)`;
- `{"op": "gather", "values": [v, ...], "via": "map"|"submit"}`: concurrent calls of the
  checkpoint "g" (`asyncio.gather` in the async flow; `.map()` or `.submit()` in the sync one,
  as `via` says);
- `{"op": "flaky", "value": v, "fail": k}`: checkpoint "flaky" (retries=3, backoff=0) whose
  attempts 1..k raise ValueError; when k > 3 every attempt fails and the flow catches the
  final error;
- `{"op": "raise", "value": v}`: checkpoint "boom" raises ValueError, which the flow catches.

The flows return the list of everything they got back, so a program's result is
deterministic: `expected(steps)` computes it (and the checkpoint calls it should record)
without tether.

Every live checkpoint attempt appends `"<position> <name> attempt<n>"` to the program's log
file (one unbuffered O_APPEND write, so the line survives a SIGKILL right after it).

Crash injection, read from the environment of the process that runs the flow:
`CRASH_AT=<position>`, `CRASH_PHASE=before|inside|after` and `CRASH_ATTEMPT=<n>` (default 1):

- `before`: in flow code, just before the call that takes that position;
- `inside`: in the checkpoint body, attempt n, after its log line is written;
- `after`: right after the n-th commit for that position (each failed attempt that will be
  retried commits too); needs `install_crash_hook()`.

The process kills itself with SIGKILL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import tether
from tether._core import checkpoint as _checkpoint

RETRIES = 3


# --- crash injection --------------------------------------------------------------------------


def _crash_spec() -> tuple[str, str, int] | None:
    at = os.environ.get("CRASH_AT")  # a position as tether writes it: "3", "3.1.2"
    if not at:
        return None
    phase = os.environ.get("CRASH_PHASE", "inside")
    return at, phase, int(os.environ.get("CRASH_ATTEMPT", "1"))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # not reached: SIGKILL cannot be caught


def crash_point(phase: str, position: str | int, attempt: int = 1) -> None:
    """`position`: the recorded position, or the flow body's call count (flow code counts)."""
    spec = _crash_spec()
    if spec is None:
        return
    at, crash_phase, crash_attempt = spec
    if at != str(position) or crash_phase != phase:
        return
    if phase == "before" or crash_attempt == attempt:
        _die()


_commits: Counter[str] = Counter()
_commits_lock = threading.Lock()


def install_crash_hook() -> None:
    """In a crashing child: set the after-commit test hook when CRASH_PHASE=after."""
    spec = _crash_spec()
    if spec is None or spec[1] != "after":
        return
    at, _, attempt = spec

    def hook(run: Any, position: str) -> None:
        with _commits_lock:
            _commits[position] += 1
            count = _commits[position]
        if position == at and count == attempt:
            _die()

    _checkpoint._after_commit = hook


# --- side effects -----------------------------------------------------------------------------


def _record(log: str, name: str) -> int:
    """Log one live attempt of the running checkpoint; returns the attempt number."""
    current = tether.current()
    assert current.checkpoint == name, (current.checkpoint, name)
    position, attempt = current.position, current.attempt
    assert position is not None and attempt is not None
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{position} {name} attempt{attempt}\n".encode())
    finally:
        os.close(fd)
    crash_point("inside", position, attempt)
    return attempt


def compute(name: str, value: int) -> int:
    if name == "a":
        return 2 * value + 1
    if name == "b":
        return value * value
    if name == "c":
        return value - 7
    if name == "g":
        return 10 * value
    if name == "flaky":
        return value + 100
    raise AssertionError(name)


# --- checkpoints --------------------------------------------------------------------------------


@tether.checkpoint(name="a")
def sync_a(log: str, value: int) -> int:
    _record(log, "a")
    return compute("a", value)


@tether.checkpoint(name="b")
def sync_b(log: str, value: int) -> int:
    _record(log, "b")
    return compute("b", value)


@tether.checkpoint(name="c")
def sync_c(log: str, value: int) -> int:
    _record(log, "c")
    return compute("c", value)


@tether.checkpoint(name="g")
def sync_g(log: str, value: int) -> int:
    _record(log, "g")
    time.sleep(0.002)  # let the threads of a group overlap
    return compute("g", value)


@tether.checkpoint(name="flaky", retries=RETRIES, backoff=0)
def sync_flaky(log: str, value: int, fail: int) -> dict[str, int]:
    attempt = _record(log, "flaky")
    if attempt <= fail:
        raise ValueError(f"flaky {value} failed attempt {attempt}")
    return {"value": compute("flaky", value), "attempt": attempt}


@tether.checkpoint(name="boom")
def sync_boom(log: str, value: int) -> int:
    _record(log, "boom")
    raise ValueError(f"boom {value}")


@tether.checkpoint(name="a")
async def async_a(log: str, value: int) -> int:
    _record(log, "a")
    await asyncio.sleep(0)
    return compute("a", value)


@tether.checkpoint(name="b")
async def async_b(log: str, value: int) -> int:
    _record(log, "b")
    await asyncio.sleep(0)
    return compute("b", value)


@tether.checkpoint(name="c")
async def async_c(log: str, value: int) -> int:
    _record(log, "c")
    await asyncio.sleep(0)
    return compute("c", value)


@tether.checkpoint(name="g")
async def async_g(log: str, value: int) -> int:
    _record(log, "g")
    await asyncio.sleep(0)  # interleave the calls of a group
    return compute("g", value)


@tether.checkpoint(name="flaky", retries=RETRIES, backoff=0)
async def async_flaky(log: str, value: int, fail: int) -> dict[str, int]:
    attempt = _record(log, "flaky")
    await asyncio.sleep(0)
    if attempt <= fail:
        raise ValueError(f"flaky {value} failed attempt {attempt}")
    return {"value": compute("flaky", value), "attempt": attempt}


@tether.checkpoint(name="boom")
async def async_boom(log: str, value: int) -> int:
    _record(log, "boom")
    await asyncio.sleep(0)
    raise ValueError(f"boom {value}")


SYNC_CP = {"a": sync_a, "b": sync_b, "c": sync_c}
ASYNC_CP = {"a": async_a, "b": async_b, "c": async_c}


# --- flows --------------------------------------------------------------------------------------


@tether.flow(name="program_sync")
def run_sync(program: dict[str, Any]) -> list[Any]:
    log = program["log"]
    out: list[Any] = []
    pos = 0
    for step in program["steps"]:
        op = step["op"]
        if op == "cp":
            crash_point("before", pos)
            out.append(SYNC_CP[step["name"]](log, step["value"]))
            pos += 1
        elif op == "gather":
            values = step["values"]
            if step.get("via", "map") == "map":

                def items(start: int, values: list[int] = values) -> Iterator[int]:
                    for i, value in enumerate(values):
                        crash_point("before", start + i)
                        yield value

                out.append(sync_g.map(itertools.repeat(log), items(pos)))
            else:
                futures = []
                for i, value in enumerate(values):
                    crash_point("before", pos + i)
                    futures.append(sync_g.submit(log, value))
                out.append([future.result() for future in futures])
            pos += len(values)
        elif op == "flaky":
            crash_point("before", pos)
            try:
                out.append(sync_flaky(log, step["value"], step["fail"]))
            except ValueError as exc:
                out.append(["exhausted", str(exc)])
            pos += 1
        elif op == "raise":
            crash_point("before", pos)
            try:
                out.append(["not raised", sync_boom(log, step["value"])])
            except ValueError as exc:
                out.append(["caught", str(exc)])
            pos += 1
        else:
            raise AssertionError(op)
    return out


@tether.flow(name="program_async")
async def run_async(program: dict[str, Any]) -> list[Any]:
    log = program["log"]
    out: list[Any] = []
    pos = 0
    for step in program["steps"]:
        op = step["op"]
        if op == "cp":
            crash_point("before", pos)
            out.append(await ASYNC_CP[step["name"]](log, step["value"]))
            pos += 1
        elif op == "gather":
            calls = []
            for i, value in enumerate(step["values"]):
                crash_point("before", pos + i)
                calls.append(async_g(log, value))
            out.append(list(await asyncio.gather(*calls)))
            pos += len(calls)
        elif op == "flaky":
            crash_point("before", pos)
            try:
                out.append(await async_flaky(log, step["value"], step["fail"]))
            except ValueError as exc:
                out.append(["exhausted", str(exc)])
            pos += 1
        elif op == "raise":
            crash_point("before", pos)
            try:
                out.append(["not raised", await async_boom(log, step["value"])])
            except ValueError as exc:
                out.append(["caught", str(exc)])
            pos += 1
        else:
            raise AssertionError(op)
    return out


FLOWS: dict[str, tether.Flow[Any, Any]] = {"sync": run_sync, "async": run_async}


# --- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One checkpoint call a program makes: its name, attempts and final status."""

    name: str
    attempts: int
    status: str  # "succeeded" | "failed"


def expected(steps: list[dict[str, Any]]) -> tuple[list[Any], list[Call]]:
    """The result of a program and the checkpoint calls it records, in position order."""
    out: list[Any] = []
    calls: list[Call] = []
    for step in steps:
        op = step["op"]
        if op == "cp":
            out.append(compute(step["name"], step["value"]))
            calls.append(Call(step["name"], 1, "succeeded"))
        elif op == "gather":
            out.append([compute("g", v) for v in step["values"]])
            calls.extend(Call("g", 1, "succeeded") for _ in step["values"])
        elif op == "flaky":
            fail, value = step["fail"], step["value"]
            if fail > RETRIES:
                out.append(["exhausted", f"flaky {value} failed attempt {RETRIES + 1}"])
                calls.append(Call("flaky", RETRIES + 1, "failed"))
            else:
                out.append({"value": compute("flaky", value), "attempt": fail + 1})
                calls.append(Call("flaky", fail + 1, "succeeded"))
        elif op == "raise":
            out.append(["caught", f"boom {step['value']}"])
            calls.append(Call("boom", 1, "failed"))
        else:
            raise AssertionError(op)
    return out, calls
