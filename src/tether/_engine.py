"""Runs one execution: load what is recorded, re-enter the flow from the top, finish.

Resuming is running again: the flow function is called from the top with its
recorded arguments, and every checkpoint call that already has a recorded
result returns it (see `_checkpoint`). The outcome is committed fenced by the
lease token, so an executor that lost the execution writes nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from . import _imports, _serde
from ._config import settings
from ._context import Run, current_run
from ._status import Status
from .errors import Cancelled, FlowNotFoundError, LeaseLost
from .store import Store

if TYPE_CHECKING:
    from ._flow import Flow


def load_flow(import_path: str, script: str | None) -> Flow[Any, Any]:
    from ._flow import Flow

    found = _imports.resolve(import_path, script)
    if not isinstance(found, Flow):
        raise FlowNotFoundError(
            f"{import_path} is {type(found).__name__}, not a @tether.flow; was the decorator "
            "removed since the execution started?"
        )
    return found


def execute(
    store: Store, execution_id: str, token: str, flow: Flow[Any, Any] | None, run_holder: list[Run]
) -> None:
    """Run the execution this token holds, to its end or to the point where it must stop."""
    row = store.get_execution(execution_id)
    if row is None or row.lease_token != token:
        return  # cancelled or taken over before it started
    config = settings()
    recorded = {c.position: c for c in store.get_checkpoints(execution_id)}
    run = Run(
        store,
        execution_id,
        row.flow,
        token,
        recorded,
        allow_pickle=config.pickle,
        strict=config.strict,
        metadata=_serde.loads(row.metadata) if row.metadata else None,
    )
    run_holder.append(run)
    if row.cancel_requested:
        run.cancel_event.set()
    try:
        target = flow if flow is not None else load_flow(row.import_path, row.script)
        decoded = _serde.loads(row.args)
        args, kwargs = decoded["args"], decoded["kwargs"]
        context_token = current_run.set(run)
        try:
            run.boundary()
            if target.is_async:
                value = asyncio.run(target.fn(*args, **kwargs))
            else:
                value = target.fn(*args, **kwargs)
        finally:
            current_run.reset(context_token)
        if run.diverged is not None:
            raise run.diverged
        if run.cancel_event.is_set():
            raise Cancelled(execution_id)
        result = _serde.dumps(
            value, allow_pickle=config.pickle, root=f"result of flow {row.flow!r}"
        )
    except LeaseLost:
        return
    except FlowNotFoundError as exc:
        # Where the code lives is this process's problem, not the execution's: leave it
        # runnable for a process that can import the flow.
        store.release(execution_id, token, status=Status.QUEUED, now=time.time())
        run.warn(None, f"could not be resumed here: {exc}")
        return
    except Cancelled:
        store.finish(
            execution_id, token, status=Status.CANCELLED, result=None, error=None, now=time.time()
        )
        return
    except Exception as exc:
        error = run.diverged if run.diverged is not None else exc
        store.finish(
            execution_id,
            token,
            status=Status.FAILED,
            result=None,
            error=_serde.error_to_text(error, allow_pickle=config.pickle),
            now=time.time(),
        )
        return
    except BaseException:
        # SystemExit, KeyboardInterrupt: not the flow's failure. Give it back to be resumed.
        store.release(execution_id, token, status=Status.QUEUED, now=time.time())
        raise
    store.finish(
        execution_id, token, status=Status.SUCCEEDED, result=result, error=None, now=time.time()
    )
