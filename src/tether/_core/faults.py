"""What an exception raised by user code counts as.

An `Exception` fails the call (or the flow) it was raised in; a control signal unwinds the
flow. Anything else that is a `BaseException` (`SystemExit`, `KeyboardInterrupt`,
`GeneratorExit`, a `CancelledError` nobody asked for) would otherwise escape the flow: out
of an executor thread, or out of the shared event loop, which stops it and with it every
async execution of the process. So it fails the attempt too, as `Interrupted` (an
`Exception`, so it travels through flow code and tasks as failures do), with the original
as its cause. A cancellation that asyncio itself started (a TaskGroup, a timeout, tether
cancelling the branches a suspension left behind) stays a cancellation.
"""

from __future__ import annotations

import asyncio

from ..errors import ControlSignal, Interrupted


def as_failure(exc: BaseException, where: str) -> BaseException:
    """`exc` itself, or the `Interrupted` it counts as. `where` names the code that raised
    it (`checkpoint 'fetch'`), for the message."""
    if isinstance(exc, (Exception, ControlSignal)) or cancelled(exc):
        return exc
    failure = Interrupted.of(exc, where)
    failure.__cause__ = exc
    return failure


def cancelled(exc: BaseException) -> bool:
    """A CancelledError raised because the running task is being cancelled (not one that
    code raised by itself)."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: a thread
        return False
    return task is not None and task.cancelling() > 0
