"""Runs one execution: load what is recorded, re-enter the flow from the top, finish.

Resuming is running again: the flow function is called from the top with its
recorded arguments, and every checkpoint call (and wait) that already has a
recorded outcome returns it (see `_checkpoint`, `_waits`). The outcome is
committed fenced by the lease token, so an executor that lost the execution
writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._core import capture as _capture
from .._core import imports as _imports
from .._core import serde as _serde
from .._core.config import settings
from .._core.context import Run, current_run
from .._core.persist import persist
from .._core.positions import current_branch, current_tasks
from .._core.status import Status
from .._spend import budget as _budget
from ..errors import Cancelled, FlowNotFoundError, LeaseLost, Released, Suspended
from ..store import CheckpointRow, ExecutionRow, Store, WaitRow

T = TypeVar("T")


@runtime_checkable
class Runnable(Protocol):
    """What the engine runs: a `@tether.flow` (`tether._runtime.flow.Flow`). Named by what
    it has rather than imported, because a Flow starts executions through the executor,
    which runs them through this module: the arrow points from flows to the engine."""

    name: str
    fn: Callable[..., Any]
    is_async: bool


class Offload(Protocol):
    """Runs a blocking call off the event loop (on a thread) and awaits its result."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


class Outcome(enum.Enum):
    FINISHED = "finished"  # succeeded, failed or cancelled: recorded
    SUSPENDED = "suspended"  # waiting for input or a timer; nobody holds it
    RELEASED = "released"  # handed back (queued) for another executor
    LOST = "lost"  # someone else holds it now; nothing was written


def load_flow(import_path: str, script: str | None) -> Runnable:
    """The flow loaded in this process that an execution's recorded path names; imports
    nothing (FlowNotFoundError names the flag that would load it)."""
    found = _imports.lookup(import_path, script)
    if not isinstance(found, Runnable):
        raise FlowNotFoundError(f"{import_path} is {type(found).__name__}, not a @tether.flow")
    return found


class Attempt:
    """One attempt at running an execution: what `prepare` loaded and built, and how the
    flow body ended (`value`, or `error`). Shared by the sync and async paths; only the
    body call differs."""

    __slots__ = ("args", "error", "kwargs", "row", "run", "target", "value")

    def __init__(self, row: ExecutionRow, run: Run) -> None:
        self.row = row
        self.run = run
        self.target: Runnable | None = None
        self.args: list[Any] = []
        self.kwargs: dict[str, Any] = {}
        self.value: Any = None
        self.error: BaseException | None = None


def execute(
    store: Store,
    execution_id: str,
    token: str,
    flow: Runnable | None,
    runs: list[Run],
    claimed: ExecutionRow | None = None,
) -> Outcome:
    """Run the execution this token holds, to its end or to the point where it must stop.
    `claimed`: the row as the claim that took it returned it (saves reading it again)."""
    while True:
        attempt = prepare(store, execution_id, token, flow, runs, claimed)
        if isinstance(attempt, Outcome):
            return attempt
        if attempt.target is not None:
            with _entered(attempt.run):
                try:
                    attempt.run.boundary()
                    attempt.value = attempt.target.fn(*attempt.args, **attempt.kwargs)
                except BaseException as exc:
                    attempt.error = exc
        outcome = conclude(store, attempt)
        if outcome is not None:
            return outcome
        # The wait it suspended on got its input while suspending: run again, now.
        claimed = None


async def execute_async(
    store: Store,
    execution_id: str,
    token: str,
    flow: Runnable | None,
    runs: list[Run],
    claimed: ExecutionRow | None,
    offload: Offload,
    alone: Callable[[], bool] | None = None,
) -> Outcome:
    """`execute` for an async flow, as a task on a shared event loop: the same `prepare`
    and `conclude`, run through `offload` (a thread, so that the loop never waits on the
    database), around the awaited body. Tasks the body leaves behind are cancelled when it
    ends, as `asyncio.run` would have. `alone`: whether it is the only execution on the
    loop right now (its commits may then block the loop; see `Run.inline_commits`)."""
    while True:
        if flow is not None and _nothing_to_load(claimed, token):
            # A first run whose row is in hand: preparing reads nothing; no thread needed.
            attempt = prepare(store, execution_id, token, flow, runs, claimed)
        else:
            attempt = await offload(
                functools.partial(prepare, store, execution_id, token, flow, runs, claimed)
            )
        if isinstance(attempt, Outcome):
            return attempt
        attempt.run.inline_commits = alone
        if attempt.target is not None:
            tasks: set[asyncio.Future[Any]] = set()
            tracked = current_tasks.set(tasks)
            try:
                with _entered(attempt.run):
                    try:
                        attempt.run.boundary()
                        attempt.value = await attempt.target.fn(*attempt.args, **attempt.kwargs)
                    except BaseException as exc:
                        attempt.error = exc
            finally:
                current_tasks.reset(tracked)
                await _cancel_leftovers(tasks)
        outcome = await offload(functools.partial(conclude, store, attempt))
        if outcome is not None:
            return outcome
        claimed = None


def _nothing_to_load(claimed: ExecutionRow | None, token: str) -> bool:
    return claimed is not None and claimed.lease_token == token and claimed.has_history is False


async def _cancel_leftovers(tasks: set[asyncio.Future[Any]]) -> None:
    # A branch that raised (a Suspended, say) ends a gather while its siblings still run.
    left = [task for task in tasks if not task.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)


@contextlib.contextmanager
def _entered(run: Run) -> Iterator[None]:
    """Flow code runs with its run current, in the run's root branch."""
    context_token = current_run.set(run)
    branch_token = current_branch.set(run.root)
    try:
        yield
    finally:
        current_branch.reset(branch_token)
        current_run.reset(context_token)


def prepare(
    store: Store,
    execution_id: str,
    token: str,
    flow: Runnable | None,
    runs: list[Run],
    claimed: ExecutionRow | None,
) -> Attempt | Outcome:
    """Load what is recorded and build the run (blocking: the store is read). An Outcome
    when there is nothing to run; an Attempt whose `target` is None when the flow cannot
    be entered (its `error` says why, for `conclude`)."""
    row = claimed if claimed is not None and claimed.lease_token == token else None
    if row is None:
        row = store.get_execution(execution_id)
        if row is None or row.lease_token != token:
            return Outcome.LOST  # cancelled or taken over before it started
    if row.has_history is False:
        # The claim saw no checkpoint call and no wait: nothing to load (a first run). Only
        # this lease's holder can record any from now on.
        recorded: dict[str, CheckpointRow] = {}
        waits: list[WaitRow] = []
    else:
        recorded = {c.position: c for c in store.get_checkpoints(execution_id)}
        waits = store.get_waits(execution_id)
    config = settings()
    _capture.install()
    run = Run(
        store,
        execution_id,
        row.flow,
        token,
        recorded,
        allow_pickle=config.pickle,
        strict=config.strict,
        metadata=_serde.loads(row.metadata) if row.metadata else None,
        waits=waits,
        spend=_budget.RunSpend(_budget.from_options(row.options)),
    )
    runs.append(run)
    if row.cancel_requested:
        run.cancel_event.set()
    attempt = Attempt(row, run)
    try:
        target = flow if flow is not None else load_flow(row.import_path, row.script)
        decoded = _serde.loads(row.args)
        attempt.args, attempt.kwargs = decoded["args"], decoded["kwargs"]
        attempt.target = target
    except BaseException as exc:
        attempt.error = exc
    return attempt


def conclude(store: Store, attempt: Attempt) -> Outcome | None:
    """Record how the attempt ended (blocking: the store is written): finished (succeeded,
    failed, cancelled), suspended, handed back, or lost. None: run it again at once (the
    wait it suspended on got its input meanwhile)."""
    run, row = attempt.run, attempt.row
    execution_id, token = run.execution_id, run.token
    clock = settings().clock
    try:
        if attempt.error is not None:
            raise attempt.error
        if run.diverged is not None:
            raise run.diverged
        if run.cancel_event.is_set():
            raise Cancelled(execution_id)
        result = _serde.dumps(
            attempt.value, allow_pickle=run.allow_pickle, root=f"result of flow {row.flow!r}"
        )
    except Suspended as signal:
        if run.diverged is not None:
            return _fail(store, run, run.diverged)
        wait, wake_at = signal.wait, signal.wake_at
        if persist(
            lambda: store.suspend(execution_id, token, wait=wait, wake_at=wake_at, now=clock())
        ):
            return Outcome.SUSPENDED
        fresh = persist(lambda: store.get_execution(execution_id))
        return None if fresh is not None and fresh.lease_token == token else Outcome.LOST
    except LeaseLost:
        return Outcome.LOST
    except Released:
        persist(lambda: store.release(execution_id, token, status=Status.QUEUED, now=clock()))
        return Outcome.RELEASED
    except FlowNotFoundError as exc:
        # Which flows are loaded is this process's matter, not the execution's: leave it
        # runnable for a process that loaded the flow.
        store.release(execution_id, token, status=Status.QUEUED, now=clock())
        run.warn(None, f"could not be resumed here: {exc}")
        return Outcome.RELEASED
    except Cancelled:
        persist(
            lambda: store.finish(
                execution_id, token, status=Status.CANCELLED, result=None, error=None, now=clock()
            )
        )
        return Outcome.FINISHED
    except Exception as exc:
        return _fail(store, run, run.diverged if run.diverged is not None else exc)
    except BaseException:
        # SystemExit, KeyboardInterrupt, a cancelled task: not the flow's failure. Give it
        # back to be resumed.
        store.release(execution_id, token, status=Status.QUEUED, now=clock())
        raise
    finally:
        attempt.error = None  # no cycle through the traceback
    persist(
        lambda: store.finish(
            execution_id, token, status=Status.SUCCEEDED, result=result, error=None, now=clock()
        )
    )
    return Outcome.FINISHED


def _fail(store: Store, run: Run, error: BaseException) -> Outcome:
    text = _serde.error_to_text(error)
    persist(
        lambda: store.finish(
            run.execution_id,
            run.token,
            status=Status.FAILED,
            result=None,
            error=text,
            now=settings().clock(),
        )
    )
    return Outcome.FINISHED
