"""The public surface is a contract: it changes only on purpose."""

from __future__ import annotations

import inspect

import tether
from tether import errors

PUBLIC = {
    "Attempt", "Cancelled", "Checkpoint", "CheckpointError", "CheckpointRecord",
    "CheckpointStatus", "CheckpointTimeout", "Client", "ConfigurationError", "Current",
    "DivergenceError", "ErrorInfo", "Event", "ExecutionCancelled", "ExecutionFailed",
    "ExecutionLocked", "ExecutionNotFound", "ExecutionRecord", "ExecutionTimedOut", "Flow",
    "FlowNotFoundError",
    "Handle", "InvalidStateError", "NotInFlowError", "ResultTimeout", "SerializationError",
    "Status", "StoreError", "TetherError", "UnguardedScriptError", "UsageError", "__version__",
    "checkpoint", "configure", "current", "errors", "flow", "log",
    # recorded identity of concurrent code (positions)
    "branch",
    # waits and workers
    "InputTooLarge", "InputValidationError", "WaitAlreadyResolved", "WaitNotFound",
    "WaitRecord", "WaitTimeout", "Worker", "sleep", "wait",
    # input that arrives before its wait (send)
    "MessageAlreadySent", "MessageRecord",
    # values a flow publishes while it runs
    "NotPublished", "publish",
    # schedules (cron and intervals)
    "ScheduleNotFound", "ScheduleRecord",
    # operating executions
    "LogRecord",
    # queues and the fleet
    "Queue", "Starter", "StoreUnavailable", "in_flow",
    # a restarted application adopts its stranded executions
    "launch",
    # store faults, classified (transient ones are StoreUnavailable)
    "CommitUnknown", "StoreBusy", "StoreCorrupt", "StoreFull", "StoreReadOnly",
    # model calls: usage, cost, budgets
    "Budget", "BudgetExceeded", "ModelPrice", "Usage", "llm", "llm_async", "record_usage",
    # durable memory
    "memory",
    # stored data is data: classes restored only when loaded or registered, signed pickles
    "PickleRefused", "StoredValue", "register",
}  # fmt: skip


def test_all_is_exactly_the_public_names_and_sorted() -> None:
    assert set(tether.__all__) == PUBLIC
    assert tether.__all__ == sorted(tether.__all__)
    for name in tether.__all__:
        assert hasattr(tether, name), name


def test_every_error_is_in_the_tree_and_drawn_in_its_docstring() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert name in doc, f"{name} missing from the tree in errors.py's docstring"
        if issubclass(cls, errors.ControlSignal):
            assert not issubclass(cls, Exception), "control signals must not be Exceptions"
        else:
            assert issubclass(cls, errors.TetherError)


def test_status_values_are_the_documented_strings() -> None:
    assert [s.value for s in tether.Status] == [
        "queued", "running", "waiting", "succeeded", "failed", "cancelled",
    ]  # fmt: skip
    assert tether.Status("failed").finished and not tether.Status.RUNNING.finished


def test_public_callables_have_docstrings() -> None:
    for name in ("checkpoint", "flow", "configure", "current", "log", "Client"):
        assert inspect.getdoc(getattr(tether, name)), name
    for name in ("wait", "sleep", "Worker"):
        assert inspect.getdoc(getattr(tether, name)), name
    for name in ("llm", "llm_async", "record_usage", "Budget", "ModelPrice", "Usage"):
        assert inspect.getdoc(getattr(tether, name)), name
    for method in ("get", "list", "resume", "cancel", "recover", "input", "pending_waits"):
        assert inspect.getdoc(getattr(tether.Client, method)), method
