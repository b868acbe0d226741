"""What a live execution and a checkpoint call cost the garbage collector: GC-tracked objects,
counted (not timed), and the collector's thresholds, a setting. With ten thousand executions
alive in one process, each full collection walks every object they hold, so these counts are
pinned just above what they are: an object added to the per-execution or per-call path fails
here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import lean_flows
import tether
from helpers import (
    alive_and_new_per_unit,
    retry_until,
    run_child,
    run_cli,
    spawn_python,
    tracked_per_unit,
)
from store._rows import start
from tether import Status
from tether._core.config import OWNED_GC_THRESHOLD, store_for
from tether._runtime.loop import shared_loop
from tether.errors import ConfigurationError
from tether.store import CheckpointRow, Commit, _group_commit

# Upper bounds, above what is measured (14.3-16.4, 18.2-19.0 and 24.6-25.3 on SQLite; 16.0,
# 19.0 and 23.0 on PostgreSQL; the margin is the noise of one-off caches and other threads,
# and of the context's hash trie, whose variables share a node or not by hash seed) and
# below where they were before issue 24 (52, 60 and 48), before its second
# round (27-28, 33-34, 32), before its third (24-25, 28-29, 30-31: a second coroutine per
# task, the row and the attempt kept for the whole run, a list of runs per hold, a spend
# slot per run without a budget, a copy of the context with the task's done callback) and
# before the per-execution round (18.2-18.9, 19.9-22.7 and 28.0 on SQLite; 19, 23 and 26 on
# PostgreSQL: the flow body's branch an object of its own beside the run, its counter, a
# call slot beside the run, one more context variable), and before the run's map of its live
# calls held the calls themselves (19.2-20.0 inside a call on SQLite, 20.0 on PostgreSQL: a
# dict that holds a tracked object is tracked, one more per execution in a call).
# A live async execution: its task, its coroutine and the flow's, Run (also the flow body's
# branch and its task's call slot), hold and handle; inside a call, the call's own objects.
MAX_OBJECTS_PER_PARKED_EXECUTION = 18
MAX_OBJECTS_PER_EXECUTION_INSIDE_A_CALL = 21
MAX_OBJECTS_PER_PARKED_SYNC_EXECUTION = 29
# What a call leaves behind once it has returned: nothing, on average (a fraction: the store's
# statement cache and the like warm up).
MAX_KEPT_PER_CALL = 0.6
# An async checkpoint commit awaited until its batch is durable: the item (its own waiter),
# its future and the future's iterator (3.0 on both stores; 4 on SQLite and 6 on PostgreSQL,
# where a coroutine wrapped it, before the item carried its waiter).
MAX_OBJECTS_PER_COMMIT_IN_FLIGHT = 3.2
# What the young generation's count (whose growth triggers collections) grows by per commit
# when its batch is durable and its caller is woken: -0.04 to 0.02 measured on both stores
# (the wake-up's two allocations, the commit and its row freed in step with them); 1.98-1.99
# while a batch's commits were all freed after its callers were woken.
MAX_COUNTED_PER_COMMIT_SETTLED = 0.5

# Objects made by one step of an execution (a checkpoint call, from inside one body to inside
# the next) and alive across the body's await, where a model call waits: long enough to be
# promoted to the oldest generation, whose full collections walk every live execution. 8.0
# measured: tether's call object and the coroutine of its call, and six of the body's own
# (its coroutines, its future, the future's iterator and wake-up; asyncio.sleep would make
# as many). Was 10.0 while each call set a context variable (its new mapping, two objects).
MAX_NEW_OBJECTS_ALIVE_PER_STEP = 8.5

# A handle awaited (gathered, `await asyncio.gather(*handles)`) while its execution runs here:
# asyncio's six (the task gather wraps it in, the task's copy of the context and the copy made
# for gather's done callback, the task's entry in the set of all tasks, its wake-up, and the
# generator asyncio wraps an awaitable that is not a coroutine in) and tether's two (the
# generator of `Handle.__await__` and the future the executor resolves at the execution's end).
# 8.09 measured on both stores (the gather's own objects, shared, on top); 11.09 before the
# await was one generator (a coroutine, its wrapper, the future's iterator, and a list of
# watchers per execution). From Python 3.12 asyncio's share is one object more (9.15 measured
# on 3.12.1 and on 3.13.0); tether's two are the same.
MAX_OBJECTS_PER_AWAITED_HANDLE = 8.3 if sys.version_info < (3, 12) else 9.3

K = 100  # executions alive at once for a count


def _count_parked(flow: Any, k: int) -> float:
    """Objects per execution, with `k` executions of `flow` parked at its gate (after `k`
    others have warmed up the process: loop, threads and their connections, caches).

    A before/after difference: in a whole suite, what earlier tests left (their executions
    ending on other threads) can be freed meanwhile and make it go negative; then it is
    counted again, up to twice (a count too high is never counted again)."""
    lean_flows.reset()
    warm_up = [flow.run(i) for i in range(k)]
    retry_until(lambda: lean_flows.arrived() >= k, what="the warm-up at the gate")
    loop = shared_loop().loop if flow.is_async else None
    lean_flows.open_gate(loop)
    assert [h.result(timeout=60) for h in warm_up] == list(range(k))
    per_execution = 0.0
    for _ in range(3):
        handles: list[tether.Handle[Any]] = []

        def make_live(handles: list[tether.Handle[Any]] = handles) -> object:
            handles.extend(flow.run(i) for i in range(k))
            retry_until(lambda: lean_flows.arrived() >= k, what=f"{k} executions at the gate")
            return None

        lean_flows.reset()
        try:
            per_execution = tracked_per_unit(k, make_live)
        finally:
            lean_flows.open_gate(loop)
            assert [h.result(timeout=60) for h in handles] == list(range(len(handles)))
        if per_execution > 0:
            break
    return per_execution


@pytest.mark.parametrize(
    ("flow", "bound"),
    [
        (lean_flows.between_calls, MAX_OBJECTS_PER_PARKED_EXECUTION),
        (lean_flows.inside_call, MAX_OBJECTS_PER_EXECUTION_INSIDE_A_CALL),
    ],
    ids=["between_calls", "inside_a_call"],
)
def test_a_live_async_execution_holds_few_objects(db_url: str, flow: Any, bound: int) -> None:
    per_execution = _count_parked(flow, K)
    assert 0 < per_execution <= bound, f"{per_execution:.1f} GC-tracked objects per execution"


def test_a_step_leaves_few_new_objects_alive_across_its_await(db_url: str) -> None:
    lean_flows.reset()
    loop = shared_loop().loop
    handles = [lean_flows.stepping.run(i) for i in range(K)]

    def all_parked() -> None:
        retry_until(lambda: lean_flows.arrived() >= K, what=f"{K} executions at the gate")

    def one_step() -> object:
        lean_flows.next_step(loop)
        all_parked()
        return None

    try:
        all_parked()  # inside the first call, which sets up what the execution keeps
        one_step()  # inside the second
        # From there to inside the third.
        per_step = alive_and_new_per_unit(K, one_step, MAX_NEW_OBJECTS_ALIVE_PER_STEP)
    finally:
        lean_flows.free_all(loop)
    assert [h.result(timeout=60) for h in handles] == list(range(K))
    assert 0 < per_step <= MAX_NEW_OBJECTS_ALIVE_PER_STEP, f"{per_step:.2f} objects per step"


def test_an_awaited_handle_holds_few_objects(db_url: str) -> None:
    """Ten thousand handles gathered while their executions run keep this many objects each
    alive, for as long as the executions run, and each full collection meanwhile walks them."""
    loop = shared_loop().loop
    flow = lean_flows.between_calls

    async def gathered() -> float:
        lean_flows.reset()
        handles = [flow.run(i) for i in range(K)]
        await asyncio.to_thread(
            retry_until, lambda: lean_flows.arrived() >= K, what=f"{K} executions at the gate"
        )
        # What existed before is frozen (left out of `gc.get_objects()`): only objects made
        # meanwhile count, whatever other threads free (leftovers of earlier tests in the same
        # process made a before/after difference go negative). What other threads make
        # meanwhile is short-lived: the lowest of a few counts is taken.
        gc.collect()
        gc.disable()
        gc.freeze()
        try:
            awaited = asyncio.gather(*handles)
            for _ in range(3):  # the turns of this loop that take every task to its wait
                await asyncio.sleep(0)
            per_handle = float("inf")
            for _ in range(5):
                gc.collect()
                per_handle = min(per_handle, len(gc.get_objects()) / K)
                if per_handle <= MAX_OBJECTS_PER_AWAITED_HANDLE:
                    break
                await asyncio.sleep(0.05)
        finally:
            gc.unfreeze()
            gc.enable()
        lean_flows.open_gate(loop)
        assert await asyncio.wait_for(awaited, 60) == list(range(K))
        return per_handle

    asyncio.run(gathered())  # a warm-up: the loop's and the executor's first use
    per_handle = asyncio.run(gathered())
    assert 0 < per_handle <= MAX_OBJECTS_PER_AWAITED_HANDLE, (
        f"{per_handle:.2f} GC-tracked objects per awaited handle"
    )


def test_a_live_sync_execution_holds_few_objects(db_url: str) -> None:
    k = 24  # one thread each (of `max_workers`, 32)
    per_execution = _count_parked(lean_flows.sync_between_calls, k)
    assert 0 < per_execution <= MAX_OBJECTS_PER_PARKED_SYNC_EXECUTION, (
        f"{per_execution:.1f} GC-tracked objects per execution"
    )


@pytest.mark.parametrize(("flow", "args", "calls"), [
    (lean_flows.many_calls, (200, 3), 600),
    (lean_flows.many_calls, (400, 1), 400),
    (lean_flows.sync_many_calls, (400,), 400),
], ids=["async_gathered", "async", "sync"])  # fmt: skip
def test_a_checkpoint_call_keeps_nothing(
    db_url: str, flow: Any, args: tuple[int, ...], calls: int
) -> None:
    flow.run(*args[:-1], 2).result() if flow is lean_flows.many_calls else flow.run(20).result()
    lean_flows.kept.clear()
    gc.collect()
    gc.disable()
    try:
        assert flow.run(*args).result() == args[0]
    finally:
        gc.enable()
    per_call = lean_flows.kept[-1] / calls
    assert per_call <= MAX_KEPT_PER_CALL, f"{per_call:.2f} GC-tracked objects kept per call"


# --- a checkpoint commit in flight: what it keeps alive until its batch is durable -----------


def _await_step(awaitable: Any, steps: list[Any], futures: list[Any]) -> None:
    """Step `awaitable` as the awaiting coroutine of a call would, up to where it suspends:
    its iterator to `steps`, the future it waits on to `futures`."""
    steps.append(awaitable.__await__())
    futures.append(next(steps[-1]))


class _HeldWriter:
    """`K + 1` started executions, and the store's group commit with its writer held: the
    first batch waits on `held` (the test sets it) while the test queues `K` commits."""

    def __init__(self) -> None:
        self.store: Any = store_for()
        self.tokens = {f"e{i}": start(self.store, f"e{i}", f"tok{i}") for i in range(K + 1)}
        self.ids = list(self.tokens)
        self.held, self.entered = threading.Event(), threading.Event()

    def parts(self) -> tuple[Any, dict[str, str], list[str], threading.Event, threading.Event]:
        return self.store, self.tokens, self.ids, self.held, self.entered

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        group = self.store._group
        write = group._write

        def held_write(batch: list[Any]) -> list[Any]:
            self.entered.set()
            assert self.held.wait(60), "the test never let the writer go"
            return write(batch)  # type: ignore[no-any-return]

        group._write = held_write
        try:
            yield
        finally:
            group._write = write


def _row(position: str) -> CheckpointRow:
    return CheckpointRow(position=position, name="step", fingerprint="f", status="succeeded",
                         result="1", started_at=1.0, finished_at=2.0)  # fmt: skip


def test_a_commit_in_flight_holds_few_objects(db_url: str) -> None:
    """Ten thousand executions each awaiting a commit keep this many objects each alive
    until their batch is durable (two batches' worth, one written, one gathering), and each
    collection meanwhile walks them. The writer is held (its first batch waits on an event
    of this test) while `K` commits queue behind it, so none is resolved while counted."""
    store, tokens, ids, held, entered = (writer := _HeldWriter()).parts()

    async def main() -> tuple[float, list[Any]]:
        with writer.holding():
            first = asyncio.ensure_future(
                store.record_checkpoint_async(ids[K], tokens[ids[K]], _row("0"), ())
            )
            await asyncio.to_thread(entered.wait, 60)
            rows = [_row("1") for _ in range(K)]
            gc.collect()
            gc.disable()
            try:
                steps: list[Any] = []
                futures: list[Any] = []
                before = len(gc.get_objects())
                for i, e in enumerate(ids[:K]):
                    _await_step(
                        store.record_checkpoint_async(e, tokens[e], rows[i], ()), steps, futures
                    )
                gc.collect()
                per_commit = (len(gc.get_objects()) - before) / K
            finally:
                gc.enable()
            held.set()
            await asyncio.gather(first, *futures)
        outcomes = []
        for step in steps:
            with pytest.raises(StopIteration) as done:
                step.send(None)
            outcomes.append(done.value.value)
        return per_commit, outcomes

    per_commit, outcomes = asyncio.run(main())
    assert outcomes == [Commit.COMMITTED] * K
    assert 0 < per_commit <= MAX_OBJECTS_PER_COMMIT_IN_FLIGHT, (
        f"{per_commit:.2f} GC-tracked objects per commit in flight"
    )


def test_a_durable_batch_frees_each_commit_as_it_wakes_its_caller(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waking the caller of a commit allocates (the loop's handle for its task, and its
    arguments), and the young generation's count never goes below zero: frees that come after
    a batch's worth of wake-ups are mostly lost to it, so each commit of a batch would bring
    the next collection nearer. Each commit (with what only it holds: here its row) is freed
    as its caller is woken instead. Counted across the hand-over to the loop (`_settle`) of
    `K` commits queued behind a held writer, with the count held far above zero so that no
    free is lost while counting."""
    store, tokens, ids, held, entered = (writer := _HeldWriter()).parts()
    settle = _group_commit._settle
    counted: list[tuple[int, int]] = []

    def counting_settle(waiters: list[Any]) -> None:
        size, before = len(waiters), gc.get_count()[0]
        settle(waiters)
        counted.append((size, gc.get_count()[0] - before))

    async def commit(execution_id: str) -> Commit:
        return await store.record_checkpoint_async(
            execution_id, tokens[execution_id], _row("1"), ()
        )

    async def main() -> list[Commit]:
        with writer.holding():
            first = asyncio.ensure_future(commit(ids[K]))
            await asyncio.to_thread(entered.wait, 60)
            callers = [asyncio.ensure_future(commit(e)) for e in ids[:K]]
            await asyncio.sleep(0)  # every caller has queued its commit
            gc.collect()
            gc.disable()
            ballast = [[] for _ in range(10 * K)]  # the count, far above what a batch frees
            try:
                held.set()
                outcomes = await asyncio.gather(first, *callers)
            finally:
                gc.enable()
            del ballast
            return outcomes

    monkeypatch.setattr(_group_commit, "_settle", counting_settle)
    assert asyncio.run(main()) == [Commit.COMMITTED] * (K + 1)
    # The first batch held one commit; the others, queued meanwhile, one or more batches.
    settled = [(size, added) for size, added in counted[1:]]
    assert sum(size for size, _ in settled) == K, counted
    per_commit = sum(added for _, added in settled) / K
    assert per_commit <= MAX_COUNTED_PER_COMMIT_SETTLED, (
        f"{per_commit:.2f} allocations counted per commit settled"
    )


# --- the collector's thresholds: a setting, applied in processes tether owns ---------------


@pytest.mark.parametrize("value", [0, -5, True, "50000", (1, 2, 3, 4), (), (100, 0), 1.5], ids=repr)
def test_a_bad_gc_threshold_is_refused_with_what_to_give(db_url: str, value: Any) -> None:
    before = gc.get_threshold()
    with pytest.raises(ConfigurationError, match="one to three whole numbers of at least 1"):
        tether.configure(gc_threshold=value)
    assert gc.get_threshold() == before


def test_a_bad_gc_threshold_in_the_environment_stops_the_command(db_url: str) -> None:
    done = run_cli(db_url, "executions", "list", TETHER_GC_THRESHOLD="lots")
    assert done.returncode == 2, done.stderr
    assert "TETHER_GC_THRESHOLD is one to three whole numbers" in done.stderr
    # --version and --help still answer: they are how one finds out what went wrong.
    version = run_cli(db_url, "--version", TETHER_GC_THRESHOLD="lots")
    assert (version.returncode, version.stdout.strip()) == (0, f"tether {tether.__version__}")
    assert run_cli(db_url, "--help", TETHER_GC_THRESHOLD="lots").returncode == 0


def test_configure_sets_the_thresholds_and_fills_in_pythons_own(db_url: str) -> None:
    before = gc.get_threshold()
    try:
        tether.configure(gc_threshold=12_345)
        assert gc.get_threshold() == (12_345, 10, 10)
        tether.configure(gc_threshold=(20_000, 15, 50))
        assert gc.get_threshold() == (20_000, 15, 50)
    finally:
        gc.set_threshold(*before)


def _run_by_worker(db_url: str, **env: str) -> list[int]:
    tether.configure(executor=False)  # queued: only the worker runs it
    handle = lean_flows.collector_settings.run()
    worker = spawn_python(["-m", "tether", "worker", "--import", "lean_flows"], db_url, **env)
    try:
        return handle.result(timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def test_tether_worker_raises_the_thresholds_and_freezes_its_startup(db_url: str) -> None:
    *thresholds, frozen = _run_by_worker(db_url)
    assert tuple(thresholds) == OWNED_GC_THRESHOLD
    assert frozen > 0


def test_tether_worker_takes_the_thresholds_from_the_environment(db_url: str) -> None:
    *thresholds, _ = _run_by_worker(db_url, TETHER_GC_THRESHOLD="30000,5")
    assert thresholds == [30_000, 5, 10]


_USER_PROCESS = """
import gc, sys
import lean_flows
gc.set_threshold(900, 11, 12)  # the application's own choice
print(lean_flows.collector_settings.run().result(timeout=60)[:3])
"""


def test_a_users_process_keeps_its_thresholds_unless_the_setting_is_given(db_url: str) -> None:
    untouched = run_child(_USER_PROCESS, db_url)
    assert untouched.returncode == 0, untouched.stderr
    assert untouched.stdout.strip() == "[900, 11, 12]"
    told = run_child(_USER_PROCESS, db_url, TETHER_GC_THRESHOLD="40000")
    assert told.returncode == 0, told.stderr
    assert told.stdout.strip() == "[40000, 10, 10]"


def test_cancel_cuts_short_a_sync_pause_between_attempts(client: tether.Client) -> None:
    """A run makes its Event only when a thread pauses on it: a cancel that comes during the
    pause still ends it at once, not an hour later."""
    handle = lean_flows.pausing_between_attempts.run()

    def paused() -> bool:
        calls = client.get(handle.id).checkpoints
        return bool(calls) and calls[0].status.value == "retrying"

    retry_until(paused, what="the first attempt to fail and the pause to begin")
    client.cancel(handle.id)
    # Woken, the call makes no further attempt and the execution ends cancelled: within
    # seconds, not after the hour.
    retry_until(lambda: handle.status() is not Status.RUNNING, timeout=30, what="the cancel")
    assert handle.status() is Status.CANCELLED
    [call] = client.get(handle.id).checkpoints
    assert len(call.attempts) == 1
