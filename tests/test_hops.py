"""What a checkpoint call and an async start cost the event loops in asyncio's own currency:
callbacks run and futures made, counted (not timed). With ten thousand agents on one loop the
loop thread is the bottleneck, and every callback is a handle made, queued, run and freed, so
these counts are pinned at what they are: a hop added to a step (a done callback that resolves
another future, a wake-up scheduled where the code could go on) fails here.

What happens once per batch of commits, once per turn of the loop, or on a timer of tether's
own is not counted: how many batches a run makes depends on the machine's timing."""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import collections
import contextvars
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import hop_flows
from helpers import retry_until
from tether._runtime import executor as _executor
from tether._runtime.loop import SharedLoop, shared_loop
from tether.store import _group_commit

K = 50  # agents run at once

# Per execution on the shared loop, over its `STEPS` calls: each step is the body's timer, the
# wake-up of the execution's task when it fires, and its wake-up when its commit is durable
# (the floor of benchmarks/concurrent_agents.py makes the same three); the execution adds its
# task's first step and its wake-up when its end is durable. Futures: the timer's and the
# commit's per step, and the end's.
CALLBACKS_PER_EXECUTION = 3 * hop_flows.STEPS + 2
FUTURES_PER_EXECUTION = 2 * hop_flows.STEPS + 1
# Per execution of `fan_out` (the calls gathered): each call is a task, its first step, its
# three, gather's done callback and the flow's note that the task ended; the flow's first step,
# its wake-up when the gather is done, and when its end is durable. Futures: the calls' two
# each, the gather's and the end's.
CALLBACKS_PER_FANNED_EXECUTION = 6 * hop_flows.STEPS + 3
FUTURES_PER_FANNED_EXECUTION = 2 * hop_flows.STEPS + 2
# Contexts alive per execution of `fan_out_parked` while its calls wait: the flow's task's,
# each call's task's, and the copy gather makes for its done callback on each call (13 while
# tether noted each call's end in a copy of the creator's context too). A fraction over for
# what other threads hold for a moment.
CONTEXTS_PER_PARKED_FAN_OUT = 2 * hop_flows.STEPS + 1.2
# Per `await flow.run_async()` on the caller's loop: the caller's wake-up once its start is
# durable, and the one future it awaits (2 and 2 while the start followed the insert in a done
# callback that resolved a second future for the caller).
CALLBACKS_PER_START = 1
FUTURES_PER_START = 1

# Callbacks made once per batch, per turn, or by tether's own timers: not counted.
_PER_BATCH = {
    _group_commit._settle,
    _group_commit._settle_boxed,
    _executor._Wakes._drain,
    SharedLoop._tick,
    SharedLoop._create_spawned,
    asyncio.base_events.BaseEventLoop._run_once,
}
_PER_BATCH_NAMES = {"_read_from_self"}  # the self-pipe, one read per wake-up of a loop


class Counts:
    """Callbacks run and futures made per thread, from `Handle._run` and `create_future`."""

    def __init__(self) -> None:
        self.callbacks: collections.Counter[int] = collections.Counter()
        self.futures: collections.Counter[int] = collections.Counter()


def _counted(callback: Callable[..., Any]) -> bool:
    fn = getattr(callback, "__func__", callback)
    return fn not in _PER_BATCH and getattr(fn, "__name__", "") not in _PER_BATCH_NAMES


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    found = Counts()
    run = asyncio.events.Handle._run
    create_future = asyncio.base_events.BaseEventLoop.create_future

    def counted_run(handle: asyncio.events.Handle) -> None:
        if _counted(handle._callback):  # type: ignore[attr-defined]
            found.callbacks[threading.get_ident()] += 1
        run(handle)

    def counted_create_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        found.futures[threading.get_ident()] += 1
        return create_future(loop)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio.events.Handle, "_run", counted_run)
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_future", counted_create_future)
    yield found


def _expected(i: int) -> int:
    return sum(i * hop_flows.STEPS + step for step in range(hop_flows.STEPS))


@pytest.mark.parametrize(
    ("flow", "callbacks", "futures"),
    [
        (hop_flows.agent, CALLBACKS_PER_EXECUTION, FUTURES_PER_EXECUTION),
        (hop_flows.fan_out, CALLBACKS_PER_FANNED_EXECUTION, FUTURES_PER_FANNED_EXECUTION),
    ],
    ids=["calls_in_sequence", "calls_gathered"],
)
def test_a_step_on_the_shared_loop_costs_what_the_floor_pays(
    db_url: str, counts: Counts, flow: Any, callbacks: int, futures: int
) -> None:
    flow.run(-1).result(timeout=60)  # the loop, its threads and the store warm
    loop_thread = shared_loop().thread.ident or 0
    counts.callbacks.clear()
    counts.futures.clear()

    async def main() -> list[int]:
        handles = await asyncio.gather(*(flow.run_async(i) for i in range(K)))
        return list(await asyncio.gather(*handles))

    assert asyncio.run(main()) == [_expected(i) for i in range(K)]
    per_execution = counts.callbacks[loop_thread] / K
    assert per_execution <= callbacks, (
        f"{per_execution:.2f} callbacks per execution of {hop_flows.STEPS} calls"
    )
    per_execution = counts.futures[loop_thread] / K
    assert per_execution <= futures, (
        f"{per_execution:.2f} futures per execution of {hop_flows.STEPS} calls"
    )


def test_an_async_start_wakes_its_caller_once(db_url: str, counts: Counts) -> None:
    hop_flows.agent.run(-1).result(timeout=60)

    async def main() -> list[int]:
        me = threading.get_ident()
        counts.callbacks.clear()
        counts.futures.clear()
        # One after another: no task per start, so what is counted is the starts' own.
        handles = [await hop_flows.agent.run_async(i) for i in range(K)]
        callbacks, futures = counts.callbacks[me] / K, counts.futures[me] / K
        assert callbacks <= CALLBACKS_PER_START, f"{callbacks:.2f} callbacks per start"
        assert futures <= FUTURES_PER_START, f"{futures:.2f} futures per start"
        return [await handle for handle in handles]

    assert asyncio.run(main()) == [_expected(i) for i in range(K)]


def test_gathered_calls_hold_no_copy_of_the_context_for_tether_while_they_wait(
    db_url: str,
) -> None:
    def contexts() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is contextvars.Context)

    loop = shared_loop().loop
    for _ in range(2):  # a warm-up first: the loop's and the store's first use
        hop_flows.reset()
        before = contexts()
        handles = [hop_flows.fan_out_parked.run(i) for i in range(K)]
        retry_until(
            lambda: hop_flows.arrived() >= K * hop_flows.STEPS, what="every call at the gate"
        )
        per_execution = (contexts() - before) / K
        hop_flows.release(loop)
        assert [h.result(timeout=60) for h in handles] == [_expected(i) for i in range(K)]
    assert per_execution <= CONTEXTS_PER_PARKED_FAN_OUT, (
        f"{per_execution:.2f} contexts per execution parked in {hop_flows.STEPS} gathered calls"
    )
