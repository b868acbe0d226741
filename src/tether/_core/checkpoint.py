"""@checkpoint: call identity, recorded-result lookup, retries, and the commit.

A checkpoint call inside a flow takes the next position of its branch at the
moment it is called (not when an async call is first awaited), so
`asyncio.gather(a(), b())` numbers `a` before `b` on every run, and calls made
in concurrent tasks are numbered within each task's own branch (`positions`).
If the position holds a recorded result
under the same name, the result is returned without running the function;
otherwise the function runs, and its result (or final error) is committed in
one fenced write before it is returned.

Sync and async checkpoints share every decision (`_Call`); only the two small
loops that call the function, sleep between attempts and enforce timeouts
differ.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import random
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast, overload

from ..errors import (
    BudgetExceeded,
    CheckpointTimeout,
    ControlSignal,
    DivergenceError,
    LeaseLost,
    SerializationError,
    StoreCorrupt,
    StoreUnavailable,
    UsageError,
)
from ..store import CheckpointRow, Commit, EventRow
from . import answers as _answers
from . import remote as _remote
from . import serde as _serde
from .capture import MAX_LOG_BYTES, CapturedLog
from .context import Frame, Run, current_frame, current_run
from .faults import as_failure
from .persist import persist, persist_async
from .positions import (
    current_branch,
    frozen_context,
    one_recorded_call,
    own_slot,
    owned_slot,
    running_task,
    set_call,
)
from .status import CheckpointStatus

P = ParamSpec("P")
R = TypeVar("R")

_MAX_BACKOFF = 60.0
_SUCCEEDED = CheckpointStatus.SUCCEEDED.value
_FAILED = CheckpointStatus.FAILED.value
_RETRYING = CheckpointStatus.RETRYING.value
# A member read off an Enum class goes through its metaclass's attribute hook: once here.
_CANCEL_REQUESTED = Commit.CANCEL_REQUESTED
_COMMITTED = Commit.COMMITTED

# Test hook: called after each committed checkpoint with (run, position). Lets crash tests
# kill a process exactly between a commit and the code that follows it.
_after_commit: Callable[[Run, str], None] | None = None

# The crash-test hook (tether.testing): called with (phase, run, position, name) at each
# boundary of a live call: "before" its body first runs, "inside" once an attempt's body has
# returned or raised and nothing of it is committed, "after" its outcome (not a retrying
# attempt) is committed. None in every process but a crash test's, so a call pays one
# global lookup per boundary; a replayed call reaches none of them.
_boundary: Callable[[str, Run, str, str], None] | None = None

# The code objects of checkpoint functions -> their names: how a watchdog that finds the
# event loop stuck names the checkpoint whose body blocks it (see `blocking_call`).
_codes: dict[types.CodeType, str] = {}

_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _submit_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="tether-submit"
                )
    return _pool


class Checkpoint(Generic[P, R]):
    """A function whose result is recorded durably when it is called inside a flow."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None,
        retries: int,
        backoff: float,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        timeout: float | None,
        runtime: str = "local",
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        if retries < 0:
            raise UsageError(f"retries must be 0 or more, not {retries}")
        if backoff < 0:
            raise UsageError(f"backoff must be 0 or more seconds, not {backoff}")
        if timeout is not None and timeout <= 0:
            raise UsageError(f"timeout must be a positive number of seconds, not {timeout}")
        self.fn = fn
        self.name = name or fn.__qualname__
        # What an unstorable result is called in its error: made once, not on every commit.
        self._result_root = f"result of checkpoint {self.name!r}"
        self.retries = retries
        self.backoff = backoff
        self.retry_on = retry_on
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        what = f"checkpoint {self.name!r}"
        self.runtime = _remote.checked_runtime(runtime, what)
        self.resources = _remote.checked_resources(resources, what)
        if self.resources and runtime != "ray":
            raise UsageError(f"{what}: resources= goes with runtime='ray'")
        # The body's runner on a Ray cluster; None runs it here.
        self._ray = _remote.RayBody(fn, self, self.resources) if runtime == "ray" else None
        functools.update_wrapper(self, fn)
        code = getattr(inspect.unwrap(fn), "__code__", None)
        if isinstance(code, types.CodeType):
            _codes[code] = self.name

    def __repr__(self) -> str:
        return f"<tether.checkpoint {self.name}>"

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        # Decorated methods: bind like a function would.
        if instance is None:
            return self
        return functools.partial(self.__call__, instance)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        run = current_run.get()
        if run is None or current_frame.get() is not None:
            # Outside a flow, or nested in another checkpoint: a plain call.
            return self.fn(*args, **kwargs)
        # `run.take_position()`, written out: this runs on every call.
        position = (current_branch.get() or run).take()
        if self.is_async:
            # Annotated rather than cast(): a cast is a function call, on every call.
            call: types.CoroutineType[Any, Any, Any] = self._call_async(  # type: ignore[assignment]
                run, position, args, kwargs
            )
            # Named for the checkpoint, not `Checkpoint._call_async`: a missing `await` then
            # reads "coroutine 'fetch' was never awaited", and a SerializationError names it.
            call.__qualname__ = self.name
            return call  # type: ignore[return-value]
        return self._call_sync(run, position, args, kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[R]:
        """Run a sync checkpoint in a thread; its position is taken now, in program order."""
        if self.is_async:
            raise UsageError(
                f"{self.name} is async; use asyncio.gather() or a TaskGroup instead of .submit()"
            )
        run = current_run.get()
        if run is None or current_frame.get() is not None:
            # Inside a call: the thread may outlive it, so it sees the call of now.
            context = frozen_context()
            return _submit_pool().submit(context.run, self.fn, *args, **kwargs)  # type: ignore[arg-type]
        position = run.take_position()
        context = contextvars.copy_context()
        return _submit_pool().submit(context.run, self._call_sync, run, position, args, kwargs)

    def map(self, *iterables: Iterable[Any]) -> list[R]:
        """Call the checkpoint once per item, concurrently, and return the results in order."""
        futures = [self.submit(*items) for items in zip(*iterables, strict=False)]  # type: ignore[call-arg]
        return [future.result() for future in futures]

    # --- the two loops ------------------------------------------------------------------

    def _call_sync(self, run: Run, position: str, args: Any, kwargs: Any) -> R:
        call = _Call(self, run, position, args, kwargs)
        if call.replayed:
            return cast(R, call.replay())
        # A sync call in async flow code (on the loop's thread) writes its task's slot, if it
        # has one: setting the variable would replace the slot (see `_call_async`).
        slot = owned_slot(running_task())
        while True:
            if slot is None:
                set_call(call)
            else:
                slot.call = call
            try:
                if call.body is not None:
                    value = cast(R, call.body())
                elif self._ray is not None:
                    try:
                        value = cast(R, self._ray.call(args, kwargs, self.timeout))
                    except TimeoutError as exc:
                        raise self._timeout_error() from exc
                elif self.timeout is None:
                    value = self.fn(*args, **kwargs)
                else:
                    value = self._timed_attempt(call, self.timeout, args, kwargs)
            except ControlSignal:
                raise
            except BaseException as exc:
                failure = as_failure(exc, f"checkpoint {self.name!r}")
                if not isinstance(failure, Exception):
                    raise  # a cancellation that asyncio started (on the loop thread)
                call.failed(failure, exc)
                call.commit()
                if call.delay is None:
                    if failure is exc:
                        raise
                    raise failure from exc
                run.pause(call.delay)
                # A cancel (or a lost lease, a deadline) during the pause ends the call
                # here: another attempt would run the function for an execution that stops.
                run.boundary()
                continue
            finally:
                if slot is None:
                    set_call(None)
                else:
                    slot.call = None
            call.succeeded(value)
            call.commit()
            if call.error is not None:
                raise call.error
            return value

    async def _call_async(self, run: Run, position: str, args: Any, kwargs: Any) -> Any:
        call = _Call(self, run, position, args, kwargs)
        if call.replayed:
            return call.replay()
        # Annotated rather than cast(): no call (and no generic alias) on every call.
        fn: Callable[..., Awaitable[Any]] = self.fn  # type: ignore[assignment]
        if self._ray is not None:
            fn = functools.partial(_ray_call, self._ray)
        # The call is made current by writing its task's slot, not by setting the variable:
        # a set builds two objects that would live across the body's await and be promoted,
        # on every call of every execution (see `positions._calls`); a slot is made once per
        # task. The branch stays: while a call is current, nothing is recorded in it.
        slot = own_slot(running_task(), run)
        while True:
            if slot is None:
                set_call(call)
            else:
                slot.call = call
            try:
                if call.body is not None:
                    value = call.body()
                elif self.timeout is None:
                    value = await fn(*args, **kwargs)
                else:
                    try:
                        async with asyncio.timeout(self.timeout):
                            value = await fn(*args, **kwargs)
                    except TimeoutError as exc:
                        raise self._timeout_error() from exc
            except ControlSignal:
                raise
            except BaseException as exc:
                failure = as_failure(exc, f"checkpoint {self.name!r}")
                if not isinstance(failure, Exception):
                    raise  # a cancellation that asyncio started (a TaskGroup, a timeout)
                call.failed(failure, exc)
                await call.commit_async()
                if call.delay is None:
                    if failure is exc:
                        raise
                    raise failure from exc
                await asyncio.sleep(call.delay)
                run.boundary()
                continue
            finally:
                if slot is None:
                    set_call(None)
                else:
                    slot.call = None
            call.succeeded(value)
            # The common commit awaited here, not in a coroutine of its own: one object less
            # per call on a loop that runs thousands of them (see `_Call.commit_async`); and
            # made at once when this execution is alone on the loop (nothing to await).
            try:
                outcome = call.commit_inline()
                if outcome is None:
                    outcome = await call.committing()
            except StoreUnavailable:
                outcome = await call.commit_retried()
            except StoreCorrupt as exc:
                raise run.store_fault(exc) from exc
            # `settle` has nothing to do for a plain commit outside a crash test.
            if outcome is not _COMMITTED or _after_commit is not None or _boundary is not None:
                call.settle(outcome)
            if call.error is not None:
                raise call.error
            return value

    def _timed_attempt(self, frame: Frame, timeout: float, args: Any, kwargs: Any) -> Any:
        """One attempt of a sync checkpoint with a timeout, on a thread of its own (never a
        shared pool, where waiting for a free thread would count against the timeout) and
        on a frame of its own. Python cannot stop a thread: on timeout the attempt is
        abandoned and runs on; its frame is detached first, so what it prints, logs or
        spends from then on is dropped and its memory writes are refused, rather than
        landing on the next attempt."""
        attempt = Frame(
            frame.run,
            frame.position,
            frame.name,
            frame.attempt,
            dict(frame.metadata),
            None,
            frame.usage,
        )
        context = contextvars.copy_context()
        context.run(set_call, attempt)
        outcome = _Outcome()
        thread = threading.Thread(
            target=context.run,
            args=(outcome.run, self.fn, args, kwargs),
            name=f"tether-timeout {self.name}@{frame.position}#{frame.attempt}",
            daemon=True,  # an abandoned attempt must not keep the process from exiting
        )
        thread.start()
        finished = outcome.done.wait(timeout)
        # Detached before its output is taken: anything it writes after this is dropped,
        # anything before is the attempt's own (committed with it, under its number).
        attempt.detached = True
        frame.metadata = dict(attempt.metadata)  # a copy: the thread may run on
        frame.usage = attempt.usage
        log, attempt.log = attempt.log, None
        if log is not None:
            if frame.log is None:
                frame.log = log
            else:
                for at, level, text, logger in log.entries:
                    frame.log.entries.append((at, level, text, logger))
        if not finished:
            raise self._timeout_error()
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def _timeout_error(self) -> CheckpointTimeout:
        return CheckpointTimeout(f"checkpoint {self.name!r} ran longer than {self.timeout}s")


async def _ray_call(body: _remote.RayBody, *args: Any, **kwargs: Any) -> Any:
    return await body.call_async(args, kwargs)


# An async checkpoint call's coroutine is one recorded call, numbered when it was called: a
# task made to run it (gather, create_task) takes no branch slot.
one_recorded_call(Checkpoint._call_async.__code__)


_NO_ATTEMPTS: list[dict[str, Any]] = []


class _Call(Frame):
    """One checkpoint call at one position: replay or live, shared by sync and async. A live
    call is the `Frame` its body runs in, and holds the commit it is about to make (`row`,
    `events`; `error` to raise once that is written, `delay` before the next attempt): one
    object per call, not one per role."""

    __slots__ = (
        "args_fp",
        "attempts",
        "body",
        "checkpoint",
        "delay",
        "error",
        "events",
        "prior",
        "replayed",
        "row",
        "started",
    )

    def __init__(
        self, checkpoint: Checkpoint[Any, Any], run: Run, position: str, args: Any, kwargs: Any
    ) -> None:
        run.boundary()
        self.checkpoint = checkpoint
        self.run = run
        self.args_fp = _serde.fingerprint(args, kwargs)
        prior = run.recorded.get(position)
        if prior is None and run.wait_positions:
            wait = run.wait_positions.get(position)
            if wait is not None:
                raise run.diverge(DivergenceError(position, f"wait {wait!r}", checkpoint.name))
        self.prior = prior
        # The attempts so far, when there were any: `_NO_ATTEMPTS` (shared, never appended to)
        # until the first attempt that must be listed, so a first try allocates no list.
        self.attempts: list[dict[str, Any]] = _NO_ATTEMPTS
        self.replayed = False
        if prior is not None:
            if prior.name != checkpoint.name:
                raise run.diverge(DivergenceError(position, prior.name, checkpoint.name))
            if prior.fingerprint != self.args_fp:
                self._arguments_changed(position)
            if prior.status == _RETRYING:
                if prior.attempts:
                    self.attempts = _serde.loads(prior.attempts)
            else:
                self.replayed = True
                return  # the hot replay path needs no frame and no clock
        # The Frame's fields (its generated __init__ is not called: a replayed call has none).
        self.position = position
        self.name = checkpoint.name
        self.attempt = len(self.attempts) + 1
        self.metadata = {}
        self.log = None
        self.usage = None
        self.detached = False
        self.error: BaseException | None = None
        self.delay: float | None = None
        self.events: Sequence[EventRow] = ()
        # A replay test answers the call from a recording instead of running the function.
        self.body: Callable[[], Any] | None = None
        if _answers.installed and prior is None:
            answers = _answers.of(run.store)
            if answers is not None:
                self.body = answers.answer(checkpoint.name, position, args, kwargs)
        if prior is not None and run.spend is not None:
            # Resuming a call whose earlier attempts failed: what they spent stays counted.
            run.spend.resume_call(self, prior.metadata)
        self.started = time.time()
        # Its name and start, for the heartbeat's progress (the name first: a start found
        # there always has its name).
        run.live[position] = checkpoint.name
        run.live_since[position] = self.started
        if _boundary is not None:
            _boundary("before", run, position, checkpoint.name)

    def _arguments_changed(self, position: str) -> None:
        message = (
            f"checkpoint {self.checkpoint.name!r} at position {position} was called with "
            "different arguments than when its result was recorded; the recorded result is used"
        )
        if self.run.strict:
            raise self.run.diverge(
                DivergenceError(
                    position,
                    self.checkpoint.name,
                    self.checkpoint.name,
                    detail=message + " (strict mode makes this an error)",
                )
            )
        self.run.warn(position, message, {"checkpoint": self.checkpoint.name})

    def replay(self) -> Any:
        prior = cast(CheckpointRow, self.prior)
        if prior.status == _SUCCEEDED:
            if prior.result is None:
                return None
            try:
                return _serde.loads(prior.result)
            except SerializationError:
                # Decoded again (only on failure, off the hot path) for an error that names
                # the recorded call, not just a path inside "value".
                where = f"result of checkpoint {prior.name!r} at position {prior.position}"
                return _serde.loads(prior.result, root=where)
        raise _serde.error_from_text(prior.error or "{}")

    def succeeded(self, value: Any) -> None:
        """Make the commit of a call that returned `value` (its `error` is raised after it
        when the value cannot be stored)."""
        finished = time.time()
        checkpoint = self.checkpoint
        try:
            text = _serde.dumps(
                value, allow_pickle=self.run.allow_pickle, root=checkpoint._result_root
            )
        except SerializationError as exc:
            # Not retried: the same code would produce the same unstorable value.
            self._add_attempt(finished, exc)
            self._pending(_FAILED, None, exc, finished, error=exc)
            return
        if self.attempts:
            self._add_attempt(finished, None)
        self._pending(_SUCCEEDED, text, None, finished)

    def failed(self, exc: BaseException, raised: BaseException | None = None) -> None:
        """Make the commit of a failed attempt; `delay` is the pause before the next attempt,
        or None when the attempts are spent (the error is then the call's outcome). `raised`:
        what the code raised, when `exc` is the failure it counts as (`Interrupted`): the
        attempt records its type, and `retry_on` is matched against it."""
        raised = exc if raised is None else raised
        finished = time.time()
        self._add_attempt(finished, raised)
        checkpoint = self.checkpoint
        attempt = self.attempt
        if (
            attempt <= checkpoint.retries
            and self.body is None  # a recorded failure was final when it was recorded
            and isinstance(raised, checkpoint.retry_on)
            # Another attempt would meet the same budget.
            and not isinstance(exc, BudgetExceeded)
        ):
            self._pending(_RETRYING, None, exc, finished)
            self.attempt = attempt + 1
            self.started = self.run.live_since[self.position] = time.time()
            base = min(_MAX_BACKOFF, checkpoint.backoff * 2 ** (attempt - 1))
            self.delay = float(base * random.uniform(0.5, 1.0))
            return
        self._pending(_FAILED, None, exc, finished)

    def _add_attempt(self, finished: float, exc: BaseException | None) -> None:
        if self.attempts is _NO_ATTEMPTS:
            self.attempts = []
        self.attempts.append(self._attempt(finished, exc))

    def _attempt(self, finished: float, exc: BaseException | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "attempt": self.attempt,
            "started_at": self.started,
            "finished_at": finished,
        }
        if exc is not None:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry

    def _pending(
        self,
        status: str,
        result: str | None,
        exc: BaseException | None,
        finished: float,
        *,
        error: BaseException | None = None,
    ) -> None:
        """The row (and captured output) to commit for this attempt."""
        run = self.run
        frame = self
        if _boundary is not None:
            _boundary("inside", run, frame.position, frame.name)
        metadata = frame.metadata
        if frame.usage is not None and run.spend is not None:
            metadata = run.spend.commit_call(frame, metadata)
        attempts = self.attempts
        # Positional (position, name, fingerprint, status, result, error, attempts, started_at,
        # finished_at, metadata): keywords would build a dict on every commit.
        self.row: CheckpointRow = CheckpointRow(
            frame.position,
            frame.name,
            self.args_fp,
            status,
            result,
            _serde.error_to_text(exc) if exc else None,
            _serde.dumps(attempts) if attempts else None,
            attempts[0]["started_at"] if attempts else self.started,
            finished,
            _serde.dumps(metadata) if metadata else None,
        )
        self.events = _log_events(run, frame) if frame.log is not None else ()
        self.error = error
        self.delay = None
        if status != _RETRYING:
            # The start first: a name found without one is skipped, as ended.
            run.live_since.pop(frame.position, None)
            run.live.pop(frame.position, None)

    def commit(self) -> None:
        """Write the row, blocking this thread until it is durable."""
        run = self.run
        store = run.store
        try:
            try:
                outcome = store.record_checkpoint(
                    run.execution_id, run.token, self.row, self.events
                )
            except StoreUnavailable:
                # Only now a callable for the retries: the common case makes no closure.
                outcome = persist(
                    functools.partial(
                        store.record_checkpoint, run.execution_id, run.token, self.row, self.events
                    )
                )
        except (StoreUnavailable, StoreCorrupt) as exc:
            # Still failing after the retries (or damaged): not the flow's error. Unwind,
            # and let the executor release the execution, to continue once the store is back.
            raise run.store_fault(exc) from exc
        self.settle(outcome)

    async def commit_async(self) -> None:
        """Write the row without blocking the event loop (the store group commits it with
        other executions' rows); resumes once it is durable."""
        try:
            try:
                outcome = self.commit_inline()
                if outcome is None:
                    outcome = await self.committing()
            except StoreUnavailable:
                outcome = await self.commit_retried()
        except StoreCorrupt as exc:
            raise self.run.store_fault(exc) from exc
        self.settle(outcome)

    def commit_inline(self) -> Commit | None:
        """The first try of `commit_async` when this is the only execution on the loop: one
        statement here costs less than the trip to the committer's thread and back, and
        nobody else waits on the loop meanwhile. None when the row must go to the group
        commit (`committing`). Raises the store's error, for `commit_retried` (retries are
        awaited, never slept here) or the run's fault."""
        run = self.run
        if run.inline_commits is not None and run.inline_commits():
            return run.store.record_checkpoint(run.execution_id, run.token, self.row, self.events)
        return None

    def committing(self) -> Awaitable[Commit]:
        """The first try of `commit_async` with other executions on the loop: what to await
        for the row to be durable (the store's group commit future; no coroutine). Raises
        (or the awaitable does) the store's error, for `commit_retried` or the run's fault."""
        run = self.run
        return run.store.record_checkpoint_async(run.execution_id, run.token, self.row, self.events)

    async def commit_retried(self) -> Commit:
        """The tries after a first that found the store unavailable, paused without blocking
        the loop; the run's fault once they are spent (or the store is damaged)."""
        run = self.run
        try:
            return await persist_async(
                functools.partial(
                    run.store.record_checkpoint_async,
                    run.execution_id,
                    run.token,
                    self.row,
                    self.events,
                )
            )
        except (StoreUnavailable, StoreCorrupt) as exc:
            raise run.store_fault(exc) from exc

    def settle(self, outcome: Commit) -> None:
        run = self.run
        if not outcome:
            run.lease_lost = True
            raise LeaseLost(run.execution_id)
        if outcome is _CANCEL_REQUESTED:
            run.cancel()
        if _after_commit is not None:
            _after_commit(run, self.row.position)
        if _boundary is not None and self.row.status != _RETRYING:
            _boundary("after", run, self.row.position, self.row.name)


class _Outcome:
    """What a timed attempt's thread returned or raised."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            self.value = fn(*args, **kwargs)
        except BaseException as exc:  # raised again in the calling thread, as it was
            self.error = exc
        finally:
            self.done.set()


def blocking_call(frame: types.FrameType | None) -> tuple[str, Run | None, str | None] | None:
    """The checkpoint whose body runs in `frame` or a frame it was called from (another
    thread's stack, from `sys._current_frames()`): (name, run, position) — the run and
    position when the call is in a flow — or None if no checkpoint's code is on the stack."""
    name = None
    while frame is not None:
        code = frame.f_code
        if name is None:
            name = _codes.get(code)
        elif code is _CALL_SYNC or code is _CALL_ASYNC:
            call = frame.f_locals.get("call")
            if isinstance(call, _Call) and not call.replayed:
                return name, call.run, call.position
            return name, None, None
        frame = frame.f_back
    return None if name is None else (name, None, None)


_CALL_SYNC = Checkpoint._call_sync.__code__
_CALL_ASYNC = Checkpoint._call_async.__code__


def _log_events(run: Run, frame: Frame) -> list[EventRow]:
    """What the attempt printed and logged, as events to commit with it; then start afresh."""
    log: CapturedLog = frame.log
    frame.log = None
    events = [
        EventRow(
            execution_id=run.execution_id,
            position=frame.position,
            at=at,
            level=level,
            kind="output" if logger is None else "log",
            message=text,
            data=_serde.dumps({"attempt": frame.attempt, "logger": logger}),
        )
        for at, level, text, logger in log.entries
    ]
    if log.dropped:
        events.append(
            EventRow(
                run.execution_id, frame.position, time.time(), "warning", "truncated",
                f"[tether: output truncated: {log.dropped:,} more characters were not kept; "
                f"a checkpoint call keeps at most {MAX_LOG_BYTES:,}]",
                _serde.dumps({"attempt": frame.attempt}),
            )
        )  # fmt: skip
    return events


@overload
def checkpoint(fn: Callable[P, R], /) -> Checkpoint[P, R]: ...


@overload
def checkpoint(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    timeout: float | None = None,
    runtime: Literal["local", "ray"] = "local",
    resources: Mapping[str, Any] | None = None,
) -> Callable[[Callable[P, R]], Checkpoint[P, R]]: ...


def checkpoint(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    timeout: float | None = None,
    runtime: Literal["local", "ray"] = "local",
    resources: Mapping[str, Any] | None = None,
) -> Checkpoint[P, R] | Callable[[Callable[P, R]], Checkpoint[P, R]]:
    """Record a function's result durably when it is called inside a flow.

    ```python
    @tether.checkpoint(retries=3, backoff=0.5, timeout=30)
    async def ask_model(prompt: str) -> str: ...
    ```

    - `name`: the call's recorded name (default: the function's qualified name). Renaming a
      checkpoint while executions are in flight makes them diverge; pin the name to rename
      the function freely.
    - `retries`: extra attempts after a failure whose type matches `retry_on`; the wait
      before attempt n+1 is `backoff * 2**(n-1)` seconds (at most 60), with jitter.
      Every attempt is recorded with its error and timing; the last error is recorded and
      raised into the flow, which may catch it.
    - A `BaseException` that is not an `Exception` (`SystemExit`, `KeyboardInterrupt`,
      `GeneratorExit`, a `CancelledError` when nothing cancelled the task) fails the attempt
      too, as `tether.errors.Interrupted` naming what was raised; it is retried only when
      `retry_on` names its type (`retry_on=BaseException`, say). A cancellation that asyncio
      started (a TaskGroup, a timeout) stays a cancellation and records nothing.
    - `timeout`: seconds one attempt may take (CheckpointTimeout after that).
    - `runtime="ray"`: each attempt of the body runs as a Ray task on the cluster this
      process is connected to (`ray.init(...)`, `RAY_ADDRESS`, or the task of a
      `tether worker --ray` it runs in), while the flow stays here: the result comes back
      and is recorded here, as a local checkpoint's; retries and `timeout` are this
      checkpoint's (Ray's own retry is off). `resources`: the task's Ray resources
      (`num_cpus`, `num_gpus`, `memory` in bytes, and custom ones under `resources`).
      The body runs outside the flow: `tether.current()` is not available in it.

    Outside a flow the function runs as a plain call, nothing recorded. Called inside
    another checkpoint it runs inline, as part of the outer one.
    """

    def wrap(f: Callable[P, R]) -> Checkpoint[P, R]:
        if isinstance(f, Checkpoint):
            raise UsageError(f"{f.name} is already a checkpoint; decorate it once")
        if not callable(f):
            raise UsageError(f"@tether.checkpoint decorates a function, not {f!r}")
        if name is None and getattr(f, "__name__", None) == "<lambda>":
            # Calls are recorded and matched on resume by name; every lambda is `<lambda>`,
            # so a resumed flow could not tell one from another.
            raise UsageError(
                "tether.checkpoint of a lambda needs a name, e.g. tether.checkpoint("
                "name='fetch')(lambda url: ...): a call is recorded and matched on resume by "
                "its name, and every lambda is called '<lambda>'. Or define it with `def`"
            )
        return Checkpoint(
            f, name=name, retries=retries, backoff=backoff, retry_on=retry_on, timeout=timeout,
            runtime=runtime, resources=resources,
        )  # fmt: skip

    if fn is not None:
        return wrap(fn)
    return wrap
