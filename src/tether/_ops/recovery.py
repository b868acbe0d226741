"""`Client.recover()` follows what it resumed until it is done or waits on something outside.

Resuming a child flow whose process died is half of the job: when the child ends, its
parent (waiting for it, parked by the dead process) becomes runnable, and nobody runs it.
So recovery follows each execution it resumed to its end, then its parent, and a waiting
parent's children, resuming whatever becomes runnable, until every one of them is finished
or waits on something outside this process: input, a timer, a process that is alive.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._core.config import settings
from .._core.status import Status
from .._runtime.executor import Executor
from ..store import ExecutionRow, Store

# How long a round waits for an execution of this process to end or park before looking again.
_ROUND_SECONDS = 0.1
_CHILD = "child:"
# Rounds in a row a queued execution nobody holds may fail to be claimed before it is left.
_MAX_MISSES = 20


@dataclass(frozen=True, slots=True)
class Left:
    """An execution `Client.recover()` left unfinished, and why: it waits for input or a
    timer, or a live process runs it (or the child it waits for)."""

    execution_id: str
    status: Status
    reason: str


class _Busy:
    """A verdict: this process runs it, or is about to."""


_BUSY = _Busy()
_SKIPPED = object()  # its flow is not loaded here (recorded among the skipped)


class Follower:
    """One recovery's executions, followed round by round (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        runner: Executor,
        resumed: list[str],
        loaded: Callable[[ExecutionRow], bool],
        describe: Callable[[str], str],
    ) -> None:
        self.store = store
        self.runner = runner
        self.loaded = loaded
        self.describe = describe  # owner id -> "pid 12 on host"
        self.tracked: dict[str, None] = dict.fromkeys(resumed)
        self.resumed: list[str] = list(resumed)
        self.done: set[str] = set()
        self.misses: dict[str, int] = {}  # failed claims of a queued execution, in a row

    def run(self) -> list[Left]:
        while True:
            verdicts: dict[str, object] = {}
            waiting_on: dict[str, tuple[ExecutionRow, list[str]]] = {}
            # Children found while looking are looked at in the same round.
            index = 0
            while index < len(self.tracked):
                execution_id = list(self.tracked)[index]
                index += 1
                if execution_id in self.done:
                    continue
                verdict = self._look(execution_id, waiting_on)
                if verdict is not None:
                    verdicts[execution_id] = verdict
            busy = any(v is _BUSY for v in verdicts.values())
            # A parent waiting for its children is busy while one of them is (or just ended:
            # the parent's row read before was queued since); left when they all are. Deepest
            # first: a pass resolves the parents whose children all have a verdict.
            unresolved = dict(waiting_on)
            for _ in range(len(waiting_on)):
                for parent, (row, children) in list(unresolved.items()):
                    if any(c in unresolved for c in children):
                        continue
                    del unresolved[parent]
                    states = [verdicts.get(c, _BUSY) for c in children]
                    if any(s is _BUSY for s in states) or any(c in self.done for c in children):
                        busy = True
                        verdicts[parent] = _BUSY
                        continue
                    verdicts[parent] = Left(parent, Status(row.status), _child_reason(states))
            busy = busy or bool(unresolved)
            if not busy:
                return [v for v in verdicts.values() if isinstance(v, Left)]
            self.runner.wait_for_change(_ROUND_SECONDS)

    def _track(self, execution_id: str) -> None:
        if execution_id not in self.tracked:
            self.tracked[execution_id] = None

    def _look(
        self, execution_id: str, waiting_on: dict[str, tuple[ExecutionRow, list[str]]]
    ) -> object | None:
        """Busy, Left, skipped, or None (finished, or waiting for children: see `run`)."""
        if self.runner.holds(self.store, execution_id):
            return _BUSY
        row = self.store.get_execution(execution_id)
        if row is None:
            self.done.add(execution_id)
            return None
        status = Status(row.status)
        if status.finished:
            self.done.add(execution_id)
            if row.parent_id is not None:
                self._track(row.parent_id)  # its end may have made the parent runnable
            return None
        now, due = time.time(), settings().clock()
        if row.owner == self.runner.owner and (row.lease_expires or 0.0) >= now:
            return _BUSY  # claimed here a moment ago (by the waker): held here next
        if status is Status.RUNNING:
            if not self.runner.owner_gone(row.owner, row.lease_expires, now):
                return Left(execution_id, status, f"runs in {self.describe(row.owner or '')}")
            if not self.loaded(row):
                return _SKIPPED
            claim = self.runner.claim()
            if self.store.claim(
                execution_id, claim, from_statuses=(Status.RUNNING.value,),
                expected_token=row.lease_token, now=now,
            ):  # fmt: skip
                self._start(execution_id, claim.token, None)
            return _BUSY  # taken here, or by another process: the next round says which
        if status is Status.QUEUED:
            if self.runner.will_run(execution_id):
                return _BUSY  # parked here: a crash loop's pause, which this process waits out
            leased = row.lease_token is not None and (row.lease_expires or 0.0) >= now
            if leased and not self.runner.owner_gone(row.owner, row.lease_expires, now):
                return Left(execution_id, status, f"is held by {self.describe(row.owner or '')}")
            if not self.loaded(row):
                return _SKIPPED
            if self._claim(execution_id, now, due):
                return _BUSY
            if row.not_before is not None and row.not_before > now:
                when = _when(row.not_before)
                return Left(
                    execution_id, status,
                    f"pauses after a crash loop until {when}; a worker or `recover` runs it then",
                )  # fmt: skip
            # Another process just took it (the next round says who), or its queue is at its
            # limit: after a few rounds, it is left to whoever may run it.
            self.misses[execution_id] = misses = self.misses.get(execution_id, 0) + 1
            if misses >= _MAX_MISSES:
                return Left(
                    execution_id, status, "is queued and cannot be claimed here now (its "
                    "queue is at its limit); a worker or `recover` runs it when it can",
                )  # fmt: skip
            return _BUSY
        # Waiting: on a timer, on input, or on child flows.
        due_now = row.wake_at is not None and row.wake_at <= due
        if due_now and self.loaded(row) and self._claim(execution_id, now, due):
            return _BUSY
        pending = [w for w in self.store.get_waits(execution_id) if w.status == "pending"]
        children = [w.name[len(_CHILD) :] for w in pending if w.kind == "child"]
        if children:
            for child in children:
                self._track(child)
            waiting_on[execution_id] = (row, children)
            return None
        for wait in pending:
            if wait.kind == "input":
                return Left(execution_id, status, f"waits for input {wait.name!r}")
        if row.wake_at is not None:
            return Left(execution_id, status, f"sleeps until {_when(row.wake_at)}")
        return Left(execution_id, status, "waits")

    def _claim(self, execution_id: str, now: float, due: float) -> bool:
        claim = self.runner.claim()
        taken = self.store.claim_runnable(claim, now=now, due=due, ids=[execution_id])
        if taken is None:
            return False
        self.misses.pop(execution_id, None)
        self._start(execution_id, claim.token, taken)
        return True

    def _start(self, execution_id: str, token: str, row: ExecutionRow | None) -> None:
        if execution_id not in self.resumed:
            self.resumed.append(execution_id)
        self.runner.start(self.store, execution_id, token, None, claimed=True, row=row)


def _child_reason(states: list[object]) -> str:
    for state in states:
        if isinstance(state, Left):
            return f"waits for its child {state.execution_id}, which {state.reason}"
    return "waits for a child flow whose flow is not loaded here"


def _when(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")
