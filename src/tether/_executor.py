"""The embedded executor: runs executions on threads of the process that started them.

Each execution held by this process has a lease in the store (owner id, token,
expiry). A heartbeat thread extends the leases and picks up cancel requests
made from other processes. Owner ids name the host and pid, so a process on
the same host can tell at once that an owner was killed, instead of waiting
for its lease to run out.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _engine
from ._config import settings
from ._context import Run
from .store import Claim, Store

if TYPE_CHECKING:
    from ._flow import Flow

_HEARTBEAT_SECONDS = 1.0

_HOST = socket.gethostname()


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
class _Held:
    store: Store
    token: str
    runs: list[Run] = field(default_factory=list)


class Executor:
    """Runs executions in this process and keeps their leases alive."""

    def __init__(self) -> None:
        self.owner = new_owner_id()
        self._held: dict[tuple[int, str], _Held] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings().max_workers, thread_name_prefix="tether-exec"
        )
        self._heartbeat: threading.Thread | None = None
        self._stopping = threading.Event()

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

    def holds(self, store: Store, execution_id: str) -> bool:
        with self._lock:
            return (id(store), execution_id) in self._held

    def start(
        self, store: Store, execution_id: str, token: str, flow: Flow[Any, Any] | None
    ) -> None:
        """Run an execution whose lease this process holds with `token`."""
        held = _Held(store, token)
        with self._lock:
            self._held[(id(store), execution_id)] = held
        self._ensure_heartbeat()
        self._pool.submit(self._run, held, execution_id, flow)

    def _run(self, held: _Held, execution_id: str, flow: Flow[Any, Any] | None) -> None:
        store = held.store
        try:
            claimed = store.claim(
                execution_id,
                Claim(self.owner, held.token, time.time() + settings().lease_seconds),
                from_statuses=("queued",),
                expected_token=held.token,
                now=time.time(),
            )
            if claimed:
                _engine.execute(store, execution_id, held.token, flow, held.runs)
        finally:
            with self._changed:
                self._held.pop((id(store), execution_id), None)
                self._changed.notify_all()

    def cancel_local(self, store: Store, execution_id: str) -> bool:
        """Signal an execution running in this process to stop at its next boundary."""
        with self._lock:
            held = self._held.get((id(store), execution_id))
        if held is None:
            return False
        for run in held.runs:
            run.cancel_event.set()
        return True

    def wait_for_change(self, timeout: float) -> None:
        """Block until some execution of this process finishes, or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout)

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
        while not self._stopping.wait(_HEARTBEAT_SECONDS):
            with self._lock:
                by_store: dict[int, list[tuple[str, _Held]]] = {}
                for (store_key, execution_id), held in self._held.items():
                    by_store.setdefault(store_key, []).append((execution_id, held))
            for entries in by_store.values():
                self._renew(entries)

    def _renew(self, entries: list[tuple[str, _Held]]) -> None:
        store = entries[0][1].store
        tokens = {execution_id: held.token for execution_id, held in entries}
        try:
            still = dict(store.renew(list(tokens), tokens, time.time() + settings().lease_seconds))
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
