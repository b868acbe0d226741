"""Executions as Ray tasks: `tether worker --ray` (`tether.Worker(ray=...)`).

The worker claims runnable executions from the store exactly as on the fleet (same claim,
same queue limits, same `concurrency`), but runs none of them: each one claimed becomes a
Ray task (`RayDispatcher.start`). The task, in a Ray worker process, takes the lease over
from the dispatcher with a compare and swap on its token (`Store.hand_over`; fenced: a task
that comes late, or that Ray started twice, finds the token gone and stops), runs the
execution on that process's executor (heartbeat, fenced commits, as any worker), and returns
when it finished or suspended (a wait, a sleep, a child): a waiting execution holds no task.
Until the hand-over the dispatcher renews the lease itself, so a task that waits for a free
node keeps its execution.

Ownership is the lease, never Ray: tasks run with `max_retries=0`, and a task whose process
or node dies leaves its execution `running` under a lease nobody renews; once it expires (at
once when the dead process was on this host) any worker or dispatcher takes it over, and the
recorded calls return their results. Results go from the task to the store, never through a
Ray object.

A task imports flows only as the loading rule says (`_core/imports.py`): the dispatcher's
`--import` modules, scripts and `TETHER_IMPORTS`, passed as arguments, never a name read from
the store. The task gets the store URL, the settings that decide leases and commits, and the
dispatcher's `TETHER_*` and `PYTHONPATH` environment (through the task's `runtime_env`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._core import imports as _imports
from .._core import remote as _remote
from .._core.config import configure, settings, store_for
from .._core.status import Status
from ..errors import ConfigurationError, UsageError
from ..store import EventRow, ExecutionRow, Store, redact
from .engine import Runnable, load_flow
from .executor import Executor, executor
from .holds import EndSink

log = logging.getLogger("tether.ray")

# The dispatcher's environment a task gets: tether's settings and where Python finds code.
_FORWARDED = ("PYTHONPATH",)
_RENEW_SECONDS = 1.0


@dataclass(slots=True)
class _Task:
    store: Store
    token: str
    ref: Any
    # The task took the lease over (or someone else has it): the dispatcher stops renewing.
    handed: bool = False


def connect(address: str) -> Any:
    """Connect this process to a Ray cluster: `local` starts a one-node cluster in it,
    `auto` joins the one running on this machine (or `RAY_ADDRESS`), anything else is a
    cluster address (`host:6379`, `ray://host:10001`). Returns the `ray` module."""
    ray = _remote.import_ray()
    if not address.strip():
        raise ConfigurationError("--ray takes 'auto', 'local' or a cluster address")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        # "local" to Ray too: a new one-node cluster even when one runs on this machine
        # (without an address Ray would join that one).
        target = address
        try:
            ray.init(address=target, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot connect to the Ray cluster {address!r}: {exc}. Start one (`ray start "
                "--head`), give its address, or use --ray local for a one-node cluster here"
            ) from exc
    return ray


def single_local_node(ray: Any) -> bool:
    """Whether the cluster is one node, the one this process runs on: then every task runs
    on this machine and can open the same SQLite file."""
    if ray.util.client.ray.is_connected():
        return False  # a Ray Client driver runs elsewhere than the cluster it drives
    alive = [node for node in ray.nodes() if node.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    return len(alive) == 1 and alive[0].get("NodeID") == here


def check_store(store: Store, address: str, ray: Any | None) -> None:
    """A cluster needs a store every node reaches: refuse SQLite unless the cluster is one
    node on this machine. `ray` None: not connected yet (only the address is looked at)."""
    if not store.url.startswith("sqlite"):
        return
    if address.startswith("ray://") or (ray is not None and not single_local_node(ray)):
        raise ConfigurationError(
            f"the store {redact(store.url)} is a SQLite file on this machine, and the Ray "
            f"cluster {address!r} is not a single node on it: its tasks could not reach the "
            "store. Use a PostgreSQL store (--db postgresql://...) that every node reaches, "
            "or --ray local / a one-node cluster started on this machine"
        )


def _store_url(store: Store) -> str:
    if store.url.startswith("sqlite"):
        # A task's working directory is Ray's, not ours.
        from ..store.sqlite import path_from_url

        return f"sqlite:///{path_from_url(store.url)}"
    return store.url


def task_settings() -> dict[str, Any]:
    """This process's settings that a task must share: how long leases last, what commits."""
    current = settings()
    return {
        "lease_seconds": current.lease_seconds,
        "strict": current.strict,
        "pickle": current.pickle,
        "durability": current.durability,
        "crash_loop_limit": current.crash_loop_limit,
        "crash_loop_backoff": current.crash_loop_backoff,
        "busy_timeout": current.busy_timeout,
        "max_input_bytes": current.max_input_bytes,
        "max_value_bytes": current.max_value_bytes,
    }


def run_execution(spec: dict[str, Any]) -> str:
    """The Ray task: take the execution over from the dispatcher, run it here to its end or
    its suspension, and return its status then ("lost": the lease was no longer the
    dispatcher's, so nothing ran)."""
    configure(db=spec["db"], executor=True, adopt=False, **spec["settings"])
    for module in spec["imports"]:
        _imports.load_module(module)
    for script in spec["scripts"]:
        _imports.load_script(script)
    _imports.load_configured()
    store = store_for(spec["db"])
    here = executor()
    # Nothing of this process runs an execution unless a task gives it one.
    here.parking = False
    execution_id = spec["execution_id"]
    claim = here.claim()
    if not store.hand_over(execution_id, spec["token"], claim, now=time.time()):
        log.info("execution %s: not taken over (its lease moved on); nothing ran", execution_id)
        return "lost"
    row = store.get_execution(execution_id)
    if row is None:
        return "lost"
    try:
        flow = load_flow(row.import_path, row.script)
    except UsageError as exc:
        # This node's Python lacks what the dispatcher loaded (another image, a missing
        # PYTHONPATH): give it back, saying so, rather than hold it until its lease ends.
        message = f"a Ray task on pid {os.getpid()} cannot run it: {exc}"
        store.add_event(EventRow(execution_id, None, time.time(), "warning", "worker", message))
        store.release(execution_id, claim.token, status=Status.QUEUED, now=time.time())
        return "not loaded"
    # Given its flow, the executor holds the execution (and renews its lease) until it ends
    # or suspends.
    here.start(store, execution_id, claim.token, flow, claimed=True, row=row)
    while here.holds(store, execution_id):
        here.wait_for_change(_RENEW_SECONDS)
    row = store.get_execution(execution_id)
    return "lost" if row is None else row.status


class RayDispatcher(Executor):
    """A worker's executor that runs nothing itself: each execution it is given becomes a Ray
    task (see the module's docstring). `holds` and `held_count` count the tasks in flight,
    so the worker's concurrency and per-worker queue limits hold as on the fleet."""

    def __init__(
        self,
        address: str,
        store: Store,
        *,
        imports: Sequence[str],
        scripts: Sequence[str],
    ) -> None:
        super().__init__()
        self.parking = False
        check_store(store, address, None)
        self._ray = connect(address)
        check_store(store, address, self._ray)
        self.address = address
        self._imports = list(imports)
        self._scripts = [os.path.abspath(s) for s in scripts]
        self._tasks: dict[str, _Task] = {}
        self._tasks_lock = threading.Lock()
        env = {k: v for k, v in os.environ.items() if k.startswith("TETHER_") or k in _FORWARDED}
        self._runtime_env = {"env_vars": env} if env else None
        self._remote = self._ray.remote(run_execution)
        self._renewer = threading.Thread(target=self._renew_loop, name="tether-ray", daemon=True)
        self._renewer.start()

    def options_for(self, flow: Runnable | None) -> dict[str, Any]:
        """The Ray task options of an execution of `flow`: its `resources=`, no Ray retry."""
        options: dict[str, Any] = {"max_retries": 0, "retry_exceptions": False}
        options.update(getattr(flow, "resources", None) or {})
        if self._runtime_env is not None:
            options["runtime_env"] = self._runtime_env
        return options

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
        # `sink` is not told: the execution ends in a Ray task, whose handle reads its end.
        if flow is None:
            flow = _flow_of(store, execution_id, row)
        spec = {
            "execution_id": execution_id,
            "token": token,
            "db": _store_url(store),
            "settings": task_settings(),
            "imports": self._imports,
            "scripts": self._scripts,
        }
        ref = self._remote.options(**self.options_for(flow)).remote(spec)
        with self._tasks_lock:
            self._tasks[execution_id] = _Task(store, token, ref)
        log.info("execution %s: running as a Ray task", execution_id)

    def holds(self, store: Store, execution_id: str) -> bool:
        with self._tasks_lock:
            task = self._tasks.get(execution_id)
        return task is not None and task.store is store

    def held_count(self) -> int:
        self._reap(0)
        with self._tasks_lock:
            return len(self._tasks)

    def wait_for_free(self, timeout: float) -> None:
        self._reap(timeout)

    def _reap(self, timeout: float) -> None:
        """Forget the tasks that ended (waiting up to `timeout` for one), saying how."""
        with self._tasks_lock:
            refs = {id(task.ref): (eid, task) for eid, task in self._tasks.items()}
        if not refs:
            if timeout > 0:
                self._stopping.wait(timeout)
            return
        done, _ = self._ray.wait(
            [task.ref for _, task in refs.values()], num_returns=1, timeout=timeout
        )
        if done:
            done, _ = self._ray.wait(
                [task.ref for _, task in refs.values()], num_returns=len(refs), timeout=0
            )
        for ref in done:
            execution_id, task = refs[id(ref)]
            try:
                status = self._ray.get(ref)
                log.info("execution %s: its Ray task ended (%s)", execution_id, status)
            except Exception as exc:
                # The task's process or node died, or Ray gave up on it: the execution's lease
                # runs out and it is taken over; Ray does not run it again.
                log.warning(
                    "execution %s: its Ray task failed (%s); it is taken over once its lease "
                    "runs out", execution_id, type(exc).__name__,
                )  # fmt: skip
            with self._tasks_lock:
                if self._tasks.get(execution_id) is task:
                    del self._tasks[execution_id]

    def _renew_loop(self) -> None:
        while not self._stopping.wait(_RENEW_SECONDS):
            try:
                self._renew_pending()
            except Exception as exc:
                # A missed renewal is ridden out by the lease; a later one may succeed.
                log.warning("cannot renew the leases of tasks not yet started: %s", exc)

    def _renew_pending(self) -> None:
        with self._tasks_lock:
            pending = [(eid, task) for eid, task in self._tasks.items() if not task.handed]
        by_store: dict[int, list[tuple[str, _Task]]] = {}
        for eid, task in pending:
            by_store.setdefault(id(task.store), []).append((eid, task))
        lease = settings().lease_seconds
        for entries in by_store.values():
            store = entries[0][1].store
            tokens = {eid: task.token for eid, task in entries}
            now = time.time()
            still = dict(store.renew(list(tokens), tokens, now + lease, refresh_before=now))
            for eid, task in entries:
                if eid not in still:
                    task.handed = True

    def release_all(self) -> None:
        """Give back what no task has taken over yet (the tasks that did run on)."""
        with self._tasks_lock:
            pending = [(eid, task) for eid, task in self._tasks.items() if not task.handed]
        for eid, task in pending:
            try:
                if task.store.release(eid, task.token, status=Status.QUEUED, now=time.time()):
                    self._ray.cancel(task.ref)
            except Exception as exc:
                log.warning("execution %s: cannot give it back: %s", eid, exc)

    def hand_back(self, grace: float) -> int:
        """Give back what no task has taken yet and wait up to `grace` seconds for the
        running tasks: a Ray task ends with the process that submitted it, so those still
        running after that are left to their leases (taken over once they run out)."""
        self.release_all()
        deadline = time.monotonic() + grace
        while self.held_count() and time.monotonic() < deadline:
            self._reap(min(1.0, max(0.0, deadline - time.monotonic())))
        left = self.held_count()
        self._stopping.set()
        return left


def _flow_of(store: Store, execution_id: str, row: ExecutionRow | None) -> Runnable | None:
    if row is None:
        row = store.get_execution(execution_id)
    if row is None:
        return None
    try:
        return load_flow(row.import_path, row.script)
    except Exception:
        return None  # the task says why it cannot run it
