"""The processes a crash test runs its cases in (`main(MODULE)`, started by `_crash.py`).

One interpreter start per crash test: this process (the *zygote*) loads the flow's module
the way every process that runs a flow must (`--import`: a process runs only flows it
loaded), decodes the arguments once, and then forks one child per case. Nothing here opens
a store or starts a thread before forking, so every child starts as fresh as a new
interpreter, without paying for one (importing tether, Pydantic, the user's module).

The parent (`_crash.py`) talks to the zygote in JSON lines over its stdin and stdout:

- first `{"flow": "module:qualname", "args": TEXT, "waits": TEXT}` (TEXT: tether's JSON
  encoding); the reply is `{"ready": true, "threads": [names of threads the import
  started]}` or `{"error": "..."}`;
- then one line per case, `{"dir": PATH, "resume": BOOL, "crash": [phase, flow, position,
  name] | null}`; the replies are `{"pid": N}` once the child is forked and `{"exit": N}`
  (or `{"signal": N}`) once it is gone.

A case's child works in its directory `PATH` with its own SQLite store there (`tether.db`,
a copy of an empty store the parent migrated once): it starts the flow (or, with `resume`,
recovers what a killed child left), answers the waits it meets from the mapping, skips its
durable timers, and writes `outcome.json`. Its output goes to `output.txt`. Every
checkpoint boundary it passes is appended to `boundaries.log`, one line per boundary (a JSON
array: phase, idempotency key, flow, position, name) written with one O_APPEND write, so a
line survives the SIGKILL that may follow it. When the boundary named by `crash` is reached,
the child kills itself there with SIGKILL, through the checkpoint hook
`tether._core.checkpoint._boundary`: it is set only in these children, so no other process
pays more than one global lookup per boundary for it.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .._core import checkpoint as _checkpoint
from .._core import imports as _imports
from .._core import serde as _serde
from .._core.config import configure
from .._core.context import Run, idempotency_key
from .._ops.client import Client
from ..errors import ExecutionCancelled, ExecutionFailed, ResultTimeout

BOUNDARIES = "boundaries.log"
OUTCOME = "outcome.json"
OUTPUT = "output.txt"
STORE = "tether.db"

# A case's exit codes besides 0 (outcome written) and death by SIGKILL (the crash).
EXIT_UNANSWERED = 3  # a wait the mapping has no answer for (outcome.json says which)
EXIT_ERROR = 4  # the harness itself failed in the child (output.txt has the traceback)

_POLL = 0.02


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(module: str) -> None:
    setup = json.loads(sys.stdin.readline())
    try:
        _imports.load_module(module, origin="crash_test")
        import_path = setup["flow"]
        flow = _imports.lookup(import_path)
        decoded = _serde.loads(setup["args"])
        waits = _serde.loads(setup["waits"])
    except Exception as exc:  # reported to the parent, which raises it as a UsageError
        _send({"error": f"{type(exc).__name__}: {exc}"})
        return
    # What every case would import on its first write, imported once here instead.
    importlib.import_module("tether.store.sqlite")
    # A thread that the module started would be missing from every fork, and any lock it
    # held at that moment would stay held there: tell the parent, which warns.
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    _send({"ready": True, "threads": threads})
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = EXIT_ERROR
            try:
                code = _run_case(flow, decoded["args"], decoded["kwargs"], waits, case)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _send({"pid": pid})
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            _send({"signal": os.WTERMSIG(status)})
        else:
            _send({"exit": os.waitstatus_to_exitcode(status)})


def _run_case(
    flow: Any, args: list[Any], kwargs: dict[str, Any], waits: dict[str, Any], case: Any
) -> int:
    folder = case["dir"]
    os.chdir(folder)
    out = os.open(OUTPUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdin.close()
    _install_hook(case["crash"])
    configure(db=f"sqlite:///{os.path.join(folder, STORE)}", clock=_clock)
    client = Client()
    if case["resume"]:
        client.recover()
        (root,) = [r for r in client.list(limit=10_000) if r.parent_id is None]
        execution_id = root.id
    else:
        execution_id = flow.run(*args, **kwargs).id
    outcome = _drive(client, execution_id, waits)
    with open(OUTCOME, "w") as f:
        json.dump(outcome, f)
    return EXIT_UNANSWERED if "unanswered" in outcome else 0


def _install_hook(crash: list[str] | None) -> None:
    target = tuple(crash) if crash else None
    log = os.open(BOUNDARIES, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def boundary(phase: str, run: Run, position: str, name: str) -> None:
        key = idempotency_key(run, position)
        os.write(log, (json.dumps([phase, key, run.flow, position, name]) + "\n").encode())
        if target == (phase, run.flow, position, name):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # not reached: SIGKILL cannot be caught

    _checkpoint._boundary = boundary


# How far this case's clock is ahead of the real one: a durable timer (`tether.sleep`) is
# skipped by moving the clock to its end instead of waiting for it.
_skew = 0.0


def _clock() -> float:
    return time.time() + _skew


def _skip_sleeps(client: Client) -> None:
    global _skew
    for record in client.list(status="waiting", limit=10_000):
        for wait in client.get(record.id).waits:
            if wait.kind == "sleep" and wait.status == "pending" and wait.deadline is not None:
                _skew += max(0.0, wait.deadline.timestamp() - _clock())


def _drive(client: Client, execution_id: str, waits: dict[str, Any]) -> dict[str, Any]:
    """Run the execution to its end here: answer its waits (and its child flows') from
    `waits`, skip its durable timers, and take back whatever becomes runnable (a parent
    whose child ended)."""
    handle = client.handle(execution_id)
    while True:
        try:
            value = handle.result(timeout=_POLL)
        except ResultTimeout:
            pass
        except ExecutionFailed as exc:
            return {"status": "failed", "error": f"{exc.error_type}: {exc.message}"}
        except ExecutionCancelled:
            return {"status": "cancelled"}
        else:
            return {"status": "succeeded", "result": _serde.dumps(value)}
        for wait in client.pending_waits(limit=1000):
            if wait.name not in waits:
                return {"unanswered": wait.name, "flow": wait.flow}
            client.input(wait.execution_id, wait.name, waits[wait.name])
        _skip_sleeps(client)
        client.recover()
