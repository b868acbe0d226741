"""The shared event loop: where the async executions of this process run, as tasks.

One thread (`tether-loop`), started the first time an async execution runs, runs one event
loop for every async execution of the process: an I/O-bound agent costs a task, not a
thread. The loop never waits on the database: an execution's loading and its end run on a
small pool of store threads (`tether-store`, see `offload`), and checkpoint commits are
group committed by the store's writer thread (`Store.record_checkpoint_async`).

A call that blocks inside an async checkpoint (`time.sleep`, a sync HTTP client) stalls
every execution on the loop. A watchdog thread notices when the loop is late to turn and,
while it is, reads the loop thread's stack every 50 ms. Only when every one of those samples,
over at least `settings().slow_callback_seconds`, saw the same call still running (the same
frame objects) does it name that call: the checkpoint whose code it is, in the log and as a
`warning` event on its execution. A loop that is late because one turn runs thousands of
short callbacks (many executions starting or resuming at once, garbage collection) blocks
on nothing: whatever a single sample caught there is innocent, so that is logged once per
stall, at INFO, as a saturated loop, and no execution is accused.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

from .._core import checkpoint as _checkpoint
from .._core.config import settings
from .._core.positions import install

log = logging.getLogger("tether.loop")
T = TypeVar("T")

# Threads that run store calls for executions on the loop (their loading, their end, the
# claim of the next one): enough to overlap reads with the writer's commits.
_STORE_THREADS = 4
# How often the loop marks that it turns, and the watchdog looks.
_TICK_SECONDS = 0.05
# How long without a turn makes the loop late: its tick has missed its time by a whole
# period. Only then does the watchdog read the loop thread's stack (and hold its frames): a
# loop that turns normally costs it a clock read every 50 ms.
_LATE_SECONDS = 2 * _TICK_SECONDS

# Set when the interpreter starts to exit: from then on the main thread tears the process
# down (holding the GIL for long stretches) and a loop that does not turn is no stall.
_exiting = False


def _at_exit() -> None:
    global _exiting
    _exiting = True


atexit.register(_at_exit)


class SharedLoop:
    """An event loop on its own daemon thread, with a watchdog for slow callbacks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        install(self.loop)  # tasks flow code creates are branches (see _core.positions)
        # asyncio.to_thread in flow code: each execution used to have a loop (and a default
        # pool) of its own; they share this one now.
        self.loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=max(32, settings().max_workers), thread_name_prefix="tether-to-thread"
            )
        )
        self.store_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=_STORE_THREADS, thread_name_prefix="tether-store"
        )
        # One bound method for every execution that runs on the loop, not one each.
        self.offload_bound = self.offload
        self._turned = time.monotonic()
        # Starts queued by `spawn` (a deque's append is atomic), and whether a drain of them
        # is scheduled on the loop.
        self._spawning: collections.deque[Callable[[], Coroutine[Any, Any, Any]]] = (
            collections.deque()
        )
        self._drain_due = False
        self.ended: str | None = None  # why the loop thread ended, once it has
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="tether-loop", daemon=True)
        self.thread.start()
        self._ready.wait()
        self._watchdog = threading.Thread(target=self._watch, name="tether-watchdog", daemon=True)
        self._watchdog.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.call_soon(self._tick)
        why = "loop.stop() was called on it"
        try:
            while True:
                try:
                    self.loop.run_forever()
                    break
                except (SystemExit, KeyboardInterrupt):
                    # asyncio lets these two out of a task or callback, which would end the
                    # thread and freeze every async execution of the process. Flow code's own
                    # arrive as failures (`_core.faults`); one from elsewhere (a callback) is
                    # logged, and the loop goes on with the callbacks it had ready.
                    log.exception("a callback on the tether event loop raised; the loop goes on")
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.ended = why
            log.critical(
                "the tether event loop thread ended (%s): its async executions stop here, "
                "their leases are no longer renewed, and other processes take them over; "
                "new async executions start on a new loop",
                why,
            )

    def healthy(self, within: float) -> bool:
        """The loop thread is alive and has turned in the last `within` seconds: only then
        are the leases of its executions renewed."""
        return (
            self.ended is None
            and self.thread.is_alive()
            and time.monotonic() - self._turned < within
        )

    def _tick(self) -> None:
        self._turned = time.monotonic()
        self.loop.call_later(_TICK_SECONDS, self._tick)

    def spawn(self, start: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run `start()` as a new task on the loop, from any thread, in an empty context: the
        task is nobody's branch (a flow starting another execution does not lend it one).

        Nothing here keeps the task: asyncio holds tasks only weakly, so what `start()` runs
        makes its own task reachable while it waits, from its first step (the loop's queue
        holds it until then) to its end. An async execution's task is kept by its hold, in
        the executor's table of held executions (`Executor.enter_async`): a set of running
        tasks here had to be told of each end by a done callback, a scheduled call per
        execution on the loop."""
        self._spawning.append(start)
        if self._drain_due:
            return
        # One wake-up of the loop for the starts that queue until it drains them: each
        # call_soon_threadsafe writes to the loop's self-pipe, a system call that lets go of
        # the GIL, which a starting thread beside a busy loop waits to get back.
        self._drain_due = True
        try:
            if threading.get_ident() == self.thread.ident:
                self.loop.call_soon(self._create_spawned, context=_EMPTY)
            else:
                self.loop.call_soon_threadsafe(self._create_spawned, context=_EMPTY)
        except BaseException:
            self._drain_due = False  # a closed loop: the next start tries again, and says so
            raise

    def _create_spawned(self) -> None:
        # Cleared before draining: a start queued after this line schedules another drain;
        # one queued before it is taken here.
        self._drain_due = False
        spawning = self._spawning
        loop = self.loop
        while spawning:
            # Made directly, not through the loop's task factory (`install`): a spawned task
            # is nobody's branch, which the factory would find out per task, on the loop.
            asyncio.Task(spawning.popleft()(), loop=loop, context=contextvars.Context())

    async def offload(self, fn: Callable[[], T]) -> T:
        """Run a blocking call (a store call) on a store thread; the loop goes on meanwhile."""
        return await self.loop.run_in_executor(self.store_pool, fn)

    # --- slow callbacks -----------------------------------------------------------------

    def _watch(self) -> None:
        stall: _Stall | None = None  # what was seen since the loop became late
        while self.ended is None:
            time.sleep(_TICK_SECONDS)
            turned = self._turned
            if stall is not None and (stall.turned != turned or _exiting):
                # The loop turned: the stall is over, and the frames it held are let go.
                with _logged_failure():
                    self._stall_ended(stall, turned)
                stall = None
            if time.monotonic() - turned < _LATE_SECONDS or _exiting:
                continue
            if stall is None:
                stall = _Stall(turned)
            with _logged_failure():
                self._sample(stall)

    def _sample(self, stall: _Stall) -> None:
        """Read the loop thread's stack once more during `stall`, and name the call that has
        been running at every sample for `slow_callback_seconds`, if one has."""
        if stall.reported:
            return  # once per stall
        frame = sys._current_frames().get(self.thread.ident or 0)
        now = time.monotonic()
        stack = _stack(frame)
        if self._turned != stall.turned:
            return  # the loop turned while the stack was read: this sample is of no stall
        if stall.held is None:
            stall.held, stall.since = stack, now
        else:
            same = _same_prefix(stall.held, stack)
            if same <= _turn_depth(stall.held):
                # Not one frame inside the loop's turn is the one the earlier samples saw: the
                # loop went on to other callbacks (or another turn) in between, so nothing
                # has been running all along. Watch what runs now from here.
                stall.held, stall.since = stack, now
            else:
                del stall.held[same:]
        held = stall.held
        ran = now - stall.since
        if _turn_depth(held) >= len(held) or ran < settings().slow_callback_seconds:
            return
        stall.reported = True
        self._report(ran, held[-1])

    def _stall_ended(self, stall: _Stall, turned: float) -> None:
        # How late the tick ran that ended the stall: the time the loop spent in turns.
        late = turned - stall.turned - _TICK_SECONDS
        threshold = settings().slow_callback_seconds
        if stall.reported or late < threshold or _exiting:
            return
        # INFO, not a warning: no code is at fault, only more work is ready at once than
        # one thread turns through within the threshold (thousands of executions starting
        # or resuming together, garbage collection pauses); a warning would accuse whatever
        # a sample caught, and page someone for a process running at capacity. Not DEBUG
        # either: whoever asks why steps were late should find this without a debug log.
        log.info(
            "the tether event loop is saturated: its timers ran %.1fs late, and no single "
            "call ran for slow_callback_seconds (%.1fs) of it: the loop was busy with many "
            "ready callbacks (executions starting or resuming at once, garbage collection); "
            "nothing blocks it, but every async execution of this process waited meanwhile "
            "(spread the executions over more processes if that latency matters)",
            late, threshold,
        )  # fmt: skip

    def _report(self, stalled: float, frame: FrameType | None) -> None:
        """Name the code that has blocked the loop for `stalled` seconds: `frame` is the
        innermost frame that every sample of the stall saw running."""
        found = _checkpoint.blocking_call(frame)
        if found is None and _idle(frame):
            # The loop was waiting for I/O or a timer, not running anything: its select
            # returned and the thread could not get the CPU or the GIL back in time.
            log.warning(
                "the tether event loop has not turned for %.1fs although it had nothing to "
                "run: its thread did not get the CPU back (another thread of this process "
                "holds the GIL with CPU-bound work, or the machine is overloaded); async "
                "executions wait meanwhile",
                stalled,
            )
            return
        if found is None:
            where = (
                f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"
                if (frame is not None)
                else "unknown code"
            )
            log.warning(
                "the tether event loop has not turned for %.1fs: %s blocks it, and with it "
                "every async execution of this process",
                stalled, where,
            )  # fmt: skip
            return
        name, run, position = found
        message = (
            f"checkpoint {name!r} blocked the event loop for {stalled:.1f}s and counting, "
            "stalling every async execution of this process: it makes a blocking call (use "
            "its async form, or asyncio.to_thread)"
        )
        if run is None:
            log.warning("%s", message)
            return
        log.warning("execution %s, position %s: %s", run.execution_id, position, message)
        run.warn(position, message, {"checkpoint": name, "stalled_seconds": round(stalled, 3)})


class _Stall:
    """What the watchdog saw of the loop thread since the loop became late (the loop's last
    turn was at `turned`)."""

    __slots__ = ("held", "reported", "since", "turned")

    def __init__(self, turned: float) -> None:
        self.turned = turned
        # The loop thread's frames, outermost first, that every sample since `since` saw:
        # the same frame objects, compared by identity. A frame is one call (a new call
        # makes a new one) and a reference keeps it from being freed, so its address cannot
        # be reused by another call, as an id() could. Held only while the loop is late.
        self.held: list[FrameType] | None = None
        self.since = 0.0
        self.reported = False


@contextlib.contextmanager
def _logged_failure() -> Iterator[None]:
    # The watchdog thread goes on whatever one look at the loop raised.
    try:
        yield
    except Exception:
        log.exception("could not report a stalled event loop")


def _stack(frame: FrameType | None) -> list[FrameType]:
    """`frame` and the frames it was called from, outermost first."""
    stack = []
    while frame is not None:
        stack.append(frame)
        frame = frame.f_back
    stack.reverse()
    return stack


def _same_prefix(held: list[FrameType], stack: list[FrameType]) -> int:
    """How many frames, from the outermost, `held` and `stack` share (the same objects)."""
    n = 0
    for a, b in zip(held, stack, strict=False):
        if a is not b:
            break
        n += 1
    return n


# The frames that run the loop itself: the same objects for as long as the loop runs
# (`_serve`, `run_forever`) or for one turn (`_run_once`, which runs a turn's callbacks one
# after another). A frame inside them, the same at every sample, is one callback's that
# has been running all along (or the selector's wait, an idle loop).
_LOOP_CODES = frozenset(
    code
    for code in (
        SharedLoop._serve.__code__,
        getattr(asyncio.BaseEventLoop.run_forever, "__code__", None),
        getattr(getattr(asyncio.BaseEventLoop, "_run_once", None), "__code__", None),
    )
    if code is not None
)


def _turn_depth(stack: list[FrameType]) -> int:
    """How many of `stack`'s frames (outermost first) run the thread and the loop, not a
    callback: the frames up to the innermost one of `_LOOP_CODES`. All of them when none is
    there: a stack read while the loop thread moved on can end early (a caller finished or
    suspended meanwhile), and such a sample vouches for no call."""
    depth = len(stack)
    for i, frame in enumerate(stack):
        if frame.f_code in _LOOP_CODES:
            depth = i + 1
    return depth


def _idle(frame: FrameType | None) -> bool:
    """The loop thread is inside its selector's wait (no callback of its own is running)."""
    return (
        frame is not None
        and frame.f_code.co_name in ("select", "poll")
        and frame.f_code.co_filename.endswith("selectors.py")
    )


# The context the drain of spawned starts runs in: nobody's (it sets no variable).
_EMPTY = contextvars.Context()
_lock = threading.Lock()
_shared: SharedLoop | None = None


def shared_loop() -> SharedLoop:
    """The process's shared event loop, started on first use."""
    global _shared
    found = _shared
    if found is None or found.ended is not None:
        with _lock:
            if _shared is None or _shared.ended is not None:
                _shared = SharedLoop()
            found = _shared
    return found


def _after_fork() -> None:
    # A forked child has none of its parent's threads: it starts a loop of its own if needed.
    global _shared
    _shared = None
    with contextlib.suppress(Exception):
        _lock.release()


os.register_at_fork(after_in_child=_after_fork)
