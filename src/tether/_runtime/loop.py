"""The shared event loop: where the async executions of this process run, as tasks.

One thread (`tether-loop`), started the first time an async execution runs, runs one event
loop for every async execution of the process: an I/O-bound agent costs a task, not a
thread. The loop never waits on the database: an execution's loading and its end run on a
small pool of store threads (`tether-store`, see `offload`), and checkpoint commits are
group committed by the store's writer thread (`Store.record_checkpoint_async`).

A call that blocks inside an async checkpoint (`time.sleep`, a sync HTTP client) stalls
every execution on the loop. A watchdog thread notices when the loop has not turned for
`settings().slow_callback_seconds` and names the checkpoint whose code is running on the
loop thread, in the log and as a `warning` event on its execution.
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
from collections.abc import Callable, Coroutine
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
        reported = 0.0  # the loop's last turn before the stall already reported
        while self.ended is None:
            time.sleep(_TICK_SECONDS)
            turned = self._turned
            stalled = time.monotonic() - turned
            if stalled < settings().slow_callback_seconds or turned == reported or _exiting:
                continue
            reported = turned
            try:
                self._report(stalled)
            except Exception:
                log.exception("could not report a stalled event loop")

    def _report(self, stalled: float) -> None:
        frame = sys._current_frames().get(self.thread.ident or 0)
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
