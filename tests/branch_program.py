"""A flow that interprets a generated program of concurrent branches, for crash properties.

A program is JSON: `{"log": path, "steps": [step, ...]}`, run by the async flow `branchy`:

- `{"op": "cp", "tag": t}`: one call of the checkpoint `echo` in flow code;
- `{"op": "branches", "branches": [[item, ...], ...]}`: the branches run concurrently with
  `asyncio.gather`; an item is `{"cp": t, "delay": ms}` (an awaited `echo` call that really
  awaits `delay` ms inside), `{"nest": [[item, ...], ...]}` (a gather nested in the branch),
  `{"sleep": t}` (a durable `tether.sleep(0)`, a recorded wait that does not suspend) or
  `{"map": [t, ...]}` (the sync checkpoint `echo_sync` over the tags with `.map()`, on a
  thread via `asyncio.to_thread`);
- `{"op": "keyed", "tags": [t, ...]}`: workers take the tags from a shared queue in whatever
  order timing gives, each call in `tether.branch(tag)`.

Every tag is unique, and `echo(tag)` returns `tag + "!"`: a call that received another
call's recorded result shows it in the flow's result. `model(steps)` computes the result and
the position of every call without tether.

Every live attempt appends `"<position> <tag>"` to the log (one O_APPEND write). Crash
injection from the environment: `CRASH_TAG` with `CRASH_PHASE=before|inside` (in flow code
just before the call / in its body), or `CRASH_POSITION` with `CRASH_PHASE=after` (right
after that position's commit, via the test hook). The process kills itself with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import tether
from tether._core import checkpoint as _checkpoint


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def _crash(phase: str, tag: str) -> None:
    if os.environ.get("CRASH_PHASE") == phase and os.environ.get("CRASH_TAG") == tag:
        _die()


def install_crash_hook() -> None:
    position = os.environ.get("CRASH_POSITION")
    if os.environ.get("CRASH_PHASE") != "after" or not position:
        return

    def hook(run: Any, committed: str) -> None:
        if committed == position:
            _die()

    _checkpoint._after_commit = hook


def _log(log: str, tag: str) -> None:
    position = tether.current().position
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{position} {tag}\n".encode())
    finally:
        os.close(fd)
    _crash("inside", tag)


@tether.checkpoint
async def echo(log: str, tag: str, delay: float = 0.0) -> str:
    _log(log, tag)
    await asyncio.sleep(delay)
    return f"{tag}!"


@tether.checkpoint
def echo_sync(log: str, tag: str) -> str:
    _log(log, tag)
    time.sleep(0.001)
    return f"{tag}!"


async def _call(log: str, tag: str, delay_ms: int = 0) -> str:
    _crash("before", tag)
    return await echo(log, tag, delay_ms / 1000)


async def _branch(log: str, items: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if "cp" in item:
            out.append(await _call(log, item["cp"], item.get("delay", 0)))
        elif "nest" in item:
            out.append(list(await asyncio.gather(*(_branch(log, b) for b in item["nest"]))))
        elif "sleep" in item:
            tether.sleep(0)
            out.append(f"slept {item['sleep']}")
        elif "map" in item:
            tags = item["map"]
            for tag in tags:
                _crash("before", tag)
            out.append(await asyncio.to_thread(echo_sync.map, [log] * len(tags), tags))
        else:
            raise AssertionError(item)
    return out


async def _keyed(log: str, tags: list[str]) -> dict[str, str]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    for tag in tags:
        queue.put_nowait(tag)
    workers = 3
    for _ in range(workers):
        queue.put_nowait(None)
    out: dict[str, str] = {}

    async def worker() -> None:
        while (tag := await queue.get()) is not None:
            with tether.branch(tag):
                out[tag] = await _call(log, tag, len(tag) % 3)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return dict(sorted(out.items()))


@tether.flow
async def branchy(program: dict[str, Any]) -> list[Any]:
    log = program["log"]
    out: list[Any] = []
    for step in program["steps"]:
        if step["op"] == "cp":
            out.append(await _call(log, step["tag"]))
        elif step["op"] == "branches":
            out.append(list(await asyncio.gather(*(_branch(log, b) for b in step["branches"]))))
        elif step["op"] == "keyed":
            out.append(await _keyed(log, step["tags"]))
        else:
            raise AssertionError(step)
    return out


# --- the model ----------------------------------------------------------------------------


def model(steps: list[dict[str, Any]]) -> tuple[list[Any], dict[str, str], set[str]]:
    """(the flow's result, the position of every checkpoint call by tag, wait positions)."""
    positions: dict[str, str] = {}
    waits: set[str] = set()

    class Line:
        def __init__(self, prefix: str) -> None:
            self.prefix, self.next = prefix, 0

        def take(self) -> str:
            self.next += 1
            return f"{self.prefix}{self.next - 1}"

    def branch(line: Line, items: list[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            if "cp" in item:
                positions[item["cp"]] = line.take()
                out.append(f"{item['cp']}!")
            elif "nest" in item:
                # gather makes a task per branch coroutine: one slot each, in order.
                out.append([branch(Line(f"{line.take()}."), b) for b in item["nest"]])
            elif "sleep" in item:
                waits.add(line.take())
                out.append(f"slept {item['sleep']}")
            elif "map" in item:
                for tag in item["map"]:
                    positions[tag] = line.take()
                out.append([f"{tag}!" for tag in item["map"]])
        return out

    root = Line("")
    result: list[Any] = []
    for step in steps:
        if step["op"] == "cp":
            positions[step["tag"]] = root.take()
            result.append(f"{step['tag']}!")
        elif step["op"] == "branches":
            result.append([branch(Line(f"{root.take()}."), b) for b in step["branches"]])
        elif step["op"] == "keyed":
            for _ in range(3):
                root.take()  # the three worker tasks
            for tag in step["tags"]:
                positions[tag] = f"[{tag}].0"
            result.append({tag: f"{tag}!" for tag in sorted(step["tags"])})
    return result, positions, waits
