"""The launcher: one short-lived runner per runnable execution, on a backend.

The launcher watches the store for runnable executions (queued and due, waits whose input
or timer arrived, executions whose holder is gone) with the store's own `runnable` query,
and starts one runner for each, at most `max_running` at once. A runner is
`tether worker --execution ID --exit-when-idle`: it claims that execution, runs it until
it finishes, waits or sleeps, and exits. The launcher imports no flow, claims nothing and
writes nothing: the runner's claim (a compare-and-swap on the lease) stays the only thing
that decides who runs an execution, so a launch too many is refused by the store, never
run twice.

A runner's name is derived from the execution id and the attempt it will make (the row's
attempt + 1): it stays the same until a runner claims the execution, and changes with
every new attempt. A backend refuses a name it has already launched and not seen end, so
a restarted launcher does not launch again what is still starting or running, and a
runner that died (its lease expired, or its pid is gone on this host) is replaced by the
next attempt's runner.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._core.config import settings, store_for
from .._core.status import Status
from ..errors import StoreCorrupt, StoreError, UsageError
from ..store import ExecutionRow, Store, redact
from .owners import host_prefix, pid_alive

log = logging.getLogger("tether.launcher")

# Kubernetes object names that become label values (a Job's pods carry its name as
# `job-name`) are DNS-1123 labels: at most 63 lowercase letters, digits and '-'.
_NAME_LIMIT = 63
_UNSAFE = re.compile(r"[^a-z0-9]+")
# A runner that ended while its execution stayed at the same attempt (it could not claim it:
# its queue at its limit, a bad --import, a broken image) is launched again after this many
# seconds, doubled each time up to _MAX_BACKOFF.
_FIRST_BACKOFF = 1.0
_MAX_BACKOFF = 60.0
# Launches remembered (for the pause above) this long after their pause ended.
_FORGET_SECONDS = 600.0


def runner_name(execution_id: str, attempt: int) -> str:
    """The runner of `attempt` of an execution: `tether-<id>-<attempt>`, a DNS-1123 label.
    An id that does not fit as it is (other characters, too long) is shortened and given a
    hash of the whole id, so that distinct ids never share a name."""
    suffix = f"-{attempt}"
    safe = _UNSAFE.sub("-", execution_id.lower()).strip("-")
    name = f"tether-{safe}{suffix}"
    if safe == execution_id and len(name) <= _NAME_LIMIT:
        return name
    digest = hashlib.blake2b(execution_id.encode(), digest_size=5).hexdigest()
    room = _NAME_LIMIT - len("tether-") - len(suffix) - len(digest) - 1
    head = safe[:room].strip("-")
    return f"tether-{head}-{digest}{suffix}" if head else f"tether-{digest}{suffix}"


def runner_command(
    execution_id: str, *, program: Sequence[str], imports: Sequence[str], script: str | None
) -> list[str]:
    """The command of the runner of an execution. The store URL is not in it (a password
    in a command line is visible to every user of the host): runners get it from
    TETHER_DB."""
    command = [*program, "worker", "--execution", execution_id, "--exit-when-idle"]
    for module in imports:
        command += ["--import", module]
    if script:
        command += ["--script", script]
    return command


class Backend(Protocol):
    """Where runners run. `alive()` and `launch()` are called from the launcher's loop only."""

    #: runners run on this host: an owner recorded by a process here can be checked by pid
    local: bool

    def alive(self) -> set[str]:
        """The names of the runners launched (by any launcher of this backend) that have not
        ended yet."""

    def launch(self, name: str, row: ExecutionRow, command: list[str]) -> bool:
        """Start runner `name` running `command` for the execution `row`. False (nothing
        started) when a runner of that name exists already."""

    def failures(self) -> list[tuple[str, int]]:
        """Runners seen to end with an error since the last call: (name, exit code)."""


@dataclass
class _Launched:
    times: int
    # Not launched again before then (when its runner ended without the execution moving on).
    until: float


@dataclass
class Launcher:
    """Launches a runner per runnable execution, at most `max_running` at once, until stopped
    (`tether launcher` builds one from its options; not part of the public API yet).

    ```python
    Launcher(ProcessBackend(state_dir), max_running=4, imports=["myapp.agents"]).run()
    ```
    """

    backend: Backend
    db: str | None = None
    max_running: int = 8
    imports: Sequence[str] = ()
    script: str | None = None
    queues: Sequence[str] | None = None
    poll: float = 0.2
    # The wall clock (leases) and the timer clock (waits, sleeps); tests pass their own.
    clock: Callable[[], float] = time.time
    _store: Store = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _launched: dict[str, _Launched] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise UsageError(f"max_running must be at least 1, not {self.max_running}")
        if self.poll <= 0:
            raise UsageError(f"poll must be a positive number of seconds, not {self.poll}")
        if self.queues is not None and not self.queues:
            raise UsageError("a launcher needs at least one queue to serve (or none: all)")
        self._store = store_for(self.db)

    def stop(self) -> None:
        """Ask `run()` to return (thread-safe). Runners already launched run on."""
        self._stop.set()

    def run(self) -> None:
        """Launch runners until `stop()` or SIGTERM/SIGINT. Runners are not stopped with the
        launcher: they finish their executions, and a launcher started again sees them."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self._stop.set())
        log.info(
            "launcher on %s, at most %d runners, queues: %s", redact(self._store.url),
            self.max_running, ", ".join(self.queues) if self.queues is not None else "all",
        )  # fmt: skip
        while not self._stop.is_set():
            try:
                if not self.run_once():
                    self._idle()
            except StoreCorrupt:
                raise
            except StoreError as exc:
                log.warning("store unavailable, retrying: %s", exc)
                self._stop.wait(1.0)
            except Exception:
                # The backend failed (the API server unreachable, a refused Job, no process
                # slot): runners already launched run on; this one looks again.
                log.exception("launching failed; trying again")
                self._stop.wait(1.0)
        log.info("launcher stopped")

    def _idle(self) -> None:
        """Wait for work: a notification (PostgreSQL), the next due timer, or the poll
        interval, whichever comes first. The poll bounds it on PostgreSQL too: a runner
        that ends frees a slot without any notification."""
        timeout = self.poll
        due = self._store.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - settings().clock()))
        if timeout > 0:
            self._store.wait_for_work(timeout)

    def run_once(self) -> list[str]:
        """Launch runners for what is runnable, up to the free slots. Returns the names."""
        alive = self.backend.alive()
        for name, code in self.backend.failures():
            log.warning("runner %s exited with code %d", name, code)
        free = self.max_running - len(alive)
        if free <= 0:
            return []
        now = self.clock()
        launched: list[str] = []
        for row in self._runnable(now, len(alive) + free):
            if len(launched) >= free:
                break
            name = runner_name(row.id, row.attempt + 1)
            if name in alive:
                continue
            before = self._launched.get(name)
            if before is not None and before.until > now:
                continue
            command = runner_command(
                row.id, program=self._program(), imports=self.imports, script=self.script
            )
            # The same name comes back only if this runner ends with the execution still at
            # this attempt: then it waits, longer each time.
            times = 1 if before is None else before.times + 1
            pause = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (times - 1))
            self._launched[name] = _Launched(times, now + pause)
            if not self.backend.launch(name, row, command):
                continue
            launched.append(name)
            if before is None:
                log.info("launched %s for execution %s (%s)", name, row.id, row.flow)
            else:
                log.warning(
                    "runner %s ended without running execution %s; starting it again (try %d), "
                    "the next try in %.0fs at the earliest", name, row.id, times, pause,
                )  # fmt: skip
        self._launched = {
            n: found for n, found in self._launched.items() if found.until + _FORGET_SECONDS > now
        }
        return launched

    def _program(self) -> list[str]:
        return [sys.executable, "-m", "tether"] if self.backend.local else ["tether"]

    def _runnable(self, now: float, limit: int) -> list[ExecutionRow]:
        """Runnable executions, best first: those the store's claim would take, then (for
        runners on this host) those still leased by a process of this host that is gone,
        which a runner takes over without waiting for the lease to run out."""
        # Rows with a live runner are among them: leave room for those, and for some
        # backing off, so that a full page of them cannot hide the next runnable one.
        rows = self._store.runnable(
            now=now, due=settings().clock(), limit=limit + 16, queues=self.queues
        )
        if self.backend.local:
            seen = {row.id for row in rows}
            for row in self._store.leased_on_host(prefix=host_prefix(), now=now):
                if row.id in seen or row.status != Status.RUNNING:
                    continue
                if self.queues is not None and row.queue not in self.queues:
                    continue
                if _dead_on_this_host(row.owner):
                    rows.append(row)
        return rows


def _dead_on_this_host(owner: str | None) -> bool:
    if owner is None or not owner.startswith(host_prefix()):
        return False
    pid_text = owner[len(host_prefix()) :].partition(":")[0]
    return pid_text.isdigit() and not pid_alive(int(pid_text))


def default_state_dir(db_url: str) -> Path:
    """Where the process backend keeps its runners' lock files, per store and user: every
    launcher of one store on this host shares it, so none launches a runner another one has."""
    key = hashlib.blake2b(db_url.encode(), digest_size=6).hexdigest()
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"tether-launcher-{os.getuid()}" / key


class ProcessBackend:
    """Runners as local OS processes.

    Which runners are alive is kept in lock files, one per runner (`<name>.lock` in
    `state_dir`): the launcher takes the file's lock, starts the runner with the locked
    descriptor, and lets go of its own copy, so the runner holds the lock for as long as it
    lives, and the kernel lets go of it when it ends, whatever ends it (SIGKILL included).
    Why not a record in the store: a process's liveness can only be known on its host, a
    record would outlive a killed runner (needing a lease of its own), and the store stays
    written by the runners alone. Why not pid files: a pid is reused, a held lock is not.
    A restarted launcher reads which runners live from the locks alone.
    """

    local = True

    def __init__(self, state_dir: Path, *, env: dict[str, str] | None = None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir = state_dir
        self.env = env
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._failed: list[tuple[str, int]] = []

    def alive(self) -> set[str]:
        for name, child in list(self._children.items()):
            code = child.poll()  # reaps it
            if code is not None:
                del self._children[name]
                if code != 0:
                    self._failed.append((name, code))
        names = set()
        for path in self.state_dir.glob("*.lock"):
            if _held(path):
                names.add(path.stem)
        return names

    def launch(self, name: str, row: ExecutionRow, command: list[str]) -> bool:
        path = self.state_dir / f"{name}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # Its own session: a Ctrl-C meant for the launcher does not stop the runners.
            child = subprocess.Popen(command, env=self.env, pass_fds=(fd,), start_new_session=True)
            self._children[name] = child
            # For people (and tests) looking at the directory; the lock is what counts.
            os.ftruncate(fd, 0)
            os.write(fd, f"{row.id} {child.pid}\n".encode())
        finally:
            os.close(fd)
        return True

    def failures(self) -> list[tuple[str, int]]:
        found, self._failed = self._failed, []
        return found

    def runner_pids(self) -> dict[str, int]:
        """The pids of the runners this backend started and has not seen end."""
        return {n: c.pid for n, c in self._children.items() if c.poll() is None}


def _held(path: Path) -> bool:
    """Whether a runner holds the lock file; a stale one (its runner ended) is removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)
