"""Every error tether raises, in one tree.

```
Exception
└── TetherError                     base of everything a user can catch
    ├── UsageError                  the API was used the wrong way (fix the code)
    │   ├── NotInFlowError          a flow-only call made outside a running flow
    │   ├── FlowNotFoundError       a recorded flow is not loaded in this process
    │   │   └── UnguardedScriptError  a script tether loads starts executions at its top level
    │   ├── MemoryScopeError        a memory call names no scope it can use (says what to pass)
    │   ├── BranchKeyInUse          a task entered tether.branch(key) while another task holds it
    │   └── StoreOpenedReadOnly     a write through a store opened read-only
    ├── ConfigurationError          a bad store URL or setting
    │   └── NotATetherStore         the URL names another application's database: left as it was
    ├── StoreError                  the database failed or is from a newer tether
    │   ├── StoreVersionError       its schema is newer than this tether (older, when read-only)
    │   ├── StoreUnavailable        the database cannot be used right now (retry later)
    │   │   ├── StoreBusy           another process holds the write lock too long
    │   │   ├── StoreFull           the disk (or the server's) is full
    │   │   ├── StoreReadOnly       the database (or its file system) is read-only
    │   │   └── CommitUnknown       a commit's reply was lost and could not be read back
    │   └── StoreCorrupt            the database file is damaged: nothing more is written
    ├── SerializationError          a value cannot be stored or loaded (names the path)
    │   └── PickleRefused           a stored pickle is not authenticated, or pickle is off
    ├── DivergenceError             resumed code calls a different checkpoint
    ├── CheckpointError             a recorded failure whose class this process lacks
    ├── CheckpointTimeout           a checkpoint attempt ran past its timeout
    ├── Interrupted                 user code raised a BaseException (SystemExit, ...): a failure
    ├── CrashLoopError              the processes running an execution kept dying: given up
    ├── CrashTestFailed             tether.testing.crash_test: a kill and resume changed the outcome
    ├── ExecutionNotFound           no execution has that id
    ├── ExecutionLocked             another live process holds the execution
    ├── InvalidStateError           the operation does not fit the execution's status
    ├── WaitTimeout                 a wait's deadline passed with no input and no default
    ├── WaitNotFound                no pending wait of that name (or none at all)
    ├── WaitAlreadyResolved         the wait already has its input (another one won)
    ├── MessageAlreadySent          a message sent to that wait is not delivered yet (one per wait)
    ├── NotPublished                an execution that ended published no value under that key
    ├── ScheduleNotFound            no scheduled flow of that name has run on a worker yet
    ├── InputValidationError        input does not match the wait's schema (has .errors)
    │   └── InputTooLarge           input over the size limit
    ├── BudgetExceeded              the next model call would go over the flow's Budget
    ├── ExecutionFailed             Handle.result() of a failed execution
    ├── ExecutionCancelled          Handle.result() of a cancelled execution
    │   └── ExecutionTimedOut       ... cancelled because its deadline passed
    ├── ResultTimeout               Handle.result(timeout=...) ran out (also a TimeoutError)
    ├── MemoryKeyError              no such memory key or version (also a LookupError)
    ├── MemoryConflictError         set(if_version=) found a newer version: read it again
    └── MemoryValidationError       a memory value does not match `type=` (has .errors)

BaseException
└── ControlSignal                   unwinds a flow; user `except Exception` cannot swallow it
    ├── Cancelled                   Client.cancel() reached a checkpoint boundary
    ├── LeaseLost                   another executor took the execution over
    ├── Suspended                   the flow waits for input or a timer; nothing is held
    └── Released                    the executor is shutting down; hand the execution back
```

Errors are recorded in the store as data (type, message, traceback, arguments and
attributes), never as pickles. tether's own errors define `__reduce__` so that they also
survive a pickle round trip with their fields (multiprocessing, Ray).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BranchKeyInUse",
    "BudgetExceeded",
    "Cancelled",
    "CheckpointError",
    "CheckpointTimeout",
    "CommitUnknown",
    "ConfigurationError",
    "ControlSignal",
    "CrashLoopError",
    "CrashTestFailed",
    "DivergenceError",
    "ExecutionCancelled",
    "ExecutionFailed",
    "ExecutionLocked",
    "ExecutionNotFound",
    "FlowNotFoundError",
    "InputTooLarge",
    "InputValidationError",
    "Interrupted",
    "InvalidStateError",
    "LeaseLost",
    "MemoryConflictError",
    "MemoryKeyError",
    "MemoryScopeError",
    "MemoryValidationError",
    "MessageAlreadySent",
    "NotATetherStore",
    "NotInFlowError",
    "NotPublished",
    "PickleRefused",
    "Released",
    "ResultTimeout",
    "ScheduleNotFound",
    "SerializationError",
    "StoreBusy",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreOpenedReadOnly",
    "StoreReadOnly",
    "StoreUnavailable",
    "StoreVersionError",
    "Suspended",
    "TetherError",
    "UnguardedScriptError",
    "UsageError",
    "WaitAlreadyResolved",
    "WaitNotFound",
    "WaitTimeout",
]


class TetherError(Exception):
    """Base class of every error tether raises on purpose."""


class UsageError(TetherError):
    """The API was used in a way that cannot work; the message says how to fix it."""


class NotInFlowError(UsageError):
    """A call that only makes sense inside a running flow was made outside one."""


class FlowNotFoundError(UsageError):
    """The flow recorded for an execution is not loaded in this process. A process runs the
    flows it loaded itself (its own imports, `--import`, `TETHER_IMPORTS`, `[tool.tether]
    imports`, `--script`), never what a stored row names. `load_with` is the flag that would
    load it (`--import agents`, `--script path/x.py`), or None when none would."""

    def __init__(self, message: str, *, load_with: str | None = None) -> None:
        super().__init__(message)
        self.load_with = load_with

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),), {"load_with": self.load_with})


class UnguardedScriptError(FlowNotFoundError):
    """A script (or module) that tether loads to find a flow started an execution at its top
    level: the code that starts executions belongs under `if __name__ == "__main__":`.
    Nothing was started; `script` names the file (or module)."""

    def __init__(self, message: str, script: str = "") -> None:
        super().__init__(message)
        self.script = script

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.script))


class ConfigurationError(TetherError):
    """A store URL or setting is invalid."""


class NotATetherStore(ConfigurationError):
    """The URL names a database that is not tether's: a file that is not SQLite, another
    application's SQLite file, a PostgreSQL database whose tables of tether's names are
    someone else's (or, opened read-only, one without tether's tables). Nothing was written
    to it: point the URL at tether's own database."""


class StoreOpenedReadOnly(UsageError):
    """A write through a store opened read-only (`Client(readonly=True)`,
    `configure(readonly=True)`, the CLI's reading commands). Nothing was written: open the
    store without `readonly` to write."""


class StoreError(TetherError):
    """The store failed, or its schema is newer than this version of tether."""


class StoreUnavailable(StoreError):
    """The database cannot be used right now (restarting, network down, an I/O error, or one
    of the subclasses). Transient: executors retry their writes with backoff for a while,
    then release the execution (never fail it) to continue once the store is back."""


class StoreBusy(StoreUnavailable):
    """Another connection held the database's write lock longer than the busy timeout
    (`configure(busy_timeout=...)`, `TETHER_BUSY_TIMEOUT`)."""


class StoreFull(StoreUnavailable):
    """The database's disk (or the database server's) is full: free space and the executions
    released meanwhile continue."""


class StoreReadOnly(StoreUnavailable):
    """The database, or the file system under it, accepts no writes right now."""


class CommitUnknown(StoreUnavailable):
    """The connection was lost after a commit was sent, and reading the row back failed too:
    whether it committed is not known yet. Retried like any outage; the retry reads the row
    back."""


class StoreVersionError(StoreError):
    """The database's schema does not fit this tether: it is newer (upgrade tether), or it
    is older and the store was opened read-only, which never upgrades it (open it once for
    writing, e.g. with `tether worker`, to upgrade it). `found` and `known` are the two
    schema versions."""

    def __init__(self, message: str, *, found: int = 0, known: int = 0) -> None:
        super().__init__(message)
        self.found = found
        self.known = known

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"found": self.found, "known": self.known}))


class StoreCorrupt(StoreError):
    """The database file is damaged (corrupt pages, or not a database). Permanent: the store
    refuses every further read and write in this process; restore it from a backup."""


class SerializationError(TetherError):
    """A value cannot be stored, or a stored value cannot be loaded.

    `path` names the offending value, e.g. `result['items'][3].client`.
    """

    def __init__(self, message: str, *, path: str = "", type_name: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.type_name = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"path": self.path, "type_name": self.type_name}))


class PickleRefused(SerializationError):
    """A stored pickle was not unpickled: pickle is off in this process, `TETHER_SECRET` is
    not set, or the pickle's signature does not match the key (it was written with another
    key, by an older tether, or by someone who can write the store but does not hold the key).
    Unpickling runs code, so only pickles signed with this deployment's key are loaded."""


class DivergenceError(TetherError):
    """On resume, the code called a different checkpoint than the one recorded at a position."""

    def __init__(self, position: str, recorded: str, current: str, detail: str = "") -> None:
        self.position = position
        self.recorded = recorded
        self.current = current
        message = detail or (
            f"checkpoint position {position} was recorded as {recorded!r} but the code now "
            f"calls {current!r} there. The flow's code changed in a way that reorders "
            "checkpoints; finish or cancel executions started with the old code before "
            "deploying, or replay them."
        )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.position, self.recorded, self.current, str(self)))


class CheckpointError(TetherError):
    """A recorded checkpoint failure, raised again on resume, whose class this process does
    not have (its module is not imported, it is not an Exception, or it cannot be rebuilt
    from its stored arguments). `error_type` (also `type_name`) is the original type's name,
    `message` its message, `traceback` the recorded traceback text.

    When the process has the class (its module imported, or `tether.register`ed), the
    recorded error is raised as that class instead, so `except ValueError:` in flow code
    takes the same path live and resumed."""

    def __init__(self, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    @property
    def type_name(self) -> str:
        return self.error_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error_type, self.message, self.traceback))


class CheckpointTimeout(TetherError, TimeoutError):
    """A checkpoint attempt ran longer than its `timeout`."""


class Interrupted(TetherError):
    """User code raised a `BaseException` that is not an `Exception` (`SystemExit`,
    `KeyboardInterrupt`, `GeneratorExit`, or a `CancelledError` when nothing cancelled its
    task). tether fails that attempt with this error (the original is its `__cause__`, its
    type is `raised`) instead of letting it stop the process's other executions. A
    checkpoint retries it only when its `retry_on` names the original type."""

    def __init__(self, message: str, raised: str = "") -> None:
        super().__init__(message)
        self.raised = raised

    @classmethod
    def of(cls, exc: BaseException, where: str) -> Interrupted:
        detail = str(exc)
        what = f"{type(exc).__name__}({detail})" if detail else type(exc).__name__
        return cls(
            f"{where} raised {what}, which is not an Exception; tether failed the attempt "
            "instead of letting it stop the process and its other executions. Raise an "
            "Exception to fail a call (or name the type in retry_on to retry it).",
            type(exc).__name__,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.raised))


class CrashLoopError(TetherError):
    """The processes that ran an execution died (or lost it) again and again without it
    committing any progress, so tether stopped taking it over and failed it. How many times
    is the setting `crash_loop_limit` (`TETHER_CRASH_LOOP_LIMIT`, default 5)."""

    def __init__(self, message: str, takeovers: int = 0) -> None:
        super().__init__(message)
        self.takeovers = takeovers

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.takeovers))


class CrashTestFailed(TetherError):
    """`tether.testing.crash_test` killed a flow at a checkpoint boundary, resumed it, and
    it did not end as it does uninterrupted: `boundary` names where it was killed,
    `difference` what differed, `report` (a `tether.testing.CrashReport`) every case tried."""

    def __init__(self, message: str, boundary: str = "", difference: str = "", report: Any = None):
        super().__init__(message)
        self.boundary = boundary
        self.difference = difference
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.boundary, self.difference, self.report))


class ExecutionNotFound(TetherError, LookupError):
    """No execution with that id exists in the store."""


class ExecutionLocked(TetherError):
    """Another live executor holds the execution's lease."""


class InvalidStateError(TetherError):
    """The operation does not apply to the execution in its current status."""


class ExecutionFailed(TetherError):
    """The execution failed. Carries the original error's type name, message and traceback."""

    def __init__(
        self, execution_id: str, error_type: str, message: str, traceback: str = ""
    ) -> None:
        super().__init__(f"execution {execution_id} failed: {error_type}: {message}")
        self.execution_id = execution_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.execution_id, self.error_type, self.message, self.traceback))


class ExecutionCancelled(TetherError):
    """The execution was cancelled before it finished."""


class ExecutionTimedOut(ExecutionCancelled):
    """The execution was cancelled because its deadline (`@tether.flow(deadline=...)`,
    `flow.options(deadline=...)`) passed before it finished; its unfinished children were
    cancelled with it. The message says when the deadline was."""


class WaitTimeout(TetherError, TimeoutError):
    """Raised inside the flow by `tether.wait(timeout=...)` when the deadline passed with no
    input and no `default` was given. The flow may catch it."""

    def __init__(self, name: str, message: str = "") -> None:
        super().__init__(message or f"wait {name!r} timed out with no input")
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, str(self)))


class WaitNotFound(TetherError, LookupError):
    """The execution has no pending wait of that name."""


class WaitAlreadyResolved(TetherError):
    """The wait already has its input (or timed out): the other input won."""


class MessageAlreadySent(TetherError):
    """`Client.send()` to a wait that has a message sent to it and not yet delivered: one
    message per wait (wait names are unique per execution)."""


class NotPublished(TetherError, LookupError):
    """`Client.get_published()`: the execution has ended without publishing a value under
    that key (`tether.publish`), so none will come."""


class ScheduleNotFound(TetherError, LookupError):
    """No schedule of that name is in the store: no worker (or `tether.launch()` process)
    that loaded the scheduled flow has run against it yet. The message lists the known
    ones."""


class InputValidationError(TetherError, ValueError):
    """Input does not match the wait's schema. `errors` lists what is wrong, where."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.errors))


class InputTooLarge(InputValidationError):
    """Input is larger than the configured limit (`configure(max_input_bytes=...)`)."""


class BudgetExceeded(TetherError):
    """A model call was not made: with it, the execution would spend more than its
    `tether.Budget` allows. Raised inside the flow (where code may catch it to return a
    partial result); never retried. The fields say what was spent and what the limit is.
    """

    def __init__(
        self,
        message: str,
        *,
        spent_tokens: int = 0,
        spent_cost_usd: float | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        super().__init__(message)
        self.spent_tokens = spent_tokens
        self.spent_cost_usd = spent_cost_usd
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {
            "spent_tokens": self.spent_tokens,
            "spent_cost_usd": self.spent_cost_usd,
            "max_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost_usd,
        }
        return (_rebuild, (type(self), str(self), fields))


class ResultTimeout(TetherError, TimeoutError):
    """`Handle.result(timeout=...)` returned before the execution finished."""


class MemoryScopeError(UsageError):
    """A `tether.memory` call names no scope it can use: outside a flow, the execution or
    flow whose memory is meant must be given. The message says what to pass."""


class BranchKeyInUse(UsageError):
    """A task entered `tether.branch(key)` while another live task (or thread) of the same
    execution was inside the same key under the same enclosing branch. Two lines of work in
    one key would share its sequence, so which call got which recorded result would depend on
    scheduling. Nothing was recorded for the second task; `key` is the key as given."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.key))


class MemoryKeyError(TetherError, LookupError):
    """No memory key (or no version of it) matches."""


class MemoryConflictError(TetherError):
    """`tether.memory.set(..., if_version=n)` found the key at another version: someone
    wrote it since it was read. Read it again (`tether.memory.latest()`) and retry."""

    def __init__(self, key: str, expected: int, actual: int, message: str = "") -> None:
        super().__init__(
            message
            or f"memory key {key!r} is at version {actual}, not {expected}: another writer "
            "wrote it since it was read; read it again and retry"
        )
        self.key = key
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.expected, self.actual, str(self)))


class MemoryValidationError(TetherError, ValueError):
    """A stored memory value does not match the `type=` it was read as. `errors` lists what
    is wrong, where."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.errors))


class ControlSignal(BaseException):
    """Unwinds a running flow. A BaseException so user `except Exception` cannot swallow it."""


class Cancelled(ControlSignal):
    """The execution was cancelled; raised at the next checkpoint boundary."""


class LeaseLost(ControlSignal):
    """Another executor owns the execution now; this one must stop without writing."""


class Suspended(ControlSignal):
    """The flow reached a wait with no input yet: unwind, store `waiting`, hold nothing."""

    def __init__(self, execution_id: str, wait: str, wake_at: float | None) -> None:
        super().__init__(execution_id, wait)
        self.wait = wait
        self.wake_at = wake_at


class Released(ControlSignal):
    """The executor is stopping: hand the execution back (status `queued`) to run elsewhere."""


def _rebuild(cls: type[Exception], message: str, fields: dict[str, Any]) -> Exception:
    error = cls(message)
    for key, value in fields.items():
        setattr(error, key, value)
    return error
