"""crash_test: kill a flow at every checkpoint boundary and prove its result does not change.

The flow runs once uninterrupted, in a process of its own with a fresh SQLite store; the
live checkpoint calls it makes are its boundaries, three per call: `before` its body runs,
`inside` it (the body has returned, nothing of it is committed), `after` its outcome is
committed. Then, once per boundary, a fresh process with a fresh store runs the flow, is
killed with SIGKILL exactly there, and another fresh process resumes it (as
`Client().recover()` would after a real crash) and runs it to its end. A case fails when

- its result (or its error) differs from the uninterrupted run's,
- a checkpoint call whose outcome was committed before the kill ran again after it (side
  effects are counted by the calls' idempotency keys, `tether.current().idempotency_key`),
- the process never reached the boundary (the flow took another path than uninterrupted),
- or resuming failed.

A boundary is a call's identity (flow, position, name) and a phase, not an index: the calls
of concurrent branches are found again whatever order they run in. The processes are forked
from one interpreter that loaded the flow's module once (see `_child.py`), so a case costs a
fork, not an interpreter start.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._core import imports as _imports
from .._core import serde as _serde
from .._runtime.flow import Flow
from ..errors import CrashTestFailed, SerializationError, UsageError
from ..store import open_store
from . import _child

_ZYGOTE = "import sys; from tether.testing._child import main; main(sys.argv[1])"
_TEMPLATE = "empty.db"
# How long one case (one process) may take before it counts as stuck.
CASE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Boundary:
    """One place a crash test kills the flow: a phase of one checkpoint call."""

    phase: str  # "before" | "inside" | "after"
    flow: str  # the flow whose execution makes the call (a child flow's own name)
    position: str
    name: str
    root: bool = True  # the call is the tested flow's own, not a child flow's

    def __str__(self) -> str:
        where = f"{self.phase} {self.position} {self.name}"
        return where if self.root else f"{where} (child flow {self.flow})"


@dataclass(frozen=True, slots=True)
class BoundaryOutcome:
    """What happened when the flow was killed at one boundary and resumed."""

    boundary: Boundary
    ok: bool
    problem: str | None = None  # what differed, when not ok
    ran_again: tuple[str, ...] = ()  # committed calls that ran again (their positions)
    seconds: float = 0.0


@dataclass(slots=True)
class CrashReport:
    """What `crash_test` tried and found. `str(report)` is a readable summary."""

    flow: str
    result: Any  # the uninterrupted run's result (None when it failed: see `error`)
    error: str | None  # the uninterrupted run's error ("Type: message"), when it failed
    boundaries: list[Boundary] = field(default_factory=list)
    outcomes: list[BoundaryOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(outcome.ok for outcome in self.outcomes)

    @property
    def failures(self) -> list[BoundaryOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    def __str__(self) -> str:
        ended = f"error {self.error}" if self.error is not None else f"result {self.result!r}"
        lines = [
            f"crash test of {self.flow}: {len(self.outcomes)} of {len(self.boundaries)} "
            f"boundaries tried, {len(self.failures)} failed ({self.seconds:.1f}s); "
            f"uninterrupted: {ended}"
        ]
        for outcome in self.outcomes:
            mark = "ok  " if outcome.ok else "FAIL"
            line = f"  {mark} {outcome.boundary}"
            if outcome.problem:
                line += f": {outcome.problem}"
            lines.append(line)
        return "\n".join(lines)


def crash_test(
    flow: Flow[..., Any], *args: Any, waits: Mapping[str, Any] | None = None, **kwargs: Any
) -> CrashReport:
    """Kill `flow(*args, **kwargs)` with SIGKILL at every checkpoint boundary, resume it in
    a fresh process, and check that it ends as it does uninterrupted.

    ```python
    from tether.testing import crash_test

    def test_checkout_survives_crashes() -> None:
        report = crash_test(checkout, order_id="o-1", waits={"approve": True})
        assert report.result == "paid"
    ```

    - `flow` must be defined at the top level of an importable module: the processes that
      run it import it by its module, as every process that runs a flow must.
    - `waits`: the input for each `tether.wait(name, ...)` the flow (or a child flow) meets,
      by name.
    - Checkpoint results must be the same from run to run (use a `FunctionModel` or a fake
      for models and services): each case starts from an empty store, and its result is
      compared with the uninterrupted run's.

    Raises `tether.errors.CrashTestFailed` naming the first boundary whose case failed and
    what differed (`.report` has every case), and `UsageError` when the flow cannot be run
    this way. Returns the `CrashReport` when every case passed.
    """
    if not isinstance(flow, Flow):
        raise UsageError(
            f"crash_test takes a @tether.flow, not {flow!r}; decorate the function with "
            "@tether.flow"
        )
    if not hasattr(os, "fork"):
        raise UsageError("crash_test needs a POSIX system: it forks processes and kills them")
    import_path, module = _importable(flow)
    try:
        args_text = _serde.dumps({"args": list(args), "kwargs": kwargs}, allow_pickle=False)
        waits_text = _serde.dumps(dict(waits or {}), allow_pickle=False)
    except SerializationError as exc:
        raise UsageError(
            f"crash_test passes the flow's arguments and `waits` to other processes as "
            f"tether stores them, and one cannot be stored: {exc}"
        ) from exc
    started = time.monotonic()
    with _Zygote(module, import_path, args_text, waits_text) as zygote:
        baseline = zygote.case(resume=False, crash=None)
        if baseline.exit == _child.EXIT_UNANSWERED:
            raise UsageError(_unanswered(flow.name, baseline.outcome))
        if baseline.exit != 0 or baseline.outcome is None:
            raise UsageError(
                f"the uninterrupted run of {flow.name} did not finish: {baseline.describe()}"
            )
        boundaries = _boundaries(baseline.lines, flow.name)
        report = CrashReport(
            flow=flow.name,
            result=_decoded(baseline.outcome),
            error=baseline.outcome.get("error"),
            boundaries=boundaries,
        )
        for boundary in boundaries:
            outcome = _crash_at(zygote, boundary, baseline.outcome)
            report.outcomes.append(outcome)
            if not outcome.ok:
                report.seconds = time.monotonic() - started
                raise CrashTestFailed(
                    f"{flow.name} killed at {boundary} and resumed: {outcome.problem}\n\n{report}",
                    boundary=str(boundary),
                    difference=outcome.problem or "",
                    report=report,
                )
    report.seconds = time.monotonic() - started
    return report


def _importable(flow: Flow[..., Any]) -> tuple[str, str]:
    """The flow's import path and module, or a UsageError saying why no other process
    could load it."""
    import_path, _script = _imports.path_of(flow.fn)
    module, _, qualname = import_path.partition(":")
    if module == "__main__":
        raise UsageError(
            f"crash_test runs {flow.name} in other processes, which load it by its module, and "
            "it is defined in __main__ (a script run directly); move it into a module and "
            "import it from there"
        )
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise UsageError(
            f"crash_test runs {flow.name} in other processes, which load it by its module, and "
            "it is defined inside a function; define it at the top level of a module"
        )
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not flow:
        raise UsageError(
            f"crash_test runs {flow.name} in other processes, which load it as `{import_path}`, "
            "and that name does not lead to it; define the flow at the top level of a module, "
            "under the name it was decorated with"
        )
    return import_path, module


def _crash_at(zygote: _Zygote, boundary: Boundary, expected: dict[str, Any]) -> BoundaryOutcome:
    started = time.monotonic()

    def outcome(problem: str | None, ran_again: tuple[str, ...] = ()) -> BoundaryOutcome:
        return BoundaryOutcome(
            boundary, problem is None, problem, ran_again, time.monotonic() - started
        )

    crashed = zygote.case(resume=False, crash=boundary)
    if crashed.signal is None and not crashed.timed_out:
        if crashed.exit == 0:
            return outcome(
                "the run never reached this boundary, though the uninterrupted run did: the "
                "flow takes another path from run to run (an unrecorded random choice, time "
                "or outside state decides which checkpoints it calls)"
            )
        return outcome(f"the run to be killed failed: {crashed.describe()}")
    if crashed.timed_out or crashed.signal != signal.SIGKILL:
        return outcome(f"the run to be killed ended otherwise: {crashed.describe()}")
    # The calls whose outcome was committed before the kill, by idempotency key.
    committed = {
        key: f"{position} {name}"
        for phase, key, _flow, position, name in crashed.lines
        if phase == "after"
    }
    resumed = zygote.case(resume=True, crash=None, folder=crashed.folder)
    ran_again = tuple(
        sorted(
            {
                committed[key]
                for phase, key, *_ in resumed.lines
                if key in committed and phase == "inside"
            }
        )
    )
    if ran_again:
        return outcome(
            f"checkpoint calls committed before the kill ran again after the resume (at "
            f"{', '.join(ran_again)})",
            ran_again,
        )
    if resumed.exit == _child.EXIT_UNANSWERED:
        return outcome(_unanswered("the resumed run", resumed.outcome))
    if resumed.exit != 0 or resumed.outcome is None:
        return outcome(f"resuming failed: {resumed.describe()}")
    return outcome(_difference(expected, resumed.outcome))


def _boundaries(lines: list[tuple[str, str, str, str, str]], root: str) -> list[Boundary]:
    """The boundaries the uninterrupted run passed, in the order it passed them, each once."""
    seen: dict[Boundary, None] = {}
    for phase, _key, flow, position, name in lines:
        seen.setdefault(Boundary(phase, flow, position, name, flow == root))
    return list(seen)


def _decoded(outcome: dict[str, Any]) -> Any:
    text = outcome.get("result")
    return None if text is None else _serde.loads(text)


def _difference(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    """What differs between two outcomes, or None when they are the same."""
    if expected.get("status") != got.get("status") or expected.get("error") != got.get("error"):
        return f"it ended {_ended(got)}; uninterrupted it ended {_ended(expected)}"
    if expected.get("result") == got.get("result"):
        return None
    want, have = _decoded(expected), _decoded(got)
    if want == have:
        return None
    return f"the result is {have!r}; uninterrupted it is {want!r}"


def _ended(outcome: dict[str, Any]) -> str:
    if outcome.get("status") == "succeeded":
        return f"with the result {_decoded(outcome)!r}"
    if outcome.get("status") == "failed":
        return f"failed with {outcome.get('error')}"
    return str(outcome.get("status"))


def _unanswered(who: str, outcome: dict[str, Any] | None) -> str:
    name = (outcome or {}).get("unanswered")
    flow = (outcome or {}).get("flow")
    return (
        f"{who} waits for input {name!r} (in flow {flow}) and `waits` has no answer for it; "
        f"pass crash_test(..., waits={{{name!r}: ...}})"
    )


@dataclass(slots=True)
class _Case:
    folder: Path
    exit: int | None
    signal: int | None
    outcome: dict[str, Any] | None
    lines: list[tuple[str, str, str, str, str]]
    output: str

    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            how = f"the process did not end within {CASE_TIMEOUT:.0f}s and was killed"
        elif self.signal:
            how = f"the process was killed by signal {self.signal}"
        else:
            how = f"the process ended with exit code {self.exit}"
        tail = self.output.strip()[-2000:]
        return how + (f"; its output:\n{tail}" if tail else "")


class _Zygote:
    """The interpreter that loaded the flow's module, forking one process per case."""

    def __init__(self, module: str, import_path: str, args: str, waits: str) -> None:
        self._module = module
        self._setup = {"flow": import_path, "args": args, "waits": waits}
        self._root = Path(tempfile.mkdtemp(prefix="tether-crash-"))
        self._cases = 0
        self._buffer = b""
        self._process: subprocess.Popen[bytes] | None = None
        self._errors: IO[bytes] | None = None

    def __enter__(self) -> _Zygote:
        # Every case starts from a copy of one empty store, migrated once here: creating the
        # schema is most of what a small case would cost otherwise.
        open_store(f"sqlite:///{self._root / _TEMPLATE}").close()
        env = dict(os.environ)
        env.pop("TETHER_DB", None)  # each case names its own store
        # The flow's module, and this very tether, importable there as they are here.
        paths = [_import_root(self._module), _import_root("tether"), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self._errors = open(self._root / "zygote.txt", "w+b")  # closed in __exit__
        self._process = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, self._module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env=env,
            cwd=self._root,
        )
        self._send(self._setup)
        reply = self._receive(CASE_TIMEOUT)
        if "error" in reply:
            raise UsageError(
                f"crash_test could not load {self._setup['flow']} in a new process: "
                f"{reply['error']}"
            )
        if reply.get("threads"):
            warnings.warn(
                f"importing {self._module} starts threads ({', '.join(reply['threads'])}); "
                "crash_test forks its cases from a process that imported it, and a fork has "
                "none of those threads (and keeps any lock one held): a case may hang. Start "
                "threads when the flow first needs them, not at import.",
                RuntimeWarning,
                stacklevel=3,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()
        if self._errors is not None:
            self._errors.close()
        shutil.rmtree(self._root, ignore_errors=True)

    def case(self, *, resume: bool, crash: Boundary | None, folder: Path | None = None) -> _Case:
        if folder is None:
            self._cases += 1
            folder = self._root / f"case-{self._cases}"
            folder.mkdir()
            shutil.copyfile(self._root / _TEMPLATE, folder / _child.STORE)
        log = folder / _child.BOUNDARIES
        offset = log.stat().st_size if log.exists() else 0
        target = None if crash is None else [crash.phase, crash.flow, crash.position, crash.name]
        self._send({"dir": str(folder), "resume": resume, "crash": target})
        pid = self._receive(CASE_TIMEOUT)["pid"]
        timed_out = False
        try:
            ended = self._receive(CASE_TIMEOUT)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._receive(CASE_TIMEOUT)
            ended, timed_out = {}, True
        outcome_file = folder / _child.OUTCOME
        outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
        if outcome_file.exists():
            outcome_file.unlink()  # the resumed process writes its own
        lines: list[tuple[str, str, str, str, str]] = []
        if log.exists():
            with open(log, "rb") as f:
                f.seek(offset)
                for raw in f.read().decode().splitlines():
                    phase, key, flow, position, name = json.loads(raw)
                    lines.append((phase, key, flow, position, name))
        output_file = folder / _child.OUTPUT
        output = output_file.read_text(errors="replace") if output_file.exists() else ""
        return _Case(
            folder, ended.get("exit"), ended.get("signal"), outcome, lines, output, timed_out
        )

    def _send(self, message: dict[str, Any]) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        process.stdin.write(json.dumps(message).encode() + b"\n")
        process.stdin.flush()

    def _receive(self, timeout: float) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise UsageError(f"crash_test's process for {self._module} died: {self._stderr()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def _stderr(self) -> str:
        if self._errors is None:
            return ""
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace").strip()[-2000:]


def _import_root(module: str) -> str:
    """The directory from which `module` is imported (for the processes' PYTHONPATH)."""
    loaded = sys.modules.get(module)
    file = getattr(loaded, "__file__", None)
    if not file:
        return ""
    root = Path(file).resolve().parent
    depth = module.count(".")
    if Path(file).name == "__init__.py":
        depth += 1
    for _ in range(depth):
        root = root.parent
    return str(root)
