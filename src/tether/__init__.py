"""tether: durable execution for Python AI agents.

Decorate the steps of an agent with `@tether.checkpoint` and the agent with
`@tether.flow`. Each checkpoint's result is recorded the moment it returns; if
the process dies, the execution resumes by running the flow again from the top,
and finished checkpoints return their recorded results instead of running.

```python
import tether

@tether.checkpoint
def search(query: str) -> list[str]: ...

@tether.flow
def research(topic: str) -> str:
    hits = search(topic)
    return summarize(hits)

print(research.run("durable execution").result())
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors, memory
from ._core.checkpoint import Checkpoint, checkpoint
from ._core.config import configure
from ._core.context import Current, current, in_flow, log
from ._core.model_price import ModelPrice
from ._core.positions import branch
from ._core.publish import publish
from ._core.restore import register
from ._core.serde import StoredValue
from ._core.status import CheckpointStatus, Status
from ._core.waits import sleep, wait
from ._ops.client import Client
from ._ops.schedules import ScheduleRecord
from ._runtime.executor import launch
from ._runtime.flow import Flow, Starter, flow
from ._runtime.handle import Handle
from ._runtime.queues import Queue
from ._runtime.records import (
    Attempt,
    CheckpointRecord,
    ErrorInfo,
    Event,
    ExecutionRecord,
    LogRecord,
    MessageRecord,
    WaitRecord,
)
from ._runtime.worker import Worker
from ._spend.budget import Budget
from ._spend.usage import Usage, record_usage
from .errors import (
    BudgetExceeded,
    Cancelled,
    CheckpointError,
    CheckpointTimeout,
    CommitUnknown,
    ConfigurationError,
    DivergenceError,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionLocked,
    ExecutionNotFound,
    ExecutionTimedOut,
    FlowNotFoundError,
    InputTooLarge,
    InputValidationError,
    InvalidStateError,
    MessageAlreadySent,
    NotInFlowError,
    NotPublished,
    PickleRefused,
    ResultTimeout,
    ScheduleNotFound,
    SerializationError,
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnavailable,
    TetherError,
    UnguardedScriptError,
    UsageError,
    WaitAlreadyResolved,
    WaitNotFound,
    WaitTimeout,
)

if TYPE_CHECKING:
    from .ai._llm import llm, llm_async

__version__ = "0.1.0.dev0"

__all__ = [
    "Attempt",
    "Budget",
    "BudgetExceeded",
    "Cancelled",
    "Checkpoint",
    "CheckpointError",
    "CheckpointRecord",
    "CheckpointStatus",
    "CheckpointTimeout",
    "Client",
    "CommitUnknown",
    "ConfigurationError",
    "Current",
    "DivergenceError",
    "ErrorInfo",
    "Event",
    "ExecutionCancelled",
    "ExecutionFailed",
    "ExecutionLocked",
    "ExecutionNotFound",
    "ExecutionRecord",
    "ExecutionTimedOut",
    "Flow",
    "FlowNotFoundError",
    "Handle",
    "InputTooLarge",
    "InputValidationError",
    "InvalidStateError",
    "LogRecord",
    "MessageAlreadySent",
    "MessageRecord",
    "ModelPrice",
    "NotInFlowError",
    "NotPublished",
    "PickleRefused",
    "Queue",
    "ResultTimeout",
    "ScheduleNotFound",
    "ScheduleRecord",
    "SerializationError",
    "Starter",
    "Status",
    "StoreBusy",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnavailable",
    "StoredValue",
    "TetherError",
    "UnguardedScriptError",
    "Usage",
    "UsageError",
    "WaitAlreadyResolved",
    "WaitNotFound",
    "WaitRecord",
    "WaitTimeout",
    "Worker",
    "__version__",
    "branch",
    "checkpoint",
    "configure",
    "current",
    "errors",
    "flow",
    "in_flow",
    "launch",
    "llm",
    "llm_async",
    "log",
    "memory",
    "publish",
    "record_usage",
    "register",
    "sleep",
    "wait",
]

# tether.llm lives in tether.ai, which needs Pydantic AI (the `ai` extra): imported on first
# use, so `import tether` stays light.
_LAZY = {"llm": "tether.ai._llm", "llm_async": "tether.ai._llm"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tether' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
