"""The worker: a long-running process that runs whatever is runnable in the store.

Runnable means: queued with nobody on it (enqueued, or given back), waiting with
its input recorded or its timer due, or held by an owner that is gone (lease
expired, or a killed process on this host). The worker claims such executions
one at a time with a compare-and-swap in the store, runs them on the embedded
executor (sync flows on its threads, async ones as tasks on its shared event loop; same
engine, same leases and heartbeat), and on SIGTERM
stops claiming and hands back what it holds at the next checkpoint boundary.

A worker can also be a *runner* (what a launcher starts, one per execution): given one
execution (`execution=`), it claims only that one (taking it over once its holder is gone),
and with `run(exit_when_idle=True)` it returns once nothing it may run is runnable or held:
the execution finished, or waits for input or a timer, which then needs no process at all.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence

from .._core import imports as _imports
from .._core.config import configure, settings, store_for
from .._core.status import Status
from ..errors import (
    ExecutionLocked,
    ExecutionNotFound,
    InvalidStateError,
    StoreCorrupt,
    StoreError,
    UsageError,
)
from ..store import EventRow, ExecutionRow, Store, redact
from . import queues as _queues
from .engine import Runnable, load_flow
from .executor import Executor, executor
from .holds import Refill
from .queues import Queue
from .schedules import Firer

log = logging.getLogger("tether.worker")

# A flow not loaded here stays not loaded (nothing a row names is ever imported): its
# executions are left alone for good after the first one is handed back.
_SKIP_FOREVER = float("inf")
# A claimed execution the executor has not started within this long never will be (say, a
# take-over accepted here that another worker won).
_STARTING_SECONDS = 5.0


class Worker:
    """Runs runnable executions until stopped.

    ```python
    tether.Worker(concurrency=8, imports=["myapp.agents"]).run()   # blocks; SIGTERM stops it
    ```

    It runs the flows loaded in its process: those its own code imported, the modules in
    `imports` (and `TETHER_IMPORTS` or `[tool.tether] imports` in pyproject.toml) and the
    files in `scripts`. Executions of any other flow are left for a worker that loaded it,
    with a warning on the execution naming the flag that would load it; nothing a stored
    row names is imported. The scheduled flows among those it loaded get their ticks
    started here, each tick once across every worker (see `_runtime/schedules.py`).

    `ray`: run each execution as a task on a Ray cluster instead of in this process
    (`"local"`: a one-node cluster started here, `"auto"`: the one running on this
    machine or `RAY_ADDRESS`, else its address); see `_runtime/ray.py`. A SQLite store
    is refused (ConfigurationError) unless the cluster is one node on this machine.
    """

    def __init__(
        self,
        db: str | None = None,
        *,
        concurrency: int = 8,
        poll: float = 0.02,
        imports: Sequence[str] = (),
        scripts: Sequence[str] = (),
        recover_every: float = 1.0,
        queues: Sequence[Queue | str] | None = None,
        execution: str | None = None,
        ray: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, not {concurrency}")
        if execution is not None and ray is not None:
            raise UsageError(
                "a runner (execution=) runs its execution in its own process; give either "
                "execution= (what a launcher starts) or ray= (a worker dispatching to Ray)"
            )
        if poll <= 0:
            raise UsageError(f"poll must be a positive number of seconds, not {poll}")
        for module in imports:
            _imports.load_module(module)
        for script in scripts:
            _imports.load_script(script)
        _imports.load_configured()
        # `concurrency` counts the executions held at once, sync and async alike: a sync one
        # takes a thread (made when needed, so a worker of async flows makes none), an async
        # one a task on the shared event loop.
        if settings().max_workers < concurrency:
            configure(max_workers=concurrency)
        if settings().max_async < concurrency:
            configure(max_async=concurrency)
        self.concurrency = concurrency
        self.poll = poll
        self.recover_every = recover_every
        self._store: Store = store_for(db)
        self._executor: Executor
        if ray is None:
            self._executor = executor()
        else:
            # Imported here: Ray is an extra, and a worker without --ray never needs it.
            from .ray import RayDispatcher

            self._executor = RayDispatcher(ray, self._store, imports=imports, scripts=scripts)
        self._stop = threading.Event()
        # Flows (import path, script) not loaded here -> until when it skips them.
        self._skip: dict[tuple[str, str | None], float] = {}
        self._last_recover = 0.0
        # Starts the due ticks of the scheduled flows loaded here. A runner serves its one
        # execution: it fires no schedule (it would queue ticks for the fleet and wake up for
        # them, while it exits once its execution is idle).
        self._firer = Firer() if execution is None else Firer([])
        # None serves every queue; else only these names.
        self.queues = None if queues is None else [_queues.name_of(q) for q in queues]
        if self.queues is not None and not self.queues:
            raise UsageError("a worker needs at least one queue to serve (or none: all)")
        # A runner claims only its execution (children it starts here run here too).
        self.execution = execution
        self._ids = None if execution is None else [execution]
        self._started_in: dict[str, str] = {}  # execution id -> queue, for per-worker limits
        # Claimed here but not yet held by the executor (it starts them after the claim
        # returns): counted as running, and not pruned, until it holds them.
        self._starting: dict[str, float] = {}
        # Guards _skip and _started_in: executor threads claim too (see _refill).
        self._claiming = threading.Lock()
        self._publish_limits()

    def _publish_limits(self) -> None:
        """Write the fleet-wide limits of the queues this worker serves (serving all: every
        queue declared in this process) to the store."""
        if self.queues is None:
            declared = _queues.all_declared()
        else:
            declared = [q for q in map(_queues.declared, self.queues) if q is not None]
        for queue in declared:
            self._store.set_queue_limits(
                queue.name,
                concurrency=queue.concurrency,
                rate_limit=queue.rate_limit,
                rate_period=queue.rate_period if queue.rate_limit else None,
                now=time.time(),
            )

    def _full(self, queue: str) -> bool:
        """This worker runs (or is starting) as many of the queue's executions as it may."""
        declared = _queues.declared(queue)
        if declared is None or declared.worker_concurrency is None:
            return False
        running = sum(
            1
            for eid, q in self._started_in.items()
            if q == queue and (eid in self._starting or self._executor.holds(self._store, eid))
        )
        return running >= declared.worker_concurrency

    def _starts(self, execution_id: str, queue: str) -> None:
        """Count an execution claimed or taken over here against its queue's per-worker limit
        from now on (the executor holds it a moment later). Call with `_claiming` held."""
        self._started_in[execution_id] = queue
        self._starting[execution_id] = time.monotonic()

    @property
    def owner(self) -> str:
        return self._executor.owner

    def run(self, *, grace: float = 30.0, exit_when_idle: bool = False) -> None:
        """Run until `stop()` or SIGTERM/SIGINT; then hand back what is held and return.

        `exit_when_idle`: return as well once nothing is held here and nothing this worker
        may run is runnable (a runner's execution finished or waits). With `execution`, the
        execution is checked first: ExecutionNotFound, InvalidStateError when it finished,
        ExecutionLocked while a live process holds it, FlowNotFoundError when its flow is
        not loaded here."""
        if self.execution is not None:
            self._check_runnable(self.execution)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        if self.execution is not None:
            log.info(
                "worker %s on %s runs execution %s", self.owner, redact(self._store.url),
                self.execution,
            )  # fmt: skip
        else:
            log.info(
                "worker %s on %s, concurrency %d, queues: %s", self.owner,
                redact(self._store.url), self.concurrency,
                ", ".join(self.queues) if self.queues is not None else "all",
            )  # fmt: skip
        # While the loop runs it looks at the whole store, so the executor need not park
        # suspended executions (and poll each of them) as a plain process does.
        parking = self._executor.parking
        self._executor.parking = False
        # A thread whose execution ends claims the next one itself and runs it: no wake-up
        # of this loop and no hand-off to another thread per execution.
        self._executor.refill = self._refill
        # Hand work back the moment a stop is asked for, even while the loop below waits on
        # a notification; a thread does it, because a signal handler must not take locks.
        releaser = threading.Thread(target=self._release_on_stop, daemon=True)
        releaser.start()
        try:
            while not self._stop.is_set():
                try:
                    # Nothing held before the claims, and nothing claimed: nothing can become
                    # runnable here any more (an execution ending here wakes its parent first).
                    idle = self._executor.held_count() == 0
                    if self.run_once():
                        continue
                    if exit_when_idle and idle:
                        log.info("worker %s: nothing left to run, exiting", self.owner)
                        break
                    self._idle()
                except StoreCorrupt:
                    # Nothing can be run from a damaged store; stop, saying why.
                    raise
                except StoreError as exc:
                    # A restart or a network blip: keep going; the claims are retried.
                    log.warning("store unavailable, retrying: %s", exc)
                    self._stop.wait(min(1.0, self.recover_every))
        finally:
            self._executor.refill = None
            self.shutdown(grace)
            self._executor.parking = parking

    def _release_on_stop(self) -> None:
        self._stop.wait()
        self._executor.release_all()

    def _idle(self) -> None:
        """Wait for work: a notification (Postgres), the poll interval (SQLite), the next
        due timer, or a free slot, whichever comes first."""
        if self._executor.held_count() >= self.concurrency:
            self._executor.wait_for_free(self.recover_every)
            return
        timeout = self.recover_every if self._store.notifies else self.poll
        due = self._store.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - settings().clock()))
        tick = self._firer.next_due()
        if tick is not None:
            timeout = min(timeout, max(0.0, tick - settings().clock()))
        if timeout > 0:
            self._store.wait_for_work(timeout)

    def stop(self) -> None:
        """Ask `run()` to return (thread-safe)."""
        self._stop.set()

    def shutdown(self, grace: float = 30.0) -> None:
        """Hand back every execution held here at its next boundary, waiting up to `grace`
        seconds; anything still running after that is left to its lease."""
        self._executor.hand_back(grace)
        log.info("worker %s stopped", self.owner)

    def run_once(self) -> list[str]:
        """Claim and start what is runnable, up to the free slots. Returns the ids started."""
        free = self.concurrency - self._executor.held_count()
        if free <= 0:
            return []
        now = time.time()
        # Before claiming, so that this round may claim a tick's execution it just made.
        self._firer.fire(self._store, settings().clock())
        started: list[str] = []
        if now - self._last_recover >= self.recover_every:
            self._last_recover = now
            started.extend(self._take_over_dead_owners(now, free))
            free -= len(started)
        while len(started) < free:
            found = self._claim_next(now)
            if found is None:
                break
            self._executor.start(
                self._store, found.execution_id, found.token, found.flow, claimed=True,
                row=found.row,
            )  # fmt: skip
            started.append(found.execution_id)
        return started

    def _refill(self, store: Store) -> Refill | None:
        """The executor's hook: a thread of ours is free; claim its next execution."""
        if store is not self._store or self._stop.is_set():
            return None
        return self._claim_next(time.time())

    def _claim_next(self, now: float) -> Refill | None:
        """Claim the best runnable execution this worker may run, or None. One statement
        (SKIP LOCKED: never one another worker is taking) re-checks the queues' fleet-wide
        limits and leaves out the queues this worker runs its share of and the flows it
        has not loaded. Called from the loop and from executor threads at once."""
        due = settings().clock()
        while True:
            with self._claiming:
                self._skip = {flow: until for flow, until in self._skip.items() if until > now}
                moment = time.monotonic()
                self._starting = {
                    eid: since for eid, since in self._starting.items()
                    if not self._executor.holds(self._store, eid)
                    and moment - since < _STARTING_SECONDS
                }  # fmt: skip
                self._started_in = {
                    eid: q for eid, q in self._started_in.items()
                    if eid in self._starting or self._executor.holds(self._store, eid)
                }  # fmt: skip
                full = sorted(q for q in set(self._started_in.values()) if self._full(q))
                skip = list(self._skip)
            claim = self._executor.claim()
            taken = self._store.claim_runnable(
                claim, now=now, due=due, ids=self._ids, queues=self.queues,
                exclude_queues=full, exclude_flows=skip,
            )  # fmt: skip
            if taken is None:
                return None
            flow = self._importable(taken, now)
            if flow is None:
                # A fleet serving different code from one queue: hand it straight back for a
                # worker that loaded the flow; this one leaves the flow alone from now on.
                self._store.release(taken.id, claim.token, status=Status.QUEUED, now=now)
                continue
            with self._claiming:
                self._starts(taken.id, taken.queue)
            return Refill(taken.id, claim.token, flow, taken)

    def _take_over_dead_owners(self, now: float, free: int) -> list[str]:
        def runnable_here(row: ExecutionRow) -> bool:
            # As for a claim: a queue this worker serves and is not at its own limit in
            # (those taken earlier in this pass count as starting), a flow it has not given
            # up on (not loaded here); a runner's own execution only.
            if self.queues is not None and row.queue not in self.queues:
                return False
            if self._ids is not None and row.id not in self._ids:
                return False
            with self._claiming:
                if self._full(row.queue) or (row.import_path, row.script) in self._skip:
                    return False
            if self._importable(row, now) is None:
                return False
            with self._claiming:
                self._starts(row.id, row.queue)
            return True

        taken = self._executor.take_over_dead(self._store, now, runnable_here, free)
        for execution_id, token in taken:
            self._executor.start(self._store, execution_id, token, None, claimed=True)
        return [execution_id for execution_id, _ in taken]

    def _check_runnable(self, execution_id: str) -> None:
        """Refuse, saying why, to be the runner of an execution that cannot be run here."""
        row = self._store.get_execution(execution_id)
        if row is None:
            raise ExecutionNotFound(
                f"no execution {execution_id} in {redact(self._store.url)}; check the id "
                "(`tether executions list`) and the store (--db, TETHER_DB)"
            )
        status = Status(row.status)
        if status.finished:
            raise InvalidStateError(
                f"execution {execution_id} already {status.value}; there is nothing to run"
            )
        # Before any claim: a flow not loaded here is a usage error of this command (its
        # --import), not something to hand back for other workers.
        load_flow(row.import_path, row.script)
        now = time.time()
        held = row.lease_token is not None and status in (Status.RUNNING, Status.QUEUED)
        if held and not self._executor.owner_gone(row.owner, row.lease_expires, now):
            left = (row.lease_expires or now) - now
            raise ExecutionLocked(
                f"execution {execution_id} is held by {row.owner}, whose lease runs "
                f"{left:.0f}s more; it is taken over once that process is gone or its lease "
                "has run out (a launcher starts a new runner then)"
            )

    def _importable(self, row: ExecutionRow, now: float) -> Runnable | None:
        try:
            return load_flow(row.import_path, row.script)
        except UsageError as exc:
            with self._claiming:
                self._skip[(row.import_path, row.script)] = _SKIP_FOREVER
            self._store.add_event(
                EventRow(row.id, None, now, "warning", "worker",
                         f"worker {self.owner} cannot run it: {exc}")
            )  # fmt: skip
            log.warning("skipping %s: %s", row.id, exc)
            return None
