"""The running execution's context, carried by contextvars.

A `Run` is one executor's hold on one execution: the store, the lease token and
the recorded checkpoint calls loaded once at start. Async tasks and threads
started through `.submit()` copy the context, so they share the same `Run`
object; each task has its own branch (see `positions`), which is what gives a
call the same position on every run, whatever the scheduling.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from ..errors import (
    Cancelled,
    DivergenceError,
    LeaseLost,
    NotInFlowError,
    Released,
    StoreError,
)
from ..store import CheckpointRow, EventRow, Store, WaitRow
from . import serde as _serde
from .positions import Root, current_branch, current_call, current_root, set_call


class Spending(Protocol):
    """A run's spending (model usage and its budget), kept by `tether._spend` in the run's
    `spend` slot. The core calls it where a checkpoint call's spend is read or stored, and
    knows nothing else of it: spending sits above the core, which never imports it."""

    def resume_call(self, frame: Frame, prior_metadata: str | None) -> None:
        """A call resumes after failed attempts: what they spent stays counted."""

    def commit_call(self, frame: Frame, metadata: dict[str, Any]) -> dict[str, Any]:
        """The metadata to store with the call: `metadata` with its spend put in."""


# Makes a run's `_wake` Event once, when two threads pause at the same time.
_waking = threading.Lock()


class Run(Root):
    """One executor's hold on one running execution; and the flow body's branch (the root
    of its positions, prefix ""): one object for both, as ten thousand live executions
    each kept two for every full collection to walk."""

    __slots__ = (
        "_wake",
        "allow_pickle",
        "cancelled",
        "clock",
        "deadline",
        "diverged",
        "ended",
        "execution_id",
        "fault",
        "flow",
        "inline_commits",
        "lease_lost",
        "live",
        "live_since",
        "metadata",
        "recorded",
        "released",
        "spend",
        "store",
        "strict",
        "tasks",
        "timed_out",
        "token",
        "wait_names",
        "wait_positions",
        "waits",
    )

    def __init__(
        self,
        store: Store,
        execution_id: str,
        flow: str,
        token: str,
        recorded: dict[str, CheckpointRow],
        *,
        allow_pickle: bool,
        strict: bool,
        metadata: dict[str, Any] | None = None,
        waits: list[WaitRow] | None = None,
        spend: Spending | None = None,
    ) -> None:
        super().__init__("")
        self.store = store
        self.execution_id = execution_id
        self.flow = flow
        self.token = token
        self.recorded = recorded
        self.allow_pickle = allow_pickle
        self.strict = strict
        self.metadata: dict[str, Any] = metadata or {}
        # Two comprehensions made per execution only when there are waits to index (a first
        # run has none, and 10,000 starts at once felt the difference).
        self.waits: dict[str, WaitRow] = {w.name: w for w in waits} if waits else {}
        self.wait_positions: dict[str, str] = {w.position: w.name for w in waits} if waits else {}
        self.wait_names: dict[str, str] = {}
        # Plain flags, read at every boundary; a thread that pauses between attempts waits on
        # `_wake`, made only then (two Events per execution were a dozen GC-tracked objects
        # that tens of thousands of live executions kept for nothing).
        self.cancelled = False
        self.released = False
        self._wake: threading.Event | None = None
        # The execution's deadline (on `clock`, the timers' clock) and whether a boundary
        # found it past: the run then ends as cancelled with the deadline as the reason.
        self.deadline: float | None = None
        self.clock: Callable[[], float] = time.time
        self.timed_out = False
        self.lease_lost = False
        # Checkpoint calls running now, by position: their names, and when their attempts
        # started (`live_since`), published by the heartbeat as the execution's progress. Two
        # maps of strings and floats, not one of the calls themselves: a dict that holds an
        # object the collector tracks is tracked from then on, one more object per live
        # execution for every full collection to walk; these two never are.
        self.live: dict[str, str] = {}
        self.live_since: dict[str, float] = {}
        self.diverged: DivergenceError | None = None
        # The result (JSON text) of the success this run recorded as the execution's end,
        # once committed: a handle of this process returns it without reading it back.
        self.ended: tuple[str | None] | None = None
        # The store fault (still failing after the retries) that made this run hand the
        # execution back; the executor records it and resumes the execution once the store
        # is back. Every branch stops at its next boundary.
        self.fault: StoreError | None = None
        # What the execution spends on model calls, and its budget: the spending layer's
        # (tether._spend.budget: a RunSpend with a budget, else one slot that every run without
        # one shares); None when nothing keeps track (a bare Run in tests).
        self.spend = spend
        # Tasks created while the flow body runs on an event loop (noted by the task factory:
        # the current run is `positions.current_root`), cancelled if left when it ends.
        # Made by the first task: a body that creates none keeps no set alive.
        self.tasks: set[asyncio.Future[Any]] | None = None
        # On a shared event loop: whether a commit may block the loop right now (this is the
        # only execution on it, so nobody else would wait); None: never (see `_Call`).
        self.inline_commits: Callable[[], bool] | None = None

    def add(self, task: asyncio.Future[Any], /) -> None:
        """Note a task the flow body created (`positions.Root`)."""
        tasks = self.tasks
        if tasks is None:
            tasks = self.tasks = set()
        tasks.add(task)

    def discard(self, task: asyncio.Future[Any], /) -> None:
        """Forget a task that ended (`positions.Root`)."""
        if self.tasks is not None:
            self.tasks.discard(task)

    def cancel(self) -> None:
        """Stop at the next boundary, and cut short a pause between attempts."""
        self.cancelled = True
        wake = self._wake
        if wake is not None:
            wake.set()

    def release(self) -> None:
        """Hand the execution back at the next boundary."""
        self.released = True

    def pause(self, seconds: float) -> None:
        """Block this thread for `seconds`, or until the run is cancelled."""
        wake = self._wake
        if wake is None:
            with _waking:
                if self._wake is None:
                    self._wake = threading.Event()
                wake = self._wake
        # After the Event exists: a `cancel()` from now on sets it, one before set the flag.
        if not self.cancelled:
            wake.wait(seconds)

    def take_position(self) -> str:
        """The next position of the branch the caller runs in (see `positions`); of the
        flow body's inside a checkpoint body, as when one ran with no branch set."""
        branch = current_branch.get()
        if branch is None or current_call() is not None:
            branch = self
        return branch.take()

    def boundary(self) -> None:
        """Checked at every checkpoint call: stop here if cancelled or no longer the owner."""
        if self.lease_lost:
            raise LeaseLost(self.execution_id)
        if self.cancelled:
            raise Cancelled(self.execution_id)
        if self.deadline is not None and self.clock() >= self.deadline:
            # Checked here, where a cancel takes effect, rather than by the lease loop: a
            # float comparison per call, no read, and the same point a cancel would stop at.
            self.timed_out = True
            raise Cancelled(self.execution_id)
        if self.released or self.fault is not None:
            raise Released(self.execution_id)

    def store_fault(self, error: StoreError) -> Released:
        """The signal that unwinds the flow when a commit kept failing for a store fault
        (not the flow's failure, so nothing user code may catch as an Exception)."""
        if self.fault is None:
            self.fault = error
        signal = Released(self.execution_id)
        signal.__cause__ = error
        return signal

    def diverge(self, error: DivergenceError) -> DivergenceError:
        # Remembered so the execution fails even if user code catches the error.
        if self.diverged is None:
            self.diverged = error
        return error

    def warn(self, position: str | None, message: str, data: dict[str, Any] | None = None) -> None:
        self.store.add_event(
            EventRow(
                execution_id=self.execution_id,
                position=position,
                at=time.time(),
                level="warning",
                kind="warning",
                message=message,
                data=_serde.dumps(data) if data else None,
            )
        )


@dataclass(slots=True)
class Frame:
    """The checkpoint call being executed right now."""

    run: Run
    position: str
    name: str
    attempt: int
    metadata: dict[str, Any] = field(default_factory=dict)
    log: Any = None  # a _capture.CapturedLog once the call prints or logs
    # Model usage of the call so far, all attempts: a tether._spend.usage.Usage, opaque here
    # (the run's `spend` stores it). None until a model call adds some, so calls without
    # usage pay nothing for it.
    usage: Any = None
    # A timed sync attempt runs on a frame of its own; once it times out that frame is
    # detached: what the abandoned thread logs or spends later is kept nowhere, and its memory
    # writes are refused, so none of it lands on a later attempt (see `checkpoint`).
    detached: bool = False


# The running execution. One variable with `positions.current_root` (the flow body's branch,
# in which the task factory notes the body's tasks), which is defined there, below this module.
current_run = cast("ContextVar[Run | None]", current_root)


class CurrentFrame:
    """`current_frame.get()`: the checkpoint call whose body runs now, or None. Not a context
    variable of its own: the variable lives in `positions` (which reads it too), and what it
    holds may be a task's slot for its calls (see `positions._calls`)."""

    __slots__ = ("get", "set")

    def __init__(self) -> None:
        # Plain attributes, not methods: a read is one call, with no bound method made.
        self.get: Callable[[], Frame | None] = current_call
        # Sets the variable itself (a task's slot, if any, is replaced in this context): for
        # a context of its own, as a timed attempt's thread has.
        self.set: Callable[[Frame | None], None] = set_call


current_frame = CurrentFrame()


@dataclass(frozen=True, slots=True)
class Current:
    """What `tether.current()` tells about the code that is running.

    `checkpoint`, `position`, `attempt` and `idempotency_key` are None in flow code
    outside a checkpoint. `position` is the call's recorded identity: `"3"` for the flow
    body's fourth call, `"3.1.2"` in a branch (see `tether.branch`). `idempotency_key` is
    stable across the attempts and resumes of one checkpoint call: pass it to external APIs
    so a call that runs again after a crash is not charged twice.
    """

    execution_id: str
    flow: str
    checkpoint: str | None
    position: str | None
    attempt: int | None
    idempotency_key: str | None


def current() -> Current:
    """The running execution and checkpoint. Raises NotInFlowError outside a flow."""
    run = current_run.get()
    if run is None:
        raise NotInFlowError(
            "tether.current() was called outside a running flow; call it from code that runs "
            "inside a @tether.flow (or a @tether.checkpoint called from one)"
        )
    frame = current_frame.get()
    if frame is None:
        return Current(run.execution_id, run.flow, None, None, None, None)
    return Current(
        run.execution_id,
        run.flow,
        frame.name,
        frame.position,
        frame.attempt,
        idempotency_key(run, frame.position),
    )


def idempotency_key(run: Run, position: str) -> str:
    """The key of the call at `position`: the same for every attempt and resume of it."""
    return f"{run.execution_id}:{position}"


def in_flow() -> bool:
    """True in code run by a flow (flow code, or a checkpoint called from it): where
    `tether.current()`, `tether.wait()` and recording apply."""
    return current_run.get() is not None


def log(**metadata: Any) -> None:
    """Attach JSON metadata to the running checkpoint, or to the execution outside one.

    Keys merge into what was logged before. Outside a flow this does nothing, so tools that
    log stay callable as plain functions in unit tests.
    """
    run = current_run.get()
    if run is None:
        return
    for key, value in metadata.items():
        # Fail here, at the call, rather than when the checkpoint commits.
        _serde.dumps(value, allow_pickle=False, root=f"tether.log({key}=...)")
    frame = current_frame.get()
    if frame is not None:
        frame.metadata.update(metadata)
        return
    run.metadata.update(metadata)
    if not run.store.set_metadata(
        run.execution_id, run.token, _serde.dumps(run.metadata), time.time()
    ):
        run.lease_lost = True
        raise LeaseLost(run.execution_id)
