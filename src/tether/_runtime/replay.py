"""Replay and fork: a new execution that starts from another one's recorded calls.

The new execution is seeded with copies of the source's recorded checkpoint calls
(and resolved waits) *before* the fork point, with override values put in place
of the named calls' results; it then runs like any resumed execution: the copies
return their recorded results, and everything from the fork point on runs live,
with the current code. The source is not touched; the new record keeps a link to
it (`replay_of`).

Selectors name a checkpoint call: a name (its first call), `name#k` (its k-th
call, counting from 1), or a position (`3`, `3.1.2`, `[key].0`; an int names a
call of the flow body). A key is written as `tether.branch` was given it, only
`]` and `\\` escaped with a backslash (`[https://a.example/x].0`, `[a\\]b].1`),
which is how the CLI shows it; the stored (percent-encoded) form is taken too.
A fork point can also be a wait or a sleep: by its name, its position, or the
label the CLI shows for it (`wait approve`, `sleep`, `sleep#2` for the second
unnamed sleep): the fork copies what came before it and waits (or sleeps) again.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._core import imports as _imports
from .._core import serde as _serde
from .._core import waits as _waits
from .._core.config import settings
from .._core.positions import display, is_position, parse, sort_key
from .._core.status import Status
from .._spend import budget as _budget
from .._spend import usage as _usage
from .._spend.budget import Budget
from ..errors import UsageError
from ..store import CheckpointRow, EventRow, ExecutionRow, Store, WaitRow
from .children import PREFIX as CHILD_PREFIX
from .engine import load_flow
from .handle import Handle, launch, stored_execution
from .ids import new_execution_id
from .records import COPIED_FROM

_FINAL_WAITS = ("resolved", "timed_out")


def replay(
    store: Store,
    execution_id: str,
    *,
    from_: str | int,
    overrides: Mapping[str, Any] | None = None,
    args: Sequence[Any] | Mapping[str, Any] | None = None,
    budget: Budget | None = None,
    flow_name: str | None = None,
) -> Handle[Any]:
    """Fork an execution into a new one (`Client.replay`, `Flow.replay`). `flow_name`: the
    source must be an execution of that flow (UsageError otherwise)."""
    source = stored_execution(store, execution_id)
    _imports.refuse_start(source.flow)
    if flow_name is not None and source.flow != flow_name:
        raise UsageError(
            f"execution {execution_id} is of flow {source.flow!r}, not {flow_name!r}; "
            f"use {source.flow}.replay() or Client().replay()"
        )
    calls = store.get_checkpoints(execution_id)
    recorded_waits = store.get_waits(execution_id)
    position = select(calls, from_, allow_end=True, waits=recorded_waits)
    seeded, waits = fork(calls, recorded_waits, position, overrides or {})
    for copy in seeded:
        metadata = _usage.without_usage(copy.metadata)
        marked = _serde.loads(metadata) if metadata else {}
        marked[COPIED_FROM] = source.id  # shown as copied, not as a call that ran again
        copy.metadata = _serde.dumps(marked)
    for wait in waits:  # a copied wait was answered (or slept) in the source, not here
        given = _serde.loads(wait.metadata) if wait.metadata else {}
        if isinstance(given, dict):
            wait.metadata = _serde.dumps({**given, COPIED_FROM: source.id})
    budget = _budget.checked(budget) or _budget.from_options(source.options)
    encoded = source.args if args is None else _encode_args(args, source.flow)
    flow = None
    if settings().executor:
        _imports.load_configured()
        flow = load_flow(source.import_path, source.script)
    now = time.time()
    row = ExecutionRow(
        id=new_execution_id(),
        flow=source.flow,
        import_path=source.import_path,
        script=source.script,
        args=encoded,
        status=Status.QUEUED,
        created_at=now,
        updated_at=now,
        replay_of=source.id,
        options=_budget.to_options(budget),
    )
    handle = launch(store, row, flow, checkpoints=seeded, waits=waits)
    store.add_event(
        EventRow(row.id, position, now, "info", "replay",
                 f"replay of {source.id} from position {display(position)}"
                 + (f" with overrides for {', '.join(overrides)}" if overrides else ""))
    )  # fmt: skip
    return handle


def _encode_args(args: Sequence[Any] | Mapping[str, Any], flow: str) -> str:
    if isinstance(args, Mapping):
        payload = {"args": [], "kwargs": dict(args)}
    elif isinstance(args, (list, tuple)):
        payload = {"args": builtins.list(args), "kwargs": {}}
    else:
        raise UsageError(f"args is a list (positional) or a dict (keywords), not {args!r}")
    return _serde.dumps(payload, root=f"arguments of flow {flow!r}")


def end_position(positions: Iterable[str]) -> str:
    """The flow body's position after every recorded one (where a run that replayed them
    all goes on live)."""
    firsts = [sort_key(p)[0] for p in positions]
    numbered = [int(v) for kind, v in firsts if kind == 0]
    return str(max(numbered) + 1) if numbered else "0"


def select(
    calls: Sequence[CheckpointRow],
    selector: str | int,
    *,
    allow_end: bool,
    waits: Sequence[WaitRow] = (),
) -> str:
    """The position a selector names. `allow_end`: the position after the last call is valid
    (replay everything recorded, then go on live). `waits`: waits and sleeps can be chosen
    too, by name, label or position (fork points)."""
    positions = [c.position for c in calls]
    end = end_position([*positions, *(w.position for w in waits)])
    if isinstance(selector, bool) or not isinstance(selector, (str, int)):
        raise UsageError(f"a checkpoint selector is a name, name#k or a position, not {selector!r}")
    meant = positions_meant(selector)
    if meant:
        recorded = {*positions, *(w.position for w in waits)}
        if allow_end:
            recorded.add(end)
        for position in meant:
            if position in recorded:
                return position
        if not positions and not waits:
            raise UsageError("the execution has no recorded checkpoint calls")
        raise UsageError(
            f"no checkpoint call at position {display(meant[0])}"
            + (" and no wait there" if waits else "")
            + f"; recorded positions are {_listed(positions) or 'none'}"
            + (f"; waits: {_waits_listed(waits)}" if waits else "")
            + (f" (or {end}, after the last)" if allow_end else "")
        )
    assert isinstance(selector, str)
    name, sep, nth = selector.partition("#")
    matches = [c.position for c in calls if c.name == name]
    if not matches:
        for w in waits:
            if w.name == selector:
                return w.position
        # As `get` shows them: `sleep` is every unnamed sleep, so `sleep#2` is the second.
        ordered = sorted(waits, key=lambda w: sort_key(w.position))
        matches = [w.position for w in ordered if _label(w) == name]
    if not matches:
        what = f"no checkpoint named {name!r}" + (" and no wait of that name" if waits else "")
        raise _unknown(calls, what, waits)
    if not sep:
        return matches[0]
    if not nth.isdigit() or not 1 <= int(nth) <= len(matches):
        raise UsageError(
            f"{selector!r}: {name!r} was called {len(matches)} time(s), at positions "
            f"{_listed(matches)}; use {name}#1 to {name}#{len(matches)}"
        )
    return matches[int(nth) - 1]


def positions_meant(selector: str | int) -> list[str]:
    """The stored positions a selector can mean (none: it is not a position): as people
    write it (`[a.b].0`), else as it is stored (`[a%2Eb].0`)."""
    if isinstance(selector, int):
        return [str(selector)]
    meant = []
    parsed = parse(selector)
    if parsed is not None:
        meant.append(parsed)
    if is_position(selector) and selector != parsed:
        meant.append(selector)
    return meant


def _label(w: WaitRow) -> str:
    return _waits.label(w.kind, w.name, w.position)


def select_all(
    calls: Sequence[CheckpointRow], selector: str | int, *, unknown: str | None = None
) -> list[CheckpointRow]:
    """The calls a selector names, a bare name naming every call of that name (`select`
    takes its first): `name#k` and a position name one call. A name that matches no call
    raises UsageError: `unknown` (default: `select`'s message), then the candidates."""
    if isinstance(selector, int) or "#" in selector or positions_meant(selector):
        chosen = select(calls, selector, allow_end=False)
        return [c for c in calls if c.position == chosen]
    targets = [c for c in calls if c.name == selector]
    if not targets:
        raise _unknown(calls, unknown or f"no checkpoint named {selector!r}")
    return targets


def fork(
    calls: Sequence[CheckpointRow],
    waits: Sequence[WaitRow],
    position: str,
    overrides: Mapping[str, Any],
) -> tuple[list[CheckpointRow], list[WaitRow]]:
    """The recorded calls and waits a fork at `position` starts with, overrides applied:
    those before it in program order (a branch's calls come after the slot that made it)."""
    fork_at = sort_key(position)
    copied = [
        dataclasses.replace(c)
        for c in calls
        if sort_key(c.position) < fork_at and c.status != "retrying"
    ]
    for selector, value in overrides.items():
        if not isinstance(selector, str):  # the recorded replay names them as text
            raise UsageError(
                f"override keys are checkpoint names, name#k or positions as text, not {selector!r}"
            )
        targets = select_all(
            copied,
            selector,
            unknown=f"override {selector!r} matches no checkpoint call before the fork point "
            f"(position {display(position)})",
        )
        text = _serde.dumps(value, root=f"override {selector!r}")
        for call in targets:
            metadata = _serde.loads(call.metadata) if call.metadata else {}
            metadata["override"] = True
            call.status, call.result, call.error = "succeeded", text, None
            call.metadata = _serde.dumps(metadata)
    kept_waits = [
        dataclasses.replace(w)
        for w in waits
        if sort_key(w.position) < fork_at and w.status in _FINAL_WAITS
    ]
    # A child flow's start is copied only with its recorded outcome: the fork must not wait
    # for the source's child (whose end resolves the source's wait, not the fork's), so a
    # child started before the fork point but not awaited before it starts anew in the fork.
    awaited = {w.name for w in kept_waits if w.kind == _waits.CHILD}
    copied = [c for c in copied if _child_of(c) is None or _child_of(c) in awaited]
    return copied, kept_waits


def _child_of(call: CheckpointRow) -> str | None:
    """The wait name a child flow's start record is awaited under; None for other calls."""
    if not call.name.startswith(CHILD_PREFIX) or call.result is None:
        return None
    metadata = _serde.loads(call.metadata) if call.metadata else {}
    if not isinstance(metadata, dict) or "execution" not in metadata:
        return None
    return _waits.child_wait_name(str(metadata["execution"]))


def _unknown(
    calls: Sequence[CheckpointRow], message: str, waits: Sequence[WaitRow] = ()
) -> UsageError:
    listed = f"; waits: {_waits_listed(waits)}" if waits else ""
    return UsageError(f"{message}; candidates: {_candidates(calls)}{listed}")


def _waits_listed(waits: Sequence[WaitRow]) -> str:
    ordered = sorted(waits, key=lambda w: sort_key(w.position))
    return ", ".join(f"{_label(w)} (position {display(w.position)})" for w in ordered)


def _candidates(calls: Sequence[CheckpointRow]) -> str:
    if not calls:
        return "none"
    seen: dict[str, list[str]] = {}
    for c in calls:
        seen.setdefault(c.name, []).append(c.position)
    return ", ".join(f"{name} (positions {_listed(ps)})" for name, ps in seen.items())


def _listed(positions: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(display(p) for p in positions[:most])
    return shown + (f", ... ({len(positions)} in all)" if len(positions) > most else "")
