"""Handle and launch: recording a new execution, running it here, waiting for its outcome."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import time
from collections.abc import Coroutine, Generator, Sequence
from typing import Any, Generic, TypeVar, cast

from .._core import serde as _serde
from .._core import waits as _waits
from .._core.context import Run, current_frame, current_run
from .._core.status import Status
from ..errors import (
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionNotFound,
    ExecutionTimedOut,
    InvalidStateError,
    ResultTimeout,
    StoreUnavailable,
    UsageError,
)
from ..store import CheckpointRow, ExecutionRow, Store, WaitRow, redact
from . import deadlines as _deadlines
from .engine import Runnable
from .executor import Executor, executor
from .records import WaitRecord

R = TypeVar("R")

# How often result() looks at the store for an execution finished by another process; one
# finished in this process wakes it at once.
_POLL_MIN = 0.005
_POLL_MAX = 0.25
# How often an awaiting handle reads the store anyway while this process runs the execution
# (a safety net: its end wakes the handle), backing off: thousands of handles awaited at once
# would otherwise read thousands of rows a second for as long as their executions run.
_HELD_POLL = 4.0
_HELD_POLL_MAX = 16.0


class Handle(Generic[R]):
    """A started execution. `await handle` is `await handle.result_async()`.

    In flow code, the handle of a child flow (from `child.run()` / `child.enqueue()`) waits
    as a recorded call: `result()` (or `await handle`) suspends the parent, holding nothing,
    until the child ends, and returns (or raises) the child's outcome as recorded in the
    parent.
    """

    # A loop of `run()` keeps one handle per execution started: no per-instance dict.
    __slots__ = ("_parent", "_store", "_succeeded", "id")

    def __init__(self, execution_id: str, store: Store, *, parent: str | None = None) -> None:
        self.id = execution_id
        self._store = store
        # The execution that started this handle's execution as its child, in flow code.
        self._parent = parent
        # Its result, when it succeeded in this process (told by the executor): a success
        # is final, so waiting returns it without reading back the row just written.
        self._succeeded: tuple[str | None] | None = None

    def succeeded_here(self, result: str | None) -> None:
        self._succeeded = (result,)

    def __repr__(self) -> str:
        return f"<tether.Handle {self.id}>"

    def status(self) -> Status:
        """The execution's current status, read from the store."""
        return Status(self._row().status)

    def pending_waits(self) -> list[WaitRecord]:
        """What the execution waits for while its status is `waiting` (empty otherwise)."""
        flow = self._row().flow
        return [
            WaitRecord.from_row(w, flow)
            for w in self._store.get_waits(self.id)
            if w.status == "pending" and w.kind == "input"
        ]

    def result(self, timeout: float | None = None) -> R:
        """Block until the execution finishes and return its value. A waiting execution is
        waited for too: give it input from anywhere and this returns when it finishes.

        Raises ExecutionFailed (with the original error's type, message and traceback),
        ExecutionCancelled, or ResultTimeout when `timeout` seconds pass first (the
        execution keeps running).
        """
        run = self._in_parent()
        if run is not None:
            return self._settle(run, _waits.reserve_child_wait(run, self.id), timeout)
        if self._succeeded is not None:
            # Ended here already (a loop of result() over many handles mostly finds this):
            # nothing to register, wait for or read.
            return cast(R, _decoded(self._succeeded[0]))
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_MIN
        runner = executor()
        # Joined before the read: an end between the two still wakes us. Only this
        # execution's end sets it; another process's end is seen by reading, now and then.
        waiter = runner.wait_on(self._store, self.id)
        try:
            while True:
                if self._succeeded is not None:
                    return cast(R, _decoded(self._succeeded[0]))
                if waiter.event.is_set():
                    # Woken (and dropped from the registry): a fresh one for the next wait.
                    runner.stop_waiting(self._store, self.id, waiter)
                    waiter = runner.wait_on(self._store, self.id)
                try:
                    row = self._row()
                except StoreUnavailable:
                    # A database restart is not the execution's outcome: keep waiting.
                    if deadline is not None and time.monotonic() > deadline:
                        raise
                    waiter.event.wait(_POLL_MAX)
                    continue
                if Status(row.status).finished:
                    return cast(R, _outcome(row))
                remaining = self._still_waiting(runner, row, deadline, timeout)
                if runner.holds(self._store, self.id):
                    # Held here: its end wakes us; the store is read now and then anyway.
                    wait = _HELD_POLL
                else:
                    wait, pause = pause, min(pause * 2, _POLL_MAX)
                waiter.event.wait(wait if remaining is None else min(wait, remaining))
        finally:
            runner.stop_waiting(self._store, self.id, waiter)

    def result_async(self, timeout: float | None = None) -> Coroutine[Any, Any, R]:
        """The awaitable form of `result()`; holds no thread while it waits. An execution
        running in this process wakes it when it ends; one run elsewhere is polled for. In
        flow code, a child's result takes its position when this is called (in program
        order)."""
        child = self._as_child_async(timeout)
        return self._wait_async(timeout) if child is None else child

    def _as_child_async(self, timeout: float | None) -> Coroutine[Any, Any, R] | None:
        """In the flow code of this handle's parent: the child's result as a recorded call,
        its position taken now (in program order). Else None."""
        run = self._in_parent()
        if run is None:
            return None
        return self._settle_async(run, _waits.reserve_child_wait(run, self.id), timeout)

    async def _wait_async(self, timeout: float | None) -> R:  # noqa: ASYNC109
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        runner = executor()
        pause = _POLL_MIN
        held_pause = _HELD_POLL
        while True:
            if self._succeeded is not None:
                return cast(R, _decoded(self._succeeded[0]))
            # Watched before the read: an end between the two still wakes us.
            woken = runner.watch(self._store, self.id)
            try:
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is None or remaining > 0) and runner.runs_live(self._store, self.id):
                    # Held here, by a live thread or loop, so not ended: its end is committed
                    # before the hold ends, and that wakes us. No read meanwhile: thousands of
                    # handles awaited at once would each read the store, again and again.
                    # No timer either, unless a timeout needs one: the heartbeat wakes a
                    # watcher whose execution is no longer held here (`_wake_strays`).
                    if remaining is None:
                        await woken
                        continue
                    await _woken_or(woken, min(held_pause, remaining), loop)
                    held_pause = min(held_pause * 2, _HELD_POLL_MAX)
                    continue
                try:
                    row = await loop.run_in_executor(None, self._row)
                except StoreUnavailable:
                    if deadline is not None and time.monotonic() > deadline:
                        raise
                    await _woken_or(woken, _POLL_MAX, loop)
                    continue
                if Status(row.status).finished:
                    return cast(R, _outcome(row))
                remaining = self._still_waiting(runner, row, deadline, timeout)
                if runner.holds(self._store, self.id):
                    # Held here: its end wakes us; the store is read now and then anyway.
                    wait, held_pause = held_pause, min(held_pause * 2, _HELD_POLL_MAX)
                else:
                    # Run elsewhere: read again, less and less often (resumed here, it
                    # still wakes us when it ends).
                    wait, pause = pause, min(pause * 2, _POLL_MAX)
                await _woken_or(woken, wait if remaining is None else min(wait, remaining), loop)
            finally:
                if not _woken_by_end(woken):
                    runner.unwatch(self._store, self.id, woken)

    def _still_waiting(
        self,
        runner: Executor,
        row: ExecutionRow,
        deadline: float | None,
        timeout: float | None,
    ) -> float | None:
        """After a read of an unfinished execution, for `result()` and `result_async()`
        alike: whether waiting may go on. Returns the seconds left (None: no timeout);
        raises when waiting would never end or the timeout has passed."""
        self._check_abandoned(runner, row)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ResultTimeout(f"execution {self.id} is still {row.status} after {timeout}s")
        return remaining

    def _check_abandoned(self, runner: Executor, row: ExecutionRow) -> None:
        """Waiting would never end when this process gave the execution up (it runs only if
        another process takes it): say so instead."""
        if row.owner is not None:
            return
        error = runner.abandoned(self._store, self.id)
        if error is not None:
            raise InvalidStateError(
                f"execution {self.id} is {row.status}: this process stopped running it after "
                f"internal errors ({type(error).__name__}: {error}). Run `tether executions "
                "recover` or a `tether worker` to continue it."
            )

    def __await__(self) -> Generator[Any, None, R]:
        # In flow code a child's result takes its position here, when awaited (as
        # `result_async()` does when called), not at the generator's first step.
        child = self._as_child_async(None)
        return self._awaited() if child is None else child.__await__()

    def _awaited(self) -> Generator[Any, None, R]:
        """`await handle`: `result_async()` with no timeout, as one generator while this
        process holds the execution (the common case: ten thousand handles gathered while
        their executions run here), where a coroutine and its wrapper, and an iterator per
        future awaited, stayed alive per handle for as long as its execution ran. Anything
        else (run elsewhere, or not live here any more) is `_wait_async`'s."""
        runner = executor()
        while self._succeeded is None:
            woken = runner.watch_live(self._store, self.id)
            if woken is None:
                return (yield from self._wait_async(None).__await__())
            try:
                # Awaited as `yield from woken` would, without the iterator it makes: the
                # task awaiting us sees a blocking future and resumes us once it is done.
                woken._asyncio_future_blocking = True
                yield woken
            finally:
                # Not woken by the end (which dropped it from the watchers): cancelled, or
                # closed. (No timer here resolves it with False, as in `_wait_async`.)
                if not woken.done() or woken.cancelled():
                    runner.unwatch(self._store, self.id, woken)
            # Woken: the hold ended. A success here is told before the wake; anything else
            # is read by `_wait_async`, at the next turn.
        return cast(R, _decoded(self._succeeded[0]))

    def _in_parent(self) -> Run | None:
        """The run of this handle's parent when called from its flow code, else None."""
        if self._parent is None:
            return None
        run = current_run.get()
        if run is None or run.execution_id != self._parent or current_frame.get() is not None:
            return None
        return run

    def _settle(self, run: Run, position: str, timeout: float | None) -> R:
        return cast(R, child_result(self.id, _waits.child_outcome(run, self.id, position, timeout)))

    async def _settle_async(self, run: Run, position: str, timeout: float | None) -> R:  # noqa: ASYNC109
        # Nothing to await: the outcome is recorded, or the parent suspends (Suspended).
        return self._settle(run, position, timeout)

    def _row(self) -> ExecutionRow:
        row = self._store.get_execution(self.id)
        if row is None:
            raise ExecutionNotFound(f"no execution {self.id} in {redact(self._store.url)}")
        return row


# The context of the timers below: a shared empty one, not a copy of the caller's each time.
_QUIET = contextvars.Context()


def _woken_or(
    woken: asyncio.Future[None], seconds: float, loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None]:
    """`woken` (resolved by the executor when the execution stops being held here), resolved
    with False after `seconds` at the latest: one timer, where `asyncio.wait` made a dozen
    objects per wait (thousands of handles awaited at once each wait again and again)."""
    if not woken.done():
        timer = loop.call_later(seconds, _time_up, woken, context=_QUIET)
        woken.add_done_callback(functools.partial(_stop_timer, timer), context=_QUIET)
    return woken


def _time_up(woken: asyncio.Future[Any]) -> None:
    if not woken.done():
        woken.set_result(False)


def _stop_timer(timer: asyncio.TimerHandle, _: asyncio.Future[Any]) -> None:
    timer.cancel()


def _woken_by_end(woken: asyncio.Future[Any]) -> bool:
    """Whether the executor resolved `woken` (it then dropped it from its watchers)."""
    return woken.done() and not woken.cancelled() and woken.result() is not False


def _decoded(result: str | None) -> Any:
    return _serde.loads(result) if result is not None else None


def _outcome(row: ExecutionRow) -> Any:
    if row.status == Status.SUCCEEDED:
        return _decoded(row.result)
    if row.status == Status.CANCELLED:
        if _deadlines.timed_out(row.error):
            raise ExecutionTimedOut(_serde.error_info(row.error or "{}")["message"])
        raise ExecutionCancelled(f"execution {row.id} was cancelled")
    info = _serde.error_info(row.error or "{}")
    raise ExecutionFailed(row.id, info["type"], info["message"], info["traceback"])


def child_result(child_id: str, outcome: str) -> Any:
    """A child's outcome as its parent recorded it (JSON: status, result, error): the
    result, or ExecutionFailed / ExecutionCancelled."""
    data = json.loads(outcome)
    status = data.get("status")
    if status == Status.SUCCEEDED:
        result = data.get("result")
        return _serde.loads(result) if result is not None else None
    if status == Status.CANCELLED:
        error = data.get("error")
        if _deadlines.timed_out(error):
            raise ExecutionTimedOut(_serde.error_info(error or "{}")["message"])
        raise ExecutionCancelled(f"child execution {child_id} was cancelled")
    if status == Status.FAILED:
        info = _serde.error_info(data.get("error") or "{}")
        raise ExecutionFailed(child_id, info["type"], info["message"], info["traceback"])
    raise ExecutionNotFound(f"child execution {child_id} is gone (pruned?) before it was awaited")


def stored_execution(store: Store, execution_id: str) -> ExecutionRow:
    """The stored execution with this id; UsageError for a malformed id, ExecutionNotFound
    for an unknown one."""
    if not isinstance(execution_id, str) or not execution_id:
        raise UsageError(f"an execution id is a non-empty string, not {execution_id!r}")
    row = store.get_execution(execution_id)
    if row is None:
        raise ExecutionNotFound(f"no execution {execution_id} in {redact(store.url)}")
    return row


def launch(
    store: Store,
    row: ExecutionRow,
    flow: Runnable | None,
    *,
    checkpoints: Sequence[CheckpointRow] = (),
    waits: Sequence[WaitRow] = (),
) -> Handle[Any]:
    """Record a new execution (seeded with recorded calls, for a replay) and, given the
    flow, run it in this process; without it, leave it queued for a worker."""
    if flow is None:
        recorded = store.create_execution(row, checkpoints=checkpoints, waits=waits)
        return Handle(recorded, store)
    if row.not_before is not None:
        # A delayed start in a process that runs executions: queued like an enqueue, and
        # parked here, so this process's waker claims it once its time comes (a worker may
        # take it first).
        recorded = store.create_execution(row, checkpoints=checkpoints, waits=waits)
        if recorded == row.id:
            executor().park(store, row.id)
        return Handle(recorded, store)
    runner = _lease_here(row)
    recorded = store.create_execution(row, checkpoints=checkpoints, waits=waits)
    if recorded != row.id:
        return Handle(recorded, store)  # the key names an existing execution; its holder runs it
    # The row as recorded is what the engine needs to start it: nothing to read again.
    row.has_history = bool(checkpoints or waits)
    handle: Handle[Any] = Handle(recorded, store)
    runner.start(store, row.id, row.lease_token or "", flow, claimed=True, row=row, sink=handle)
    return handle


async def launch_async(store: Store, row: ExecutionRow, flow: Runnable | None) -> Handle[Any]:
    """`launch()` for a caller on an event loop: the insert is group committed with the
    other starts in flight (`Store.create_execution_async`), and the loop goes on meanwhile;
    returns once the execution is durable."""
    delayed = flow is not None and row.not_before is not None
    runner = None if flow is None or delayed else _lease_here(row)
    if runner is not None:
        # A new execution has nothing recorded to load: its first run reads nothing back.
        row.has_history = False
    handle: Handle[Any] = Handle(row.id, store)
    # The start (or the park) is the insert's own follow-up, run on this loop once the row
    # is durable whatever became of the caller: a caller cancelled meanwhile (a timeout
    # around the await) cancels only its wait, and must not leave an execution recorded as
    # running here that nothing here runs. So the caller awaits the insert's future itself,
    # with no callback on it resolving a second future (`asyncio.shield`'s way): one
    # callback and two objects less per start.
    then = (
        None
        if flow is None
        else functools.partial(_inserted, runner, store, row, flow, delayed, handle)
    )
    recorded = await store.create_execution_async(row, then=then)
    return handle if recorded == row.id else Handle(recorded, store)


def _inserted(
    runner: Executor | None,
    store: Store,
    row: ExecutionRow,
    flow: Runnable,
    delayed: bool,
    handle: Handle[Any],
    recorded: str | None,
) -> None:
    """Once the insert is answered (`recorded`: the id, None if it was not written): start
    the execution here, or park a delayed start for this process's waker (as `launch`)."""
    if recorded != row.id:
        return  # not recorded (the caller sees why), or the key names another execution
    if runner is not None:
        runner.start(store, row.id, row.lease_token or "", flow, claimed=True, row=row, sink=handle)
    elif delayed:
        executor().park(store, row.id)


def _lease_here(row: ExecutionRow) -> Executor:
    """Make `row` recorded already running (its first attempt) under a lease of this
    process: one write starts it, and no worker can grab it between the insert and the
    start."""
    runner = executor()
    # From the start's own time (read once per start): the lease runs from a moment no later
    # than the insert that records it, so this process renews it early rather than late.
    claim = runner.claim(row.created_at)
    row.owner, row.lease_token, row.lease_expires = claim.owner, claim.token, claim.expires
    row.status, row.attempt, row.started_at = Status.RUNNING, row.attempt + 1, row.created_at
    return runner
