"""Helpers for tests that run real processes, and for the flow modules those processes import."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import tether

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
T = TypeVar("T")


def child_env(db_url: str, **extra: str) -> dict[str, str]:
    """Environment for a child process: the same store, the tests' modules importable."""
    env = dict(os.environ)
    env["TETHER_DB"] = db_url
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(SRC), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run_python(
    argv: Sequence[str], db_url: str, *, timeout: float = 60, cwd: Path = TESTS, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run `python *argv` in a new process against the same store; returns when it exits."""
    return subprocess.run(
        [sys.executable, *argv],
        env=child_env(db_url, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd),
    )


def run_child(
    code: str, db_url: str, *args: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run Python code (with `args` as sys.argv[1:]) in a new process against the same store."""
    return run_python(["-c", code, *args], db_url, timeout=timeout, **extra)


def run_cli(db_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m tether *args` against the store; returns when it exits."""
    return run_python(["-m", "tether", *args], db_url, **extra)


def run_replay_cli(db_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """`run_cli` for commands that replay flows (`replay-test`, `executions replay`)."""
    # A generous guard against a hang: each command replays flows on a shared, busy machine.
    return run_python(["-m", "tether", *args], db_url, timeout=300, **extra)


def record(flow: Any, *args: Any) -> str:
    """Run `flow(*args)` here to its end (a failure is an end too); its execution id."""
    handle = flow.run(*args)
    with contextlib.suppress(tether.ExecutionFailed):
        handle.result(timeout=60)
    return str(handle.id)


def recover_until_finished(module: str) -> str:
    """Code for a new process: load the flows of `module`, resume everything runnable until
    the execution `sys.argv[1]` has finished (the process that held it is dead, so only a
    recover runs it), then print its result's repr."""
    return textwrap.dedent(
        f"""
        import sys, time, tether
        import {module}  # a process runs the flows it loaded
        client = tether.Client()
        deadline = time.monotonic() + 60
        while not client.get(sys.argv[1]).status.finished and time.monotonic() < deadline:
            client.recover()
            time.sleep(0.05)
        print(repr(client.handle(sys.argv[1]).result(timeout=5)), flush=True)
        """
    )


def spawn_python(
    argv: Sequence[str], db_url: str, *, stderr: int | None = None, **extra: str
) -> subprocess.Popen[str]:
    """Start `python *argv` against the same store, its stdout piped as text; returns at once.

    `stderr=subprocess.PIPE` pipes stderr too; by default it goes to the test's own.
    """
    return subprocess.Popen(
        [sys.executable, *argv],
        env=child_env(db_url, **extra),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=str(TESTS),
    )


def spawn_child(
    code: str, db_url: str, *, stderr: int | None = None, **extra: str
) -> subprocess.Popen[str]:
    """Start Python code in a new process against the same store (see `spawn_python`)."""
    return spawn_python(["-c", code], db_url, stderr=stderr, **extra)


class ProcessPool:
    """Processes a test starts, SIGKILLed by its fixture at teardown whatever happens; test
    files subclass it with the ways they start theirs."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def add(self, proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            # communicate, not wait: it also drains and closes piped output.
            proc.communicate(timeout=30)


def retry_until(check: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout`."""
    # Imported here: child processes import this module (record_side_effect) without pytest.
    import pytest

    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def record_side_effect(label: str, *, pid: bool = False) -> str | None:
    """Inside a checkpoint: append `<position> <label>` (with `pid`, `<position> <label> <pid>`)
    to the file named by $SIDE_EFFECTS, if set, fsynced before the step goes on, so a test can
    count how often each step really ran, across processes and crashes. Returns the position."""
    position = tether.current().position
    path = os.environ.get("SIDE_EFFECTS")
    if path:
        line = f"{position} {label} {os.getpid()}" if pid else f"{position} {label}"
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    return position


class FakeClock:
    """A clock a test moves by hand (`tether.configure(clock=...)`, the `clock` fixture):
    wait deadlines and timers without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (made here) for the block, for real file-system
    faults (a full disk, a read-only remount); the test is skipped where mounting is not
    permitted. Unmounted lazily at the end, so a file still open there cannot keep it."""
    import pytest

    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def killed_mid_checkpoint(db_url: str, gate: Path, *, steps: int) -> str:
    """An execution of `approval_flows.slow_flow` whose process was SIGKILLed inside its first
    checkpoint (held there by the `gate` file not existing yet): `running`, its lease not yet
    expired, its owner dead. Returns its id."""
    import signal

    starter = spawn_python(
        [
            "-c",
            f"import approval_flows\nhandle = approval_flows.slow_flow.run({steps}, 60)\n"
            "print(handle.id, flush=True)\nhandle.result()",
        ],
        db_url,
        GATE_FILE=str(gate),
    )
    assert starter.stdout is not None
    execution_id = starter.stdout.readline().strip()
    client = tether.Client(db_url)
    retry_until(lambda: client.get(execution_id).progress, what="the checkpoint to run")
    starter.send_signal(signal.SIGKILL)
    starter.communicate(timeout=10)
    return execution_id


def tracked_per_unit(units: int, make_live: Callable[[], object]) -> float:
    """GC-tracked objects that `make_live()` leaves alive, per unit (`units` of them): a full
    collection before and after, so only what is really held counts (not garbage waiting for
    a collection). `make_live` returns once its units are live (executions parked at a gate,
    say); the collector is off meanwhile, so none of them is counted half-built."""
    import gc

    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        kept = make_live()
        gc.collect()
        after = len(gc.get_objects())
        del kept
    finally:
        gc.enable()
    return (after - before) / units


def alive_and_new_per_unit(units: int, make_live: Callable[[], object], at_most: float) -> float:
    """GC-tracked objects made by `make_live()` and still alive after it, per unit: what
    existed before is frozen (the collector's permanent generation, which `gc.get_objects()`
    leaves out), so only objects made meanwhile are counted, whatever was freed. Counted
    again (a few seconds at most) while above `at_most`: another thread (the group commit's
    writer) can hold what it handled last for a moment after the units went on. Returns the
    lowest count."""
    import gc

    import pytest

    gc.collect()
    gc.disable()
    gc.freeze()
    try:
        kept = make_live()
        lowest = [float("inf")]

        def counted() -> bool:
            gc.collect()
            lowest[0] = min(lowest[0], len(gc.get_objects()) / units)
            return lowest[0] <= at_most

        # Not settling is no failure here: the caller asserts on the lowest count.
        with contextlib.suppress(pytest.fail.Exception):
            retry_until(counted, timeout=5, what="the count to settle")
        del kept
    finally:
        gc.unfreeze()
        gc.enable()
    return lowest[0]


def allocations_kept() -> int:
    """A counter of GC-tracked objects allocated and not yet freed (the collector's own
    generation-0 count): read before and after some work, with the collector off, the
    difference is what that work allocated and kept (a reference cycle, a cache entry)."""
    import gc

    return gc.get_count()[0]


def plant(client: tether.Client, **rows: dict[str, Any]) -> None:
    """Executions written straight into the store, each `id=dict(flow=, status=, ...)`, one
    second apart in creation order (lists show them newest first)."""
    from tether._core import serde
    from tether.store import ExecutionRow

    now = time.time()
    for i, (execution_id, fields) in enumerate(rows.items()):
        client._store.create_execution(
            ExecutionRow(
                id=execution_id,
                import_path="planted:planted",
                script=None,
                args=serde.dumps({"args": [], "kwargs": {}}),
                created_at=now + i,
                updated_at=now + i,
                **fields,
            )
        )
