"""Branch-scoped positions: concurrent branches keep their own identities on every run.

Each flow here makes every call echo a unique argument, so a call that received another
call's recorded result would show it in the flow's result (and as a "called with different
arguments" warning). The flows suspend at a wait after their concurrent part, so the result
is produced by a *resumed* run, in which recorded calls return at once and the branches
interleave differently than they did live.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections import Counter
from typing import Any

import pytest

import tether
from helpers import retry_until, run_child
from tether import Status
from tether.errors import BranchKeyInUse, UsageError
from tether.store._positions import escape_key

ran: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()


@tether.checkpoint
async def fetch(tag: str, delay: float = 0.0) -> str:
    ran[tag] += 1
    await asyncio.sleep(delay)  # a real await: the other branch runs meanwhile
    return f"{tag}-result"


async def two_fetches(name: str, first_delay: float) -> list[str]:
    first = await fetch(f"{name}1", first_delay)
    second = await fetch(f"{name}2")
    return [first, second]


@tether.flow
async def gathered() -> list[list[str]]:
    # A's first call finishes last: live, B calls its second fetch before A does.
    pair = await asyncio.gather(two_fetches("A", 0.05), two_fetches("B", 0.0))
    tether.wait("go", schema=bool)
    return list(pair)


def _resume_after_input(client: tether.Client, handle: tether.Handle[Any], name: str) -> Any:
    retry_until(lambda: handle.status() is Status.WAITING, what=f"{handle.id} to wait")
    client.input(handle.id, name, True)
    return handle.result(timeout=30)


def _warnings(client: tether.Client, execution_id: str) -> list[str]:
    return [e.message for e in client.get(execution_id).events if e.kind == "warning"]


def test_gathered_branches_that_await_keep_their_results_on_resume(client: tether.Client) -> None:
    handle = gathered.run()
    assert _resume_after_input(client, handle, "go") == [
        ["A1-result", "A2-result"],
        ["B1-result", "B2-result"],
    ]
    record = client.get(handle.id)
    assert [(c.position, c.name, c.result) for c in record.checkpoints] == [
        ("0.0", "fetch", "A1-result"),
        ("0.1", "fetch", "A2-result"),
        ("1.0", "fetch", "B1-result"),
        ("1.1", "fetch", "B2-result"),
    ]
    assert [(w.position, w.name) for w in record.waits] == [("2", "go")]
    assert _warnings(client, handle.id) == []
    assert ran == Counter({"A1": 1, "A2": 1, "B1": 1, "B2": 1})


async def item_worker(queue: asyncio.Queue[int | None], out: dict[int, str]) -> None:
    while (item := await queue.get()) is not None:
        with tether.branch(f"item-{item}"):
            # Which worker takes which item depends on timing, live and on resume alike.
            out[item] = await fetch(f"item{item}", 0.01 * (item % 3))


@tether.flow
async def shared_queue(count: int) -> dict[int, str]:
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    for item in range(count):
        queue.put_nowait(item)
    out: dict[int, str] = {}
    workers = 3
    for _ in range(workers):
        queue.put_nowait(None)
    await asyncio.gather(*(item_worker(queue, out) for _ in range(workers)))
    tether.wait("go", schema=bool)
    return out


def test_named_branches_follow_the_item_whichever_task_runs_it(client: tether.Client) -> None:
    handle = shared_queue.run(7)
    result = _resume_after_input(client, handle, "go")
    assert result == {i: f"item{i}-result" for i in range(7)}
    record = client.get(handle.id)
    assert sorted(c.position for c in record.checkpoints) == sorted(
        f"[item-{i}].0" for i in range(7)
    )
    assert _warnings(client, handle.id) == []
    assert all(count == 1 for count in ran.values()) and len(ran) == 7


@tether.checkpoint
async def spawn_inside() -> int:
    # Tasks a checkpoint body creates are part of this one call: they take no slot.
    values = await asyncio.gather(*(asyncio.sleep(0, result=i) for i in range(3)))
    return sum(values)


@tether.flow
async def shapes() -> dict[str, Any]:
    first = await fetch("root0")
    inner = await spawn_inside()

    async def nested(name: str) -> list[Any]:
        here = await fetch(f"{name}-a", 0.01)
        deeper = await asyncio.gather(fetch(f"{name}-x"), two_fetches(f"{name}-y", 0.0))
        return [here, *deeper]

    async with asyncio.TaskGroup() as group:
        left = group.create_task(nested("L"))
        right = group.create_task(nested("R"))
    threaded = await asyncio.gather(asyncio.to_thread(lambda: "thread"))
    last = await fetch("root-last")
    tether.wait("go", schema=bool)
    return {
        "first": first,
        "inner": inner,
        "left": left.result(),
        "right": right.result(),
        "threaded": threaded,
        "last": last,
    }


def test_task_groups_nested_gathers_and_threads_number_branches_by_creation(
    client: tether.Client,
) -> None:
    handle = shapes.run()
    result = _resume_after_input(client, handle, "go")
    assert result == {
        "first": "root0-result",
        "inner": 3,
        "left": ["L-a-result", "L-x-result", ["L-y1-result", "L-y2-result"]],
        "right": ["R-a-result", "R-x-result", ["R-y1-result", "R-y2-result"]],
        "threaded": ["thread"],
        "last": "root-last-result",
    }
    positions = {c.result: c.position for c in client.get(handle.id).checkpoints}
    assert positions == {
        "root0-result": "0",
        3: "1",
        # The task group's two tasks: slots 2 and 3 of the flow body.
        "L-a-result": "2.0",
        "L-x-result": "2.1",  # called (so numbered) in nested()'s own branch
        "L-y1-result": "2.2.0",  # fetch took 2.1 when called; two_fetches its task, 2.2
        "L-y2-result": "2.2.1",
        "R-a-result": "3.0",
        "R-x-result": "3.1",
        "R-y1-result": "3.2.0",
        "R-y2-result": "3.2.1",
        # slot 4: the gathered to_thread's task; slot 5: the last call; 6: the wait
        "root-last-result": "5",
    }
    assert [w.position for w in client.get(handle.id).waits] == ["6"]
    assert _warnings(client, handle.id) == []
    assert all(count == 1 for count in ran.values())


@tether.checkpoint
def square(n: int) -> int:
    ran[f"square{n}"] += 1
    return n * n


@tether.flow
def mapped(count: int) -> list[int]:
    squares = square.map(range(count))
    extra = square.submit(100).result()
    tether.wait("go", schema=bool)
    return [*squares, extra]


def test_map_and_submit_take_positions_in_program_order(client: tether.Client) -> None:
    handle = mapped.run(5)
    assert _resume_after_input(client, handle, "go") == [0, 1, 4, 9, 16, 10000]
    record = client.get(handle.id)
    assert [(c.position, c.result) for c in record.checkpoints] == [
        ("0", 0), ("1", 1), ("2", 4), ("3", 9), ("4", 16), ("5", 10000),
    ]  # fmt: skip
    assert all(count == 1 for count in ran.values()), ran


@tether.flow
async def keyed_twice() -> list[str]:
    with tether.branch("k"):
        first = await fetch("k-first")
    with tether.branch("k"), tether.branch("inner"):
        nested = await fetch("k-inner")
    with tether.branch("k"):
        second = await fetch("k-second")
    return [first, nested, second]


def test_a_key_entered_again_continues_its_sequence_and_keys_nest(client: tether.Client) -> None:
    handle = keyed_twice.run()
    assert handle.result(timeout=30) == ["k-first-result", "k-inner-result", "k-second-result"]
    assert [c.position for c in client.get(handle.id).checkpoints] == [
        "[k].0",
        "[k].1",
        "[k].[inner].0",
    ]


@tether.flow
async def odd_keys() -> str:
    with tether.branch("a.b[c]%"):
        return await fetch("odd")


def test_keys_with_dots_and_brackets_are_escaped_in_positions(client: tether.Client) -> None:
    handle = odd_keys.run()
    assert handle.result(timeout=30) == "odd-result"
    (call,) = client.get(handle.id).checkpoints
    assert call.position == "[a%2Eb%5Bc%5D%25].0"


def test_branch_outside_a_flow_does_nothing_and_bad_keys_are_refused() -> None:
    with tether.branch("anything"):
        pass
    for bad in ("", None, 1.5, True):
        with pytest.raises(UsageError, match="branch key"), tether.branch(bad):  # type: ignore[arg-type]
            pass


def test_a_fork_from_a_branch_position_copies_what_comes_before_it(
    client: tether.Client,
) -> None:
    handle = gathered.run()
    _resume_after_input(client, handle, "go")
    fork = client.replay(handle.id, from_="1.0")
    retry_until(lambda: fork.status() is Status.WAITING, what="the fork to wait")
    copied = [
        (c.position, (c.metadata or {}).get("override")) for c in client.get(fork.id).checkpoints
    ]
    # Branch 0 (A) comes before 1.0 in program order; B's calls ran again, live.
    assert [p for p, _ in copied] == ["0.0", "0.1", "1.0", "1.1"]
    assert ran["B1"] == 2 and ran["A1"] == 1
    with pytest.raises(UsageError, match=r"recorded positions are 0\.0, 0\.1, 1\.0, 1\.1"):
        client.replay(handle.id, from_="7.7")


# --- one key, one live task: the README's queue pattern with a URL that appears twice ------

URL = "https://a.example/x"


def _at(key: str, n: int) -> str:
    """The stored position of the n-th call in `tether.branch(key)` at the flow's top."""
    return f"[{escape_key(key)}].{n}"


RESUME = """
import json, sys
import keyed_flows, tether
from helpers import retry_until
from tether import Status
client = tether.Client()
handle = client.resume(sys.argv[1])
retry_until(lambda: handle.status() is Status.WAITING, what="the resumed run to wait")
client.input(handle.id, "go", True)
print(json.dumps(handle.result(timeout=60)))
"""

START = """
import sys, keyed_flows
keyed_flows.crawl.run([sys.argv[1], sys.argv[1]], True).result(timeout=60)
"""


def _logged(path: Any) -> list[list[str]]:
    """The attempts `keyed_flows.fetch` logged: [position, url, item, result] each."""
    return [line.split(" ") for line in path.read_text().splitlines()]


def test_a_second_live_task_entering_a_held_key_fails_the_flow_naming_the_key(
    client: tether.Client, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyed_flows

    log = tmp_path / "calls.log"
    monkeypatch.setenv("SIDE_EFFECTS", str(log))
    handle = keyed_flows.crawl.run([URL, URL], False)
    with pytest.raises(tether.ExecutionFailed) as caught:
        handle.result(timeout=30)
    assert caught.value.error_type == "tether.errors.BranchKeyInUse"
    message = caught.value.message
    assert repr(URL) in message and "index" in message and "duplicates" in message
    # The second task was refused as it entered: every call made, and every call recorded,
    # is the first task's.
    assert {(item, position) for position, _, item, _ in _logged(log)} == {("0", _at(URL, 0))}
    assert [c.position for c in client.get(handle.id).checkpoints] in ([], [_at(URL, 0)])


def test_duplicate_items_keyed_by_index_keep_their_results_across_a_kill_and_resume(
    client: tether.Client, tmp_path: Any
) -> None:
    log = tmp_path / "calls.log"
    # Killed inside the second copy's second call, while the first copy's first call (slower)
    # is still in flight: of the four calls only [1:<url>].0 is recorded.
    crashed = run_child(START, client.db, URL, SIDE_EFFECTS=str(log), KILL_AT=_at(f"1:{URL}", 1))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = client.list()
    before = {c.position: c.result for c in client.get(execution.id).checkpoints}
    logged_before = {position: result for position, _, _, result in _logged(log)}
    assert _at(f"1:{URL}", 0) in before
    assert all(logged_before[p] == result for p, result in before.items())

    resumed = run_child(RESUME, client.db, execution.id, SIDE_EFFECTS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    output = json.loads(resumed.stdout)

    record = client.get(execution.id)
    assert record.status is Status.SUCCEEDED
    recorded = {c.position: c.result for c in record.checkpoints}
    # Each copy got the results of its own calls, in order, on the resumed run too.
    assert output == {
        str(i): [recorded[_at(f"{i}:{URL}", 0)], recorded[_at(f"{i}:{URL}", 1)]] for i in (0, 1)
    }
    attempts = _logged(log)
    # Every recorded result was produced by the worker on that copy (by its index)...
    made_by = {result: (position, item) for position, _, item, result in attempts}
    for position, result in recorded.items():
        assert position.startswith(f"[{made_by[result][1]}:"), (position, result)
        assert made_by[result][0] == position
    # ...what was recorded before the kill kept its result and did not run again, and only
    # calls in flight at the kill ran twice.
    for position, result in before.items():
        assert recorded[position] == result
    runs = Counter(position for position, *_ in attempts)
    assert set(runs) == set(recorded)
    assert all(runs[p] == 1 for p in before)
    assert max(runs.values()) <= 2
    assert _warnings(client, execution.id) == []


@tether.flow
async def key_taken_in_turn() -> list[str]:
    done = asyncio.Event()

    async def first() -> str:
        with tether.branch("k"):
            result = await fetch("first", 0.01)
        done.set()
        return result

    async def second() -> str:
        await done.wait()  # enters the key only once the first task has left it
        with tether.branch("k"):
            return await fetch("second")

    pair = await asyncio.gather(first(), second())
    tether.wait("go", schema=bool)
    return list(pair)


def test_a_key_left_by_one_task_continues_its_sequence_in_the_next(
    client: tether.Client,
) -> None:
    handle = key_taken_in_turn.run()
    assert _resume_after_input(client, handle, "go") == ["first-result", "second-result"]
    assert [(c.position, c.result) for c in client.get(handle.id).checkpoints] == [
        ("[k].0", "first-result"),
        ("[k].1", "second-result"),
    ]
    assert ran == Counter({"first": 1, "second": 1})


@tether.flow
async def key_in_two_threads() -> str:
    entered, refused = threading.Event(), threading.Event()

    def holder() -> str:
        with tether.branch("k"):
            entered.set()
            refused.wait(timeout=30)  # stay inside until the other thread has tried
        return "held"

    def intruder() -> str:
        entered.wait(timeout=30)
        try:
            with tether.branch("k"):
                return "entered"
        except BranchKeyInUse as exc:
            return f"refused {exc.key}"
        finally:
            refused.set()

    pair = await asyncio.gather(asyncio.to_thread(holder), asyncio.to_thread(intruder))
    return " / ".join(pair)


def test_a_key_held_by_a_thread_refuses_another_thread(client: tether.Client) -> None:
    assert key_in_two_threads.run().result(timeout=30) == "held / refused k"
