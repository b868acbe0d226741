"""Async executions as tasks on one shared event loop: concurrency, suspension, cancel,
group commit, crashes, and the slow-callback warning."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sqlite3
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import loop_flows
import tether
from backend import BACKEND
from helpers import retry_until, run_child
from tether import Status
from tether._core.config import store_for
from tether._runtime.executor import executor
from tether._runtime.loop import shared_loop
from tether.store import CheckpointRow, Claim, Commit, ExecutionRow


def test_hundreds_of_async_executions_run_at_once_on_one_loop_thread(db_url: str) -> None:
    n = 500
    loop_flows.expect_meeting(n)  # each waits in its first step until all n are in it
    handles = [loop_flows.meeting.run(i) for i in range(n)]
    results = [h.result(timeout=120) for h in handles]
    assert [r["value"] for r in results] == [i * 2 for i in range(n)]
    threads = {t for r in results for t in r["threads"]}
    assert len(threads) == 1
    assert {r["name"] for r in results} == {"tether-loop"}
    assert threads != {threading.get_ident()}


def test_a_suspended_branch_unwinds_the_execution_while_a_sibling_is_mid_checkpoint(
    db_url: str, client: tether.Client
) -> None:
    loop_flows.calls.clear()
    loop_flows._blocked_once.clear()
    handle = loop_flows.gather_with_wait.run(41)
    retry_until(lambda: handle.status() == Status.WAITING, what="the execution to wait")
    # The sibling was in its checkpoint when the wait suspended: it was cancelled with it.
    retry_until(lambda: "slow_step cancelled" in loop_flows.calls, what="the sibling cancelled")
    assert [c.name for c in client.get(handle.id).checkpoints] == []
    client.input(handle.id, "go", "went")
    assert handle.result(timeout=30) == [42, "went"]
    # The interrupted call ran again once, and only that.
    assert loop_flows.calls == ["slow_step started", "slow_step cancelled", "slow_step started"]
    assert [c.name for c in client.get(handle.id).checkpoints] == ["slow_step"]


def test_cancel_of_one_execution_among_many(db_url: str, client: tether.Client) -> None:
    loop_flows.gate["open"] = False
    handles = [loop_flows.gated.run(i, 3) for i in range(20)]
    victim = handles[7]
    retry_until(lambda: victim.status() == Status.RUNNING, what="the victim running")
    client.cancel(victim.id)
    loop_flows.gate["open"] = True
    with pytest.raises(tether.ExecutionCancelled):
        victim.result(timeout=30)
    for i, handle in enumerate(handles):
        if handle is not victim:
            assert handle.result(timeout=30) == 3 * i


_LIMITED = """
import loop_flows
from helpers import retry_until
from tether._runtime.executor import executor

handles = [loop_flows.limited.run(i) for i in range(5)]
runner = executor()


def two_run_and_three_wait() -> bool:
    with runner._lock:
        unprepared = sum(1 for held in runner._held.values() if held.run is None)
    return (
        loop_flows.slots_seen["inside"] == 2
        and runner._async_running == 2 and len(runner._slot_waiters) == 3 and unprepared == 3
    )


retry_until(two_run_and_three_wait, what="two executions in their bodies, three waiting for a slot")
loop_flows.slot_gate.set()
print([h.result(timeout=60) for h in handles], loop_flows.slots_seen["peak"])
"""


def test_async_executions_beyond_max_async_wait_for_a_slot_and_then_run(db_url: str) -> None:
    """The slots are taken and given back in the execution's own task, around the engine's
    work: the executions past `max_async` wait (leases kept, nothing prepared) and run as
    slots free, and every slot comes back."""
    done = run_child(_LIMITED, db_url, TETHER_MAX_ASYNC="2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 2, 3, 4] 2"


def test_a_thread_waiting_for_a_change_or_a_free_slot_is_woken_by_an_end(db_url: str) -> None:
    """An end notifies only while a thread waits (`Holds._change_waiters`): one that does is
    woken by it, not by its minute's timeout."""
    runner = executor()
    loop_flows.gate["open"] = False
    handle = loop_flows.gated.run(1, 1)
    retry_until(lambda: handle.status() == Status.RUNNING, what="the execution running")
    waiters = [
        threading.Thread(target=runner.wait_for_change, args=(60,)),
        threading.Thread(target=runner.wait_for_free, args=(60,)),
    ]
    for thread in waiters:
        thread.start()
    retry_until(
        lambda: runner._change_waiters >= 1 and runner._free_waiters >= 1, what="both waiting"
    )
    loop_flows.gate["open"] = True
    assert handle.result(timeout=30) == 1
    for thread in waiters:
        thread.join(timeout=30)
        assert not thread.is_alive(), "not woken by the end"


@pytest.mark.skipif(
    BACKEND == "postgres",
    reason="on PostgreSQL a checkpoint's own statement is a batch of the group commit too",
)
def test_a_lone_async_execution_commits_its_checkpoints_itself_and_many_share_batches(
    db_url: str,
) -> None:
    """Alone on the loop, an execution writes each checkpoint on the loop thread (one
    statement costs less than the trip to the committer's thread and back): only its end
    goes through the group commit. Among others, its checkpoints go there too."""
    loop_flows.gate["open"] = True
    group: Any = store_for(db_url)._group  # type: ignore[attr-defined]
    before = group.batches
    assert loop_flows.gated.run(1, 5).result(timeout=60) == 5
    assert group.batches - before == 1  # the end
    before = group.batches
    handles = [loop_flows.gated.run(i, 5) for i in range(20)]
    assert [h.result(timeout=60) for h in handles] == [5 * i for i in range(20)]
    assert group.batches - before > 1  # their ends alone would be one batch, or a few


def test_a_slot_handed_to_an_execution_cancelled_meanwhile_passes_to_the_next() -> None:
    """The slot goes to a waiting execution's task before it runs again; if that task is
    cancelled in between (its loop shutting down), the slot is not lost with it."""
    runner = executor()

    async def main() -> tuple[int, int]:
        saved = (runner._async_running, runner._async_limit, runner._slot_waiters)
        runner._async_running, runner._async_limit = 1, 1
        runner._slot_waiters = type(saved[2])()
        try:
            first = asyncio.create_task(runner._wait_for_slot())
            second = asyncio.create_task(runner._wait_for_slot())
            await asyncio.sleep(0)  # one turn of the loop: both tasks run to their wait
            assert len(runner._slot_waiters) == 2
            runner._free_slot()  # to `first`, whose task is cancelled before it resumes
            first.cancel()
            await asyncio.wait_for(second, timeout=30)
            assert first.cancelled()
            taken = runner._async_running
            runner._free_slot()
            return taken, runner._async_running
        finally:
            runner._async_running, runner._async_limit, runner._slot_waiters = saved

    assert asyncio.run(main()) == (1, 0)


def test_a_task_the_flow_body_leaves_behind_is_cancelled_before_the_execution_ends(
    db_url: str,
) -> None:
    """The run notes the body's tasks in a set it makes at the first one; what is left when
    the body returns is cancelled and awaited before the end is recorded, for each of many
    executions at once (and a body that makes none keeps no set)."""
    loop_flows.left_behind.clear()
    handles = [loop_flows.leaves_a_task.run(i) for i in range(20)]
    assert [h.result(timeout=60) for h in handles] == list(range(20))
    assert sorted(loop_flows.left_behind) == sorted(f"{i} cancelled" for i in range(20))


def test_an_execution_waiting_on_what_nothing_else_holds_survives_a_full_collection(
    db_url: str,
) -> None:
    """asyncio keeps tasks only weakly: a task awaiting a future that nothing else refers to
    is garbage to the collector unless tether keeps it while the execution is held (its
    hold does). Collected, the executions would never end, and their futures would be gone."""
    n = 20
    handles = [loop_flows.unreferenced_wait.run(i) for i in range(n)]
    retry_until(lambda: len(loop_flows.unheld) == n, what=f"{n} executions awaiting a future")
    gc.collect()
    futures = dict(loop_flows.unheld)
    assert sorted(futures) == list(range(n)), "tasks of live executions were collected"
    loop = shared_loop().loop
    for i, future in futures.items():
        loop.call_soon_threadsafe(future.set_result, i * 3)
    del futures
    assert [h.result(timeout=60) for h in handles] == [i * 3 for i in range(n)]


def test_awaiting_many_handles_holds_no_thread_each(db_url: str) -> None:
    async def main() -> list[int]:
        loop_flows.gate["open"] = True
        handles = [loop_flows.gated.run(i, 2) for i in range(200)]
        before = threading.active_count()
        results = await asyncio.gather(*(h.result_async(timeout=60) for h in handles))
        # The waits share the loop; at most a few pool threads read the store for them.
        assert threading.active_count() - before < 40
        return list(results)

    assert asyncio.run(main()) == [2 * i for i in range(200)]


def test_executions_ending_together_share_the_commits_of_their_ends(db_url: str) -> None:
    n = 200
    group = store_for()._group  # type: ignore[attr-defined]
    loop_flows.expect_meeting(n)  # none ends before all n are running
    # Counted from before the starts (they have a group commit of their own, and the flow
    # commits no checkpoint): the ends may all be written before the last start returns.
    before = group.batches
    handles = [loop_flows.meet_and_end.run(i) for i in range(n)]
    assert [h.result(timeout=60) for h in handles] == list(range(n))
    ends = group.batches - before
    # Every end went through the group commit, most of them together.
    assert 0 < ends < n // 2, ends


def _held_rows(store: Any, ids: list[str]) -> dict[str, str]:
    tokens = {}
    for eid in ids:
        row = ExecutionRow(id=eid, flow="f", import_path="m:f", script=None, args="{}",
                           status="running", created_at=1.0, updated_at=1.0)  # fmt: skip
        row.owner, row.lease_token, row.lease_expires = "me", f"token-{eid}", time.time() + 60
        store.create_execution(row)
        tokens[eid] = f"token-{eid}"
    return tokens


def _one_sqlite_batch(
    store: Any, path: str, first: Any, rest: list[Any]
) -> tuple[list[Any], list[int]]:
    """Await `first` (a commit), then the commits of `rest` queued while the writer is held
    on the file's lock, so that `rest` is one batch; their outcomes and the batch sizes."""
    batches: list[int] = []
    write = store._write_group

    def spy(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return write(batch)  # type: ignore[no-any-return]

    store._group._write = spy
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer's first batch waits

    async def main() -> list[Any]:
        group = store._group
        head = asyncio.ensure_future(first())
        deadline = time.monotonic() + 10
        while group._queue or group._inbox or not group._leading:  # the writer is blocked
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        tail = [asyncio.ensure_future(make()) for make in rest]
        while len(group._queue) + len(group._inbox) < len(tail):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        blocker.execute("ROLLBACK")
        return list(await asyncio.gather(head, *tail))

    try:
        return asyncio.run(main()), batches
    finally:
        blocker.close()


def _ckpt(position: str, status: str = "succeeded", result: str = "1") -> CheckpointRow:
    return CheckpointRow(position=position, name="step", fingerprint="fp", status=status,
                         result=result, started_at=1.0, finished_at=2.0)  # fmt: skip


@pytest.mark.skipif(BACKEND == "postgres", reason="the SQLite group commit")
def test_a_stale_holders_end_in_a_shared_batch_is_refused_and_the_others_commit(
    db_url: str,
) -> None:
    store: Any = store_for()
    path = db_url.partition("///")[2]
    tokens = _held_rows(store, ["e0", "e1", "e2", "e3", "e4"])
    # e2 was taken over by another process: its end, from the old holder, must write nothing.
    assert store.claim(
        "e2", Claim("other", "stolen", time.time() + 60), from_statuses=("running",),
        expected_token="token-e2", now=time.time(),
    )  # fmt: skip
    row0 = CheckpointRow(position="0", name="step", fingerprint="fp", status="succeeded",
                         result="1", started_at=1.0, finished_at=2.0)  # fmt: skip

    def commit(eid: str) -> Any:
        return lambda: store.record_checkpoint_async(eid, tokens[eid], row0)

    def end(eid: str, status: str = "succeeded") -> Any:
        return lambda: store.finish_async(eid, tokens[eid], status=status, result='"r"',
                                          error=None, now=5.0)  # fmt: skip

    results, batches = _one_sqlite_batch(
        store, path, commit("e0"),
        # e1's last checkpoint, then its end
        [commit("e1"), end("e1"), end("e2"), end("e3", "failed"), end("e4")],
    )  # fmt: skip
    assert results == [Commit.COMMITTED, Commit.COMMITTED, True, False, True, True]
    assert batches == [1, 5]  # the five queued meanwhile shared one transaction
    found = {eid: store.get_execution(eid) for eid in tokens}
    assert {eid: (r.status, r.lease_token) for eid, r in found.items() if r} == {
        "e0": ("running", "token-e0"), "e1": ("succeeded", None), "e2": ("running", "stolen"),
        "e3": ("failed", None), "e4": ("succeeded", None),
    }  # fmt: skip
    assert (found["e1"].result, found["e1"].finished_at) == ('"r"', 5.0)
    assert [c.position for c in store.get_checkpoints("e1")] == ["0"]


@pytest.mark.skipif(BACKEND == "postgres", reason="the SQLite group commit")
def test_a_sqlite_batch_answers_each_checkpoint_commit_on_its_own(db_url: str) -> None:
    # One batch of checkpoint commits that cannot all be written: a stale token, a call
    # already final, a retrying row to replace, a cancel request, and plain ones. Each caller
    # learns its own outcome, and only what may be written is.
    store: Any = store_for()
    path = db_url.partition("///")[2]
    tokens = _held_rows(store, ["e0", "e1", "e2", "e3", "e4", "e5"])
    assert store.claim(
        "e2", Claim("other", "stolen", time.time() + 60), from_statuses=("running",),
        expected_token="token-e2", now=time.time(),
    )  # fmt: skip
    assert store.record_checkpoint("e4", tokens["e4"], _ckpt("0", result="final"))
    assert store.record_checkpoint("e5", tokens["e5"], _ckpt("0", "retrying", None))
    assert store.request_cancel("e3", now=time.time()) is not None

    def commit(eid: str, result: str) -> Any:
        return lambda: store.record_checkpoint_async(eid, tokens[eid], _ckpt("0", result=result))

    results, batches = _one_sqlite_batch(
        store, path, commit("e0", "a"),
        [commit("e1", "b"), commit("e2", "c"), commit("e3", "d"), commit("e4", "e"),
         commit("e5", "f")],
    )  # fmt: skip
    assert results == [
        Commit.COMMITTED, Commit.COMMITTED, Commit.LOST, Commit.CANCEL_REQUESTED, Commit.LOST,
        Commit.COMMITTED,
    ]  # fmt: skip
    assert batches == [1, 5]
    found = {eid: [(c.status, c.result) for c in store.get_checkpoints(eid)] for eid in tokens}
    assert found == {
        "e0": [("succeeded", "a")], "e1": [("succeeded", "b")], "e2": [],
        "e3": [("succeeded", "d")], "e4": [("succeeded", "final")], "e5": [("succeeded", "f")],
    }  # fmt: skip


@pytest.mark.skipif(BACKEND == "postgres", reason="the SQLite group commit")
def test_a_sqlite_batch_written_whole_is_one_pass_and_still_tells_each_its_cancel(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every row can be written: the batch takes the one-step path (no row-by-row answer),
    # and a cancel request still reaches its own caller only.
    from tether.store import sqlite as _sqlite

    store: Any = store_for()
    path = db_url.partition("///")[2]
    tokens = _held_rows(store, ["e0", "e1", "e2", "e3"])
    assert store.request_cancel("e2", now=time.time()) is not None
    answered_each: list[int] = []
    each = _sqlite.SQLiteStore._write_each

    def spy_each(self: Any, batch: list[Any]) -> Any:
        answered_each.append(len(batch))
        return each(self, batch)

    monkeypatch.setattr(_sqlite.SQLiteStore, "_write_each", spy_each)

    def commit(eid: str) -> Any:
        return lambda: store.record_checkpoint_async(eid, tokens[eid], _ckpt("0"))

    def end(eid: str) -> Any:
        return lambda: store.finish_async(eid, tokens[eid], status="succeeded", result='"r"',
                                          error=None, now=5.0)  # fmt: skip

    results, batches = _one_sqlite_batch(
        store, path, commit("e0"), [commit("e1"), commit("e2"), end("e3")]
    )
    assert results == [Commit.COMMITTED, Commit.COMMITTED, Commit.CANCEL_REQUESTED, True]
    assert batches == [1, 3]
    assert answered_each == [], "a batch written whole is not written again row by row"
    assert store.get_execution("e3").status == "succeeded"
    assert [c.result for c in store.get_checkpoints("e2")] == ["1"]


@pytest.mark.skipif(BACKEND == "postgres", reason="the SQLite group commit")
def test_sqlite_group_commit_releases_each_caller_once_its_row_is_durable(db_url: str) -> None:
    store = store_for()
    path = db_url.partition("///")[2]
    tokens = {}
    for eid in ("e0", "e1", "e2", "e3"):
        row = ExecutionRow(id=eid, flow="f", import_path="m:f", script=None, args="{}",
                           status="queued", created_at=1.0, updated_at=1.0)  # fmt: skip
        claim = Claim("me", f"token-{eid}", time.time() + 60)
        row.owner, row.lease_token, row.lease_expires = claim.owner, claim.token, claim.expires
        store.create_execution(row)
        tokens[eid] = claim.token
    # e2's lease is taken over by someone else: its commit must write nothing.
    assert store.claim(
        "e2", Claim("other", "stolen", time.time() + 60), from_statuses=("queued",),
        expected_token="token-e2", now=time.time(),
    )  # fmt: skip
    batches: list[int] = []
    write = store._write_group  # type: ignore[attr-defined]

    def spy(batch: list[Any]) -> list[Commit]:
        batches.append(len(batch))
        return write(batch)  # type: ignore[no-any-return]

    store._group._write = spy  # type: ignore[attr-defined]

    def row(position: str) -> CheckpointRow:
        return CheckpointRow(position=position, name="step", fingerprint="fp", status="succeeded",
                             result="1", started_at=1.0, finished_at=2.0)  # fmt: skip

    def committed() -> set[str]:
        with sqlite3.connect(path) as conn:
            return {r[0] for r in conn.execute("SELECT execution_id FROM checkpoints")}

    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer's first batch waits

    async def main() -> list[Commit]:
        group = store._group  # type: ignore[attr-defined]
        first = asyncio.ensure_future(store.record_checkpoint_async("e0", tokens["e0"], row("0")))
        deadline = time.monotonic() + 10
        # Until the writer took it and is writing (blocked on the lock).
        while group._queue or group._inbox or not group._leading:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        rest = [
            asyncio.ensure_future(store.record_checkpoint_async(e, tokens[e], row("0")))
            for e in ("e1", "e2", "e3")
        ]
        while len(group._queue) + len(group._inbox) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        # Nothing is durable yet, so nobody was released.
        assert not first.done() and not any(f.done() for f in rest)
        assert committed() == set()
        blocker.execute("ROLLBACK")
        return list(await asyncio.gather(first, *rest))

    results = asyncio.run(main())
    blocker.close()
    assert results == [Commit.COMMITTED, Commit.COMMITTED, Commit.LOST, Commit.COMMITTED]
    assert committed() == {"e0", "e1", "e3"}
    assert batches == [1, 3]  # the three queued meanwhile shared one transaction


def _warnings(client: tether.Client, execution_id: str) -> list[Any]:
    return [e for e in client.get(execution_id).events if e.kind == "warning"]


@pytest.mark.parametrize(
    "flow",
    [
        loop_flows.blocks_the_loop,
        loop_flows.blocks_the_loop_sync,
        loop_flows.blocks_in_a_nested_branch,
        loop_flows.blocks_after_bursts,
    ],
    ids=["async-checkpoint", "sync-checkpoint", "nested-gathered-branch", "after-busy-branches"],
)
def test_a_blocking_call_in_a_checkpoint_is_named_in_a_warning(
    db_url: str, client: tether.Client, flow: Any
) -> None:
    tether.configure(slow_callback_seconds=0.3)
    handle = flow.run(1.5)  # blocks five times the threshold
    handle.result(timeout=30)
    events = retry_until(lambda: _warnings(client, handle.id), what="the slow-callback warning")
    (blocker,) = [c for c in client.get(handle.id).checkpoints if c.name.startswith("sleeps_")]
    assert len(events) == 1  # once per stall
    assert blocker.name in events[0].message
    assert "blocked the event loop" in events[0].message
    assert events[0].position == blocker.position


def test_a_pure_python_loop_in_a_checkpoint_is_named_in_a_warning(
    db_url: str, client: tether.Client
) -> None:
    # No sample finds the same innermost frame twice here (the loop calls a function all
    # the time); the checkpoint's own call is the same at every one.
    tether.configure(slow_callback_seconds=0.3)
    handle = loop_flows.burns_the_loop.run(1.5)
    assert handle.result(timeout=30) > 0
    events = retry_until(lambda: _warnings(client, handle.id), what="the slow-callback warning")
    assert "burns_cpu" in events[0].message
    assert "blocked the event loop" in events[0].message
    assert events[0].position == "0"


def test_a_loop_busy_with_many_short_branches_accuses_no_checkpoint(
    db_url: str, client: tether.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Each branch runs 2 ms, 300 of them ready at once keep one turn of the loop busy for
    # far longer than the threshold: the watchdog sees the loop late, and whatever branch
    # it samples is innocent. It used to name that one's checkpoint in a warning event.
    tether.configure(slow_callback_seconds=0.15)
    with caplog.at_level(logging.INFO, logger="tether.loop"):
        handles = [loop_flows.many_bursts.run(300, 0.002) for _ in range(3)]
        assert [h.result(timeout=60) for h in handles] == [sum(range(300))] * 3
        for handle in handles:
            assert _warnings(client, handle.id) == []
        # Proof that the loop really was late beyond the threshold (logged once it turns).
        retry_until(lambda: "event loop is saturated" in caplog.text, what="the saturated log")
    accusations = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and ("blocked" in r.getMessage() or "blocks it" in r.getMessage())
    ]
    assert accusations == []
    # Said at INFO: nothing is at fault.
    assert {r.levelno for r in caplog.records if "saturated" in r.getMessage()} == {logging.INFO}


def test_a_stall_while_the_loop_was_idle_blames_the_cpu_not_the_selector(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An idle loop thread sits in its selector's wait; a stall seen then (its select returned
    # but the thread did not get the GIL back) is no code of the user's, and saying that
    # "select blocks it" sent people looking for a blocking call that was not there.
    handle = loop_flows.steady.run(1)
    handle.result(timeout=30)
    loop = shared_loop()
    frame = retry_until(
        lambda: (
            (f := sys._current_frames().get(loop.thread.ident or 0)) and "select" in str(f) and f
        ),
        what="the loop thread to wait in its selector",
    )
    with caplog.at_level(logging.WARNING, logger="tether"):
        loop._report(1.5, frame)
    assert "had nothing to run" in caplog.text
    assert "holds the GIL" in caplog.text
    assert "select" not in caplog.text


KILLED = textwrap.dedent(
    """
    import loop_flows
    handles = [loop_flows.steady.run(i) for i in range(50)]
    print(" ".join(h.id for h in handles), flush=True)
    for h in handles:
        h.result(timeout=60)
    """
)
RECOVER = textwrap.dedent(
    """
    import json, tether, loop_flows
    client = tether.Client()
    ids = client.recover()
    print(json.dumps({i: client.handle(i).result(timeout=60) for i in ids}), flush=True)
    """
)


def test_sigkill_with_fifty_async_executions_in_flight_then_recover(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    import json

    effects = tmp_path / "effects.log"
    crashed = run_child(KILLED, db_url, SIDE_EFFECTS=str(effects), KILL_AFTER_COMMITS="200")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    ids = crashed.stdout.split()
    assert len(ids) == 50
    committed = {(e, c.position) for e in ids for c in client.get(e).checkpoints}
    assert 200 <= len(committed) < 500

    resumed = run_child(RECOVER, db_url, SIDE_EFFECTS=str(effects))
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads(resumed.stdout)
    assert sorted(results) == sorted(ids)
    for i, execution_id in enumerate(ids):
        assert results[execution_id] == loop_flows.steady_expected(i)
        assert client.get(execution_id).status == Status.SUCCEEDED
    ran = Counter(tuple(line.split()[::-1]) for line in effects.read_text().splitlines())
    # No committed call ran again; every call ran at least once.
    assert all(ran[key] == 1 for key in committed)
    assert {key for key in ran} == {(e, str(p)) for e in ids for p in range(10)}


def test_an_async_execution_resumed_without_its_flow_in_hand_stays_held_while_it_runs(
    db_url: str,
) -> None:
    """A resume (a takeover, an adopted or parked execution) starts with no flow: a thread
    looks it up and moves it to the loop. The hold, and so the lease's renewal, must go with
    it, not end with that thread."""
    loop_flows.gate["open"] = False
    tether.configure(executor=False)
    handle = loop_flows.gated.enqueue(5, 1)
    tether.configure(executor=True)
    store = store_for(db_url)
    running = executor()
    claim = running.claim()
    assert store.claim_runnable(claim, now=time.time(), due=time.time()) is not None
    running.start(store, handle.id, claim.token, None, claimed=True)
    try:

        def renewed() -> bool:
            row = store.get_execution(handle.id)
            return row is not None and (row.lease_expires or 0) > claim.expires

        retry_until(renewed, timeout=10, what="the heartbeat to renew its lease")
        assert running.holds(store, handle.id), "held while it runs on the loop"
    finally:
        loop_flows.gate["open"] = True
    assert handle.result(timeout=30) == 5
    retry_until(lambda: not running.holds(store, handle.id), what="the hold to end")
