"""What the executor keeps, and the parts of it that its heartbeat and waker share.

`Holds` is the state of one process's executor: the executions it holds (a lease each),
those it parked (resumed here when runnable), those it gave back for a fault; and the
queries on it that every part needs (claims, whether an owner is gone, takeovers).
`Executor` (executor.py) runs executions on it; `Heartbeat` (heartbeat.py) renews their
leases; `Waker` (waker.py) resumes parked executions and adopts stranded ones. They are
mixins of one object, so that the code of each reads and locks the same state directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._core.context import Run
from ..store import Claim, ExecutionRow, Store
from . import engine as _engine
from .adoption import ScanState
from .engine import Runnable
from .ids import new_token
from .loop import SharedLoop
from .owners import _HOST, host_prefix, lease_term, new_owner_id, pid_alive
from .schedules import Firer

log = logging.getLogger("tether.executor")

# A failure repeated (a store down for a while) is logged once per this many seconds.
_COMPLAIN_SECONDS = 30.0


@dataclass(slots=True)
class Refill:
    """An execution claimed (`running` under `token`), in the store the hook was called
    with, for a thread that just became free."""

    execution_id: str
    token: str
    flow: Runnable | None
    row: ExecutionRow | None


@dataclass(slots=True)
class _Held:
    store: Store
    token: str
    execution_id: str
    # Its current run (an execution suspended and answered at once runs again under the same
    # hold: the run before it has ended). One slot, not a list of them: a list per execution
    # was one more object for every full collection to walk.
    run: Run | None = None
    # When the lease runs out, as this process last set it (a claim gives a full term): the
    # heartbeat renews it only once it is due (see `_due`).
    expires: float = field(default_factory=lambda: time.time() + lease_term())
    # The progress JSON last written for it: a beat writes it again only when it changed.
    shown: str | None = None
    # The shared loop an async execution runs on: its lease is renewed only while that loop
    # lives and turns.
    loop: SharedLoop | None = None
    # The task an async execution runs in, kept here while it is held (asyncio keeps tasks
    # only weakly; see `SharedLoop.spawn`). A cycle through the task's coroutine while it
    # runs, broken when the coroutine returns: the hold is then dropped, and the task with it.
    task: asyncio.Task[Any] | None = None
    # What threw the execution out of its task (an error the engine did not handle).
    escaped: BaseException | None = None
    # The handle that started it here, told the result when it succeeds (see `EndSink`).
    sink: EndSink | None = None


class EndSink(Protocol):
    """Told the result of an execution that succeeded in this process, once committed (the
    handle its start returned): it need not read back what this process just wrote."""

    def succeeded_here(self, result: str | None) -> None: ...


@dataclass(slots=True, eq=False)
class Waiter:
    """The threads blocked in `result()` on one execution: set when this process stops
    holding it, then dropped from the registry (a waiter that goes on takes a fresh one)."""

    event: threading.Event = field(default_factory=threading.Event)
    count: int = 0


@dataclass(slots=True)
class _Fault:
    """An execution given up by its run for a fault: the waker releases it (fenced by the
    run's token) and records why, as soon as the store takes writes, then resumes it."""

    store: Store
    token: str
    error: BaseException
    released: bool = False


class Holds:
    """The state an executor's parts share, and the queries they all make on it."""

    def __init__(self) -> None:
        self.owner = new_owner_id()
        self.parking = True
        self._held: dict[tuple[int, str], _Held] = {}
        self._parked: dict[tuple[int, str], Store] = {}
        self._faulted: dict[tuple[int, str], _Fault] = {}
        # Internal errors per execution (see waker._MAX_ESCAPES), and those given up on here.
        self._escapes: dict[tuple[int, str], int] = {}
        self._abandoned: dict[tuple[int, str], BaseException] = {}
        # When each kind of repeated failure was last logged (see `_complain`).
        self._complained: dict[str, float] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._freed = threading.Condition(self._lock)
        # Threads blocked on each (with the lock held): an execution's end notifies only
        # when one is, since a Condition's notify costs the thread that ends it (the event
        # loop's, for an async execution) a lock and a look at its waiters.
        self._change_waiters = 0
        self._free_waiters = 0
        self._heartbeat: threading.Thread | None = None
        self._waker: threading.Thread | None = None
        self._poke = threading.Event()
        self._stopping = threading.Event()
        self._stalled: set[int] = set()  # loops whose stall was reported (id)
        # Stores whose stranded executions this process adopts (see adoption.py), the state
        # of the waker's scans per store, executions given input in this process (claimed
        # at once), and what was adopted (handed back at exit).
        self._adopting: dict[int, Store] = {}
        # Per adopted store: fires the ticks of the scheduled flows loaded here.
        self._firers: dict[int, Firer] = {}
        self._scans: dict[int, ScanState] = {}
        self._woken: set[str] = set()
        self._adopted: set[tuple[int, str]] = set()
        self._exit_hook = False

    def claim(self, now: float | None = None) -> Claim:
        """A new lease of this process, running from `now` (default: the clock's now)."""
        return Claim(self.owner, new_token(), (time.time() if now is None else now) + lease_term())

    def owner_gone(self, owner: str | None, lease_expires: float | None, now: float) -> bool:
        """True when the recorded owner of a lease can no longer be running the execution."""
        if owner is None or lease_expires is None or lease_expires < now:
            return True
        if owner == self.owner:
            return False
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host == _HOST and pid_text.isdigit():
            return not pid_alive(int(pid_text))
        return False

    def take_over_dead(
        self, store: Store, now: float, runnable_here: Callable[[ExecutionRow], bool], limit: int
    ) -> list[tuple[str, str]]:
        """Take the executions whose owner was a process on this host that is gone, before
        their leases run out. Each is left `running` under a new token of this process;
        returns (execution id, token) pairs, at most `limit`."""
        taken: list[tuple[str, str]] = []
        for row in store.leased_on_host(prefix=host_prefix(), now=now, other_than=self.owner):
            if len(taken) >= limit:
                break
            if self.holds(store, row.id) or not self.owner_gone(row.owner, row.lease_expires, now):
                continue
            if not runnable_here(row):
                continue
            claim = self.claim()
            if store.claim(
                row.id, claim, from_statuses=("queued", "running"),
                expected_token=row.lease_token, now=now,
            ):  # fmt: skip
                taken.append((row.id, claim.token))
        return taken

    def holds(self, store: Store, execution_id: str) -> bool:
        with self._lock:
            return (id(store), execution_id) in self._held

    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

    def wait_for_change(self, timeout: float) -> None:
        """Block until some execution of this process finishes or parks, or `timeout` passes."""
        with self._changed:
            self._change_waiters += 1
            try:
                self._changed.wait(timeout)
            finally:
                self._change_waiters -= 1

    def wait_for_free(self, timeout: float) -> None:
        """Block until an execution of this process ends without a successor taking its thread
        (one fewer held), or `timeout` passes."""
        with self._freed:
            self._free_waiters += 1
            try:
                self._freed.wait(timeout)
            finally:
                self._free_waiters -= 1

    def _complain(self, topic: str, message: str, *args: object) -> None:
        """Log a failure that may repeat every round (a store that stays down) at most once
        per `_COMPLAIN_SECONDS` per topic, so that it is heard but does not flood the log."""
        now = time.monotonic()
        last = self._complained.get(topic)
        if last is not None and now - last < _COMPLAIN_SECONDS:
            return
        self._complained[topic] = now
        log.warning(message, *args)

    # Defined by `Executor` (executor.py), which runs executions; declared here because the
    # waker starts what it claims and the heartbeat ends the holds of a dead event loop.

    def start(
        self,
        store: Store,
        execution_id: str,
        token: str,
        flow: Runnable | None,
        *,
        claimed: bool = False,
        row: ExecutionRow | None = None,
        sink: EndSink | None = None,
    ) -> None:
        raise NotImplementedError

    def _ended(
        self,
        held: _Held,
        execution_id: str,
        outcome: _engine.Outcome | None,
        nxt: Refill | None,
    ) -> _Held | None:
        raise NotImplementedError

    def _wake_strays(self) -> None:
        raise NotImplementedError


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
