"""publish(): a value a flow shows to others while it runs (its plan, its progress, the step
it is on), read with `Client.get_published()`.

A publish is a recorded call, like a checkpoint: it takes a position and its value is
committed as the call's result, under the name `publish:<key>`. So a resumed flow does not
publish again (the call is replayed), a fork keeps what was published before its fork point,
and a retry forgets what was published after its retry point. The latest value per key wins.
(tether's events are its log of what happened; published values are the flow's own data.)
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import NotInFlowError, UsageError
from .checkpoint import Checkpoint
from .context import current_frame, current_run

PREFIX: Final = "publish:"


def call_name(key: str) -> str:
    """The name under which a publish of `key` is recorded among an execution's calls."""
    return f"{PREFIX}{key}"


def publish(key: str, value: Any) -> None:
    """Publish `value` under `key` for others to read while the flow runs: a UI, a caller
    polling for the agent's plan or progress. The latest value per key wins.

    ```python
    @tether.flow
    def research(topic: str) -> str:
        plan = make_plan(topic)  # a checkpoint
        tether.publish("plan", plan)
        for i, step in enumerate(plan):
            tether.publish("progress", {"step": i, "of": len(plan)})
            ...
    ```

    Read it from anywhere with `Client().get_published(execution_id, "plan", timeout=30)`;
    `tether executions get` shows the latest values. A publish is recorded like a checkpoint
    call (it takes a position; the value is stored like a checkpoint's result, so it must be
    storable), so a resumed flow does not publish it again.
    """
    run = current_run.get()
    if run is None:
        raise NotInFlowError(
            "tether.publish() was called outside a running flow; call it in flow code"
        )
    if current_frame.get() is not None:
        raise UsageError(
            "tether.publish() was called inside a checkpoint; publish in flow code, between "
            "checkpoints (a checkpoint's own result is recorded when it returns)"
        )
    if not isinstance(key, str) or not key:
        raise UsageError(f"a published value's key is a non-empty string, not {key!r}")
    call = Checkpoint(
        _Value(value),
        name=call_name(key),
        retries=0,
        backoff=0.0,
        retry_on=Exception,
        timeout=None,
    )
    # Fingerprinted by its key alone: a value that differs on resume (a timestamp, say) is
    # not a changed argument; the recorded one stands.
    call._call_sync(run, run.take_position(), (key,), {})


class _Value:
    """The "function" of a publish call: returns the value, whatever key it is given."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, key: str) -> Any:
        return self.value
