"""Replay suites as files: recorded executions exported to JSON Lines, replayed where there
is no production database (a CI job).

One JSON object per line: a header (`{"kind": "tether-replay-suite", "version": 1}`), then
per execution (a selected one, then its child flows) its row, its checkpoint calls and its
resolved waits. Values (arguments, results, errors, wait input, call metadata) are tether's
tagged JSON, as the store keeps them, embedded as JSON: nothing is pickled, and a pickled
value in the store is refused rather than exported. Reading a suite restores nothing and
imports nothing: it is loaded into a scratch SQLite store, which `replay` then reads like
any store.

Redaction: every value passes a hook (`redact=`, `(what, value) -> value`, `what` saying
what it is: "args", "result", "error", "wait", "metadata") before it is written; `redact_keys`
hides the values of dict keys of those names anywhere (with the store's mark, `***`), and
error messages pass the store's `redact` (passwords in URLs). The store itself is read
only: its audit trail keeps everything.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .._core import waits as _waits
from .._core.serde import TAG
from ..errors import UsageError
from ..store import CheckpointRow, ExecutionRow, Store, WaitRow, open_store, redact
from ..store._redact import HIDDEN

FORMAT = "tether-replay-suite"
VERSION = 1

Redactor = Callable[[str, Any], Any]

_EXECUTION_FIELDS = ("id", "flow", "import_path", "script", "status", "created_at",
                     "updated_at", "finished_at", "parent_id", "options")  # fmt: skip


def write_suite(
    source: Store,
    rows: Sequence[ExecutionRow],
    out: IO[str],
    *,
    redact_with: Redactor | None = None,
    redact_keys: Collection[str] = (),
) -> int:
    """Write `rows` (and their child flows) to `out`; returns how many executions."""
    hide = _Hider(redact_with, frozenset(redact_keys))
    out.write(json.dumps({"kind": FORMAT, "version": VERSION}) + "\n")
    count = 0
    for row in rows:
        for execution in _tree(source, row):
            count += 1
            for line in _lines(source, execution, hide):
                out.write(json.dumps(line, allow_nan=False, separators=(",", ":")) + "\n")
    return count


def load_suite(path: Path, store: Store) -> int:
    """Load the suite file at `path` into `store` (a scratch store); returns how many
    executions."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the suite {path}: {exc.strerror or exc}") from exc
    executions: dict[str, ExecutionRow] = {}
    calls: dict[str, list[CheckpointRow]] = {}
    waits: dict[str, list[WaitRow]] = {}
    with handle:
        for number, line in _numbered(handle, path):
            kind = line.get("kind")
            try:
                if kind == "execution":
                    row = _execution(line)
                    executions[row.id] = row
                elif kind == "call":
                    calls.setdefault(str(line["execution"]), []).append(_call(line))
                elif kind == "wait":
                    waits.setdefault(str(line["execution"]), []).append(_wait(line))
                elif number > 1 or kind != FORMAT:
                    raise UsageError(f"unknown kind {kind!r}")
            except (KeyError, TypeError, ValueError, UsageError) as exc:
                raise UsageError(
                    f"{path}, line {number}: not a replay-suite line ({exc})"
                ) from None
    # Parents first: a child's row names its parent.
    for row in sorted(executions.values(), key=lambda r: (r.parent_id is not None, r.created_at)):
        store.create_execution(row, checkpoints=calls.get(row.id, ()), waits=waits.get(row.id, ()))
    return len(executions)


def _numbered(handle: IO[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    first = True
    for number, text in enumerate(handle, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(line, dict):
            raise UsageError(f"{path}, line {number}: not a replay-suite line")
        if first:
            if line.get("kind") != FORMAT:
                raise UsageError(
                    f"{path} is not a tether replay suite (its first line is not the "
                    f"{FORMAT!r} header); make one with `tether replay-test export`"
                )
            if line.get("version") != VERSION:
                raise UsageError(
                    f"{path} is a replay suite of version {line.get('version')!r}; this "
                    f"tether reads version {VERSION}"
                )
            first = False
            continue
        yield number, line


def _tree(store: Store, row: ExecutionRow) -> Iterator[ExecutionRow]:
    yield row
    children = store.list_executions(statuses=None, flow=None, limit=10_000, parent=row.id)
    for child in sorted(children, key=lambda c: (c.created_at, c.id)):
        yield from _tree(store, child)


def _lines(store: Store, row: ExecutionRow, hide: _Hider) -> Iterator[dict[str, Any]]:
    head: dict[str, Any] = {"kind": "execution"}
    head.update({name: getattr(row, name) for name in _EXECUTION_FIELDS})
    head["args"] = hide.value("args", row.args, row.id)
    head["result"] = hide.value("result", row.result, row.id)
    head["error"] = hide.error(row.error, row.id)
    # What flow code logged (tether.log): selection by --tag and evaluators read it.
    head["metadata"] = hide.value("metadata", row.metadata, row.id)
    yield head
    for call in store.get_checkpoints(row.id):
        if call.status not in ("succeeded", "failed"):
            continue  # in flight or retrying when exported: nothing to answer with
        where = f"{row.id} {call.position} {call.name}"
        yield {
            "kind": "call", "execution": row.id, "position": call.position, "name": call.name,
            "fingerprint": call.fingerprint, "status": call.status,
            "result": hide.value("result", call.result, where),
            "error": hide.error(call.error, where),
            "metadata": hide.value("metadata", call.metadata, where),
        }  # fmt: skip
    for wait in store.get_waits(row.id):
        if wait.status != _waits.RESOLVED or wait.kind != _waits.INPUT:
            continue
        yield {
            "kind": "wait", "execution": row.id, "name": wait.name, "position": wait.position,
            "wait_kind": wait.kind, "status": wait.status,
            "value": hide.value("wait", wait.value, f"{row.id} wait {wait.name}"),
        }  # fmt: skip


class _Hider:
    def __init__(self, hook: Redactor | None, keys: frozenset[str]) -> None:
        self.hook = hook
        self.keys = keys

    def value(self, what: str, stored: str | None, where: str) -> Any:
        if stored is None:
            return None
        data = json.loads(stored)
        if _pickled(data):
            raise UsageError(
                f"{what} of {where} is pickled; a suite holds data only, and pickles are not "
                "exported. Return plain data, a dataclass or a Pydantic model from it"
            )
        if self.keys:
            data = _hide_keys(data, self.keys)
        if self.hook is not None:
            data = self.hook(what, data)
        return data

    def error(self, stored: str | None, where: str) -> Any:
        data = self.value("error", stored, where)
        if isinstance(data, dict):
            for key in ("message", "traceback"):
                if isinstance(data.get(key), str):
                    data[key] = redact(data[key])
        return data


def _pickled(data: Any) -> bool:
    if isinstance(data, dict):
        if data.get(TAG) == "pickle":
            return True
        return any(_pickled(v) for v in data.values())
    if isinstance(data, list):
        return any(_pickled(v) for v in data)
    return False


def _hide_keys(data: Any, keys: frozenset[str]) -> Any:
    if isinstance(data, dict):
        return {k: HIDDEN if k in keys else _hide_keys(v, keys) for k, v in data.items()}
    if isinstance(data, list):
        return [_hide_keys(v, keys) for v in data]
    return data


def _text(data: Any) -> str | None:
    return None if data is None else json.dumps(data, separators=(",", ":"), allow_nan=False)


def _execution(line: dict[str, Any]) -> ExecutionRow:
    fields = {name: line.get(name) for name in _EXECUTION_FIELDS}
    for name in ("id", "flow", "import_path", "status"):
        if not isinstance(fields[name], str):
            raise ValueError(f"{name} is not text")
    script = fields.pop("script")
    if script is not None and not isinstance(script, str):
        raise ValueError("script is not text")
    row = ExecutionRow(
        script=script,
        args=_text(line.get("args")) or '{"args":[],"kwargs":{}}',
        result=_text(line.get("result")),
        error=_text(line.get("error")),
        metadata=_text(line.get("metadata")),
        **{k: v for k, v in fields.items() if v is not None},
    )
    return dataclasses.replace(row, created_at=float(row.created_at))


def _call(line: dict[str, Any]) -> CheckpointRow:
    return CheckpointRow(
        position=str(line["position"]),
        name=str(line["name"]),
        fingerprint=str(line["fingerprint"]),
        status=str(line["status"]),
        result=_text(line.get("result")),
        error=_text(line.get("error")),
        metadata=_text(line.get("metadata")),
    )


def _wait(line: dict[str, Any]) -> WaitRow:
    return WaitRow(
        execution_id=str(line["execution"]),
        name=str(line["name"]),
        position=str(line["position"]),
        kind=str(line.get("wait_kind") or _waits.INPUT),
        status=str(line.get("status") or _waits.RESOLVED),
        value=_text(line.get("value")),
    )


def scratch_source(path: Path, folder: Path) -> str:
    """A SQLite store in `folder` holding the suite at `path`; its URL."""
    url = f"sqlite:///{folder / 'suite.db'}"
    store = open_store(url)
    try:
        load_suite(path, store)
    finally:
        store.close()
    return url
