"""Flows that use tether.memory, for tests that run them in this process or in children.

Crash injection, read from the environment of the process that runs the flow:
`MEMORY_CRASH=put:<n>` kills the process (SIGKILL) right after its n-th memory write
committed (before the flow's checkpoint row for that write is recorded);
`MEMORY_CRASH=commit:<position>` kills it right after the checkpoint row at that position
was committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import tether
import tether.ai
from tether._core import checkpoint as _checkpoint
from tether.store import _sql

_CRASH = os.environ.get("MEMORY_CRASH", "")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if _CRASH.startswith("put:"):
    _puts = 0
    _put = _sql.SqlStore.put_memory

    def _put_then_crash(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _puts
        stored = _put(self, *args, **kwargs)
        _puts += 1
        if _puts == int(_CRASH.partition(":")[2]):
            _kill()
        return stored

    _sql.SqlStore.put_memory = _put_then_crash  # type: ignore[method-assign]

if _CRASH.startswith("commit:"):

    def _after_commit(run: Any, position: str) -> None:
        if position == _CRASH.partition(":")[2]:
            _kill()

    _checkpoint._after_commit = _after_commit


@tether.checkpoint
def mark(label: str) -> str:
    return label


@tether.flow
def counter(namespace: str, steps: int) -> list[int]:
    """Read a counter, write it plus one, `steps` times: positions 2i (get) and 2i+1 (set)."""
    seen = []
    for _ in range(steps):
        current = tether.memory.get("count", 0, namespace=namespace)
        seen.append(current)
        tether.memory.set("count", current + 1, namespace=namespace)
    return seen


@tether.flow
def reader(namespace: str) -> list[Any]:
    """Position 0 reads "doc", 1 is a checkpoint, 2 reads "doc" again."""
    first = tether.memory.get("doc", namespace=namespace)
    mark("between")
    second = tether.memory.get("doc", namespace=namespace)
    return [first, second]


@tether.flow
def waiter(namespace: str) -> dict[str, Any]:
    """Reads and writes, then waits for input: it resumes by replay after the input."""
    before = tether.memory.get("doc", namespace=namespace)
    written = tether.memory.set("mine", f"saw {before}")
    tether.wait("go")
    after = tether.memory.get("doc", namespace=namespace)
    return {
        "before": before,
        "after": after,
        "written": written,
        "mine": [v.version for v in tether.memory.history("mine")],
        "keys": tether.memory.list(),
    }


@tether.flow
def scoped(value: int) -> dict[str, Any]:
    """The default scope in a flow is the execution; `scope="flow"` is shared by all runs,
    which count themselves with a read-modify-write that concurrent runs cannot interleave."""
    tether.memory.set("own", value)
    while True:
        current = tether.memory.latest("runs", scope="flow")
        runs = current.value if current is not None else 0
        try:
            tether.memory.set(
                "runs", runs + 1, scope="flow", if_version=current.version if current else 0
            )
        except tether.errors.MemoryConflictError:
            continue  # another run counted itself meanwhile: read again
        return {"own": tether.memory.get("own"), "runs": runs + 1}


@tether.flow
def unstorable() -> int:
    """A write of a value that cannot be stored fails before it takes a position."""
    with contextlib.suppress(tether.SerializationError):
        tether.memory.set("k", threading.Lock())
    return tether.memory.set("k", 1)


@tether.flow
def forkable(tag: str) -> dict[str, Any]:
    """Execution-scoped writes and reads around two checkpoints, for replays (forks)."""
    tether.memory.set("notes", [tag])  # 0
    mark("first")  # 1
    tether.memory.set("notes", [tag, "more"])  # 2
    seen = tether.memory.get("notes")  # 3
    mark("second")  # 4
    return {
        "seen": seen,
        "now": tether.memory.get("notes"),  # 5
        "versions": [v.version for v in tether.memory.history("notes")],  # 6
    }


# --- a chat kept in memory --------------------------------------------------------------------


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = sum(isinstance(m, ModelResponse) for m in messages) + 1
    return ModelResponse(parts=[TextPart(f"answer {turn}: " + "durable execution " * 12)])


chat_agent = tether.ai.durable(Agent(FunctionModel(_answer)))


@tether.flow
async def chat(conversation: str, turns: int) -> int:
    """A conversation of `turns` turns, its history kept in `tether.memory` under the
    conversation's namespace and read back before each turn."""
    for turn in range(1, turns + 1):
        history = tether.memory.get("history", [], namespace=conversation, type=list[ModelMessage])
        result = await chat_agent.run(f"question {turn}", message_history=history)
        tether.memory.set("history", result.all_messages(), namespace=conversation)
    final = tether.memory.get("history", [], namespace=conversation)
    return len(final)


@tether.flow
async def chat_whole_value(conversation: str, turns: int) -> int:
    """The naive way: the whole history as one value (a dict) every turn."""
    for turn in range(1, turns + 1):
        stored = tether.memory.get("history", {"messages": []}, namespace=conversation)
        result = await chat_agent.run(f"question {turn}", message_history=stored["messages"])
        tether.memory.set("history", {"messages": result.all_messages()}, namespace=conversation)
    return turns
