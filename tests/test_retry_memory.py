"""`Client.retry()` forgets the memory writes at the positions it forgets: the calls that run
again write again, on gathered branches that really await."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import tether
from tether import memory

NS = "retried-notes"
runs: Counter[int] = Counter()
broken = {"draft 1": True}


@tether.checkpoint
async def draft(i: int) -> str:
    runs[i] += 1
    await asyncio.sleep(0)
    if i == 1 and broken["draft 1"]:
        raise ValueError("draft 1 is broken on purpose")
    return f"draft {i}, run {runs[i]}"


async def write_note(i: int) -> str:
    text = await draft(i)
    await asyncio.sleep(0)
    memory.set(f"note{i}", text, namespace=NS)
    return text


@tether.flow
async def drafting() -> list[str]:
    # Every branch finishes before the flow fails: branch 2 (positions 2.x, after the failed
    # call at 1.0 in program order) has written its note by then.
    done = await asyncio.gather(*(write_note(i) for i in range(3)), return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return [str(text) for text in done]


def test_a_retried_branch_writes_its_memory_again(client: tether.Client) -> None:
    runs.clear()
    broken["draft 1"] = True
    handle = drafting.run()
    with pytest.raises(tether.ExecutionFailed, match="broken on purpose"):
        handle.result(timeout=60)
    broken["draft 1"] = False
    retried = client.retry(handle.id)
    assert retried.result(timeout=60) == ["draft 0, run 1", "draft 1, run 2", "draft 2, run 2"]

    def values(key: str) -> list[object]:
        return [v.value for v in memory.history(key, namespace=NS)]

    assert values("note0") == ["draft 0, run 1"], "before the retry point: written once"
    assert values("note1") == ["draft 1, run 2"]
    # Forgotten by the retry and run again: the new value is written (the old version stays).
    assert values("note2") == ["draft 2, run 1", "draft 2, run 2"]
    assert memory.get("note2", namespace=NS) == "draft 2, run 2"
