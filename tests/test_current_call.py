"""Which checkpoint call is current, on agent shapes: two calls live at once in one branch
(gathered calls, each its task), a task that runs on while its creator enters a call, a
thread awaited inside a call, a task that outlives the call that made it. A task's calls
write one slot of its own instead of setting a context variable per call (a set builds
objects that would live across each model call's await), so these are the places where a
slot could be read by the wrong code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import tether
from tether._core.positions import pin

# Events of the running flow, made on its loop when first asked for (see `_event`).
_events: dict[str, asyncio.Event] = {}
_arrived: list[str] = []


@pytest.fixture(autouse=True)
def _fresh_events() -> None:
    _events.clear()
    _arrived.clear()


def _event(name: str) -> asyncio.Event:
    if name not in _events:
        _events[name] = asyncio.Event()
    return _events[name]


def _where() -> str | None:
    return tether.current().position


@tether.checkpoint
def nested(tag: str) -> str | None:
    """Called inside another checkpoint: part of it, recorded nowhere."""
    return _where()


@tether.checkpoint
async def step(tag: str) -> str | None:
    print(f"{tag} steps")
    await asyncio.sleep(0)
    return _where()


@tether.checkpoint
def sync_step(tag: str) -> str | None:
    return _where()


@tether.checkpoint
async def fetch(tag: str) -> dict[str, Any]:
    before = _where()
    _arrived.append(tag)
    if len(_arrived) == 2:
        _event("both live").set()
    # Both gathered calls are inside their bodies at once before either goes on.
    await asyncio.wait_for(_event("both live").wait(), 30)
    print(f"fetched {tag}")
    inner = nested(tag)
    in_thread = await asyncio.to_thread(_print_and_tell, f"{tag} in a thread")
    return {"before": before, "after": _where(), "nested": inner, "thread": in_thread}


def _print_and_tell(text: str) -> str | None:
    print(text)
    return _where()


@tether.flow
async def gathered_calls() -> list[Any]:
    await step("first")  # 0: the flow's task has made a call (and has a slot) before
    pair = await asyncio.gather(fetch("a"), fetch("b"))  # 1, 2: each a task, in one branch
    between = sync_step("between")  # 3: a sync call in async flow code, on the loop thread
    _arrived.append("c")  # the next call needs nobody else to go on
    last = await fetch("c")  # 4
    return [*pair, between, last, _where()]


def test_calls_live_at_once_in_one_branch_each_see_their_own(client: tether.Client) -> None:
    handle = gathered_calls.run()
    a, b, between, c, after = handle.result(timeout=60)
    for call, position in ((a, "1"), (b, "2"), (c, "4")):
        assert call == {
            "before": position,
            "after": position,
            "nested": position,
            "thread": position,
        }
    assert (between, after) == ("3", None)
    record = client.get(handle.id)
    assert [(c.position, c.name) for c in record.checkpoints] == [
        ("0", "step"),
        ("1", "fetch"),
        ("2", "fetch"),
        ("3", "sync_step"),
        ("4", "fetch"),
    ]
    by_position: dict[str | None, str] = {}
    for r in client.logs(handle.id):
        by_position[r.position] = by_position.get(r.position, "") + r.message
    assert by_position == {
        "0": "first steps\n",
        "1": "fetched a\na in a thread\n",
        "2": "fetched b\nb in a thread\n",
        "4": "fetched c\nc in a thread\n",
    }


@tether.checkpoint
async def hold(tag: str) -> str | None:
    _event("creator inside").set()
    await asyncio.wait_for(_event("child done").wait(), 30)
    return _where()


async def _child() -> list[str | None]:
    # Only once its creator is inside a call of its own: that call is not this task's.
    # (No wait_for in flow code: its task would be a branch too.)
    await _event("creator inside").wait()
    seen = [await step("child"), await step("child again")]
    _event("child done").set()
    return seen


def _create_task(coro: Coroutine[Any, Any, list[str | None]]) -> asyncio.Task[Any]:
    return asyncio.create_task(coro)


def _create_pinned_task(coro: Coroutine[Any, Any, list[str | None]]) -> asyncio.Task[Any]:
    # A library's task (what the Pydantic AI adapter pins): it shares its creator's branch.
    pinned = pin()
    try:
        return asyncio.create_task(coro)
    finally:
        pinned.release()


_STARTS: dict[str, Callable[[Coroutine[Any, Any, list[str | None]]], asyncio.Task[Any]]] = {
    "branch": _create_task,
    "pinned": _create_pinned_task,
}


@tether.flow
async def creator_enters_a_call(how: str) -> list[Any]:
    first = await step("creator")  # 0: the creator's own calls come first, one after another
    child = _STARTS[how](_child())
    held = await hold("creator")  # inside it until the child's calls are done
    return [first, held, await child]


@pytest.mark.parametrize(
    ("how", "positions"),
    [
        ("branch", {"0": "step", "1.0": "step", "1.1": "step", "2": "hold"}),
        ("pinned", {"0": "step", "1": "hold", "2": "step", "3": "step"}),
    ],
)
def test_a_task_records_its_calls_while_its_creator_is_inside_one(
    client: tether.Client, how: str, positions: dict[str, str]
) -> None:
    handle = creator_enters_a_call.run(how)
    first, held, seen = handle.result(timeout=60)
    record = client.get(handle.id)
    assert {c.position: c.name for c in record.checkpoints} == positions
    [child_first, child_second] = [p for p, name in positions.items() if name == "step"][1:]
    assert (first, held, seen) == (
        "0",
        next(p for p, name in positions.items() if name == "hold"),
        [child_first, child_second],
    )
    logs = {r.position: r.message for r in client.logs(handle.id)}
    assert logs == {
        "0": "creator steps\n",
        child_first: "child steps\n",
        child_second: "child again steps\n",
    }


@tether.checkpoint
async def leaves_a_task(tag: str) -> str | None:
    _events["stray"] = asyncio.Event()
    _leftover.append(asyncio.create_task(_stray()))
    return _where()


_leftover: list[asyncio.Task[Any]] = []


async def _stray() -> str | None:
    # Runs on after the call that made it ended, while its creator is in its next call.
    await _event("next inside").wait()
    print("stray output")
    seen = _where()
    _event("stray done").set()
    return seen


@tether.checkpoint
async def next_call(tag: str) -> str | None:
    _event("next inside").set()
    await asyncio.wait_for(_event("stray done").wait(), 30)
    return _where()


@tether.flow
async def outlived() -> list[Any]:
    made = await leaves_a_task("maker")  # 0
    following = await next_call("next")  # 1
    return [made, following, await _leftover.pop()]


def test_a_task_that_outlives_its_call_never_lands_on_the_next(client: tether.Client) -> None:
    handle = outlived.run()
    made, following, stray = handle.result(timeout=60)
    # The task still sees the call it was made in, as a copy of its context would; what it
    # prints once that call is recorded is not kept, and never lands on another call.
    assert (made, following, stray) == ("0", "1", "0")
    assert [r.message for r in client.logs(handle.id)] == []
