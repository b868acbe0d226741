"""Handle and launch: recording a new execution, running it here, waiting for its outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Generator, Sequence
from typing import Any, Generic, TypeVar, cast

from .._core import serde as _serde
from .._core.status import Status
from ..errors import (
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionNotFound,
    ResultTimeout,
    StoreUnavailable,
    UsageError,
)
from ..store import CheckpointRow, ExecutionRow, Store, WaitRow
from .engine import Runnable
from .executor import executor
from .records import WaitRecord

R = TypeVar("R")

# How often result() looks at the store for an execution finished by another process; one
# finished in this process wakes it at once.
_POLL_MIN = 0.005
_POLL_MAX = 0.25
# How often an awaiting handle reads the store anyway while this process runs the execution.
_HELD_POLL = 1.0


def new_execution_id() -> str:
    # Time-ordered prefix so ids sort by creation, random suffix for uniqueness.
    return f"{int(time.time() * 1000):011x}-{uuid.uuid4().hex[:12]}"


class Handle(Generic[R]):
    """A started execution. `await handle` is `await handle.result_async()`."""

    def __init__(self, execution_id: str, store: Store) -> None:
        self.id = execution_id
        self._store = store

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
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _POLL_MIN
        runner = executor()
        while True:
            try:
                row = self._row()
            except StoreUnavailable:
                # A database restart is not the execution's outcome: keep waiting.
                if deadline is not None and time.monotonic() > deadline:
                    raise
                time.sleep(_POLL_MAX)
                continue
            if Status(row.status).finished:
                return cast(R, _outcome(row))
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ResultTimeout(f"execution {self.id} is still {row.status} after {timeout}s")
            wait = pause if remaining is None else min(pause, remaining)
            if runner.holds(self._store, self.id):
                runner.wait_for_change(wait)
            else:
                time.sleep(wait)
            pause = min(pause * 2, _POLL_MAX)

    async def result_async(self, timeout: float | None = None) -> R:  # noqa: ASYNC109
        """The awaitable form of `result()`; holds no thread while it waits. An execution
        running in this process wakes it when it ends; one run elsewhere is polled for."""
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        runner = executor()
        pause = _POLL_MIN
        while True:
            # Watched before the read: an end between the two still wakes us.
            woken = runner.watch(self._store, self.id)
            try:
                try:
                    row = await loop.run_in_executor(None, self._row)
                except StoreUnavailable:
                    if deadline is not None and time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(_POLL_MAX)
                    continue
                if Status(row.status).finished:
                    return cast(R, _outcome(row))
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ResultTimeout(
                        f"execution {self.id} is still {row.status} after {timeout}s"
                    )
                if woken is not None:
                    # Held here: its end wakes us; the store is read now and then anyway.
                    wait = _HELD_POLL if remaining is None else min(_HELD_POLL, remaining)
                    await asyncio.wait({woken}, timeout=wait)
                else:
                    await asyncio.sleep(pause if remaining is None else min(pause, remaining))
                    pause = min(pause * 2, _POLL_MAX)
            finally:
                if woken is not None and not woken.done():
                    runner.unwatch(self._store, self.id, woken)

    def __await__(self) -> Generator[Any, None, R]:
        return self.result_async().__await__()

    def _row(self) -> ExecutionRow:
        row = self._store.get_execution(self.id)
        if row is None:
            raise ExecutionNotFound(f"no execution {self.id} in {self._store.url}")
        return row


def _outcome(row: ExecutionRow) -> Any:
    if row.status == Status.SUCCEEDED:
        return _serde.loads(row.result) if row.result is not None else None
    if row.status == Status.CANCELLED:
        raise ExecutionCancelled(f"execution {row.id} was cancelled")
    info = _serde.error_info(row.error or "{}")
    raise ExecutionFailed(row.id, info["type"], info["message"], info["traceback"])


def stored_execution(store: Store, execution_id: str) -> ExecutionRow:
    """The stored execution with this id; UsageError for a malformed id, ExecutionNotFound
    for an unknown one."""
    if not isinstance(execution_id, str) or not execution_id:
        raise UsageError(f"an execution id is a non-empty string, not {execution_id!r}")
    row = store.get_execution(execution_id)
    if row is None:
        raise ExecutionNotFound(f"no execution {execution_id} in {store.url}")
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
    # Recorded already running (its first attempt) under a lease of this process: one write
    # starts it, and no worker can grab it between the insert and the start.
    runner = executor()
    claim = runner.claim()
    row.owner, row.lease_token, row.lease_expires = claim.owner, claim.token, claim.expires
    row.status, row.attempt, row.started_at = Status.RUNNING, row.attempt + 1, row.created_at
    recorded = store.create_execution(row, checkpoints=checkpoints, waits=waits)
    if recorded == row.id:
        # The row as recorded is what the engine needs to start it: nothing to read again.
        row.has_history = bool(checkpoints or waits)
        runner.start(store, row.id, claim.token, flow, claimed=True, row=row)
    # else: the key names an existing execution; whoever holds it runs it.
    return Handle(recorded, store)
