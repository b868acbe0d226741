"""Runs one execution: load what is recorded, re-enter the flow from the top, finish.

Resuming is running again: the flow function is called from the top with its
recorded arguments, and every checkpoint call (and wait) that already has a
recorded outcome returns it (see `_checkpoint`, `_waits`). The outcome is
committed fenced by the lease token, so an executor that lost the execution
writes nothing.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._core import capture as _capture
from .._core import imports as _imports
from .._core import serde as _serde
from .._core.config import settings
from .._core.context import Run, current_run
from .._core.faults import as_failure
from .._core.persist import persist, persist_async
from .._core.status import Status
from .._spend import budget as _budget
from ..errors import (
    Cancelled,
    CrashLoopError,
    FlowNotFoundError,
    LeaseLost,
    Released,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    Suspended,
)
from ..store import CheckpointRow, EventRow, ExecutionRow, Store, WaitRow
from . import deadlines as _deadlines

T = TypeVar("T")
log = logging.getLogger("tether.engine")

# The longest pause between the takeovers of a crash loop.
_MAX_CRASH_BACKOFF = 300.0


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
    BACKOFF = "backoff"  # handed back (queued) until a crash loop's pause is over
    LOST = "lost"  # someone else holds it now; nothing was written
    # A store fault outlasted the retries (`Run.fault` says which): the executor releases
    # it with the reason recorded and resumes it once the store is back. Never failed.
    FAULTED = "faulted"


def load_flow(import_path: str, script: str | None) -> Runnable:
    """The flow loaded in this process that an execution's recorded path names; imports
    nothing (FlowNotFoundError names the flag that would load it)."""
    found = _imports.lookup(import_path, script)
    if not isinstance(found, Runnable):
        raise FlowNotFoundError(f"{import_path} is {type(found).__name__}, not a @tether.flow")
    return found


class Hold(Protocol):
    """The executor's hold on one execution, as the engine sees it: the store, the lease
    token, and the run the engine builds for each attempt (`run`: the current one, which
    the executor's heartbeat tells of cancels and lost leases)."""

    store: Store
    execution_id: str
    token: str
    run: Run | None


H = TypeVar("H", bound=Hold)
H_contra = TypeVar("H_contra", bound=Hold, contravariant=True)


class Host(Protocol):
    """What the engine asks of the executor for any execution, sync or async."""

    def suspend_note(self, execution_id: str) -> EventRow:
        """The `suspend` event that the suspension records in its own transaction (see
        `Store.suspend`): which process continues the execution once its input or timer
        arrives, which the row cannot say (a waiting execution has no owner)."""


class AsyncHost(Host, Protocol[H_contra]):
    """The executor's part of an async execution, which `execute_async` runs in the
    execution's own task: a slot before, the claim, the bookkeeping after. Hooks rather than
    a coroutine of the executor's awaiting the engine's: each live coroutine and its frame
    are objects that every full collection walks, ten thousand times over."""

    # Whether this is the only execution on the loop right now (see `Run.inline_commits`).
    alone: Callable[[], bool]

    async def enter_async(self, hold: H_contra) -> Offload:
        """Wait for a slot (`max_async`); how to run a blocking call off the loop."""

    def claim_started(self, store: Store, execution_id: str, token: str) -> bool:
        """Move the execution, recorded as queued under this lease, to running."""

    def escaped(self, hold: H_contra, error: BaseException) -> Outcome:
        """An error the engine did not handle: said, and its outcome (FAULTED)."""

    def leave(self, hold: H_contra, outcome: Outcome | None) -> None:
        """The bookkeeping when the execution stops running here; the slot is freed."""

    async def leave_async(self, hold: H_contra, outcome: Outcome | None, offload: Offload) -> None:
        """What comes after the outcome (notes, the next execution), then `leave`."""


class Attempt:
    """One attempt at running an execution: what `prepare` loaded and built, and how the
    flow body ended (`value`, or `error`). Shared by the sync and async paths; only the
    body call differs. It keeps no row: a row per live execution was one more object for
    every full collection to walk."""

    __slots__ = ("args", "error", "kwargs", "run", "target", "value")

    def __init__(self, run: Run) -> None:
        self.run = run
        self.target: Runnable | None = None
        self.args: Sequence[Any] = ()
        self.kwargs: dict[str, Any] = {}
        self.value: Any = None
        self.error: BaseException | None = None


def execute(
    host: Host, hold: Hold, flow: Runnable | None, claimed: ExecutionRow | None = None
) -> Outcome:
    """Run the execution `hold` holds, to its end or to the point where it must stop.
    `claimed`: the row as the claim that took it returned it (saves reading it again)."""
    again = False
    while True:
        attempt = prepare(hold, flow, claimed, again=again)
        if isinstance(attempt, Outcome):
            return attempt
        if attempt.target is not None:
            # Flow code runs with its run current, in the run's own branch (no branch set).
            run_token = current_run.set(attempt.run)
            try:
                attempt.run.boundary()
                attempt.value = attempt.target.fn(*attempt.args, **attempt.kwargs)
            except BaseException as exc:
                attempt.error = as_failure(exc, f"flow {attempt.run.flow!r}")
            finally:
                current_run.reset(run_token)
        outcome = conclude(hold.store, attempt, host)
        if outcome is not None:
            return outcome
        # The wait it suspended on got its input while suspending: run again, now.
        claimed, again = None, True


async def execute_async(
    host: AsyncHost[H], hold: H, flow: Runnable, claimed: bool, row: ExecutionRow | None
) -> None:
    """An async execution, as a task on a shared event loop, in this one coroutine: the
    executor's part around it (`host`), and `execute`'s loop with the same `prepare` and
    `conclude`, run through the host's offload (a thread, so that the loop never waits on the
    database), around the awaited body. Tasks the body leaves behind are cancelled when it
    ends, as `asyncio.run` would have. `claimed`: already running under the hold's token
    (else it is queued, and moves to running here). `row`: as the claim or the start
    returned it, if in hand."""
    offload = await host.enter_async(hold)
    outcome: Outcome | None = None
    try:
        if not claimed:
            claimed = await offload(
                functools.partial(host.claim_started, hold.store, hold.execution_id, hold.token)
            )
        again = False
        while claimed:
            if _nothing_to_load(row, hold.token):
                # A first run whose row is in hand: preparing reads nothing; no thread needed.
                attempt = prepare(hold, flow, row)
            else:
                attempt = await offload(functools.partial(prepare, hold, flow, row, again=again))
            row = None  # used: not kept by this frame for as long as the execution runs
            if isinstance(attempt, Outcome):
                outcome = attempt
                break
            run = attempt.run
            run.inline_commits = host.alone
            if attempt.target is not None:
                # This task runs in a context of its own that held none of these (see
                # `SharedLoop.spawn`): they are set back to None rather than reset by token,
                # so a live execution keeps no tokens. The run notes the body's tasks itself
                # (`Run.tasks`), in a set made only when it creates one.
                # The run is the body's branch too (`positions.current_root`: no branch set)
                # and notes the body's tasks.
                current_run.set(run)
                # The run is this task's call slot too, set by its first call (`own_slot`).
                run.owner = id(asyncio.current_task())
                value: Any = None
                error: BaseException | None = None
                try:
                    run.boundary()
                    body = attempt.target.fn(*attempt.args, **attempt.kwargs)
                    # Not kept while the body runs (one object less per live execution): the
                    # body has what it needs, and its end gets an attempt of its own.
                    del attempt
                    value = await body
                except BaseException as exc:
                    # Here, where the task is known: a CancelledError that asyncio did not
                    # start is the flow's failure, not a cancellation.
                    error = as_failure(exc, f"flow {run.flow!r}")
                finally:
                    current_run.set(None)
                    if run.tasks is not None:
                        await _cancel_leftovers(run.tasks)
                attempt = Attempt(run)
                attempt.value, attempt.error = value, error
            outcome = await conclude_async(hold.store, attempt, offload, host)
            if outcome is not None:
                break
            again = True  # see `execute`
    except BaseException as exc:
        outcome = host.escaped(hold, exc)
        if not isinstance(exc, Exception):
            host.leave(hold, outcome)
            raise
    await host.leave_async(hold, outcome, offload)


def _nothing_to_load(claimed: ExecutionRow | None, token: str) -> bool:
    # A crash loop's check may write (see _crash_loop): not on the loop thread.
    # Nor a re-entry (attempt > 1): it notes how it came back (see _note_entry). Nor a
    # deadline to fix or past (see _deadlines.settled).
    return (
        claimed is not None
        and claimed.lease_token == token
        and claimed.has_history is False
        and claimed.takeovers < 2
        and claimed.attempt <= 1
        and _deadlines.settled(claimed)
    )


async def _cancel_leftovers(tasks: set[asyncio.Future[Any]]) -> None:
    # A branch that raised (a Suspended, say) ends a gather while its siblings still run.
    left = [task for task in tasks if not task.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)


def prepare(
    hold: Hold, flow: Runnable | None, claimed: ExecutionRow | None, *, again: bool = False
) -> Attempt | Outcome:
    """Load what is recorded and build the run (blocking: the store is read). An Outcome
    when there is nothing to run; an Attempt whose `target` is None when the flow cannot
    be entered (its `error` says why, for `conclude`). `again`: the same holder runs it
    once more at once (its wait was answered while it unwound), no new entry."""
    store, execution_id, token = hold.store, hold.execution_id, hold.token
    row = claimed if claimed is not None and claimed.lease_token == token else None
    if row is None:
        row = store.get_execution(execution_id)
        if row is None or row.lease_token != token:
            return Outcome.LOST  # cancelled or taken over before it started
    if not _deadlines.fix(store, row, token):
        return Outcome.LOST
    config = settings()  # read once per attempt
    if row.deadline is not None and config.clock() >= row.deadline:
        # Claimed at (or after) its deadline: a parked execution's wake_at brought it here,
        # or it was queued past it. Nothing more runs.
        ended = _deadlines.time_out(store, row.id, token, row.deadline)
        return Outcome.FINISHED if ended else Outcome.LOST
    if row.takeovers >= 2:
        stopped = _crash_loop(store, row, token)
        if stopped is not None:
            return stopped
    if row.has_history is False:
        # The claim saw no checkpoint call and no wait: nothing to load (a first run). Only
        # this lease's holder can record any from now on.
        recorded: dict[str, CheckpointRow] = {}
        waits: list[WaitRow] = []
    else:
        recorded = {c.position: c for c in store.get_checkpoints(execution_id)}
        waits = store.get_waits(execution_id)
    if not again and (recorded or waits or row.attempt > 1):
        _note_entry(store, row, waits)
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
        spend=_budget.spend_for(row.options),
    )
    run.deadline, run.clock = row.deadline, config.clock
    hold.run = run
    if row.cancel_requested:
        run.cancel()
    attempt = Attempt(run)
    try:
        target = flow if flow is not None else load_flow(row.import_path, row.script)
        decoded = _serde.loads(row.args)
        # A tuple: of plain values, the collector stops tracking it (a list it always tracks,
        # for as long as the execution runs).
        attempt.args, attempt.kwargs = tuple(decoded["args"]), decoded["kwargs"]
        attempt.target = target
    except BaseException as exc:
        attempt.error = as_failure(exc, f"loading flow {row.flow!r}")
    return attempt


# Events that mark how an execution's attempts begin and end (besides its start and its
# end): the timeline of `tether executions get` and the dashboard interleave them with the
# calls. "suspend", "released", "crash_loop", "retry" and "replay" are written where those
# happen; the entries below by `_note_entry`.
TAKEOVER_EVENT = "takeover"
WAKE_EVENT = "wake"
RESUME_EVENT = "resume"
LIFECYCLE_EVENTS = (
    "suspend", "released", "crash_loop", "retry", "replay",
    TAKEOVER_EVENT, WAKE_EVENT, RESUME_EVENT,
)  # fmt: skip
# An entry after these is the execution coming back after a hand-back, not a takeover.
_HANDED_BACK = ("released", "crash_loop", "retry")


def process_words(owner: str | None) -> str:
    """`pid 123 on host host-a` for an owner id (`host:pid:nonce`), in events and in what
    the client says about who runs an execution alike."""
    if owner is None:
        return "an unknown process"
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return f"pid {pid} on host {host}" if pid.isdigit() else owner


def _note_entry(store: Store, row: ExecutionRow, waits: list[WaitRow]) -> None:
    """Record how this process came to run an execution that has a history (one event,
    only on a re-entry: a first run writes nothing): it woke (its input, timer or child
    arrived after a suspension), resumed after being handed back, or was taken over from a
    holder that stopped without ending it (killed, crashed, or lost its lease). The same
    process continuing at once (a wait answered while it unwound) writes nothing."""
    try:
        marks = store.get_events(row.id, kinds=LIFECYCLE_EVENTS)
        last = marks[-1] if marks else None
        if last is not None and last.kind == "replay":
            return  # a replay's first run: its calls are copies, nothing ran it before
        previous = _holder(marks)
        here = process_words(row.owner)
        if last is not None and last.kind == "suspend":
            kind, level = WAKE_EVENT, "info"
            message = f"woke in {here}: {_why_awake(waits)}"
        elif last is not None and last.kind in _HANDED_BACK:
            kind, level = RESUME_EVENT, "info"
            message = f"resumed in {here} after it was {_HANDED_WORDS[last.kind]}"
        else:
            # "info": a takeover is how tether recovers, not a problem of the flow's code
            # (record.warnings lists those); the timeline shows it in yellow.
            kind, level = TAKEOVER_EVENT, "info"
            before = process_words(previous) if previous else "the process that ran it"
            message = (
                f"taken over by {here} (attempt {row.attempt}): {before} stopped without "
                "ending it (it was killed, crashed or lost its lease)"
            )
        data = _serde.dumps({"owner": row.owner, "previous": previous})
        store.add_event(EventRow(row.id, None, time.time(), level, kind, message, data))
    except Exception:
        # Advisory (unlike the suspension note, recorded with the suspension): the attempt
        # runs whatever happens to it.
        log.debug("execution %s: could not note how it was entered", row.id, exc_info=True)


_HANDED_WORDS = {
    "released": "handed back",
    "crash_loop": "paused as a crash loop",
    "retry": "retried",
}


def _holder(marks: list[EventRow]) -> str | None:
    """The owner that last entered or parked the execution, as its events recorded it."""
    for event in reversed(marks):
        if event.data and event.kind in ("suspend", TAKEOVER_EVENT, WAKE_EVENT, RESUME_EVENT):
            owner = _serde.loads(event.data).get("owner")
            return owner if isinstance(owner, str) else None
    return None


def _why_awake(waits: list[WaitRow]) -> str:
    ended = [w for w in waits if w.status != "pending" and w.resolved_at is not None]
    if not ended:
        return "it was made runnable"
    last = max(ended, key=lambda w: w.resolved_at or 0.0)
    if last.kind == "sleep" or last.status == "timed_out":
        return f"the timer of {last.name!r} fell due"
    if last.kind == "child":
        return f"the child flow of {last.name!r} ended"
    return f"input to {last.name!r} arrived from {last.resolved_by or 'somebody'}"


def _crash_loop(store: Store, row: ExecutionRow, token: str) -> Outcome | None:
    """An execution taken over again and again with no progress in between (its processes
    keep dying, or keep losing it): fail it past `crash_loop_limit`; else, once per
    takeover, hand it back to be claimed after an exponential backoff, so that it neither
    spins nor keeps a slot that other executions could use. None: run it now."""
    config = settings()
    now = time.time()
    count = row.takeovers
    if count >= config.crash_loop_limit:
        error = CrashLoopError(
            f"execution {row.id} was taken over {count} times in a row from a holder that "
            "stopped without ending it (its process died or lost the lease) and without "
            "committing any progress in between; tether stopped running it (crash_loop_limit "
            f"= {config.crash_loop_limit}). Look at what kills its process (a crash, the OOM "
            "killer, os._exit), fix it, then `tether executions retry` it.",
            count,
        )
        text = _serde.error_to_text(error)
        log.error("execution %s: %s", row.id, error)
        failed = persist(
            lambda: store.finish(
                row.id, token, status=Status.FAILED, result=None, error=text, now=now
            )
        )
        return Outcome.FINISHED if failed else Outcome.LOST
    if row.not_before is not None:
        return None  # the backoff of this takeover was served: run it
    delay = min(_MAX_CRASH_BACKOFF, config.crash_loop_backoff * 2 ** (count - 2))
    message = (
        f"taken over {count} times in a row without progress (its process keeps dying or "
        f"losing it); it runs again in {delay:g}s, and fails after "
        f"{config.crash_loop_limit} (crash_loop_limit)"
    )
    log.warning("execution %s: %s", row.id, message)
    persist(lambda: store.add_event(EventRow(row.id, None, now, "warning", "crash_loop", message)))
    released = persist(
        lambda: store.release(row.id, token, status=Status.QUEUED, now=now, not_before=now + delay)
    )
    return Outcome.BACKOFF if released else Outcome.LOST


def conclude(store: Store, attempt: Attempt, host: Host) -> Outcome | None:
    """Record how the attempt ended (blocking: the store is written): finished (succeeded,
    failed, cancelled), suspended, handed back, lost, or faulted (the store kept failing).
    None: run it again at once (the wait it suspended on got its input meanwhile)."""
    try:
        return _conclude(store, attempt, host)
    except (StoreUnavailable, StoreCorrupt) as exc:
        # The outcome could not be written, even after the retries: it is not the flow's.
        return _faulted(attempt.run, exc)


async def conclude_async(
    store: Store, attempt: Attempt, offload: Offload, host: Host
) -> Outcome | None:
    """`conclude` for an execution on an event loop. A plain end (succeeded, or failed by an
    ordinary exception: nearly every end) is awaited on the loop through the store's group
    commit, with other executions' checkpoints and ends (no thread hop, no transaction of
    its own); anything else (a suspension, a hand-back, a cancel, a lost lease) goes to
    `conclude` on a thread."""
    end = _plain_end(attempt)
    if end is None:
        return await offload(functools.partial(conclude, store, attempt, host))
    run = attempt.run
    # One time for every try: a retry after a lost reply recognises its first try's end by
    # it (see PostgresStore.finish).
    now = settings().clock()
    try:
        try:
            # Tried once as it is: the retrying wrapper (a coroutine, a partial and a clock
            # read more per execution, on the loop) takes over only once the store has failed
            # (its first try at once, then with backoff).
            finished = await store.finish_async(
                run.execution_id, run.token, status=end[0], result=end[1], error=end[2], now=now
            )
        except StoreUnavailable:
            finished = await persist_async(
                functools.partial(
                    store.finish_async, run.execution_id, run.token,
                    status=end[0], result=end[1], error=end[2], now=now,
                )
            )  # fmt: skip
    except (StoreUnavailable, StoreCorrupt) as exc:
        return _faulted(run, exc)
    if not finished:
        # The fenced end was refused: the lease was taken over meanwhile, and the execution
        # is its new holder's. This process recorded no end, so it reports none.
        return Outcome.LOST
    if end[0] == Status.SUCCEEDED:
        run.ended = (end[1],)
    return Outcome.FINISHED


# What `_conclude` sorts out with the store rather than recording it as a failure.
_NOT_PLAIN = (
    Suspended, LeaseLost, Released, StoreUnavailable, StoreCorrupt, FlowNotFoundError, Cancelled,
)  # fmt: skip


def _plain_end(attempt: Attempt) -> tuple[str, str | None, str | None] | None:
    """(status, result, error) when the attempt simply ended: succeeded with a storable
    result, or failed by an ordinary exception (as `_conclude` would record it; keep the two
    in step). None for anything else. Writes nothing, so it may run on the event loop."""
    run = attempt.run
    error = attempt.error
    attempt.error = None  # no cycle through the traceback
    if error is None:
        if run.diverged is not None or run.cancelled or run.timed_out:
            attempt.error = error
            return None
        try:
            result = _serde.dumps(
                attempt.value,
                allow_pickle=run.allow_pickle,
                root=f"result of flow {run.flow!r}",
            )
        except Exception as exc:
            if isinstance(exc, _NOT_PLAIN):
                return None
            error = exc
        else:
            return (Status.SUCCEEDED, result, None)
    elif not isinstance(error, Exception) or isinstance(error, _NOT_PLAIN):
        attempt.error = error
        return None
    return (Status.FAILED, None, _serde.error_to_text(run.diverged if run.diverged else error))


def _faulted(run: Run, error: StoreError) -> Outcome:
    if run.fault is None:
        run.fault = error
    return Outcome.FAULTED


def _conclude(store: Store, attempt: Attempt, host: Host) -> Outcome | None:
    run = attempt.run
    execution_id, token = run.execution_id, run.token
    clock = settings().clock
    end = _plain_end(attempt)
    if end is not None:
        status, value, text, now = *end, clock()  # one time for every try (see conclude_async)
        finished = persist(
            lambda: store.finish(
                execution_id, token, status=status, result=value, error=text, now=now
            )
        )
        if not finished:
            return Outcome.LOST  # taken over meanwhile (see conclude_async)
        if status == Status.SUCCEEDED:
            run.ended = (value,)
        return Outcome.FINISHED
    try:
        if attempt.error is not None:
            raise attempt.error
        if run.diverged is not None:
            raise run.diverged
        if run.cancelled or run.timed_out:
            raise Cancelled(execution_id)
        result = _serde.dumps(
            attempt.value, allow_pickle=run.allow_pickle, root=f"result of flow {run.flow!r}"
        )
    except Suspended as signal:
        if run.diverged is not None:
            return _fail(store, run, run.diverged)
        wait, wake_at = signal.wait, signal.wake_at
        if run.deadline is not None and (wake_at is None or run.deadline < wake_at):
            # Woken at its deadline by whoever claims due timers, to be ended there.
            wake_at = run.deadline
        # Written with the suspension, not after it: input given the moment the execution
        # reads `waiting` is told who continues it, and no older note stands in for it.
        note = host.suspend_note(execution_id)
        if persist(
            lambda: store.suspend(
                execution_id, token, wait=wait, wake_at=wake_at, now=clock(), note=note
            )
        ):
            return Outcome.SUSPENDED
        fresh = persist(lambda: store.get_execution(execution_id))
        if fresh is not None and fresh.lease_token == token:
            return None
        if fresh is not None and fresh.status == Status.WAITING and _noted(store, note):
            # A try whose reply was lost committed this suspension (the retry found the lease
            # gone): it is parked as its note says, and this process must honour that note.
            return Outcome.SUSPENDED
        return Outcome.LOST
    except LeaseLost:
        return Outcome.LOST
    except Released:
        if run.fault is not None:
            return Outcome.FAULTED
        persist(lambda: store.release(execution_id, token, status=Status.QUEUED, now=clock()))
        return Outcome.RELEASED
    except (StoreUnavailable, StoreCorrupt) as exc:
        # Raised by flow code reading or writing the store (not a checkpoint commit): an
        # infrastructure fault never fails the execution either.
        return _faulted(run, exc)
    except FlowNotFoundError as exc:
        # Which flows are loaded is this process's matter, not the execution's: leave it
        # runnable for a process that loaded the flow.
        store.release(execution_id, token, status=Status.QUEUED, now=clock())
        run.warn(None, f"could not be resumed here: {exc}")
        return Outcome.RELEASED
    except Cancelled:
        if run.timed_out and run.deadline is not None:
            ended = _deadlines.time_out(store, execution_id, token, run.deadline)
            return Outcome.FINISHED if ended else Outcome.LOST
        cancelled = persist(
            lambda: store.finish(
                execution_id, token, status=Status.CANCELLED, result=None, error=None, now=clock()
            )
        )
        return Outcome.FINISHED if cancelled else Outcome.LOST
    except Exception as exc:
        return _fail(store, run, run.diverged if run.diverged is not None else exc)
    except BaseException:
        # A cancellation that asyncio started (anything else user code raises arrives as
        # Interrupted): not the flow's failure. Give it back to be resumed.
        store.release(execution_id, token, status=Status.QUEUED, now=clock())
        raise
    finally:
        attempt.error = None  # no cycle through the traceback
    succeeded = persist(
        lambda: store.finish(
            execution_id, token, status=Status.SUCCEEDED, result=result, error=None, now=clock()
        )
    )
    return Outcome.FINISHED if succeeded else Outcome.LOST


def _noted(store: Store, note: EventRow) -> bool:
    """Whether `note` is the execution's latest of its kind, as this try wrote it."""
    latest = persist(lambda: store.get_events(note.execution_id, kinds=(note.kind,)))[-1:]
    return any(e.at == note.at and e.data == note.data for e in latest)


def _fail(store: Store, run: Run, error: BaseException) -> Outcome:
    text = _serde.error_to_text(error)
    failed = persist(
        lambda: store.finish(
            run.execution_id,
            run.token,
            status=Status.FAILED,
            result=None,
            error=text,
            now=settings().clock(),
        )
    )
    return Outcome.FINISHED if failed else Outcome.LOST
