"""The embedded executor: runs executions in the process that started them.

Sync executions run on threads (`max_workers`, one thread each); async ones as tasks on
the process's shared event loop (`loop.py`; `max_async` at once). Each execution held by
this process has a lease in the store (owner id, token, expiry). A heartbeat thread
extends the leases and picks up cancel requests made from other processes. Owner ids name
the host and pid, so a process on the same host can tell at once that an owner was
killed, instead of waiting for its lease to run out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .._core import serde as _serde
from .._core.config import settings
from .._core.context import Run
from .._core.positions import sort_key
from .._core.status import Status
from ..store import Claim, EventRow, ExecutionRow, Store
from . import engine as _engine
from .engine import Runnable, load_flow
from .loop import shared_loop

log = logging.getLogger("tether.executor")

_HEARTBEAT_SECONDS = 1.0
# How often parked executions are checked for input from other processes and due timers.
_WAKER_SECONDS = 0.2
_MAINTAIN_BEATS = 10
_RUNNABLE_BATCH = 1000

_HOST = socket.gethostname()
# The event that says which process will continue a suspended execution (Client.continuation).
SUSPEND_EVENT = "suspend"


def host_prefix() -> str:
    """The start of every owner id of this host."""
    return f"{_HOST}:"


def new_owner_id() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def new_token() -> str:
    return uuid.uuid4().hex


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
    runs: list[Run] = field(default_factory=list)


class Executor:
    """Runs executions in this process and keeps their leases alive.

    An execution that suspends (a wait) is *parked*: nothing is held, but this process
    remembers it and resumes it here when its input arrives or its timer is due, as long as
    the process lives. A `tether worker` does the same for every execution in the store.
    """

    def __init__(self) -> None:
        self.owner = new_owner_id()
        self.parking = True
        self._held: dict[tuple[int, str], _Held] = {}
        self._parked: dict[tuple[int, str], Store] = {}
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
        self._async_running = 0  # read and written on the loop thread only
        # Awaiting handles of executions held here: woken on the loop they wait on when the
        # hold ends (see `watch`).
        self._watchers: dict[tuple[int, str], list[asyncio.Future[None]]] = {}

    def claim(self) -> Claim:
        return Claim(self.owner, new_token(), time.time() + settings().lease_seconds)

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
        for row in store.leased_on_host(prefix=host_prefix(), now=now):
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

    def start(
        self,
        store: Store,
        execution_id: str,
        token: str,
        flow: Runnable | None,
        *,
        claimed: bool = False,
        row: ExecutionRow | None = None,
    ) -> None:
        """Run an execution whose lease this process holds with `token`. `claimed`: it is
        already `running` under that token (else it is `queued` and moves to running here).
        `row`: the execution as the claim returned it, if it did."""
        held = _Held(store, token)
        with self._lock:
            self._held[(id(store), execution_id)] = held
            self._parked.pop((id(store), execution_id), None)
        self._ensure_heartbeat()
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
            shared_loop().spawn(lambda: self._run_async(held, execution_id, flow, claimed, row))
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
            try:
                if flow is None:
                    flow, row = _resolve(store, execution_id, held.token, row)
                    if flow is not None and flow.is_async:
                        self._dispatch(held, execution_id, flow, claimed, row)
                        return
                if not claimed:
                    claimed = self._claim_started(store, execution_id, held.token)
                if claimed:
                    outcome = _engine.execute(store, execution_id, held.token, flow, held.runs, row)
                if outcome is _engine.Outcome.SUSPENDED:
                    self._note_suspended(store, execution_id)
                nxt = self._next(store)
            except BaseException:
                # Nobody reads the pool's futures: say so here, or it goes unnoticed.
                log.exception("execution %s: the executor thread failed", execution_id)
                raise
            finally:
                successor = self._ended(held, execution_id, outcome, nxt)
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
        if self._async_slots is None:
            self._async_slots = asyncio.Semaphore(settings().max_async)
        offload = shared_loop().offload
        store = held.store
        outcome = None
        nxt: Refill | None = None
        async with self._async_slots:
            self._async_running += 1
            try:
                if not claimed:
                    claimed = await offload(
                        lambda: self._claim_started(store, execution_id, held.token)
                    )
                if claimed:
                    outcome = await _engine.execute_async(
                        store, execution_id, held.token, flow, held.runs, row, offload,
                        self._alone_on_loop,
                    )  # fmt: skip
                if outcome is _engine.Outcome.SUSPENDED:
                    await offload(lambda: self._note_suspended(store, execution_id))
                if self.refill is not None:
                    nxt = await offload(lambda: self._next(store))
            except BaseException:
                log.exception("execution %s: its task on the event loop failed", execution_id)
                raise
            finally:
                self._async_running -= 1
                successor = self._ended(held, execution_id, outcome, nxt)
        if nxt is not None and successor is not None:
            self._dispatch(successor, nxt.execution_id, nxt.flow, True, nxt.row)

    def _note_suspended(self, store: Store, execution_id: str) -> None:
        """Record who will continue a suspended execution when its input or timer arrives:
        this process while it lives (it parks it), else the workers. The store keeps no
        owner for a waiting execution, and `Client.continuation` needs one to tell a
        person giving input whether anything will pick it up."""
        pid, host = os.getpid(), _HOST
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
            Claim(self.owner, token, time.time() + settings().lease_seconds),
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
            if outcome is _engine.Outcome.SUSPENDED and self.parking and key not in self._held:
                self._parked[key] = store
            if nxt is not None:
                # The slot passes straight to the next execution: no free slot shows.
                successor = _Held(store, nxt.token)
                self._held[(id(store), nxt.execution_id)] = successor
                self._parked.pop((id(store), nxt.execution_id), None)
            else:
                self._freed.notify_all()
            self._changed.notify_all()
            watchers = self._watchers.pop(key, None) if key not in self._held else None
        if watchers:
            _wake(watchers)
        if outcome is _engine.Outcome.SUSPENDED and self.parking:
            self._ensure_waker()
        return successor

    def watch(self, store: Store, execution_id: str) -> asyncio.Future[None] | None:
        """A future (on the running loop) resolved when this process stops holding the
        execution, or None if it does not hold it now."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = (id(store), execution_id)
        with self._lock:
            if key not in self._held:
                return None
            self._watchers.setdefault(key, []).append(future)
        return future

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
        except Exception:
            # A busy or unavailable database: the thread ends; whoever waits for a free slot
            # (the worker's loop) claims again and handles the error.
            return None

    def cancel_local(self, store: Store, execution_id: str) -> bool:
        """Signal an execution running in this process to stop at its next boundary."""
        with self._lock:
            held = self._held.get((id(store), execution_id))
        if held is None:
            return False
        for run in held.runs:
            run.cancel_event.set()
        return True

    def release_all(self) -> None:
        """Ask every execution running here to hand itself back at its next boundary."""
        with self._lock:
            runs = [run for held in self._held.values() for run in held.runs]
        for run in runs:
            run.release_event.set()

    def wait_for_change(self, timeout: float) -> None:
        """Block until some execution of this process finishes or parks, or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def wait_for_free(self, timeout: float) -> None:
        """Block until an execution of this process ends without a successor taking its thread
        (one fewer held), or `timeout` passes."""
        with self._freed:
            self._freed.wait(timeout)

    def poke(self) -> None:
        """Input was given or a timer changed in this process: look at parked executions now."""
        self._poke.set()

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
            with self._lock:
                by_store: dict[int, tuple[Store, list[str]]] = {}
                for (key, execution_id), store in self._parked.items():
                    by_store.setdefault(key, (store, []))[1].append(execution_id)
            for store, ids in by_store.values():
                if store.closed:
                    with self._lock:
                        for execution_id in ids:
                            self._parked.pop((id(store), execution_id), None)
                    continue
                try:
                    self._resume_parked(store, ids, forget_finished=rounds % 25 == 0)
                except Exception:
                    continue  # a busy database: the next round tries again

    def _resume_parked(self, store: Store, ids: list[str], *, forget_finished: bool) -> None:
        # One indexed query for what is runnable at all, then claims for the ones parked
        # here: cheaper than a claim query listing every parked id, of which few are due.
        now, due = time.time(), settings().clock()
        parked = set(ids)
        for row in store.runnable(now=now, due=due, limit=_RUNNABLE_BATCH):
            if row.id not in parked:
                continue
            claim = self.claim()
            taken = store.claim_runnable(claim, now=now, due=due, ids=[row.id])
            if taken is not None:
                ids.remove(row.id)
                self.start(store, row.id, claim.token, None, claimed=True, row=taken)
        if forget_finished:
            for execution_id in ids:
                found = store.get_execution(execution_id)
                if found is None or Status(found.status).finished or found.owner is not None:
                    with self._lock:
                        self._parked.pop((id(store), execution_id), None)

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
            with self._lock:
                by_store: dict[int, list[tuple[str, _Held]]] = {}
                for (store_key, execution_id), held in self._held.items():
                    by_store.setdefault(store_key, []).append((execution_id, held))
                stores = {id(h.store): h.store for h in self._held.values()}
                stores.update({id(s): s for s in self._parked.values()})
            for entries in by_store.values():
                self._renew(entries)
            if beats % _MAINTAIN_BEATS == 0:
                for store in stores.values():
                    try:
                        store.maintain()
                    except Exception:
                        # Escaping would end the heartbeat, and with it every lease held here.
                        log.exception("store maintenance failed; trying again later")

    def _renew(self, entries: list[tuple[str, _Held]]) -> None:
        store = entries[0][1].store
        tokens = {execution_id: held.token for execution_id, held in entries}
        progress = {execution_id: _progress(held) for execution_id, held in entries}
        try:
            lease = settings().lease_seconds
            now = time.time()
            # Beats come every second. A lease always keeps at least `lease_seconds` ahead of
            # it: once less is left it is extended to 4/3 of that, so about two beats in three
            # leave the indexed expiry alone (and the row update HOT). A dead owner's lease
            # thus runs out within 4/3 of `lease_seconds`.
            still = dict(
                store.renew(
                    list(tokens), tokens, now + lease * 4 / 3, progress, refresh_before=now + lease
                )
            )
        except Exception:
            # A busy or briefly unavailable database: try again on the next beat; the lease
            # is long enough to ride out a few missed beats.
            return
        for execution_id, held in entries:
            cancel = still.get(execution_id)
            for run in held.runs:
                if cancel is None:
                    run.lease_lost = True
                elif cancel:
                    run.cancel_event.set()


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


def _wake(watchers: list[asyncio.Future[None]]) -> None:
    for future in watchers:
        loop = future.get_loop()
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
            loop.call_soon_threadsafe(_resolve_future, future)


def _resolve_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _progress(held: _Held) -> str | None:
    live = [
        {"position": position, "name": name, "since": since}
        for run in held.runs
        for position, (name, since) in sorted(
            run.live.copy().items(), key=lambda item: sort_key(item[0])
        )
    ]
    return _serde.dumps(live) if live else None


_executor_lock = threading.Lock()
_executor: Executor | None = None


def executor() -> Executor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = Executor()
    return _executor


def _after_fork() -> None:
    # A forked child owns none of its parent's executions and has none of its threads.
    global _executor
    _executor = None
    with contextlib.suppress(Exception):
        _executor_lock.release()


os.register_at_fork(after_in_child=_after_fork)
