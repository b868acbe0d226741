"""Replay suites: run recorded executions again against the current code, with their tool
calls answered from the recording, and report what changed.

Each selected execution is one case. Its flow (as this process loaded it: stored rows name
flows, they never load them) runs with the recorded arguments in a scratch SQLite store of
its own, so nothing is written to the store the recording came from (which is opened
read-only). Every checkpoint call of the case, child flows' included, is answered from the
recording (`_core/answers.py`): matched by name and arguments, in order, each recorded call
used once. A tool marked live runs; one given a static value returns it; a call the
recording cannot answer fails the case (`ReplayMiss`), it is never run live by default.
Model requests are answered in order by name (the prompt may have changed: the point of a
replay), or, with `model=`, made live by that model.

The outcome is compared with the recorded one: result equality and a diff per checkpoint
call, or the scores of evaluators. A recorded failure is an outcome like a result: it
replays as the same failure, never as `None`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .._core import answers as _answers
from .._core import imports as _imports
from .._core import serde as _serde
from .._core import waits as _waits
from .._core.config import settings
from .._core.positions import sort_key
from .._core.status import Status
from .._ops.views import as_data
from .._runtime.children import PREFIX as CHILD_PREFIX
from .._runtime.engine import load_flow
from .._runtime.handle import launch
from .._runtime.ids import new_execution_id
from .._spend import usage as _usage
from ..errors import ExecutionNotFound, ReplayMiss, UsageError
from ..store import CheckpointRow, ExecutionRow, Store, open_store
from ._replay_report import (
    CallDiff,
    Outcome,
    ReplayCase,
    ReplayReport,
    Sample,
    Verdict,
    short,
)
from ._suite import Redactor, scratch_source, write_suite

ToolMode = Literal["recorded", "live"]
Evaluator = Callable[["Sample"], "bool | float | Mapping[str, float | bool]"]

# Model requests of agents (tether.ai): answered in order, whatever the messages.
MODEL_CALLS = frozenset(
    {"model_request", "model_request_stream", "compact_messages", "count_tokens"}
)
# tether's own bookkeeping calls: answered from the recording when it has them, else live
# (they have no side effects: a run id, a wake-up time, the tools an agent offers).
_INTERNAL = frozenset({"agent_run", "poll_wait", "validate"})
_INTERNAL_PREFIXES = ("get_tools:", "get_instructions:")
_FINAL = frozenset({Status.SUCCEEDED.value, Status.FAILED.value, Status.CANCELLED.value})
# How long one case may run before it counts as an error (it may wait for input forever).
CASE_TIMEOUT = 120.0
# How long a case that ran out of time is given to stop once cancelled.
_CANCEL_GRACE = 10.0


def replay(
    *selectors: str,
    db: str | None = None,
    flow: str | None = None,
    status: str | Sequence[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    tag: str | None = None,
    limit: int = 100,
    tools: ToolMode | Mapping[str, Any] = "recorded",
    model: object | None = None,
    evaluators: Sequence[Evaluator] | Mapping[str, Evaluator] | None = None,
    timeout: float = CASE_TIMEOUT,
    suite: str | Path | None = None,
) -> ReplayReport:
    """Replay recorded executions against the current code and report what changed.

    ```python
    from tether.testing import replay

    report = replay(flow="research", status="succeeded", limit=20)
    assert not report.regressions, report
    ```

    - Which executions: by id (`selectors`, a unique prefix is enough), or by `flow`,
      `status`, `since`/`until` (epoch seconds of their creation) and `tag` (`KEY` or
      `KEY=VALUE` of what flow code gave `tether.log(KEY=...)`), newest first, at most
      `limit`. `db`: the store they are read from (read-only; default: the configured one),
      or `suite`: a file `export` wrote (no database needed).
    - Their flows must be loaded in this process (imported by your code, `--import`,
      `TETHER_IMPORTS`): stored rows name flows, they never load them.
    - `tools`: "recorded" (default: every call answered from the recording), "live" (calls
      run for real), or a mapping from a checkpoint's or tool's name to "recorded", "live"
      or a static value to return.
    - `model`: a Pydantic AI model (or a model name) that durable agents use instead of
      their own, live (`"test"`: `TestModel`); None: model requests answered from the
      recording, in order.
    - `evaluators`: functions `(Sample) -> bool | float | dict[str, float]` scoring each
      side; a case whose replayed scores are all at least the recorded ones, one higher, is
      "improved", one lower "regressed". Without evaluators a different outcome is
      "changed", a failure where the recording succeeded "regressed", the other way round
      "improved".

    Returns the `ReplayReport`; raises UsageError for a bad argument, ExecutionNotFound for
    an id that names no execution.
    """
    modes = _tool_modes(tools)
    scored = _evaluators(evaluators)
    replacement = _model(model)
    chosen = selection(selectors, flow=flow, status=status, since=since, until=until, tag=tag,
                       limit=limit)  # fmt: skip
    if suite is not None and db is not None:
        raise UsageError(
            "replay reads recorded executions from a store (db) or a suite file, not both"
        )
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="tether-replay-"))
    report = ReplayReport()
    try:
        url = (db or _default_db()) if suite is None else scratch_source(Path(suite), folder)
        source = open_store(url, readonly=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        rows = select(source, chosen)
        _imports.load_configured()
        for index, row in enumerate(rows):
            scratch = folder / f"case-{index}.db"
            report.cases.append(
                _run_case(source, row, scratch, modes, replacement, scored, timeout)
            )
    finally:
        source.close()
        shutil.rmtree(folder, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def export(
    *selectors: str,
    out: str | Path,
    db: str | None = None,
    flow: str | None = None,
    status: str | Sequence[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    tag: str | None = None,
    limit: int = 100,
    redact: Redactor | None = None,
    redact_keys: Collection[str] = (),
) -> int:
    """Write the selected executions (as `replay` selects them) and their child flows, with
    their recorded calls, to a suite file that `replay(suite=...)` replays without the
    database. `redact(what, value) -> value` rewrites each value before it is written
    (`what`: "args", "result", "error", "wait" or "metadata"); `redact_keys` hides the
    values of dict keys of those names (`***`). The store is only read. Returns how many
    executions were written."""
    chosen = selection(selectors, flow=flow, status=status, since=since, until=until, tag=tag,
                       limit=limit)  # fmt: skip
    if redact is not None and not callable(redact):
        raise UsageError(f"redact is a function (what, value) -> value, not {redact!r}")
    source = open_store(db or _default_db(), readonly=True)
    try:
        rows = select(source, chosen)
        target = Path(out)
        partial = target.with_name(target.name + ".partial")
        try:
            with partial.open("w", encoding="utf-8") as file:
                count = write_suite(source, rows, file, redact_with=redact, redact_keys=redact_keys)
        except OSError as exc:
            raise UsageError(f"cannot write the suite {target}: {exc.strerror or exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)  # a suite is whole or absent, never cut short
    finally:
        source.close()
    return count


def _default_db() -> str:
    return settings().db


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """Which recorded executions a replay (or an export) takes."""

    ids: Sequence[str] = ()
    flow: str | None = None
    statuses: Sequence[str] = ()
    since: float | None = None
    until: float | None = None
    tag: str | None = None  # KEY (has it) or KEY=VALUE in the metadata of tether.log()
    limit: int = 100

    def matches(self, row: ExecutionRow) -> bool:
        return (
            (self.flow is None or row.flow == self.flow)
            and (not self.statuses or row.status in self.statuses)
            and (self.since is None or row.created_at >= self.since)
            and (self.until is None or row.created_at <= self.until)
            and (self.tag is None or _tagged(row, self.tag))
        )


def selection(
    ids: Sequence[str],
    *,
    flow: str | None,
    status: str | Sequence[str] | None,
    since: float | None,
    until: float | None,
    tag: str | None,
    limit: int,
) -> Selection:
    """The arguments of `replay` and `export` checked, as a Selection."""
    statuses = [status] if isinstance(status, str) else list(status or [])
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(f"limit is a whole number, 1 or more, not {limit!r}")
    unknown = set(statuses) - {s.value for s in Status}
    if unknown:
        raise UsageError(
            f"unknown status {sorted(unknown)[0]!r}; use one of "
            + ", ".join(s.value for s in Status)
        )
    if tag is not None and (not isinstance(tag, str) or not tag.partition("=")[0]):
        raise UsageError(f"a tag is KEY or KEY=VALUE (of tether.log(KEY=...)), not {tag!r}")
    return Selection(tuple(ids), flow, tuple(statuses), since, until, tag, limit)


def select(store: Store, chosen: Selection) -> list[ExecutionRow]:
    """The executions a selection names: those given by id (a unique prefix will do) that
    match the filters, or, with no ids, the executions the filters match, newest first:
    root executions only (a child flow is replayed with its parent), no replays."""
    if chosen.ids:
        named = {row.id: row for row in (_named(store, s) for s in chosen.ids)}
        return [row for row in named.values() if chosen.matches(row)][: chosen.limit]
    found: list[ExecutionRow] = []
    before: tuple[float, str] | None = None
    while len(found) < chosen.limit:
        page = store.list_executions(
            statuses=list(chosen.statuses) or None, flow=chosen.flow, limit=500, before=before
        )
        for row in page:
            if row.parent_id is None and row.replay_of is None and chosen.matches(row):
                found.append(row)
        if len(page) < 500 or (chosen.since is not None and page[-1].created_at < chosen.since):
            break
        before = (page[-1].created_at, page[-1].id)
    return found[: chosen.limit]


def _named(store: Store, selector: str) -> ExecutionRow:
    row = store.get_execution(selector)
    if row is None:
        found = store.execution_ids(selector, limit=2)
        if len(found) > 1:
            raise UsageError(f"{selector!r} is the start of several execution ids; give more")
        row = store.get_execution(found[0]) if found else None
    if row is None:
        raise ExecutionNotFound(f"no execution {selector!r} in the store")
    return row


def _tagged(row: ExecutionRow, tag: str) -> bool:
    key, sep, value = tag.partition("=")
    metadata = as_data(row.metadata) if row.metadata else {}
    if not isinstance(metadata, dict) or key not in metadata:
        return False
    if not sep:
        return True
    found = metadata[key]
    return value == (found if isinstance(found, str) else json.dumps(found))


# --- one case -----------------------------------------------------------------------------


def _run_case(
    source: Store,
    row: ExecutionRow,
    scratch_path: Path,
    modes: Mapping[str, Any],
    model: object | None,
    evaluators: Mapping[str, Evaluator],
    timeout: float,
) -> ReplayCase:
    recorded = _outcome(row)
    root_calls = source.get_checkpoints(row.id)
    tree = _tree_calls(source, row.id, root_calls)
    case = ReplayCase(row.id, row.flow, "error", recorded, None)
    case.recorded_usage = _usage.total(_usage.from_metadata(c.metadata) for c in tree)
    if recorded.status not in (Status.SUCCEEDED.value, Status.FAILED.value):
        case.problem = f"the recording did not end (it is {recorded.status}): nothing to compare"
        return case
    try:
        flow = load_flow(row.import_path, row.script)
    except UsageError as exc:
        case.problem = str(exc)
        return case
    recording = Recording(tree, modes, model)
    waits = [
        dataclasses.replace(w, metadata=None)
        for w in source.get_waits(row.id)
        if w.status == "resolved" and w.kind != _waits.CHILD
    ]
    scratch = open_store(f"sqlite:///{scratch_path}")
    _answers.install(scratch, recording)
    try:
        now = time.time()
        new = ExecutionRow(
            id=new_execution_id(), flow=row.flow, import_path=row.import_path,
            script=row.script, args=row.args, status=Status.QUEUED, created_at=now,
            updated_at=now, options=row.options,
        )  # fmt: skip
        launch(scratch, new, flow, waits=waits)
        ended = _wait_end(scratch, new.id, timeout)
        if ended is None:
            # Stopped at its next checkpoint boundary, before its store is closed under it.
            scratch.request_cancel(new.id, now=time.time())
            _wait_end(scratch, new.id, _CANCEL_GRACE)
        case.replay_id = new.id
        replay_calls = scratch.get_checkpoints(new.id)
        replay_tree = _tree_calls(scratch, new.id, replay_calls)
    finally:
        _answers.remove(scratch)
        scratch.close()
    case.answered, case.live = recording.answered, recording.live
    case.replayed_usage = _usage.total(_usage.from_metadata(c.metadata) for c in replay_tree)
    if ended is None:
        case.problem = f"the replay did not end within {timeout:g}s"
        return case
    case.replayed = _outcome(ended)
    case.diffs = diff_calls(root_calls, replay_calls)
    if recording.misses:
        case.problem = recording.misses[0] + (
            f" (and {len(recording.misses) - 1} more)" if len(recording.misses) > 1 else ""
        )
        return case
    if ended.status == Status.WAITING.value:
        case.problem = (
            f"the replay waits for input {ended.pending_wait!r} that the recording does not "
            "have (the code now waits where it did not, or under another name)"
        )
        return case
    case.verdict = _verdict(case, row, evaluators)
    return case


def _tree_calls(store: Store, execution_id: str, calls: list[CheckpointRow]) -> list[CheckpointRow]:
    """An execution's calls, then its child flows' (depth first, in start order)."""
    found = list(calls)
    children = store.list_executions(statuses=None, flow=None, limit=10_000, parent=execution_id)
    for child in sorted(children, key=lambda c: (c.created_at, c.id)):
        found += _tree_calls(store, child.id, store.get_checkpoints(child.id))
    return found


def _wait_end(store: Store, execution_id: str, timeout: float) -> ExecutionRow | None:
    """The execution once it ended, or waits for input nobody will give; None after
    `timeout` seconds. Waiting on a child flow or a timer is waiting for what runs here."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    event = threading.Event()
    while True:
        row = store.get_execution(execution_id)
        if row is not None and row.status in _FINAL:
            return row
        if row is not None and row.status == Status.WAITING.value:
            pending = [w for w in store.get_waits(execution_id) if w.status == _waits.PENDING]
            inputs = [w for w in pending if w.kind == _waits.INPUT]
            if inputs:
                row.pending_wait = inputs[0].name
                return row
        if time.monotonic() > deadline:
            return None
        event.wait(pause)
        pause = min(pause * 2, 0.2)


def _outcome(row: ExecutionRow) -> Outcome:
    if row.status == Status.SUCCEEDED.value:
        return Outcome(row.status, as_data(row.result))
    if row.status == Status.FAILED.value:
        return Outcome(row.status, None, _error_text(row.error))
    return Outcome(row.status)


def _error_text(stored: str | None) -> str:
    if not stored:
        return "Exception"
    try:
        record = json.loads(stored)
    except ValueError:
        return stored
    if not isinstance(record, dict):
        return str(record)
    return f"{record.get('type') or 'Exception'}: {record.get('message') or ''}".rstrip(": ")


def _verdict(case: ReplayCase, row: ExecutionRow, evaluators: Mapping[str, Evaluator]) -> Verdict:
    recorded, replayed = case.recorded, case.replayed
    assert replayed is not None
    same = recorded == replayed
    if evaluators:
        inputs = as_data(row.args)
        for name, evaluator in evaluators.items():
            try:
                before = _scores(name, evaluator(_sample(case, inputs, recorded, "recorded")))
                after = _scores(name, evaluator(_sample(case, inputs, replayed, "replayed")))
            except Exception as exc:
                case.problem = f"evaluator {name!r} raised {type(exc).__name__}: {exc}"
                return "error"
            for key, value in before.items():
                case.scores[key] = (value, after.get(key, 0.0))
            for key, value in after.items():
                case.scores.setdefault(key, (0.0, value))
        if any(b < a for a, b in case.scores.values()):
            return "regressed"
        if any(b > a for a, b in case.scores.values()):
            return "improved"
        return "unchanged" if same and not case.diffs else "changed"
    if same:
        return "unchanged" if not case.diffs else "changed"
    if not recorded.failed and replayed.failed:
        return "regressed"
    if recorded.failed and not replayed.failed:
        return "improved"
    return "changed"


def _sample(case: ReplayCase, inputs: Any, side: Outcome, which: Any) -> Sample:
    return Sample(case.execution_id, case.flow, inputs, side.result, side.error, which,
                  case.recorded)  # fmt: skip


def _scores(name: str, value: object) -> dict[str, float]:
    if isinstance(value, bool):
        return {name: 1.0 if value else 0.0}
    if isinstance(value, (int, float)):
        return {name: float(value)}
    if isinstance(value, Mapping):
        scores: dict[str, float] = {}
        for key, item in value.items():
            scores.update(_scores(f"{name}.{key}", item))
        return scores
    raise UsageError(
        f"evaluator {name!r} returned {value!r}; an evaluator returns a bool, a number or a "
        "dict of them"
    )


def diff_calls(
    recorded: Sequence[CheckpointRow], replayed: Sequence[CheckpointRow]
) -> list[CallDiff]:
    """The calls of one execution that differ between the recording and the replay, in
    program order (by position)."""
    before = {c.position: c for c in recorded if c.status != "retrying"}
    after = {c.position: c for c in replayed if c.status != "retrying"}
    diffs = []
    for position in sorted({*before, *after}, key=sort_key):
        old, new = before.get(position), after.get(position)
        if new is None:
            assert old is not None
            diffs.append(CallDiff(position, old.name, "removed", _call_value(old)))
        elif old is None:
            diffs.append(CallDiff(position, new.name, "added", None, _call_value(new)))
        elif old.name != new.name:
            diffs.append(CallDiff(position, f"{old.name} -> {new.name}", "renamed",
                                  _call_value(old), _call_value(new)))  # fmt: skip
        elif old.name.startswith(CHILD_PREFIX):
            continue  # its result is the child's id, new in every run: the child's calls count
        elif (old.status, old.result) != (new.status, new.result) and _call_value(
            old
        ) != _call_value(new):
            diffs.append(CallDiff(position, old.name, "changed", _call_value(old),
                                  _call_value(new)))  # fmt: skip
    return diffs


def _call_value(call: CheckpointRow) -> Any:
    if call.status == "failed":
        return {"error": _error_text(call.error)}
    return as_data(call.result)


# --- answering calls from the recording ----------------------------------------------------


class Recording:
    """The recorded calls of one execution (and its child flows), handed out once each to
    the replay's calls of the same name and arguments, in order (`_core/answers.py`)."""

    def __init__(
        self, calls: Iterable[CheckpointRow], modes: Mapping[str, Any], model: object | None
    ) -> None:
        self.model = model
        self._modes = modes
        self._lock = threading.Lock()  # calls of a gather's branches arrive from threads too
        self._by_key: dict[tuple[str, str], deque[CheckpointRow]] = {}
        self._by_name: dict[str, deque[CheckpointRow]] = {}
        self._rows: list[CheckpointRow] = []
        for call in calls:
            if call.status not in ("succeeded", "failed") or call.name.startswith(CHILD_PREFIX):
                continue
            self._rows.append(call)
            self._by_key.setdefault((call.name, call.fingerprint), deque()).append(call)
            self._by_name.setdefault(call.name, deque()).append(call)
        self._taken: set[int] = set()  # ids of the rows handed out
        self._tool_args: dict[str, Any] | None = None  # recorded tool call id -> arguments
        self.answered = 0
        self.live: list[str] = []
        self.misses: list[str] = []

    def answer(
        self, name: str, position: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Callable[[], Any] | None:
        if name.startswith(CHILD_PREFIX):
            return None  # a child flow starts for real; its own calls are answered
        mode = self._mode(name)
        if mode == "live" or (name in MODEL_CALLS and self.model is not None):
            with self._lock:
                self.live.append(f"{position} {name}")
            return None
        if mode != "recorded":
            return lambda: mode
        with self._lock:
            row = self._take(name, args, kwargs)
            if row is None:
                if name in _INTERNAL or name.startswith(_INTERNAL_PREFIXES):
                    return None
                message = (
                    f"{name} at position {position} has no recorded call left with these "
                    f"arguments ({_described(args, kwargs)}); {self._candidates(name)}. Mark it "
                    f"live (tools={{{_tool_key(name)!r}: 'live'}}, --tools "
                    f"{_tool_key(name)}=live) or give it a static answer"
                )
                self.misses.append(message)
                error = ReplayMiss(message, name)

                def missed() -> Any:
                    raise error

                return missed
            self.answered += 1
        return _recorded_body(row)

    def _mode(self, name: str) -> Any:
        modes = self._modes
        for key in (name, _tool_key(name)):
            if key in modes:
                return modes[key]
        return modes.get("*", "recorded")

    def _take(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> CheckpointRow | None:
        if name in MODEL_CALLS:
            return self._pop(self._by_name.get(name))
        fingerprint = _serde.fingerprint(args, kwargs)
        row = self._pop(self._by_key.get((name, fingerprint)))
        if row is None and name.startswith("tool:"):
            row = self._tool_call(name, args)
        return row

    def _pop(self, queue: deque[CheckpointRow] | None) -> CheckpointRow | None:
        # Both queues hold every row: skip what the other one handed out already.
        while queue:
            row = queue.popleft()
            if id(row) not in self._taken:
                self._taken.add(id(row))
                return row
        return None

    def _tool_call(self, name: str, args: tuple[Any, ...]) -> CheckpointRow | None:
        """An agent's tool call made with other call ids than recorded (a live model): match
        by the tool's arguments, found in the recorded model responses."""
        slot = next((a for a in args if hasattr(a, "tool_args")), None)
        if slot is None:
            return None
        wanted = _canonical_args(slot.tool_args)
        if self._tool_args is None:
            self._tool_args = _recorded_tool_args(self._rows)
        for row in self._rows:
            if row.name != name or id(row) in self._taken:
                continue
            for call_id, arguments in self._tool_args.items():
                if _serde.fingerprint((call_id, type(slot)()), {}) == row.fingerprint:
                    if _canonical_args(arguments) == wanted:
                        self._taken.add(id(row))
                        return row
                    break
        return None

    def _candidates(self, name: str) -> str:
        left = [r for r in self._by_name.get(name, ()) if id(r) not in self._taken]
        total = sum(1 for r in self._rows if r.name == name)
        if not total:
            return "the recording never called it"
        return f"the recording called it {total} time(s), {len(left)} not used by the replay"


def _recorded_body(row: CheckpointRow) -> Callable[[], Any]:
    if row.status == "succeeded":
        text = row.result

        def recorded_result() -> Any:
            return None if text is None else _serde.loads(text)

        return recorded_result
    error_text = row.error or "{}"

    def recorded_error() -> Any:
        raise _serde.error_from_text(error_text)

    return recorded_error


def _recorded_tool_args(rows: Sequence[CheckpointRow]) -> dict[str, Any]:
    """Tool call id -> arguments, from the tool-call parts of recorded model responses."""
    found: dict[str, Any] = {}
    for row in rows:
        if row.name not in MODEL_CALLS or row.result is None:
            continue
        try:
            response = json.loads(row.result)
        except ValueError:
            continue
        parts = response.get("parts") if isinstance(response, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("part_kind") == "tool-call":
                found[str(part.get("tool_call_id"))] = part.get("args")
    return found


def _canonical_args(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return str(arguments)
    return json.dumps(arguments, sort_keys=True, default=str)


def _tool_key(name: str) -> str:
    return name.removeprefix("tool:")


def _described(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    slot = next((a for a in args if hasattr(a, "tool_args")), None)
    if slot is not None:
        return f"arguments {_canonical_args(slot.tool_args)}"
    shown = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return f"called with ({', '.join(shown)})"


# --- options --------------------------------------------------------------------------


def _tool_modes(tools: Any) -> dict[str, Any]:
    if tools in ("recorded", "live"):
        return {"*": tools}
    if isinstance(tools, Mapping):
        modes = dict(tools)
        for key in modes:
            if not isinstance(key, str):
                raise UsageError(f"tools maps tool or checkpoint names to modes, not {key!r}")
        return modes
    raise UsageError(
        f"tools is 'recorded', 'live' or a mapping from names to 'recorded', 'live' or a "
        f"static value, not {tools!r}"
    )


def _evaluators(evaluators: Any) -> dict[str, Evaluator]:
    if evaluators is None:
        return {}
    if isinstance(evaluators, Mapping):
        named = dict(evaluators)
    elif isinstance(evaluators, (list, tuple)):
        named = {getattr(e, "__name__", f"evaluator{i}"): e for i, e in enumerate(evaluators)}
    else:
        raise UsageError(
            f"evaluators is a list of functions (or a dict by name), not {evaluators!r}"
        )
    for name, evaluator in named.items():
        if not callable(evaluator):
            raise UsageError(f"evaluator {name!r} is not callable: {evaluator!r}")
    return named


def _model(model: object | None) -> object | None:
    """A live model for agents: a Pydantic AI `Model`, or a name (`"test"`: `TestModel`,
    offline; else a name Pydantic AI knows, like `openai:gpt-4o`)."""
    if model is None or not isinstance(model, str):
        return model
    if model == "test":
        try:
            from pydantic_ai.models.test import TestModel
        except ImportError as exc:
            raise UsageError("--model test needs Pydantic AI: pip install -e '.[ai]'") from exc
        return TestModel()
    return model  # Pydantic AI resolves a name like "openai:gpt-4o" itself
