"""Group commit: concurrent writes from the threads of one process share one statement.

Each caller blocks until its own item is durably written, as if it wrote alone. The first
caller to find no write in flight becomes the *leader* and writes at once, on its own thread
(a lone caller pays no hand-off to another thread). Callers arriving while a write is in
flight queue up; when it ends, the leader wakes the first of them, which becomes the next
leader and writes everything queued by then in one batch. So the batch grows by itself with
the load: one item when the store is idle, everything that arrived during one commit when it
is busy.

One refinement keeps batches whole when the callers move in step (executions whose steps are
short all come back to commit right after the batch that released them): a caller that finds
no write in flight, right after a batch of n callers that come back (`rejoins`), waits for
the n - 1 others to queue up, but no longer than that batch took to write. The wait is never
longer than the others would wait behind it if it wrote alone at once, and it saves a commit
per round. After a batch of one (a lone execution, or steps that take a while) nobody waits.

Callers on an event loop (`commit_async`) cannot lead: blocking the loop on the write would
stall every task on it. Their items queue like the others; when no thread leads, a writer
thread of the committer's own (started on first use) leads instead, and each such caller's
future is resolved on its loop once its item is durable (one hand-over per loop per batch).
A batch may mix both kinds of callers. Such a caller may also leave something to do on its
loop once its item is written (`then`), which runs there whatever became of the caller, in
the same hand-over: no callback of its own on the future, and no second future to wake it.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import contextlib
import copy
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast

from ..errors import StoreUnavailable
from ._base import CheckpointRow, EventRow

T = TypeVar("T")
R = TypeVar("R")
_UNSET: Any = object()
# The longest a leader waits for the rest of the previous batch, whatever that batch took.
_MAX_GATHER_SECONDS = 0.005


class Waiting:
    """A caller's place in the group commit: its item's key, what it waits on, and its
    answer. An item of the store's own group commits (`CheckpointCommit`, `Finish`) is a
    `Waiting` itself, so a commit allocates one object besides its future rather than an
    item and a waiter: with ten thousand executions on one loop, every object a commit keeps
    alive until its batch is durable is walked by each collection meanwhile."""

    __slots__ = ("future", "key", "outcome", "raised", "wake")

    key: Hashable
    # A caller on an event loop waits on its future; a thread, on its lock: held from the
    # start, released once, when its item is written or it is made the leader.
    future: asyncio.Future[Any] | None
    wake: Any
    # What the write answered for the item (_UNSET until then), or what it raised.
    outcome: Any
    raised: BaseException | None


class _Boxed(Waiting, Generic[T]):
    """The waiter of an item that is not a `Waiting` (a start's row, a test's value). `then`:
    what its caller on an event loop left to do there once the item is written (see
    `GroupCommit.commit_async`)."""

    __slots__ = ("item", "then")

    then: Callable[[Any], None] | None

    def __init__(self, item: T, key: Hashable) -> None:
        self.item = item
        self.key = key
        self.future = self.wake = None
        self.outcome = _UNSET
        self.raised = None
        self.then = None


class CheckpointCommit(Waiting):
    """One checkpoint commit of a batch, with the events logged during the call."""

    __slots__ = ("events", "execution_id", "row", "token")

    key: str
    execution_id: str
    token: str
    row: CheckpointRow
    events: tuple[EventRow, ...]

    def __init__(
        self, execution_id: str, token: str, row: CheckpointRow, events: tuple[EventRow, ...]
    ) -> None:
        self.execution_id = execution_id
        self.token = token
        self.row = row
        self.events = events
        # A batch writes each checkpoint row at most once. A string, not a tuple: strings are
        # not tracked by the garbage collector.
        self.key = f"{execution_id} {row.position}"
        self.future = self.wake = None
        self.outcome = _UNSET
        self.raised = None


class Finish(Waiting):
    """One execution's end (`Store.finish`), fenced by its lease token like a checkpoint."""

    __slots__ = ("error", "execution_id", "now", "result", "status", "token")

    # Its fields in the order a batch statement takes them (the PostgreSQL statement types
    # each after the annotation below).
    COLUMNS = ("execution_id", "token", "status", "result", "error", "now")
    key: str
    execution_id: str
    token: str
    status: str
    result: str | None
    error: str | None
    now: float

    def __init__(
        self,
        execution_id: str,
        token: str,
        status: str,
        result: str | None,
        error: str | None,
        now: float,
    ) -> None:
        self.execution_id = execution_id
        self.token = token
        self.status = status
        self.result = result
        self.error = error
        self.now = now
        self.key = execution_id  # no space in an id: never a checkpoint's key
        self.future = self.wake = None
        self.outcome = _UNSET
        self.raised = None


def rejoins(item: CheckpointCommit | Finish) -> bool:
    """After a checkpoint commit the execution goes on and commits again; after its end its
    caller does not come back, so the next batch does not wait for it."""
    return type(item) is CheckpointCommit


class GroupCommit(Generic[T, R]):
    """Calls `write(items) -> results` (one result per item, in order) for batches of items
    submitted concurrently with `commit(item)`.

    `key(item)`: items with equal keys never share a batch (a later one waits for the next),
    so a batch never writes the same row twice; None when the items are `Waiting` objects,
    which carry their key and are their own waiters (each is committed once). `rejoins(item)`:
    whether the caller of this item is expected back with another item right after it is
    written (a checkpoint commit: the execution goes on; its end: it does not); only those
    are waited for when gathering the next batch (default: every caller). `shared`: errors
    that concern the whole batch (the database is unreachable) and are raised to every
    caller in it; any other error is taken to concern one item, so each item of the failed
    batch is written again alone and only the faulty one fails. `write` may also set an
    item's `raised` itself (a `Waiting` item's own fault), which its caller then raises.
    """

    def __init__(
        self,
        write: Callable[[list[T]], list[R]],
        *,
        key: Callable[[T], Hashable] | None,
        shared: tuple[type[BaseException], ...],
        rejoins: Callable[[T], bool] | None = None,
    ) -> None:
        self._write = write
        self._key = key
        self._rejoins = rejoins
        self._shared = shared
        self._lock = threading.Lock()
        self._queue: list[Waiting] = []
        self._leading = False
        # The previous batch: its size and how long it took to write.
        self._last_size = 0
        self._last_seconds = 0.0
        #: batches written so far (a diagnostic: how well concurrent commits are grouped)
        self.batches = 0
        # While a leader gathers: how many it waits for, and the lock it sleeps on until they
        # are queued (held from the start; at most one in the list). The caller that
        # completes the count pops it and releases it: a pop is atomic, so exactly one caller
        # releases each lock, once, and a caller on an event loop wakes the leader with two
        # calls into C, taking neither `_lock` nor a Condition's lock and notify (an Event's
        # set) on the loop thread. A fresh lock per wait: one popped after the leader stopped
        # waiting is released with nobody on it, which wakes no later wait.
        self._gather = 0
        self._gather_wakes: list[_thread.LockType] = []
        # Leads for callers on event loops (they never lead themselves); started on first use.
        self._writer: threading.Thread | None = None
        # Released to wake it, acquired by it to sleep: a plain lock, not a Semaphore (a
        # Condition in Python, whose release cost the loop thread a lock and a notify on every
        # hand-over). Released only with `_lock` held and only while held, so a wake is
        # never lost and never doubled.
        self._writer_wake = _thread.allocate_lock()
        self._writer_wake.acquire()
        # Callers on event loops queue here without the lock (a deque's append is atomic):
        # the loop thread must not wait on a lock a writing thread holds. Moved into the
        # queue, in order, by whoever takes the lock next.
        self._inbox: collections.deque[Waiting] = collections.deque()

    def _waiting(self, item: T) -> Waiting:
        key = self._key
        return cast(Waiting, item) if key is None else _Boxed(item, key(item))

    def _items(self, batch: list[Waiting]) -> list[T]:
        if self._key is None:
            return cast(list[T], batch)
        boxed: list[Any] = batch
        return [w.item for w in boxed]

    def _take_inbox(self) -> None:
        """With the lock held: the callers on event loops join the queue."""
        inbox = self._inbox
        while inbox:
            self._queue.append(inbox.popleft())

    def _hand_over(self) -> None:
        """Make the first queued caller the leader (with the lock held): a thread is woken;
        for a caller on an event loop, the writer thread leads."""
        first = self._queue[0]
        if first.wake is not None:
            first.wake.release()
            return
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(
                target=self._write_forever, name="tether-group-commit", daemon=True
            )
            self._writer.start()
        if self._writer_wake.locked():
            self._writer_wake.release()

    def _write_forever(self) -> None:
        while True:
            self._writer_wake.acquire()
            self._lead(gather=True, leader=None)

    def commit_async(
        self, item: T, then: Callable[[R | None], None] | None = None
    ) -> asyncio.Future[R]:
        """`commit(item)` for a caller on an event loop, which awaits the future returned:
        the loop is never blocked on the write; the caller resumes once its item is durable.
        (A plain function returning the future, not a coroutine: one object less per commit.)

        `then` (with a `key`: items that are not `Waiting`): called on the loop once the
        write is answered, before the future is resolved and whether or not the caller
        still waits (cancelling the future cancels only the wait), with the item's result,
        or None when it was not written or its write failed. What must follow a write
        even when its caller is gone (an execution recorded as running here must run here)
        goes there, rather than in a done callback of the future that resolves another
        future for the caller: two callbacks and two objects more on the loop per write."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        key = self._key
        # Typed Any, not cast(): a cast is a call, on the loop thread, for every commit.
        me: Any = item if key is None else _Boxed(item, key(item))
        me.future = future
        if then is not None:
            me.then = then
        inbox = self._inbox
        inbox.append(me)
        if not self._leading:
            self._lead_if_idle()
        elif self._gather_wakes and len(self._queue) + len(inbox) >= self._gather:
            self._wake_gatherer()  # the leader waits for us
        return future

    def _wake_gatherer(self) -> None:
        try:
            wake = self._gather_wakes.pop()
        except IndexError:  # another caller took it first, or the leader stopped waiting
            return
        wake.release()

    def _lead_if_idle(self) -> None:
        # Whoever clears `_leading` looks at the inbox after it, so an item appended while
        # it did is never left behind (see `_lead`).
        with self._lock:
            self._take_inbox()
            if not self._leading and self._queue:
                self._leading = True
                self._hand_over()

    def commit(self, item: T) -> R:
        """Write `item` (with whatever else is queued) and return its result once durable."""
        me = self._waiting(item)
        me.wake = _thread.allocate_lock()
        me.wake.acquire()
        with self._lock:
            self._take_inbox()
            self._queue.append(me)
            follow = self._leading
            self._leading = True
            if self._gather_wakes and len(self._queue) + len(self._inbox) >= self._gather:
                self._wake_gatherer()
        if follow:
            me.wake.acquire()  # until a leader has written our item, or hands us the lead
        if me.outcome is _UNSET and me.raised is None:
            self._lead(gather=not follow, leader=me)
        if me.raised is not None:
            raise me.raised
        return cast(R, me.outcome)

    def _lead(self, *, gather: bool, leader: Waiting | None) -> None:
        # A leading caller is always first in the queue: the queue is empty when nobody
        # leads, and a leader hands over to the first caller still queued. The writer thread
        # (`leader` None) leads for a first caller that waits on an event loop.
        with self._lock:
            if gather and self._last_size > 1:
                self._gather = self._last_size
                deadline = time.monotonic() + min(self._last_seconds, _MAX_GATHER_SECONDS)
                wakes = self._gather_wakes
                try:
                    while True:
                        wake = _thread.allocate_lock()
                        wake.acquire()
                        # Offered before counting: a caller that queues after the count finds
                        # it and releases it, which this wait then returns on (no lost wake).
                        wakes.append(wake)
                        if len(self._queue) + len(self._inbox) >= self._gather:
                            break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._lock.release()
                        try:
                            wake.acquire(True, left)
                        finally:
                            self._lock.acquire()
                        wakes.clear()
                finally:
                    wakes.clear()
                    self._gather = 0
            self._take_inbox()
            batch = self._queue
            keys = {w.key for w in batch}
            if len(keys) < len(batch):
                later: list[Waiting] = []
                batch, keys = [], set()
                for waiter in self._queue:
                    (later if waiter.key in keys else batch).append(waiter)
                    keys.add(waiter.key)
                self._queue = later
            else:
                self._queue = []  # the usual batch: every key once, all of it written now
        started = time.monotonic()
        self.batches += 1
        try:
            self._write_batch(batch)
        finally:
            rejoins = self._rejoins
            self._last_size = (
                len(batch)
                if rejoins is None
                else sum(1 for item in self._items(batch) if rejoins(item))
            )
            self._last_seconds = time.monotonic() - started
            # One hand-over per loop: usually every caller of a batch is on the one loop.
            on_loops: dict[asyncio.AbstractEventLoop, list[Waiting]] = {}
            for waiter in batch:
                if waiter.outcome is _UNSET and waiter.raised is None:
                    # The leader was interrupted (not by the database) and re-raises that;
                    # whether these items were written is unknown: the store did not answer.
                    waiter.raised = StoreUnavailable("a group commit was interrupted")
                future = waiter.future
                if future is not None:
                    loop = future.get_loop()
                    waiters = on_loops.get(loop)
                    if waiters is None:
                        on_loops[loop] = waiters = []
                    waiters.append(waiter)
                elif waiter is not leader:
                    waiter.wake.release()
            # The loops' lists hold the items from here: `_settle` drops each as it wakes
            # its caller (this thread may still be here while it does).
            batch.clear()
            # Boxed items may carry a `then`; the store's own (checkpoints, ends) never do,
            # and their resolution asks nothing more per commit.
            settle = _settle if self._key is None else _settle_boxed
            for loop, waiters in on_loops.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                    loop.call_soon_threadsafe(settle, waiters)
            with self._lock:
                self._take_inbox()
                if self._queue:
                    self._hand_over()  # the next leader
                else:
                    self._leading = False
            if self._inbox and not self._leading:
                self._lead_if_idle()  # appended while we let go

    def _write_batch(self, batch: list[Waiting]) -> None:
        try:
            results = self._write(self._items(batch))
        except self._shared as exc:
            _fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].raised = exc
                return
            # Nothing of the batch was written: find the faulty item by writing each alone.
            for waiter in batch:
                waiter.raised = None
                self._write_batch([waiter])
            return
        for waiter, result in zip(batch, results, strict=True):
            waiter.outcome = result


def _settle(waiters: list[Any]) -> None:
    """On the waiters' event loop: resolve their futures (a cancelled caller is gone)."""
    waiter: Any  # its future is set: it waits on a loop
    for i in range(len(waiters)):
        # Each item is freed as its caller is woken, not all of them after: waking a caller
        # allocates (the loop's handle for its task), and frees that come after a burst of
        # allocations are lost to the collector's young-generation count (it stops at zero),
        # so a batch of n would count n allocations towards the next collection; freed in
        # step, it counts none.
        waiter = waiters[i]
        waiters[i] = None
        # Set without asking first whether it is done: a cancelled caller is rare, and a call
        # per commit is not.
        try:
            if waiter.raised is None:
                waiter.future.set_result(waiter.outcome)
            else:
                waiter.future.set_exception(waiter.raised)
        except asyncio.InvalidStateError:
            pass


def _settle_boxed(waiters: list[Any]) -> None:
    """`_settle` for boxed items: each item's `then` first, then every future. A `then` that
    raises is reported as asyncio reports a callback that raises, and the batch goes on: the
    other callers, and this one, are still answered."""
    for waiter in waiters:
        then = waiter.then
        if then is None:
            continue
        waiter.then = None
        try:
            then(waiter.outcome if waiter.raised is None else None)
        except Exception as exc:
            waiter.future.get_loop().call_exception_handler(
                {"message": f"the follow-up of a group commit raised: {exc!r}", "exception": exc}
            )
    _settle(waiters)


def _fail(batch: list[Waiting], exc: BaseException) -> None:
    """Every caller raises its own copy: one exception object raised in several threads at
    once would collect all their tracebacks."""
    for i, waiter in enumerate(batch):
        if i == 0:
            waiter.raised = exc
            continue
        try:
            raised = copy.copy(exc)
            raised.__cause__ = exc
            waiter.raised = raised
        except Exception:
            waiter.raised = exc
