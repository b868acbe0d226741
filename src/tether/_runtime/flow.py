"""@flow, Flow and Starter: defining flows and starting their executions."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import sys
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from .._core import imports as _imports
from .._core import remote as _remote
from .._core import serde as _serde
from .._core.config import settings, store_for
from .._core.context import Run, current_frame, current_run
from .._core.status import Status
from .._spend import budget as _budget
from .._spend.budget import Budget
from ..errors import UsageError
from ..store import ExecutionRow, Store
from . import children as _children
from . import deadlines as _deadlines
from . import queues as _queues
from . import replay as _replay
from . import schedules as _schedules
from .handle import Handle, launch, launch_async
from .ids import new_execution_id
from .queues import Queue

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Starts(Generic[P, R]):
    """`run()`, `run_async()` and `enqueue()`, with their typed overloads, written once for
    a flow (`Flow`) and a flow with start options bound (`Starter`)."""

    def _target(self) -> tuple[Flow[P, R], _StartOptions | None]:
        """The flow to start, and its bound options (None: none bound)."""
        raise NotImplementedError

    @overload
    def run(
        self: _Starts[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> Handle[T]: ...

    @overload
    def run(self: _Starts[P, T], *args: P.args, **kwargs: P.kwargs) -> Handle[T]: ...

    def run(self, *args: Any, **kwargs: Any) -> Handle[Any]:
        """Record a new execution and start it in the background; returns at once.

        `handle.result()` (or `await handle`) gives the flow's return value; for an async
        flow that is the awaited value. In a client-only process
        (`configure(executor=False)`, `TETHER_EXECUTOR=off`) this is `enqueue()`.
        """
        flow, options = self._target()
        return flow._start(args, kwargs, None, local=settings().executor, options=options)

    @overload
    def enqueue(
        self: _Starts[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> Handle[T]: ...

    @overload
    def enqueue(self: _Starts[P, T], *args: P.args, **kwargs: P.kwargs) -> Handle[T]: ...

    def enqueue(self, *args: Any, **kwargs: Any) -> Handle[Any]:
        """Record a new execution for a `tether worker` to run; nothing runs in this process."""
        flow, options = self._target()
        return flow._start(args, kwargs, None, local=False, options=options)

    @overload
    def run_async(
        self: _Starts[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, Handle[T]]: ...

    @overload
    def run_async(
        self: _Starts[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, Handle[T]]: ...

    def run_async(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Handle[Any]]:
        """`run()` for a caller on an event loop: `handle = await flow.run_async(...)`.

        Records the execution and starts it; the await returns once the execution is
        durable, without blocking the loop meanwhile, and starts awaited concurrently
        (`asyncio.gather`) are committed together, a few transactions for thousands of
        starts. The arguments are checked when it is called, with the errors of `run()`.
        In flow code it starts a child flow exactly as `run()` does there.
        """
        flow, options = self._target()
        return flow._start_async(args, kwargs, options)


class Flow(_Starts[P, R]):
    """A durable function: each `run()` is an execution that survives crashes."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None,
        queue: Queue | str | None = None,
        budget: Budget | None = None,
        deadline: float | dt.timedelta | None = None,
        schedule: str | dt.timedelta | None = None,
        schedule_args: Sequence[Any] = (),
        schedule_kwargs: Mapping[str, Any] | None = None,
        catchup: _schedules.Catchup = "latest",
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__qualname__
        # The Ray task options of its executions under `tether worker --ray`.
        self.resources = _remote.checked_resources(resources, f"flow {self.name!r}")
        self.queue = _queues.name_of(queue)
        self.budget = _budget.checked(budget)
        if isinstance(deadline, dt.datetime):
            raise UsageError(
                "@tether.flow(deadline=) is a duration (seconds or a timedelta) counted from "
                "each execution's start; give a datetime per start with "
                "flow.options(deadline=...)"
            )
        self.deadline = _deadlines.checked_deadline(deadline)
        if getattr(fn, "__name__", None) == "<lambda>":
            # An execution is resumed (by a worker, `recover`, after a crash) by finding its
            # flow again by name; a lambda has none, so it would be started and never resumed.
            raise UsageError(
                "@tether.flow cannot take a lambda: an execution is resumed by finding its "
                "flow again by name, and a lambda has none. Define the flow with `def` at "
                "module level"
            )
        self.is_async = inspect.iscoroutinefunction(fn)
        # Start options given as keywords to run()/enqueue(), unless the function takes
        # a parameter of that name itself (then use .options()).
        params = inspect.signature(fn).parameters
        self._reserved = tuple(k for k in _START_OPTIONS if k not in params)
        self._fixed_parts: _Fixed | None = None
        # The flow's schedule (`schedule=`), declared to this process's workers.
        self.scheduled: _schedules.Scheduled | None = None
        if schedule is not None:
            self._declare_schedule(schedule, schedule_args, schedule_kwargs, catchup)
        elif schedule_args or schedule_kwargs or catchup != "latest":
            raise UsageError(
                f"flow {self.name!r}: schedule_args, schedule_kwargs and catchup go with "
                "schedule=; give a schedule (a cron string or a timedelta) or drop them"
            )
        functools.update_wrapper(self, fn)
        # Defining a flow loads it: this process may run its executions, recorded anywhere.
        _imports.register_flow(self, fn)

    def __repr__(self) -> str:
        return f"<tether.flow {self.name}>"

    def _declare_schedule(
        self,
        schedule: object,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        catchup: object,
    ) -> None:
        spec = _schedules.parse(schedule, self.name)
        checked = _schedules.check_catchup(catchup, self.name)
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise UsageError(
                f"flow {self.name!r}: schedule_args is a list or tuple of positional "
                f"arguments, not {args!r}"
            )
        fixed_args, fixed_kwargs = tuple(args), dict(kwargs or {})
        try:
            inspect.signature(self.fn).bind(*fixed_args, **fixed_kwargs)
        except TypeError as exc:
            raise UsageError(
                f"flow {self.name!r} cannot be called with its schedule's arguments "
                f"(args={list(fixed_args)!r}, kwargs={fixed_kwargs!r}): {exc}. Every tick calls "
                "it with schedule_args= and schedule_kwargs=; give those, or default the "
                "parameters"
            ) from None
        # Encoded now: a value that cannot be stored fails here, not at the first tick.
        encoded = _serde.dumps(
            {"args": list(fixed_args), "kwargs": fixed_kwargs},
            root=f"schedule arguments of flow {self.name!r}",
        )
        import_path, script = _imports.path_of(self.fn)
        if "<locals>" in import_path:
            raise UsageError(
                f"scheduled flow {self.name!r} is defined inside a function; define it at "
                "module level so that workers can load it"
            )

        def make_row(tick: float, now: float) -> ExecutionRow:
            row = ExecutionRow(
                id=new_execution_id(), flow=self.name, import_path=import_path,
                script=script, args=encoded, status=Status.QUEUED, created_at=now,
                updated_at=now, queue=self.queue, dedup_key=_schedules.tick_key(tick),
                options=_budget.to_options(self.budget),
            )  # fmt: skip
            # A tick's execution has the flow's deadline too, counted from its first start.
            _deadlines.place(row, self.deadline, started=False)
            return row

        self.scheduled = _schedules.Scheduled(self.name, spec, checked, self, make_row)
        _schedules.declare(self.scheduled)

    def options(
        self,
        *,
        queue: Queue | str | None = None,
        key: str | None = None,
        priority: int = 0,
        budget: Budget | None = None,
        deadline: float | dt.timedelta | dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        not_before: dt.datetime | None = None,
    ) -> Starter[P, R]:
        """Start options, typed: `flow.options(key="order-42").run(order)`.

        - `queue`: the queue this execution waits in for a worker (default: the flow's).
        - `key`: a deduplication key: starting the flow again with the same key returns the
          existing execution (whatever its status) instead of starting a second one.
        - `priority`: higher runs first among runnable executions of its queue.
        - `budget`: a `tether.Budget` for this execution's model calls (default: the flow's).
        - `deadline`: seconds or a timedelta from the execution's first start, or an aware
          datetime (default: the flow's). Past it the execution is cancelled, children
          included, and `result()` raises `tether.ExecutionTimedOut`.
        - `delay` (seconds, timedelta) or `not_before` (an aware datetime): queued but not
          started before then. `run()` leaves it to this process to start at that time;
          `enqueue()` to a worker.

        `run()` and `enqueue()` also take these as keywords when the flow function has no
        parameter of that name.
        """
        return Starter(
            self,
            _StartOptions(
                queue, key, priority, budget, _deadlines.checked_deadline(deadline), delay,
                not_before,
            ),
        )  # fmt: skip

    def _target(self) -> tuple[Flow[P, R], _StartOptions | None]:
        return self, None

    def _start_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], options: _StartOptions | None
    ) -> Coroutine[Any, Any, Handle[Any]]:
        local = settings().executor
        row, kwargs = self._prepare(args, kwargs, options, local=local)
        run = _in_flow_code()
        if run is not None:
            # A child's start takes its position now, in program order, as `run()` does.
            fingerprint = _serde.fingerprint(args, kwargs)
            return _ready(_children.start(run, self, row, fingerprint, local=local))
        return launch_async(store_for(), row, self if local else None)

    def _start(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        store: Store | None,
        *,
        local: bool,
        options: _StartOptions | None = None,
    ) -> Handle[Any]:
        """`store`: where a top-level execution is recorded (None: the configured store,
        opened only then: a child flow goes to its parent's store, and a replay test's
        scratch store must not make the configured one exist)."""
        row, kwargs = self._prepare(args, kwargs, options, local=local)
        run = _in_flow_code()
        if run is not None:
            # In flow code: a child flow, started once per call whatever the crashes.
            fingerprint = _serde.fingerprint(args, kwargs)
            return _children.start(run, self, row, fingerprint, local=local)
        return launch(store_for() if store is None else store, row, self if local else None)

    def _prepare(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: _StartOptions | None,
        *,
        local: bool,
    ) -> tuple[ExecutionRow, dict[str, Any]]:
        """The new execution's row, the start options checked; and the flow's own keyword
        arguments (without the options given as keywords). `local`: this process runs it."""
        _imports.refuse_start(self.name)
        # `kwargs` first: a start without keywords (most) builds no generator to look.
        if (
            options is None
            and kwargs
            and self._reserved
            and any(k in kwargs for k in self._reserved)
        ):
            kwargs = dict(kwargs)
            options = _StartOptions(**{k: kwargs.pop(k) for k in self._reserved if k in kwargs})
        now = time.time()
        if options is None:
            # The common start, with no options: what depends only on the flow is worked out
            # once (`_fixed`), as a loop of thousands of starts would repeat it for each.
            fixed = self._fixed()
            queue, priority, key, budget_options, not_before = (
                self.queue, 0, None, fixed.budget_options, None
            )  # fmt: skip
        else:
            _check(options)
            budget = None if options.budget is None else _budget.checked(options.budget)
            not_before = _deadlines.not_before(options.delay, options.not_before, now)
            fixed = self._fixed()
            queue = self.queue if options.queue is None else _queues.name_of(options.queue)
            priority, key = options.priority, options.key
            budget_options = fixed.budget_options if budget is None else _budget.to_options(budget)
        encoded = _serde.dumps({"args": list(args), "kwargs": kwargs}, root=fixed.root)
        row = ExecutionRow(
            id=new_execution_id(now),  # one clock read per start
            flow=self.name,
            import_path=fixed.import_path,
            script=fixed.script,
            args=encoded,
            status=Status.QUEUED,
            created_at=now,
            updated_at=now,
            parent_id=_parent_id(),
            queue=queue,
            priority=priority,
            dedup_key=key,
            options=budget_options,
            not_before=not_before,
        )
        deadline = (
            self.deadline if options is None or options.deadline is None else options.deadline
        )
        # Inserted running (its first start is now) only by a process that runs it at once.
        _deadlines.place(row, deadline, started=local and not_before is None)
        return row, kwargs

    def _fixed(self) -> _Fixed:
        """What every start of this flow records the same: worked out at its first start (a
        flow defined inside a function is refused then, not when decorated), and again if
        the flow's budget is replaced."""
        fixed = self._fixed_parts
        if fixed is None or fixed.budget is not self.budget:
            import_path, script = _imports.path_of(self.fn)
            if "<locals>" in import_path:
                raise UsageError(
                    f"flow {self.name!r} is defined inside a function; define flows at module "
                    "level so that another process can find them to resume"
                )
            fixed = self._fixed_parts = _Fixed(
                import_path, script, self.budget, _budget.to_options(self.budget),
                f"arguments of flow {self.name!r}",
            )  # fmt: skip
        return fixed

    def replay(
        self,
        execution_id: str,
        *,
        from_: str | int,
        overrides: Mapping[str, Any] | None = None,
        args: Sequence[Any] | Mapping[str, Any] | None = None,
        db: str | None = None,
        budget: Budget | None = None,
    ) -> Handle[Any]:
        """Fork an execution of this flow: `Client(db).replay(...)`, checked to be this flow's."""
        return _replay.replay(
            store_for(db),
            execution_id,
            from_=from_,
            overrides=overrides,
            args=args,
            budget=budget,
            flow_name=self.name,
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Start an execution and wait for its result (await it for an async flow).

        In flow code this is a child flow, a recorded call: the child execution is started
        once, the parent suspends (holding nothing) until it ends, and its outcome is
        recorded in the parent; a failed child raises `tether.ExecutionFailed` here, a
        cancelled one `tether.ExecutionCancelled`."""
        if current_run.get() is not None and current_frame.get() is not None:
            raise UsageError(
                f"flow {self.name!r} was called inside a checkpoint; call it from flow code"
            )
        handle: Handle[Any] = self._start(args, kwargs, None, local=settings().executor)
        if self.is_async:
            return cast(R, handle.result_async())
        return cast(R, handle.result())


_START_OPTIONS = ("queue", "key", "priority", "budget")


def _check(options: _StartOptions) -> None:
    if options.key is not None and (not isinstance(options.key, str) or not options.key):
        raise UsageError(f"a deduplication key is a non-empty string, not {options.key!r}")
    if isinstance(options.priority, bool) or not isinstance(options.priority, int):
        raise UsageError(f"priority is a whole number, not {options.priority!r}")
    if not -(2**31) <= options.priority < 2**31:  # a 32-bit column in PostgreSQL
        raise UsageError(
            f"priority {options.priority} is out of range: give one from -2**31 to 2**31-1"
        )


@dataclass(frozen=True, slots=True)
class _Fixed:
    """The parts of a new execution's row that depend only on its flow (see Flow._fixed)."""

    import_path: str
    script: str | None
    budget: Budget | None  # the flow's budget these were worked out for
    budget_options: str | None
    root: str  # how a value that cannot be stored is named in the error


@dataclass(frozen=True)
class _StartOptions:
    queue: Queue | str | None = None
    key: str | None = None
    priority: int = 0
    budget: Budget | None = None
    deadline: float | dt.datetime | None = None
    delay: float | dt.timedelta | None = None
    not_before: dt.datetime | None = None


class Starter(_Starts[P, R]):
    """A flow with start options bound (from `Flow.options()`)."""

    def __init__(self, flow: Flow[P, R], options: _StartOptions) -> None:
        self._flow = flow
        self._options = options

    def _target(self) -> tuple[Flow[P, R], _StartOptions | None]:
        return self._flow, self._options


def _in_flow_code() -> Run | None:
    """The running execution when called from its flow code (not from a checkpoint)."""
    run = current_run.get()
    return run if run is not None and current_frame.get() is None else None


async def _ready(handle: Handle[Any]) -> Handle[Any]:
    return handle


def _parent_id() -> str | None:
    run = current_run.get()
    return run.execution_id if run is not None else None


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def flow(
    *,
    name: str | None = None,
    queue: Queue | str | None = None,
    budget: Budget | None = None,
    deadline: float | dt.timedelta | None = None,
    schedule: str | dt.timedelta | None = None,
    schedule_args: Sequence[Any] = (),
    schedule_kwargs: Mapping[str, Any] | None = None,
    catchup: _schedules.Catchup = "latest",
    resources: Mapping[str, Any] | None = None,
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    queue: Queue | str | None = None,
    budget: Budget | None = None,
    deadline: float | dt.timedelta | None = None,
    schedule: str | dt.timedelta | None = None,
    schedule_args: Sequence[Any] = (),
    schedule_kwargs: Mapping[str, Any] | None = None,
    catchup: _schedules.Catchup = "latest",
    resources: Mapping[str, Any] | None = None,
) -> Flow[P, R] | Callable[[Callable[P, R]], Flow[P, R]]:
    """Make a function durable: each `.run(...)` is an execution recorded in the store.

    ```python
    @tether.flow
    async def research_agent(topic: str) -> str:
        notes = await ask_model(f"Research {topic}")
        return await ask_model(f"Write a report from {notes}")

    handle = research_agent.run("durable execution")
    print(handle.result())
    ```

    Define flows at module level (or in a script): an execution records the flow's import
    path, and the process that resumes it imports the flow from there. `queue` (a name or
    a `tether.Queue`) is where its executions wait for a worker. `budget` (a
    `tether.Budget`) limits what each execution may spend on model calls: a request that
    would go over it raises `tether.BudgetExceeded` in the flow instead of being made.
    `deadline` (seconds or a timedelta) is a wall-clock limit on each execution from its
    first start, waits, sleeps and children included: past it the execution is cancelled,
    its unfinished children with it, and `result()` raises `tether.ExecutionTimedOut`.

    `schedule` runs the flow by itself: a cron string in UTC (`"0 9 * * *"`; a sixth,
    leading field is seconds: `"*/10 * * * * *"`) or a `datetime.timedelta` interval
    (ticks at whole multiples of it since the epoch). Every worker that loaded the flow
    (`tether worker`, `tether.Worker`, a `tether.launch()` process) starts one execution
    per tick, exactly once across the fleet: the tick (`tick:2026-01-05T09:00:00Z`) is the
    execution's deduplication key. Each tick calls the flow with `schedule_args` and
    `schedule_kwargs` (fixed; default none). `catchup` says what fires for ticks missed
    while no worker ran: `"latest"` (default) the latest one only, `"all"` every one,
    `"none"` nothing (a tick seen more than 30 s late is skipped).

    `resources` (`num_cpus`, `num_gpus`, `memory` in bytes, custom ones under `resources`)
    are the Ray resources of the task each execution runs as under `tether worker --ray`;
    elsewhere they are not used. Unknown keys raise `tether.UsageError`.
    """

    def wrap(f: Callable[P, R], stacklevel: int = 2) -> Flow[P, R]:
        if isinstance(f, Flow):
            raise UsageError(f"{f.name} is already a flow; decorate it once")
        if not callable(f):
            raise UsageError(f"@tether.flow decorates a function, not {f!r}")
        made = Flow(
            f, name=name, queue=queue, budget=budget, deadline=deadline, schedule=schedule,
            schedule_args=schedule_args, schedule_kwargs=schedule_kwargs, catchup=catchup,
            resources=resources,
        )  # fmt: skip
        _warn_if_interactive(made, stacklevel + 1)
        return made

    if fn is not None:
        return wrap(fn, 3)
    return wrap


def _warn_if_interactive(made: Flow[Any, Any], stacklevel: int) -> None:
    # A flow typed at a REPL or notebook top level (or in `python -c`) lives in a `__main__`
    # that has no file: no other process can load it, so only this one can resume it.
    if getattr(made.fn, "__module__", None) != "__main__":
        return
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None):
        return
    warnings.warn(
        f"flow {made.name!r} is defined in an interactive session (a REPL, a notebook, "
        "`python -c`), so only this process can resume its executions: a worker, `tether "
        "executions recover` or a restarted process cannot load it. Define durable flows in "
        "a module or script file",
        UserWarning,
        stacklevel=stacklevel,
    )
