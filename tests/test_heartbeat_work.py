"""The heartbeat and the result waiters do work proportional to what changed: leases are
renewed only when due, progress is written only for calls live for a beat (and only when it
changed), and an execution's end wakes only the threads waiting for that execution."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from helpers import retry_until, spawn_child
from tether._core.config import store_for
from tether._runtime import executor as _executor
from tether._runtime import handle as _handle
from tether._runtime import heartbeat as _heartbeat
from tether.store import Store

HELD = 1_000

_gates: dict[int, asyncio.Future[None]] = {}


@tether.checkpoint
async def long_call(i: int) -> int:
    gate = asyncio.get_running_loop().create_future()
    _gates[i] = gate
    await gate
    return i


@tether.flow
async def parked(i: int) -> int:
    return await long_call(i)


def _open_gates(ids: Any = None) -> None:
    for i, gate in list(_gates.items()):
        if ids is None or i in ids:
            gate.get_loop().call_soon_threadsafe(_settle, gate)


def _settle(gate: asyncio.Future[None]) -> None:
    if not gate.done():
        gate.set_result(None)


class _Counted:
    """What the heartbeat asked of the store: every `renew` statement (the ids it names and
    the progress it writes) and every beat's read of cancel requests."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.renewals: list[tuple[list[str], dict[str, str | None]]] = []
        self.beats = 0
        renew, cancels = store.renew, store.cancel_requests

        def counting_renew(ids: Any, tokens: Any, expires: Any, progress: Any = None, **kw: Any):  # type: ignore[no-untyped-def]
            self.renewals.append((list(ids), dict(progress or {})))
            return renew(ids, tokens, expires, progress, **kw)

        def counting_cancels() -> list[tuple[str, str]]:
            self.beats += 1
            return cancels()

        monkeypatch.setattr(store, "renew", counting_renew)
        monkeypatch.setattr(store, "cancel_requests", counting_cancels)

    def progress_writes(self) -> list[str]:
        return [i for _, progress in self.renewals for i in progress]

    def renewed(self) -> list[str]:
        return [i for ids, _ in self.renewals for i in ids]


@pytest.fixture
def fast_beats(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_heartbeat, "_HEARTBEAT_SECONDS", 0.05)
    yield
    _open_gates()


def test_a_beat_writes_progress_once_per_live_call_and_renews_only_due_leases(
    db_url: str, fast_beats: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_for()
    counted = _Counted(store, monkeypatch)
    runner = _executor.executor()
    _gates.clear()
    handles = [parked.run(i) for i in range(HELD)]
    retry_until(lambda: len(_gates) == HELD, what="every execution to enter its call")
    client = tether.Client()
    retry_until(
        lambda: all(client.get(h.id).progress for h in handles[:: HELD // 10]),
        what="the heartbeat to publish the live calls",
    )
    beats, settled = counted.beats, len(counted.renewals)
    retry_until(lambda: counted.beats >= beats + 10, what="ten more beats")
    # A lease lasts 40 s (4/3 of the default 30): none came due in these beats. Each call
    # live for a beat was written once, in one statement per beat, and no beat since the
    # calls settled wrote anything (but the one in flight when they were seen settled, which
    # may have been writing the progress of calls that entered last).
    writes = counted.progress_writes()
    assert sorted(writes) == sorted(h.id for h in handles), "each live call's progress once"
    assert sorted(counted.renewed()) == sorted(writes), "no lease renewed before it was due"
    assert len(counted.renewals) <= counted.beats
    assert len(counted.renewals) <= settled + 1

    # Half the leases fall due (as if a third of a term passed for them): the next beat
    # renews exactly those, in one statement, and writes no progress.
    due = {h.id for h in handles[::2]}
    with runner._lock:
        for (_, execution_id), held in runner._held.items():
            if execution_id in due:
                held.expires = 0.0
    before = len(counted.renewals)
    retry_until(lambda: len(counted.renewals) > before, what="the due leases to be renewed")
    ids, progress = counted.renewals[before]
    assert sorted(ids) == sorted(due) and progress == {}
    beats = counted.beats
    retry_until(lambda: counted.beats >= beats + 5, what="five more beats")
    assert len(counted.renewals) == before + 1, "renewed leases are not due again at once"
    for execution_id in due:
        row = store.get_execution(execution_id)
        assert row is not None and row.lease_expires is not None
        assert row.lease_expires > row.created_at + 30

    _open_gates()
    for i, h in enumerate(handles):
        assert h.result(timeout=60) == i


def test_a_cancel_from_elsewhere_reaches_a_call_that_holds_its_lease(
    db_url: str, fast_beats: None
) -> None:
    """A lease not due is not renewed, so the beat's read of cancel requests tells the run."""
    _gates.clear()
    handle = parked.run(7)
    retry_until(lambda: 7 in _gates, what="the call to start")
    runner = _executor.executor()
    store = store_for()
    store.request_cancel(handle.id, now=0.0)  # as another process's Client does

    def told() -> bool:
        with runner._lock:
            held = runner._held.get((id(store), handle.id))
        return held is not None and held.run is not None and held.run.cancelled

    retry_until(told, what="the heartbeat to pass the cancel on")
    _open_gates({7})
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=60)


# --- result() waiters --------------------------------------------------------------------


WAITED = 200


def _count_reads(store: Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    reads: dict[str, int] = {}
    get = store.get_execution

    def counting_get(execution_id: str) -> Any:
        reads[execution_id] = reads.get(execution_id, 0) + 1
        return get(execution_id)

    monkeypatch.setattr(store, "get_execution", counting_get)
    return reads


def _waiting(runner: _executor.Executor) -> int:
    with runner._lock:
        return sum(w.count for w in runner._waiters.values())


def test_an_end_wakes_only_the_thread_waiting_for_that_execution(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fallback read of an execution held here is put out of reach: only wakes re-read.
    monkeypatch.setattr(_handle, "_HELD_POLL", 3600.0)
    store = store_for()
    runner = _executor.executor()
    _gates.clear()
    handles = [parked.run(i) for i in range(WAITED)]
    retry_until(lambda: len(_gates) == WAITED, what="every execution to enter its call")
    reads = _count_reads(store, monkeypatch)
    results: dict[int, int] = {}

    def wait(i: int) -> None:
        results[i] = handles[i].result(timeout=120)

    threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(WAITED)]
    for thread in threads:
        thread.start()
    retry_until(lambda: _waiting(runner) == WAITED, what="every thread to wait")
    assert len(runner._waiters) == WAITED, "one waiter entry per execution"
    first = dict(reads)
    assert all(first.get(h.id) == 1 for h in handles), "each waiter read its row once"
    for i in (3, 150, 42):
        _open_gates({i})
        threads[i].join(timeout=60)
        assert results[i] == i
        woken = {k: n - first.get(k, 0) for k, n in reads.items() if n != first.get(k, 0)}
        # A woken waiter of another execution would re-read its row; the ended one's handle
        # was told its result by the executor, so it reads nothing back.
        assert woken == {}, "no waiter re-read: only the ended one woke, and it was told"
        first = dict(reads)
    assert _waiting(runner) == WAITED - 3
    _open_gates()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {i: i for i in range(WAITED)}
    assert runner._waiters == {}, "the registry is empty once nobody waits"


def test_waiters_that_give_up_leave_no_entry_behind(db_url: str) -> None:
    runner = _executor.executor()
    _gates.clear()
    handle = parked.run(1)
    retry_until(lambda: 1 in _gates, what="the call to start")
    for _ in range(50):
        with pytest.raises(tether.ResultTimeout):
            handle.result(timeout=0.001)
    assert runner._waiters == {}

    async def give_up() -> None:
        with pytest.raises(tether.ResultTimeout):
            await handle.result_async(timeout=0.001)

    for _ in range(20):
        asyncio.run(give_up())
    with runner._lock:
        assert (id(store_for()), handle.id) not in runner._watchers
    _open_gates({1})
    assert handle.result(timeout=60) == 1
    assert runner._waiters == {}


def _watching(runner: _executor.Executor, key: tuple[int, str]) -> int:
    """How many awaiting handles watch the execution (one is kept without a list)."""
    with runner._lock:
        found = runner._watchers.get(key)
    return 0 if found is None else len(found) if isinstance(found, list) else 1


def test_handles_awaited_together_are_all_woken_and_cancelled_ones_leave_no_entry(
    db_url: str,
) -> None:
    runner = _executor.executor()
    _gates.clear()
    handle = parked.run(3)
    retry_until(lambda: 3 in _gates, what="the call to start")
    key = (id(store_for()), handle.id)

    async def main() -> list[int]:
        async def watched_by(n: int) -> None:
            for _ in range(4000):
                if _watching(runner, key) == n:
                    return
                await asyncio.sleep(0.005)
            raise AssertionError(f"{_watching(runner, key)} watchers, not {n}")

        async def cancelled(awaiting: asyncio.Future[int]) -> None:
            awaiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await awaiting

        for _ in range(5):  # one awaiting, cancelled: its entry goes with it
            alone: asyncio.Future[int] = asyncio.ensure_future(handle)
            await watched_by(1)
            await cancelled(alone)
            assert _watching(runner, key) == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(handle, 0.01)
        kept: list[asyncio.Future[int]] = [asyncio.ensure_future(handle) for _ in range(3)]
        dropped: asyncio.Future[int] = asyncio.ensure_future(handle)
        await watched_by(4)
        await cancelled(dropped)
        assert _watching(runner, key) == 3
        _open_gates({3})
        return list(await asyncio.wait_for(asyncio.gather(*kept), 60))

    assert asyncio.run(main()) == [3, 3, 3]
    assert _watching(runner, key) == 0


def test_a_waiter_returns_when_another_process_ends_the_execution(
    db_url: str, client: tether.Client
) -> None:
    import agent_flows

    tether.configure(executor=False)  # queued here, run by the other process alone
    queued = agent_flows.many_ticks.enqueue(4)
    done: list[Any] = []
    waiter = threading.Thread(target=lambda: done.append(queued.result(timeout=120)))
    waiter.start()
    retry_until(lambda: _waiting(_executor.executor()) == 1, what="the thread to wait")
    code = (
        "import tether, agent_flows\n"
        "ids = tether.Worker(imports=['agent_flows']).run_once()\n"
        "assert [tether.Client().handle(i).result(timeout=60) for i in ids] == [6]\n"
    )
    worker = spawn_child(code, db_url)
    assert worker.wait(timeout=120) == 0
    waiter.join(timeout=120)
    assert done == [6]
    assert _executor.executor()._waiters == {}


@pytest.mark.parametrize("awaited", ["result_async", "await_handle"])
def test_an_awaiting_handle_whose_hold_vanished_without_a_wake_is_woken_by_a_beat(
    db_url: str, monkeypatch: pytest.MonkeyPatch, fast_beats: None, awaited: str
) -> None:
    # An awaiting handle waits on its execution's end with no timer while the execution is
    # held here. Should a hold ever end without waking its watchers (a bug), the heartbeat
    # wakes them: the handle then reads the store (finds it still running) and polls it.
    monkeypatch.setattr(_handle, "_HELD_POLL", 3600.0)
    store = store_for()
    runner = _executor.executor()
    _gates.clear()
    handle = parked.run(7)
    retry_until(lambda: 7 in _gates, what="the execution to enter its call")
    reads = _count_reads(store, monkeypatch)

    async def main() -> int:
        waiting = asyncio.ensure_future(
            handle.result_async() if awaited == "result_async" else handle
        )
        key = (id(store), handle.id)

        async def until(check: Any, what: str) -> None:
            for _ in range(4000):
                if check():
                    return
                await asyncio.sleep(0.005)
            raise AssertionError(f"timed out waiting for {what}")

        await until(lambda: _watching(runner, key), "the handle to watch its execution")
        assert reads == {}, "held here: the handle waits without reading"
        with runner._lock:
            # The hold ends, and nobody is told. (Not put back: the executor is the process's,
            # and the execution's own end finds nothing of it to clear.)
            del runner._held[key]
        await until(lambda: reads.get(handle.id), "a beat to wake the handle, which reads")
        _open_gates({7})
        return await asyncio.wait_for(waiting, 60)

    assert asyncio.run(main()) == 7
