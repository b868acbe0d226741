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

from . import errors
from ._checkpoint import Checkpoint, checkpoint
from ._config import configure
from ._context import Current, current, in_flow, log
from ._flow import Flow, Handle, Starter, flow
from ._queues import Queue
from ._records import (
    Attempt,
    CheckpointRecord,
    ErrorInfo,
    Event,
    ExecutionRecord,
    LogRecord,
    WaitRecord,
)
from ._status import CheckpointStatus, Status
from ._waits import sleep, wait
from ._worker import Worker
from .client import Client
from .errors import (
    Cancelled,
    CheckpointError,
    CheckpointTimeout,
    ConfigurationError,
    DivergenceError,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionLocked,
    ExecutionNotFound,
    FlowNotFoundError,
    InputTooLarge,
    InputValidationError,
    InvalidStateError,
    NotInFlowError,
    ResultTimeout,
    SerializationError,
    StoreError,
    StoreUnavailable,
    TetherError,
    UsageError,
    WaitAlreadyResolved,
    WaitNotFound,
    WaitTimeout,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Attempt",
    "Cancelled",
    "Checkpoint",
    "CheckpointError",
    "CheckpointRecord",
    "CheckpointStatus",
    "CheckpointTimeout",
    "Client",
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
    "Flow",
    "FlowNotFoundError",
    "Handle",
    "InputTooLarge",
    "InputValidationError",
    "InvalidStateError",
    "LogRecord",
    "NotInFlowError",
    "Queue",
    "ResultTimeout",
    "SerializationError",
    "Starter",
    "Status",
    "StoreError",
    "StoreUnavailable",
    "TetherError",
    "UsageError",
    "WaitAlreadyResolved",
    "WaitNotFound",
    "WaitRecord",
    "WaitTimeout",
    "Worker",
    "__version__",
    "checkpoint",
    "configure",
    "current",
    "errors",
    "flow",
    "in_flow",
    "log",
    "sleep",
    "wait",
]
