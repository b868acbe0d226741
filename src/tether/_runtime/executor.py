"""The embedded executor: runs executions in the process that started them.

Sync executions run on threads (`max_workers`, one thread each); async ones as tasks on
the process's shared event loop (`loop.py`; `max_async` at once). Each execution held by
this process has a lease in the store (owner id, token, expiry). A heartbeat thread
extends the leases and picks up cancel requests made from other processes. Owner ids name
the host and pid, so a process on the same host can tell at once that an owner was
killed, instead of waiting for its lease to run out. A waker thread resumes the executions
parked here when they become runnable and, in an application's process (not a worker's),
adopts the stranded executions of the flows it loaded (adoption.py; `launch()`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .._core import imports as _imports
from .._core import serde as _serde
from .._core.config import apply_gc, settings, store_for
from .._core.context import LiveCall, Run
from .._core.positions import sort_key
from .._core.status import Status
from ..errors import ConfigurationError, StoreCorrupt, StoreUnavailable
from ..store import Claim, EventRow, ExecutionRow, Store
from . import engine as _engine
from .adoption import (
    HANDBACK_EVENT,
    SUSPEND_EVENT,
    ScanState,
    flow_loaded,
    note_data,
    scan_key,
)
from .engine import Runnable, load_flow
from .ids import new_token
from .loop import SharedLoop, shared_loop
from .schedules import Firer

log = logging.getLogger("tether.executor")

_HEARTBEAT_SECONDS = 1.0
# How often parked executions are checked for input from other processes and due timers.
_WAKER_SECONDS = 0.2
_MAINTAIN_BEATS = 10
# Rows a waker round reads per scanned branch (see Store.scan_runnable): a round's work is
# bounded, and a scan that goes on where the last round stopped reaches every runnable row.
_SCAN_PAGE = 500
# Every this many waker rounds: stranded executions are looked for (adoption), and parked
# ones that ended elsewhere forgotten.
_ADOPT_ROUNDS = 5
_FORGET_ROUNDS = 25
# At exit, executions adopted here are asked to hand themselves back for this long.
_EXIT_GRACE_SECONDS = 2.0
# A failure repeated (a store down for a while) is logged once per this many seconds.
_COMPLAIN_SECONDS = 30.0
# Executions that an internal error (not a store fault) threw out of their task this many
# times are left queued for `recover` or a worker instead of being resumed here again.
_MAX_ESCAPES = 3

# The PID namespace of a machine's own processes (Linux's PROC_PID_INIT_INO).
_INIT_PID_NAMESPACE = "4026531836"


def _locality(host: str) -> str:
    """Where a pid means one process: the host, and its PID namespace when that is not the
    machine's own. Two containers may share a hostname (`hostNetwork: true` pods, a fixed
    `hostname:`) while each has its own pids: one must never read the other's live pid as a
    dead process of its own and take its executions over before their leases run out."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:  # not Linux, or no /proc: the host is all there is to go by
        return host
    namespace = link[link.find("[") + 1 : link.rfind("]")]
    return host if namespace in ("", _INIT_PID_NAMESPACE) else f"{host}~{namespace}"


_HOST_NAME = socket.gethostname()  # what people read ("pid 12 on web-1")
_HOST = _locality(_HOST_NAME)  # what owner ids carry, and what "this host" means

# Outcomes after which this process remembers the execution and runs it again once it is
# runnable: a wait's input or timer, or the end of a crash loop's pause.
_PARKED = (_engine.Outcome.SUSPENDED, _engine.Outcome.BACKOFF)


def lease_term() -> float:
    """How far ahead a claim or a renewal sets a lease: 4/3 of `lease_seconds`, renewed once
    less than `lease_seconds` (and two beats) is left, so it is always at least that far
    ahead while its holder lives, and each lease is written once per third of a term, not
    every beat."""
    return settings().lease_seconds * 4 / 3


def host_prefix() -> str:
    """The start of every owner id of this host."""
    return f"{_HOST}:"


def new_owner_id() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child that its parent has not reaped yet is a zombie: dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


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
    runs: list[Run] = field(default_factory=list)
    # When the lease runs out, as this process last set it (a claim gives a full term): the
    # heartbeat renews it only once it is due (see `_due`).
    expires: float = field(default_factory=lambda: time.time() + lease_term())
    # The progress JSON last written for it: a beat writes it again only when it changed.
    shown: str | None = None
    # The shared loop an async execution runs on: its lease is renewed only while that loop
    # lives and turns.
    loop: SharedLoop | None = None
    # What threw the execution out of its task (an error the engine did not handle).
    escaped: BaseException | None = None
    # The handle that started it here, told the result when it succeeds (see `EndSink`).
    sink: EndSink | None = None


class EndSink(Protocol):
    """Told the result of an execution that succeeded in this process, once committed (the
    handle its start returned): it need not read back what this process just wrote."""

    def succeeded_here(self, result: str | None) -> None: ...


class _Wakes:
    """Awaiting handles to wake, per event loop: one hand-over to a loop for however many
    ends arrive meanwhile. Ten thousand executions ending together are a few callbacks on
    the loop their handles wait on, not ten thousand writes to its self-pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}

    def add(self, futures: list[asyncio.Future[None]]) -> None:
        fresh = []
        with self._lock:
            for future in futures:
                loop = future.get_loop()
                due = self._due.get(loop)
                if due is None:
                    self._due[loop] = [future]
                    fresh.append(loop)
                else:
                    due.append(future)
        for loop in fresh:
            try:
                loop.call_soon_threadsafe(self._drain, loop)
            except RuntimeError:  # a closed loop: nobody waits there
                with self._lock:
                    self._due.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            due = self._due.pop(loop, ())
        for future in due:
            if not future.done():
                future.set_result(None)


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


class Executor:
    """Runs executions in this process and keeps their leases alive.

    An execution that suspends (a wait), or is handed back for a crash loop's pause, is
    *parked*: nothing is held, but this process remembers it and resumes it here when its
    input arrives, its timer is due or its pause is over, as long as the process lives. A
    `tether worker` does the same for every execution in the store.
    """

    def __init__(self) -> None:
        self.owner = new_owner_id()
        self.parking = True
        self._held: dict[tuple[int, str], _Held] = {}
        self._parked: dict[tuple[int, str], Store] = {}
        self._faulted: dict[tuple[int, str], _Fault] = {}
        # Internal errors per execution (see _MAX_ESCAPES), and those given up on here.
        self._escapes: dict[tuple[int, str], int] = {}
        self._abandoned: dict[tuple[int, str], BaseException] = {}
        # When each kind of repeated failure was last logged (see `_complain`).
        self._complained: dict[str, float] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._freed = threading.Condition(self._lock)
        # Set by a Worker: claims the next execution for a thread whose execution ended, so
        # that the thread runs it at once (no hand-off to another thread), or returns None.
        self.refill: Callable[[Store], Refill | None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings().max_workers, thread_name_prefix="tether-exec"
        )
        self._heartbeat: threading.Thread | None = None
        self._waker: threading.Thread | None = None
        self._poke = threading.Event()
        self._stopping = threading.Event()
        # Async executions at once (`max_async`): made on the loop, on first use.
        self._async_slots: asyncio.Semaphore | None = None
        self._slots_loop: SharedLoop | None = None
        self._stalled: set[int] = set()  # loops whose stall was reported (id)
        self._async_running = 0  # read and written on the loop thread only
        # One bound method for every run that asks (`Run.inline_commits`), not one each.
        self._alone = self._alone_on_loop
        # Awaiting handles of executions held here: woken on the loop they wait on when the
        # hold ends (see `watch`).
        self._watchers: dict[tuple[int, str], list[asyncio.Future[None]]] = {}
        self._wakes = _Wakes()
        # Threads blocked in `result()`, per execution: made by the first to wait, dropped
        # when the last leaves or the hold ends (which wakes that execution's alone).
        self._waiters: dict[tuple[int, str], Waiter] = {}
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

    def claim(self) -> Claim:
        return Claim(self.owner, new_token(), time.time() + lease_term())

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

    def runs_live(self, store: Store, execution_id: str) -> bool:
        """Whether this process holds the execution where it can still end: on a thread, or
        on an event loop whose thread lives."""
        with self._lock:
            held = self._held.get((id(store), execution_id))
        return held is not None and (held.loop is None or held.loop.ended is None)

    def will_run(self, execution_id: str) -> bool:
        """Whether this process holds the execution, or has it parked (it runs it again when
        its input, its timer or the end of its crash-loop pause comes)."""
        with self._lock:
            return any(key[1] == execution_id for key in (*self._held, *self._parked))

    def park(self, store: Store, execution_id: str) -> None:
        """Remember a queued execution that is not runnable yet (a delayed start): the waker
        claims it here once it is."""
        with self._lock:
            if (id(store), execution_id) not in self._held:
                self._parked[(id(store), execution_id)] = store
        try:
            # The note adoption reads: if this process is gone when the time comes, the
            # application's next process takes the execution over (a worker would anyway).
            store.add_event(
                EventRow(execution_id, None, time.time(), "info", HANDBACK_EVENT,
                         f"a delayed start: pid {os.getpid()} on {_HOST_NAME} starts it when due",
                         note_data(self.owner))
            )  # fmt: skip
        except Exception:
            log.debug("execution %s: could not note its delayed start", execution_id, exc_info=True)
        self.adopt_from(store)
        self._ensure_waker()

    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

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
        """Run an execution whose lease this process holds with `token`. `claimed`: it is
        already `running` under that token (else it is `queued` and moves to running here).
        `row`: the execution as the claim returned it, if it did. `sink`: told its result
        if it succeeds here."""
        held = _Held(store, token, execution_id, sink=sink)
        with self._lock:
            self._held[(id(store), execution_id)] = held
            self._parked.pop((id(store), execution_id), None)
            adopt = self.parking and id(store) not in self._adopting
        self._ensure_heartbeat()
        if adopt:
            self.adopt_from(store)
        self._dispatch(held, execution_id, flow, claimed, row)

    def _dispatch(
        self,
        held: _Held,
        execution_id: str,
        flow: Runnable | None,
        claimed: bool,
        row: ExecutionRow | None,
    ) -> None:
        """Async flows go to the shared loop; sync ones, and executions whose flow is not
        known yet (a resume: the thread finds it out), to a thread."""
        if flow is not None and flow.is_async:
            loop = held.loop = shared_loop()
            loop.spawn(functools.partial(self._run_async, held, execution_id, flow, claimed, row))
        else:
            self._pool.submit(self._run, held, execution_id, flow, claimed, row)

    def _run(
        self,
        held: _Held,
        execution_id: str,
        flow: Runnable | None,
        claimed: bool,
        row: ExecutionRow | None,
    ) -> None:
        while True:
            store = held.store
            outcome = None
            nxt: Refill | None = None
            moved = False
            try:
                if flow is None:
                    flow, row = _resolve(store, execution_id, held.token, row)
                    if flow is not None and flow.is_async:
                        # The loop task runs it under the same hold: not ended here, or its
                        # lease would go unrenewed while it runs.
                        moved = True
                        self._dispatch(held, execution_id, flow, claimed, row)
                        return
                if not claimed:
                    claimed = self._claim_started(store, execution_id, held.token)
                if claimed:
                    outcome = _engine.execute(store, execution_id, held.token, flow, held.runs, row)
                if outcome is _engine.Outcome.SUSPENDED:
                    self._note_suspended(store, execution_id)
                nxt = self._next(store)
            except BaseException as exc:
                # Nobody reads the pool's futures: say so here, and hand the execution back
                # (see `_ended`), or it stays `running` with nobody running it.
                log.exception("execution %s: the executor thread failed", execution_id)
                held.escaped, outcome = exc, _engine.Outcome.FAULTED
                if not isinstance(exc, Exception):
                    raise
            finally:
                successor = None if moved else self._ended(held, execution_id, outcome, nxt)
            if nxt is None or successor is None:
                return
            held = successor
            execution_id, flow, claimed, row = nxt.execution_id, nxt.flow, True, nxt.row
            if flow is not None and flow.is_async:
                self._dispatch(held, execution_id, flow, claimed, row)
                return

    async def _run_async(
        self,
        held: _Held,
        execution_id: str,
        flow: Runnable,
        claimed: bool,
        row: ExecutionRow | None,
    ) -> None:
        """An async execution, as a task on the shared loop: store calls go to its store
        threads, the flow body runs here."""
        loop = held.loop or shared_loop()
        if self._async_slots is None or self._slots_loop is not loop:
            # A loop of its own: the one before ended (see SharedLoop), with its tasks.
            self._async_slots = asyncio.Semaphore(settings().max_async)
            self._slots_loop = loop
            self._async_running = 0
        offload = loop.offload_bound
        store = held.store
        outcome = None
        nxt: Refill | None = None
        # Acquired and released by hand: `async with` would keep a bound `__aexit__` for as
        # long as the execution lives.
        slots = self._async_slots
        await slots.acquire()
        try:
            self._async_running += 1
            try:
                # Partials, not lambdas: a lambda here would make a cell of each name it
                # uses, kept for as long as the execution lives.
                if not claimed:
                    claimed = await offload(
                        functools.partial(self._claim_started, store, execution_id, held.token)
                    )
                if claimed:
                    outcome = await _engine.execute_async(
                        store, execution_id, held.token, flow, held.runs, row, offload,
                        self._alone,
                    )  # fmt: skip
                if outcome is _engine.Outcome.SUSPENDED:
                    await offload(functools.partial(self._note_suspended, store, execution_id))
                if self.refill is not None:
                    nxt = await offload(functools.partial(self._next, store))
            except BaseException as exc:
                log.exception("execution %s: its task on the event loop failed", execution_id)
                held.escaped, outcome = exc, _engine.Outcome.FAULTED
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._async_running -= 1
                successor = self._ended(held, execution_id, outcome, nxt)
        finally:
            slots.release()
        if nxt is not None and successor is not None:
            self._dispatch(successor, nxt.execution_id, nxt.flow, True, nxt.row)

    def _note_suspended(self, store: Store, execution_id: str) -> None:
        """Record who will continue a suspended execution when its input or timer arrives:
        this process while it lives (it parks it), else the workers. The store keeps no
        owner for a waiting execution, and `Client.continuation` needs one to tell a
        person giving input whether anything will pick it up."""
        pid, host = os.getpid(), _HOST_NAME
        who = f"pid {pid} on {host}" if self.parking else f"a worker (pid {pid} on {host})"
        try:
            store.add_event(
                EventRow(execution_id, None, time.time(), "info", SUSPEND_EVENT,
                         f"suspended; {who} continues it when its input or timer arrives",
                         _serde.dumps({"owner": self.owner, "parked": self.parking}))
            )  # fmt: skip
        except Exception:
            # Advisory only: the execution is suspended whatever happens to this note.
            log.debug("execution %s: could not note its suspension", execution_id, exc_info=True)

    def _alone_on_loop(self) -> bool:
        return self._async_running == 1

    def _claim_started(self, store: Store, execution_id: str, token: str) -> bool:
        """Move an execution recorded as queued under our lease to running (an attempt)."""
        return store.claim(
            execution_id,
            Claim(self.owner, token, time.time() + lease_term()),
            from_statuses=("queued",),
            expected_token=token,
            now=time.time(),
        )

    def _ended(
        self,
        held: _Held,
        execution_id: str,
        outcome: _engine.Outcome | None,
        nxt: Refill | None,
    ) -> _Held | None:
        """Bookkeeping when an execution stops running here (sync or async); the hold of its
        successor, if the slot passes straight on to one."""
        store = held.store
        key = (id(store), execution_id)
        successor = None
        with self._changed:
            # Only our own entry: once it suspended (or lost its lease), another
            # thread may have claimed it again and hold it under this key now.
            if self._held.get(key) is held:
                del self._held[key]
                self._adopted.discard(key)
            if outcome in _PARKED and self.parking and key not in self._held:
                self._parked[key] = store
            if outcome is _engine.Outcome.FAULTED and key not in self._held:
                self._faulted[key] = _Fault(store, held.token, _fault_of(held))
            elif outcome is _engine.Outcome.FINISHED and self._escapes:
                self._escapes.pop(key, None)
            if nxt is not None:
                # The slot passes straight to the next execution: no free slot shows.
                successor = _Held(store, nxt.token, nxt.execution_id)
                self._held[(id(store), nxt.execution_id)] = successor
                self._parked.pop((id(store), nxt.execution_id), None)
            else:
                self._freed.notify_all()
            self._changed.notify_all()
            if key in self._held:
                watchers, waiter = None, None
            else:
                watchers, waiter = self._watchers.pop(key, None), self._waiters.pop(key, None)
        if held.sink is not None and outcome is _engine.Outcome.FINISHED:
            ended = next((run.ended for run in reversed(held.runs) if run.ended), None)
            if ended is not None:
                held.sink.succeeded_here(ended[0])  # before the wakes: they find it
        if watchers:
            self._wakes.add(watchers)
        if waiter is not None:
            waiter.event.set()
        if outcome in _PARKED and self.parking:
            self._ensure_waker()
        elif outcome is _engine.Outcome.FAULTED:
            log.warning(
                "execution %s: handed back for %s; it is released, with the reason recorded, "
                "as soon as the store takes writes, and resumed",
                execution_id,
                _describe(_fault_of(held)),
            )
            # Released by the waker's thread: `_ended` may run on the event loop thread,
            # which must not wait on the store.
            self._ensure_waker()
            self._poke.set()
        return successor

    def abandoned(self, store: Store, execution_id: str) -> BaseException | None:
        """The error for which this process gave up running the execution (it is queued for
        another process), or None."""
        with self._lock:
            return self._abandoned.get((id(store), execution_id))

    def _complain(self, topic: str, message: str, *args: object) -> None:
        """Log a failure that may repeat every round (a store that stays down) at most once
        per `_COMPLAIN_SECONDS` per topic, so that it is heard but does not flood the log."""
        now = time.monotonic()
        last = self._complained.get(topic)
        if last is not None and now - last < _COMPLAIN_SECONDS:
            return
        self._complained[topic] = now
        log.warning(message, *args)

    def watch(self, store: Store, execution_id: str) -> asyncio.Future[None]:
        """A future (on the running loop) resolved when this process stops holding the
        execution (now, or after it takes it up: a parked execution resumed here). Call
        `unwatch` if it is not resolved."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = (id(store), execution_id)
        with self._lock:
            self._watchers.setdefault(key, []).append(future)
        return future

    def wait_on(self, store: Store, execution_id: str) -> Waiter:
        """Join the threads waiting for the execution to stop being held here; its event is
        set when it does. Leave with `stop_waiting`."""
        key = (id(store), execution_id)
        with self._lock:
            waiter = self._waiters.get(key)
            if waiter is None:
                waiter = self._waiters[key] = Waiter()
            waiter.count += 1
        return waiter

    def stop_waiting(self, store: Store, execution_id: str, waiter: Waiter) -> None:
        key = (id(store), execution_id)
        with self._lock:
            waiter.count -= 1
            if waiter.count <= 0 and self._waiters.get(key) is waiter:
                del self._waiters[key]

    def unwatch(self, store: Store, execution_id: str, future: asyncio.Future[None]) -> None:
        key = (id(store), execution_id)
        with self._lock:
            found = self._watchers.get(key)
            if found is not None:
                with contextlib.suppress(ValueError):
                    found.remove(future)
                if not found:
                    del self._watchers[key]

    def _next(self, store: Store) -> Refill | None:
        """The execution this thread runs next, claimed by the `refill` hook, if any."""
        refill = self.refill
        if refill is None:
            return None
        try:
            return refill(store)
        except Exception as exc:
            # A busy or unavailable database: the thread ends; whoever waits for a free slot
            # (the worker's loop) claims again and handles the error.
            self._complain("refill", "claiming the next execution failed: %s", _describe(exc))
            return None

    def cancel_local(self, store: Store, execution_id: str) -> bool:
        """Signal an execution running in this process to stop at its next boundary."""
        with self._lock:
            held = self._held.get((id(store), execution_id))
        if held is None:
            return False
        for run in held.runs:
            run.cancel()
        return True

    def release_all(self) -> None:
        """Ask every execution running here to hand itself back at its next boundary."""
        with self._lock:
            runs = [run for held in self._held.values() for run in held.runs]
        for run in runs:
            run.release()

    def hand_back(self, grace: float) -> int:
        """Ask every execution running here to hand itself back (`queued`) at its next
        boundary, and wait until none is held or `grace` seconds passed (asking again as new
        ones start). Returns how many are still held: those are left to their leases."""
        self.release_all()
        deadline = time.monotonic() + grace
        while self.held_count() and time.monotonic() < deadline:
            self.wait_for_free(0.05)
            self.release_all()
        return self.held_count()

    def wait_for_change(self, timeout: float) -> None:
        """Block until some execution of this process finishes or parks, or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def wait_for_free(self, timeout: float) -> None:
        """Block until an execution of this process ends without a successor taking its thread
        (one fewer held), or `timeout` passes."""
        with self._freed:
            self._freed.wait(timeout)

    def poke(self, execution_id: str | None = None) -> None:
        """Input was given (to `execution_id`) or a timer changed in this process: look at
        parked executions now."""
        if execution_id is not None:
            with self._lock:
                self._woken.add(execution_id)
        self._poke.set()

    def adopt_from(self, store: Store) -> None:
        """From now on, while this process lives, take over the stranded executions in
        `store` of the flows loaded here (see adoption.py), unless `adopt` is off or this
        executor belongs to a worker (which claims everything itself)."""
        current = settings()
        if not (current.adopt and current.executor and self.parking):
            return
        with self._lock:
            if id(store) in self._adopting:
                return
            self._adopting[id(store)] = store
            if not self._exit_hook:
                self._exit_hook = True
                atexit.register(self._at_exit, os.getpid())
        self._ensure_waker()
        self._poke.set()

    def _at_exit(self, pid: int) -> None:
        """Hand back what was adopted, then end the waker and the heartbeat: their SQLite
        connections close with their threads, so the store's own close at exit (registered
        before this, so run after it) closes the last one and removes the WAL."""
        if pid != os.getpid():
            return  # a forked child: it holds none of these (its parent does)
        self._hand_back_adopted()
        self._stopping.set()
        self._poke.set()
        for thread in (self._waker, self._heartbeat):
            if thread is not None and thread.is_alive():
                thread.join(timeout=1.0)

    def _hand_back_adopted(self) -> None:
        """Ask the executions adopted here to hand themselves back at their next boundary
        (briefly), noting that this process parked them, so the next process of the app
        adopts them again without counting this exit as a crash. What is still running
        after the grace is left to its lease (a takeover then counts, as for a crash)."""
        with self._lock:
            keys = [key for key in self._adopted if key in self._held]
            runs = [run for key in keys for run in self._held[key].runs]
        if not keys:
            return
        for run in runs:
            run.release()
        deadline = time.monotonic() + _EXIT_GRACE_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if not any(key in self._held for key in keys):
                    break
            self.wait_for_free(0.05)
        with self._lock:
            stores = dict(self._adopting)
            released = [key for key in keys if key not in self._held]
        for store_key, execution_id in released:
            store = stores.get(store_key)
            if store is None or store.closed:
                continue
            with contextlib.suppress(Exception):  # advisory, as the suspend note
                store.add_event(
                    EventRow(execution_id, None, time.time(), "info", HANDBACK_EVENT,
                             f"handed back by {self.owner} at exit", note_data(self.owner))
                )  # fmt: skip

    # --- parked executions ----------------------------------------------------------------

    def _ensure_waker(self) -> None:
        with self._lock:
            if self._waker is None or not self._waker.is_alive():
                self._waker = threading.Thread(target=self._wake, name="tether-waker", daemon=True)
                self._waker.start()

    def _wake(self) -> None:
        rounds = 0
        while not self._stopping.is_set():
            self._poke.wait(_WAKER_SECONDS)
            self._poke.clear()
            rounds += 1
            try:
                self._wake_round(rounds)
            except Exception:
                # A bug here must not end the waker: parked executions would never resume.
                log.exception("the waker failed; trying again")

    def _wake_round(self, rounds: int) -> None:
        if self._faulted:
            self._release_faulted()
        if self.parking and settings().adopt:
            self._fire_schedules()
        with self._lock:
            by_store: dict[int, tuple[Store, set[str]]] = {
                key: (store, set()) for key, store in self._adopting.items()
            }
            for (key, execution_id), store in self._parked.items():
                by_store.setdefault(key, (store, set()))[1].add(execution_id)
            woken, self._woken = self._woken, set()
        for key, (store, ids) in by_store.items():
            if store.closed:
                with self._lock:
                    for execution_id in ids:
                        self._parked.pop((key, execution_id), None)
                    self._adopting.pop(key, None)
                    self._scans.pop(key, None)
                    self._firers.pop(key, None)
                continue
            try:
                self._scan_store(store, ids, woken & ids, rounds)
            except Exception as exc:
                # A busy or unavailable database: the next round tries again.
                self._complain(
                    "waker",
                    "cannot look for runnable executions (%d parked here: %s...): %s; trying again",
                    len(ids),
                    ", ".join(sorted(ids)[:3]),
                    _describe(exc),
                )

    def _fire_schedules(self) -> None:
        """A process that adopts its stranded work (`tether.launch()`) also starts the due
        ticks of the scheduled flows it loaded, and runs them itself: a queued execution
        nobody parked is the workers' and would not be adopted here."""
        with self._lock:
            stores = [s for s in self._adopting.values() if not s.closed]
        for store in stores:
            firer = self._firers.setdefault(id(store), Firer())
            try:
                fired = firer.fire(store, settings().clock(), self.claim)
            except Exception as exc:
                self._complain(
                    "schedules", "cannot fire schedules: %s; trying again", _describe(exc)
                )
                continue
            for scheduled, row in fired:
                row.has_history = False
                self.start(
                    store, row.id, row.lease_token or "", scheduled.flow, claimed=True, row=row
                )

    def _release_faulted(self) -> None:
        """Release the executions handed back for a fault (fenced by their old token) and
        record why on each, as soon as the store takes writes; then park them, so that the
        waker resumes them here once they are runnable."""
        with self._lock:
            faults = list(self._faulted.items())
        clock = settings().clock
        for key, fault in faults:
            execution_id = key[1]
            store = fault.store
            if store.closed or isinstance(fault.error, StoreCorrupt):
                # A damaged store takes no writes at all: the error said so already.
                with self._lock:
                    self._faulted.pop(key, None)
                continue
            try:
                if not fault.released:
                    if not store.release(
                        execution_id, fault.token, status=Status.QUEUED, now=clock()
                    ):
                        # Someone else holds it, or it ended: nothing of ours to give back.
                        with self._lock:
                            self._faulted.pop(key, None)
                        continue
                    fault.released = True
                store.add_event(
                    EventRow(
                        execution_id=execution_id,
                        position=None,
                        at=time.time(),
                        level="warning",
                        kind="released",
                        message=f"released (queued) by {self.owner}: {_describe(fault.error)}",
                    )
                )
            except Exception as exc:
                self._complain(
                    f"fault:{execution_id}",
                    "execution %s: cannot release it yet (%s); trying again",
                    execution_id,
                    _describe(exc),
                )
                continue
            with self._lock:
                self._faulted.pop(key, None)
                self._complained.pop(f"fault:{execution_id}", None)
                if isinstance(fault.error, StoreUnavailable):
                    self._escapes.pop(key, None)
                else:
                    # An internal error: resumed here a few times, then left to others.
                    self._escapes[key] = count = self._escapes.get(key, 0) + 1
                    if count >= _MAX_ESCAPES:
                        self._abandoned[key] = fault.error
                        log.error(
                            "execution %s: left queued for `tether executions recover` or a "
                            "worker after %d internal errors here: %s",
                            execution_id,
                            count,
                            _describe(fault.error),
                        )
                        continue
                if self.parking and key not in self._held:
                    self._parked[key] = store
                self._changed.notify_all()

    def _scan_store(self, store: Store, parked: set[str], woken: set[str], rounds: int) -> None:
        """Claim and run what became runnable among the executions parked here and, when
        adopting, the stranded executions of flows loaded here. Each way of being runnable is
        read by a keyset scan that goes on, round after round, from where it stopped (a page
        at most per round), so a round costs O(page) whatever the store holds, and no row
        waits behind older ones for longer than the rounds it takes to pass them."""
        now, due = time.time(), settings().clock()
        # Input given in this process: claimed by id at once, before any scan.
        for execution_id in woken:
            self._take(store, execution_id, now, due)
        # Adoption looks every few rounds (an idle application pays a few reads a second);
        # executions parked here are looked for every round.
        adopting = (
            rounds % _ADOPT_ROUNDS == 1
            and self.parking
            and id(store) in self._adopting
            and settings().adopt
        )
        if not parked and not adopting:
            return
        scan = self._scans.setdefault(id(store), ScanState())
        branches = ("queued", "due", "expired") if adopting else ("queued", "due")
        lease = settings().lease_seconds
        for branch in branches:
            rows = store.scan_runnable(
                branch, after=scan.cursors.get(branch), now=now, due=due, limit=_SCAN_PAGE
            )
            # A short page ends the scan: the next round starts it again from the top.
            scan.cursors[branch] = scan_key(branch, rows[-1]) if len(rows) == _SCAN_PAGE else None
            for row in rows:
                if self.holds(store, row.id):
                    continue
                if row.id in parked or (
                    adopting
                    and scan.adoptable(
                        store, row, branch, gone=self._gone, lease=lease, now=now, due=due
                    )
                ):
                    self._take(store, row.id, now, due, adopted=row.id not in parked)
        if adopting:
            # Dead processes of this host still have live leases: their pids tell at once.
            for execution_id, token in self.take_over_dead(
                store, now, flow_loaded, limit=_SCAN_PAGE
            ):
                self._adopt(store, execution_id, token, None)
        if parked and rounds % _FORGET_ROUNDS == 0:
            # Parked executions that ended or were taken elsewhere (a cancel, a recover):
            # one statement per few hundred ids, every few seconds.
            states = store.execution_states(sorted(parked))
            with self._lock:
                for execution_id in parked:
                    state = states.get(execution_id)
                    if state is None or Status(state[0]).finished or state[1] is not None:
                        self._parked.pop((id(store), execution_id), None)

    def _take(
        self, store: Store, execution_id: str, now: float, due: float, *, adopted: bool = False
    ) -> None:
        claim = self.claim()
        taken = store.claim_runnable(claim, now=now, due=due, ids=[execution_id])
        if taken is None:
            return
        if adopted:
            self._adopt(store, execution_id, claim.token, taken)
        else:
            self.start(store, execution_id, claim.token, None, claimed=True, row=taken)

    def _adopt(self, store: Store, execution_id: str, token: str, row: ExecutionRow | None) -> None:
        log.info("execution %s: adopted (its process is gone)", execution_id)
        with self._lock:
            self._adopted.add((id(store), execution_id))
        self.start(store, execution_id, token, None, claimed=True, row=row)

    def _gone(self, owner: str) -> bool | None:
        """Whether the process of an owner id is dead (True), alive (False), or on another
        host, where its pid cannot be looked at (None)."""
        if owner == self.owner:
            return False
        if not owner.startswith(host_prefix()):
            return None
        return self.owner_gone(owner, float("inf"), time.time())

    # --- heartbeat ----------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        with self._lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(
                    target=self._beat, name="tether-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        beats = 0
        while not self._stopping.wait(_HEARTBEAT_SECONDS):
            beats += 1
            # The holds themselves, not (id, hold) pairs: with 10,000 executions held, a beat
            # that made a tuple per hold would feed the garbage collector 10,000 objects a
            # second that live through the whole beat.
            with self._lock:
                by_store: dict[int, list[_Held]] = {}
                for held in self._held.values():
                    found = by_store.get(id(held.store))
                    if found is None:
                        by_store[id(held.store)] = [held]
                    else:
                        found.append(held)
                stores = {key: entries[0].store for key, entries in by_store.items()}
                stores.update({id(s): s for s in self._parked.values()})
            for entries in by_store.values():
                entries = self._on_live_loops(entries)
                if entries:
                    self._renew(entries)
                    self._pass_on_cancels(entries)
            if beats % _MAINTAIN_BEATS == 0:
                for store in stores.values():
                    try:
                        store.maintain()
                    except Exception:
                        # Escaping would end the heartbeat, and with it every lease held here.
                        log.exception("store maintenance failed; trying again later")

    def _on_live_loops(self, entries: list[_Held]) -> list[_Held]:
        """The holds whose leases may be renewed: sync ones, and async ones whose event loop
        lives and turns. A loop that has not turned for a whole lease is stuck (a blocking
        call that never returns, a deadlock): renewing its leases would keep every
        execution on it from everyone, forever (if it turns again before they are taken over,
        renewing goes on; if not, their late commits are fenced off). One whose thread ended
        runs nothing more: its holds are dropped (a worker's slots free, a stop does not wait
        for them)."""
        lease = settings().lease_seconds
        # Each loop looked at once: thousands of holds share one or two loops.
        healthy: dict[int, bool] = {}
        for held in entries:
            loop = held.loop
            if loop is not None and id(loop) not in healthy:
                healthy[id(loop)] = loop.healthy(lease)
                if healthy[id(loop)]:
                    self._stalled.discard(id(loop))
        if all(healthy.values()):
            return entries  # the usual beat: every hold is renewed, nothing is copied
        kept: list[_Held] = []
        for held in entries:
            loop = held.loop
            if loop is None or healthy[id(loop)]:
                kept.append(held)
                continue
            execution_id = held.execution_id
            if loop.ended is not None or not loop.thread.is_alive():
                for run in held.runs:
                    run.lease_lost = True
                log.error(
                    "execution %s: abandoned here, its lease no longer renewed, because the "
                    "event loop it ran on ended (%s); another process takes it over",
                    execution_id, loop.ended,
                )  # fmt: skip
                self._ended(held, execution_id, None, None)
            elif id(loop) not in self._stalled:
                self._stalled.add(id(loop))
                log.error(
                    "the tether event loop has not turned for over %ss (lease_seconds): the "
                    "leases of its executions are no longer renewed, and other processes "
                    "may take them over; something blocks the loop thread",
                    lease,
                )  # fmt: skip
        return kept

    def _renew(self, entries: list[_Held]) -> None:
        """One statement for what changed since the last beat: the leases that are due, and
        the progress of executions whose live calls (those running for a beat at least)
        changed. A beat with neither writes nothing."""
        store = entries[0].store
        now = time.time()
        lease = settings().lease_seconds
        # Due once less than a lease (and two beats, for a late beat) is left: a lease is
        # never less than `lease_seconds` ahead while its holder lives.
        due_before = now + lease + 2 * _HEARTBEAT_SECONDS
        shown_before = now - _HEARTBEAT_SECONDS
        tokens: dict[str, str] = {}
        progress: dict[str, str | None] = {}
        sent: list[_Held] = []
        for held in entries:
            shows = _progress(held, shown_before)
            changed = shows != held.shown
            if changed:
                progress[held.execution_id] = shows
            if changed or held.expires < due_before:
                tokens[held.execution_id] = held.token
                sent.append(held)
        if not tokens:
            return
        expires = now + lease_term()
        try:
            still = dict(
                store.renew(list(tokens), tokens, expires, progress, refresh_before=due_before)
            )
        except Exception as exc:
            # A busy or briefly unavailable database: try again on the next beat; the lease
            # is long enough to ride out a few missed beats. If it lapses, fenced commits
            # keep a taker elsewhere and this process from both writing.
            self._complain(
                f"heartbeat:{id(store)}",
                "cannot renew the leases of %d execution(s) (%s...): %s; trying again",
                len(tokens),
                ", ".join(list(tokens)[:3]),
                _describe(exc),
            )
            return
        for held in sent:
            execution_id = held.execution_id
            cancel = still.get(execution_id)
            if cancel is not None:
                if held.expires < due_before:
                    held.expires = expires
                if execution_id in progress:
                    held.shown = progress[execution_id]
            for run in held.runs:
                if cancel is None:
                    run.lease_lost = True
                elif cancel:
                    run.cancel()

    def _pass_on_cancels(self, entries: list[_Held]) -> None:
        """Tell the runs of the executions held here that another process asked to cancel:
        one read of the (small) set of pending cancels per store per beat."""
        store = entries[0].store
        try:
            requested = store.cancel_requests()
        except Exception as exc:
            self._complain(
                f"cancels:{id(store)}", "cannot read cancel requests: %s", _describe(exc)
            )
            return
        if not requested:
            return
        for execution_id, token in requested:
            with self._lock:
                found = self._held.get((id(store), execution_id))
            if found is not None and found.token == token:
                for run in found.runs:
                    run.cancel()


def _resolve(
    store: Store, execution_id: str, token: str, row: ExecutionRow | None
) -> tuple[Runnable | None, ExecutionRow | None]:
    """The flow of an execution started without it (a resume), and its row as read; None
    when it cannot be imported here (the engine then hands it back and says why)."""
    if row is None or row.lease_token != token:
        row = store.get_execution(execution_id)
        if row is None:
            return None, None
    try:
        return load_flow(row.import_path, row.script), row
    except Exception:
        return None, row


def _fault_of(held: _Held) -> BaseException:
    if held.escaped is not None:
        return held.escaped
    for run in reversed(held.runs):
        if run.fault is not None:
            return run.fault
    return RuntimeError("an unknown fault")  # not reached: FAULTED always has a cause


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _progress(held: _Held, before: float) -> str | None:
    """The checkpoint calls of an execution live since `before` (a beat ago at least), as
    JSON: a call that ends within a beat is never written. Each beat asks this of every
    hold, and nearly every call is younger than a beat: those cost a look, no copy or sort."""
    found: list[tuple[str, LiveCall]] | None = None
    for run in held.runs:
        if not run.live:
            continue
        # A copy taken in one step (the loop thread adds and removes calls meanwhile).
        for position, call in tuple(run.live.items()):
            if call.started <= before:
                if found is None:
                    found = []
                found.append((position, call))
    if found is None:
        return None
    found.sort(key=lambda item: sort_key(item[0]))
    return _serde.dumps(
        [{"position": at, "name": call.name, "since": call.started} for at, call in found]
    )


_executor_lock = threading.Lock()
_executor: Executor | None = None


def executor() -> Executor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                # The first execution this process runs: thresholds the user set by
                # TETHER_GC_THRESHOLD apply from here (none: the process's are left alone).
                apply_gc(owned=False)
                _executor = Executor()
    return _executor


def launch(db: str | None = None) -> None:
    """Start this process's executor now, for an application that runs flows: from now on,
    while the process lives, it takes over the stranded executions of the flows it loaded
    (their process died or their lease ran out, or their input or child arrived after the
    process that parked them died), sharing them through leases with the other processes
    of the application. Call it at startup, after importing your flows; the first
    `flow.run()` or `resume()` does the same, so call it when the process might otherwise
    run nothing until a request comes in.

    ```python
    from contextlib import asynccontextmanager
    from fastapi import FastAPI
    import tether
    import myapp.agents  # the flows this process runs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tether.launch()
        yield

    app = FastAPI(lifespan=lifespan)
    ```

    `db`: the store (default: the configured one). The modules of `TETHER_IMPORTS` (or
    `[tool.tether] imports`) are loaded too. Does nothing more with `configure(adopt=False)`
    (`TETHER_ADOPT=off`). Raises ConfigurationError in a client-only process
    (`executor=False`), which runs no executions.
    """
    if not settings().executor:
        raise ConfigurationError(
            "tether.launch() starts the executor, and this process is client-only "
            "(configure(executor=False) or TETHER_EXECUTOR=off): it runs no executions; a "
            "`tether worker` runs them"
        )
    _imports.load_configured()
    executor().adopt_from(store_for(db))


def _after_fork() -> None:
    # A forked child owns none of its parent's executions and has none of its threads.
    global _executor
    _executor = None
    with contextlib.suppress(Exception):
        _executor_lock.release()


os.register_at_fork(after_in_child=_after_fork)
