"""Child flows: a flow started from flow code is a recorded call of its parent.

`child(x)`, `child.run(x)` and `child.enqueue(x)` in flow code take a position like a
checkpoint call. The first time, the child execution is inserted together with the parent's
record of its start (a checkpoint row named `child:<flow>` whose result is the child's id),
in one transaction fenced by the parent's lease: a crash leaves both or neither, so a
resumed parent finds the start recorded and never starts the child again. The child's id is
derived from the parent's id and the position, so a parent that starts the same call again
after a retry finds the same child rather than inserting a second one.

Awaiting the child (`handle.result()`, `await handle`, or the direct call) is a wait of kind
`child` at its own position (`_core.waits.child_outcome`): the parent suspends, holding
nothing, and the child's end resolves the wait with its outcome and makes the parent
runnable in the same transaction (store migration 0010). The outcome is then recorded in the
parent: a resumed parent never reads the child's row again.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from .._core import serde as _serde
from .._core.context import Run
from .._core.persist import persist
from ..errors import (
    Cancelled,
    DivergenceError,
    LeaseLost,
    StoreCorrupt,
    StoreUnavailable,
    UsageError,
)
from ..store import CheckpointRow, ChildStart, ExecutionRow
from .engine import Runnable
from .executor import executor
from .handle import Handle

#: the recorded name of a child's start: `child:<flow name>`
PREFIX = "child:"


def child_id(parent_id: str, position: str) -> str:
    """The id of the child started at `position` of `parent_id`: the parent's time prefix
    (children sort next to their parent) and a short hash of (parent, position)."""
    digest = hashlib.blake2b(f"{parent_id}\0{position}".encode(), digest_size=8).hexdigest()
    return f"{parent_id.partition('-')[0]}-{digest}"


def start(
    run: Run, flow: Runnable, row: ExecutionRow, fingerprint: str, *, local: bool
) -> Handle[Any]:
    """Start `flow` as a child of the running execution (the row as `Flow` built it), or
    find the child recorded at this call's position. `local`: run it in this process."""
    if row.dedup_key is not None:
        raise UsageError(
            f"flow {flow.name!r} is started from flow code, where it is a child flow: a child "
            "is started once per call already, so a deduplication key is not supported here"
        )
    position = run.take_position()
    run.boundary()
    name = PREFIX + flow.name
    prior = run.recorded.get(position)
    if prior is not None:
        if prior.name != name:
            raise run.diverge(DivergenceError(position, prior.name, name))
        if prior.fingerprint != fingerprint:
            _arguments_changed(run, position, name)
        return Handle(json.loads(prior.result or "null"), run.store, parent=run.execution_id)
    wait = run.wait_positions.get(position)
    if wait is not None:
        raise run.diverge(DivergenceError(position, f"wait {wait!r}", name))
    row.id = child_id(run.execution_id, position)
    row.parent_id = run.execution_id
    runner = executor() if local else None
    claim = None
    delayed = row.not_before is not None
    if runner is not None and not delayed:
        # Inserted already leased to this process, as Flow.run() does: no worker takes it
        # between the insert and the start.
        claim = runner.claim()
        row.owner, row.lease_token, row.lease_expires = claim.owner, claim.token, claim.expires
    now = time.time()
    record = CheckpointRow(
        position=position,
        name=name,
        fingerprint=fingerprint,
        status="succeeded",
        result=json.dumps(row.id),
        started_at=now,
        finished_at=now,
        metadata=_serde.dumps({"execution": row.id}),
    )
    try:
        outcome = persist(lambda: run.store.start_child(run.execution_id, run.token, row, record))
    except (StoreUnavailable, StoreCorrupt) as exc:
        # Not the flow's error: unwind; the executor releases it to continue later.
        raise run.store_fault(exc) from exc
    if outcome is ChildStart.LOST:
        run.lease_lost = True
        raise LeaseLost(run.execution_id)
    if outcome is ChildStart.CANCEL_REQUESTED:
        run.cancel_event.set()
        raise Cancelled(run.execution_id)
    if outcome is ChildStart.EXISTED:
        # The parent was retried from before this call: the child it started then is the one.
        existing = run.store.get_execution(row.id)
        if existing is not None and existing.flow != row.flow:
            raise run.diverge(DivergenceError(position, PREFIX + existing.flow, name))
    run.recorded[position] = record
    if outcome is ChildStart.STARTED and runner is not None:
        if claim is not None:
            runner.start(run.store, row.id, claim.token, flow)
        else:
            runner.park(run.store, row.id)  # a delayed start: its time has not come
    return Handle(row.id, run.store, parent=run.execution_id)


def _arguments_changed(run: Run, position: str, name: str) -> None:
    message = (
        f"child flow {name!r} at position {position} was started with different arguments "
        "than when its start was recorded; the child recorded then is used"
    )
    if run.strict:
        raise run.diverge(
            DivergenceError(
                position, name, name, detail=message + " (strict mode makes this an error)"
            )
        )
    run.warn(position, message, {"checkpoint": name})
