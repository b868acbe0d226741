"""The embedded executor: runs executions in the process that started them.

Sync executions run on threads (`max_workers`, one thread each); async ones as tasks on
the process's shared event loop (`loop.py`; `max_async` at once). Each execution held by
this process has a lease in the store (owner id, token, expiry; owners.py). The executor
is one object made of parts: its state and the queries on it (holds.py), the running of
executions and the bookkeeping when they end (here), the heartbeat that renews their
leases (heartbeat.py), and the waker that resumes the executions parked here and, in an
application's process, adopts stranded ones (waker.py; `launch()`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeAlias

from .._core import imports as _imports
from .._core import serde as _serde
from .._core.config import apply_gc, settings, store_for
from ..errors import ConfigurationError
from ..store import Claim, EventRow, ExecutionRow, Store
from . import engine as _engine
from .adoption import SUSPEND_EVENT
from .engine import Runnable, load_flow
from .heartbeat import Heartbeat
from .holds import EndSink, Refill, Waiter, _describe, _Fault, _Held
from .loop import SharedLoop, shared_loop
from .owners import _HOST_NAME, lease_term
from .waker import Waker

log = logging.getLogger("tether.executor")

# Outcomes after which this process remembers the execution and runs it again once it is
# runnable: a wait's input or timer, or the end of a crash loop's pause.
_PARKED = (_engine.Outcome.SUSPENDED, _engine.Outcome.BACKOFF)


# The awaiting handles of one execution: one future, or a list of several (see `_watchers`).
_Watchers: TypeAlias = asyncio.Future[None] | list[asyncio.Future[None]]


def _futures(watchers: _Watchers) -> list[asyncio.Future[None]] | tuple[asyncio.Future[None]]:
    return watchers if isinstance(watchers, list) else (watchers,)


class _Wakes:
    """Awaiting handles to wake, per event loop: one hand-over to a loop for however many
    ends arrive meanwhile. Ten thousand executions ending together are a few callbacks on
    the loop their handles wait on, not ten thousand writes to its self-pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}

    def add(self, futures: Iterable[asyncio.Future[None]]) -> None:
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


class Executor(Heartbeat, Waker):
    """Runs executions in this process and keeps their leases alive.

    An execution that suspends (a wait), or is handed back for a crash loop's pause, is
    *parked*: nothing is held, but this process remembers it and resumes it here when its
    input arrives, its timer is due or its pause is over, as long as the process lives. A
    `tether worker` does the same for every execution in the store.
    """

    def __init__(self) -> None:
        super().__init__()
        # Set by a Worker: claims the next execution for a thread whose execution ended, so
        # that the thread runs it at once (no hand-off to another thread), or returns None.
        self.refill: Callable[[Store], Refill | None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings().max_workers, thread_name_prefix="tether-exec"
        )
        # Async executions at once (`max_async`), counted per loop, on its thread only: the
        # slots taken, the limit, and the executions waiting for one (each its future,
        # resolved when a slot passes to it). Not an asyncio.Semaphore: its acquire is a
        # coroutine and its test for a free slot a generator, per execution, on the loop.
        self._slots_loop: SharedLoop | None = None
        self._async_running = 0
        self._async_limit = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Whether one async execution holds a slot (kept with `_async_running`), and one
        # callable for every run that asks (`Run.inline_commits`, at every checkpoint commit):
        # a partial of an attrgetter runs in C, where a method would be a Python frame.
        self._alone = False
        self.alone: Callable[[], bool] = functools.partial(operator.attrgetter("_alone"), self)
        # Awaiting handles of executions held here: woken on the loop they wait on when the
        # hold ends (see `watch`). One watcher (the usual case: one handle awaited per
        # execution) is its future alone, several a list: ten thousand handles awaited at
        # once were ten thousand lists, walked by every full collection for as long as their
        # executions ran.
        self._watchers: dict[tuple[int, str], _Watchers] = {}
        self._wakes = _Wakes()
        # Threads blocked in `result()`, per execution: made by the first to wait, dropped
        # when the last leaves or the hold ends (which wakes that execution's alone).
        self._waiters: dict[tuple[int, str], Waiter] = {}

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
        if row is not None and row.lease_token == token and row.lease_expires is not None:
            # The lease as the claim or the start recorded it: what the heartbeat must renew
            # before (no clock read, no settings read per start).
            held = _Held(store, token, execution_id, expires=row.lease_expires, sink=sink)
        else:
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
            # The task's one coroutine is the engine's; the executor's part runs in it as hooks
            # (`enter_async`, `leave_async`).
            loop.spawn(functools.partial(_engine.execute_async, self, held, flow, claimed, row))
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
                    claimed = self.claim_started(store, execution_id, held.token)
                if claimed:
                    outcome = _engine.execute(self, held, flow, row)
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

    # --- the executor's part of an async execution, run in its task by the engine --------

    async def enter_async(self, held: _Held) -> _engine.Offload:
        # The task is kept by its hold from its first step on (see `SharedLoop.spawn`).
        held.task = asyncio.current_task()
        loop = held.loop = held.loop or shared_loop()
        if self._slots_loop is not loop:
            # A loop of its own: the one before ended (see SharedLoop), with its tasks.
            self._slots_loop = loop
            self._async_running = 0
            self._alone = False
            self._async_limit = settings().max_async
            self._slot_waiters = collections.deque()
        # Waiting executions keep their order: a newcomer takes a free slot only when none
        # waits (and one waits only while every slot is taken).
        if self._async_running < self._async_limit and not self._slot_waiters:
            self._async_running += 1
            self._alone = self._async_running == 1
        else:
            await self._wait_for_slot()
        return loop.offload_bound

    async def _wait_for_slot(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._slot_waiters
        waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._free_slot()  # handed a slot as it was cancelled: the next one takes it
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(future)
            raise

    def _free_slot(self) -> None:
        """A slot given back: it passes to the first execution waiting, else it is free."""
        waiters = self._slot_waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._async_running -= 1
        self._alone = self._async_running == 1

    def escaped(self, held: _Held, error: BaseException) -> _engine.Outcome:
        log.exception(
            "execution %s: its task on the event loop failed", held.execution_id, exc_info=error
        )
        held.escaped = error
        return _engine.Outcome.FAULTED

    async def leave_async(
        self, held: _Held, outcome: _engine.Outcome | None, offload: _engine.Offload
    ) -> None:
        store = held.store
        nxt: Refill | None = None
        try:
            # A partial, not a lambda: a lambda makes a cell of each name it uses.
            if self.refill is not None:
                nxt = await offload(functools.partial(self._next, store))
        except BaseException as exc:
            outcome = self.escaped(held, exc)
            if not isinstance(exc, Exception):
                self.leave(held, outcome)
                raise
        successor = self._leave(held, outcome, nxt)
        if nxt is not None and successor is not None:
            self._dispatch(successor, nxt.execution_id, nxt.flow, True, nxt.row)

    def leave(self, held: _Held, outcome: _engine.Outcome | None) -> None:
        self._leave(held, outcome, None)

    def _leave(
        self, held: _Held, outcome: _engine.Outcome | None, nxt: Refill | None
    ) -> _Held | None:
        # The slot taken in `enter_async` is given back only if it is still the loop's: a loop
        # that ended took its slots with it (a new loop counts afresh).
        try:
            return self._ended(held, held.execution_id, outcome, nxt)
        finally:
            if held.loop is self._slots_loop:
                self._free_slot()

    def suspend_note(self, execution_id: str) -> EventRow:
        """Who will continue a suspended execution when its input or timer arrives: this
        process while it lives (it parks it), else the workers. The store keeps no owner
        for a waiting execution, and `Client.continuation` needs one to tell a person
        giving input whether anything will pick it up. Recorded by `Store.suspend` in the
        suspension's own transaction (see `engine._conclude`)."""
        pid, host = os.getpid(), _HOST_NAME
        who = f"pid {pid} on {host}" if self.parking else f"a worker (pid {pid} on {host})"
        return EventRow(
            execution_id, None, time.time(), "info", SUSPEND_EVENT,
            f"suspended; {who} continues it when its input or timer arrives",
            _serde.dumps({"owner": self.owner, "parked": self.parking}),
        )  # fmt: skip

    def claim_started(self, store: Store, execution_id: str, token: str) -> bool:
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
        with self._lock:
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
            elif self._free_waiters:
                self._freed.notify_all()
            if self._change_waiters:
                self._changed.notify_all()
            if key in self._held:
                watchers, waiter = None, None
            else:
                watchers, waiter = self._watchers.pop(key, None), self._waiters.pop(key, None)
        if held.sink is not None and outcome is _engine.Outcome.FINISHED:
            ended = held.run.ended if held.run is not None else None
            if ended is not None:
                held.sink.succeeded_here(ended[0])  # before the wakes: they find it
        if watchers is not None:
            self._wakes.add(_futures(watchers))
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

    def watch(self, store: Store, execution_id: str) -> asyncio.Future[None]:
        """A future (on the running loop) resolved when this process stops holding the
        execution (now, or after it takes it up: a parked execution resumed here). Call
        `unwatch` if it is not resolved."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._add_watcher((id(store), execution_id), future)
        return future

    def watch_live(self, store: Store, execution_id: str) -> asyncio.Future[None] | None:
        """`watch`, if this process holds the execution where it can still end (`runs_live`),
        asked and registered under one hold of the lock (an awaited handle asks once per
        wait); else None, watching nothing."""
        key = (id(store), execution_id)
        with self._lock:
            held = self._held.get(key)
            if held is None or (held.loop is not None and held.loop.ended is not None):
                return None
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._add_watcher(key, future)
        return future

    def _add_watcher(self, key: tuple[int, str], future: asyncio.Future[None]) -> None:
        """Under the lock."""
        found = self._watchers.get(key)
        if found is None:
            self._watchers[key] = future
        elif isinstance(found, list):
            found.append(future)
        else:
            self._watchers[key] = [found, future]

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

    def _wake_strays(self) -> None:
        """The heartbeat's safety net for awaiting handles, which wait on their execution's
        end with no timer of their own while it is held here (ten thousand timers were a
        tenth of the awaiting loop's work): whoever watches an execution no longer held here
        is woken, and reads the store."""
        with self._lock:
            stray = [key for key in self._watchers if key not in self._held]
            futures = [future for key in stray for future in _futures(self._watchers.pop(key))]
        if futures:
            self._wakes.add(futures)

    def unwatch(self, store: Store, execution_id: str, future: asyncio.Future[None]) -> None:
        key = (id(store), execution_id)
        with self._lock:
            found = self._watchers.get(key)
            if found is future:
                del self._watchers[key]
            elif isinstance(found, list):
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
        if held.run is not None:
            held.run.cancel()
        return True

    def release_all(self) -> None:
        """Ask every execution running here to hand itself back at its next boundary."""
        with self._lock:
            runs = [held.run for held in self._held.values() if held.run is not None]
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
    if held.run is not None and held.run.fault is not None:
        return held.run.fault
    return RuntimeError("an unknown fault")  # not reached: FAULTED always has a cause


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
