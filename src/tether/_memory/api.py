"""tether.memory: versioned values kept per execution, flow or namespace (documented
in `tether.memory`, which re-exports this module's `__all__`)."""

from __future__ import annotations

import builtins
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from .._core import schema as _schema
from .._core.checkpoint import Checkpoint
from .._core.config import settings, store_for
from .._core.context import Run, current_frame, current_run
from .._core.persist import persist
from .._runtime.flow import Flow
from ..errors import (
    CheckpointTimeout,
    DivergenceError,
    LeaseLost,
    MemoryKeyError,
    MemoryScopeError,
    MemoryValidationError,
    StoreCorrupt,
    StoreUnavailable,
    UsageError,
)
from ..store import MemoryRow, Store, memory_write_key
from . import blobs as _blobs

__all__ = [
    "SCOPES",
    "MemoryVersion",
    "Scope",
    "delete",
    "entries",
    "get",
    "history",
    "latest",
    "list",
    "set",
]

Scope = Literal["execution", "flow", "namespace"]
SCOPES: Final[tuple[str, ...]] = ("execution", "flow", "namespace")
DEFAULT_NAMESPACE: Final = "default"

T = TypeVar("T")


# The largest version a key can have (a 32-bit column in PostgreSQL): an `if_version` from
# which no next version fits would fail in the driver instead of as the usage error it is.
MAX_VERSION: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class MemoryVersion:
    """One version of a memory key, as `history()` and `entries()` return it.

    `value` is read from the store when first asked for (a long history of a long list
    costs nothing until then); a tombstone's value is None. `execution_id` and `position`
    say which flow call wrote it, when a flow did.
    """

    key: str
    version: int
    scope: str
    scope_id: str
    deleted: bool
    created_at: dt.datetime
    size: int
    length: int | None
    execution_id: str | None
    position: str | None
    _load: Callable[[], Any] = field(repr=False, compare=False)
    _load_json: Callable[[], str | None] = field(repr=False, compare=False)

    @property
    def value(self) -> Any:
        """The value of this version (None for a tombstone), loaded on first access."""
        return self._load()


# --- the public calls -------------------------------------------------------------------------


def get(
    key: str,
    default: Any = None,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    version: int | None = None,
    type: Any = None,
) -> Any:
    """The value of `key` (its latest version, or `version`), or `default` if the key does
    not exist or was deleted.

    Inside a flow the read is recorded (the version number only): a resumed flow gets the
    same version back. `type=` validates the value with Pydantic (MemoryValidationError when
    it does not match); `default` is returned as it is. A `version` that does not exist
    raises MemoryKeyError.
    """
    store, run, row = _lookup(key, version, scope, namespace, flow, execution_id)
    if row is None or row.deleted:
        return default
    return _validated(_read(run, lambda: _blobs.load(store, row)), type, key)


def latest(
    key: str,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    type: Any = None,
) -> MemoryVersion | None:
    """The latest version of `key` with its number (a tombstone if it was deleted), or None
    if it never existed. Recorded inside a flow like `get()`.

    For a read-modify-write that concurrent writers cannot interleave, pass its number to
    `set(..., if_version=...)`:

    ```python
    current = tether.memory.latest("runs", scope="flow")
    count = current.value if current and not current.deleted else 0
    version = current.version if current else 0
    tether.memory.set("runs", count + 1, scope="flow", if_version=version)
    ```
    """
    store, _, row = _lookup(key, None, scope, namespace, flow, execution_id)
    return None if row is None else _version(store, row, type)


def _lookup(
    key: str,
    version: int | None,
    scope: Scope | None,
    namespace: str | None,
    flow: Any,
    execution_id: str | None,
) -> tuple[Store, Run | None, MemoryRow | None]:
    """A version's row (the latest by default): recorded in flow code, by its number."""
    _check_key(key)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise UsageError(f"version is a whole number from 1, not {version!r}")
    store, run, positional = _where()
    scope_name, scope_id = _scope(scope, namespace, flow, execution_id, run)
    row: MemoryRow | None
    if version is not None:
        # Versions never change: reading one needs no recording.
        row = _read(run, lambda: store.get_memory(scope_name, scope_id, key, version))
        if row is None:
            raise MemoryKeyError(
                f"memory key {key!r} has no version {version} in {_describe(scope_name, scope_id)}"
                "; `tether memory history` lists its versions"
            )
    elif positional:
        seen: builtins.list[MemoryRow | None] = []

        def read() -> int:
            found = _read(run, lambda: store.get_memory(scope_name, scope_id, key))
            seen.append(found)
            return found.version if found is not None else 0

        source, recorded = _record("get", scope_name, scope_id, key, read)
        if seen:
            row = seen[0]
        elif recorded:
            row = _read(run, lambda: store.get_memory(scope_name, source, key, int(recorded)))
        else:
            row = None
    else:
        row = _read(run, lambda: store.get_memory(scope_name, scope_id, key))
    return store, run, row


def set(
    key: str,
    value: Any,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    if_version: int | None = None,
) -> int:
    """Store `value` as the next version of `key`; returns the new version number (from 1).

    The value is encoded before anything is written: a value that cannot be stored raises
    SerializationError (naming the part at fault) and leaves the key as it was. Inside a
    flow the write happens once, however often the flow is resumed.

    `if_version`: write only if the key's latest version is this one (0: only if the key
    has no version yet), else raise MemoryConflictError and write nothing. See `latest()`.
    Inside a flow a conflict is recorded like a checkpoint's error: a resumed flow gets the
    same error at that call.
    """
    if if_version is not None and (
        isinstance(if_version, bool)
        or not isinstance(if_version, int)
        or not 0 <= if_version < MAX_VERSION
    ):
        raise UsageError(f"if_version is a version number (0: no version yet), not {if_version!r}")
    _check_key(key)
    store, run, positional = _where()
    scope_name, scope_id = _scope(scope, namespace, flow, execution_id, run)
    allow_pickle = run.allow_pickle if run is not None else settings().pickle
    prepared = _blobs.prepare(value, allow_pickle=allow_pickle, root=f"value of memory key {key!r}")
    if not positional:
        _refuse_abandoned("set", key)
        return _write(store, run, scope_name, scope_id, key, prepared, None, if_version).version

    def write() -> int:
        position = _position()
        return _write(store, run, scope_name, scope_id, key, prepared, position, if_version).version

    # The value is not part of the call's fingerprint: values that differ only by what
    # changes on every run (the timestamps of a Pydantic AI message) are the same write.
    source, written = _record("set", scope_name, scope_id, key, write)
    if source != scope_id:
        return _copy(store, run, scope_name, source, scope_id, key, int(written))
    return int(written)


def delete(
    key: str,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    missing_ok: bool = False,
) -> int | None:
    """Delete `key`: a tombstone version is written (`history()` keeps every version).
    Returns its version number; raises MemoryKeyError if the key does not exist or is
    deleted already, unless `missing_ok` (then returns None)."""
    _check_key(key)
    store, run, positional = _where()
    scope_name, scope_id = _scope(scope, namespace, flow, execution_id, run)

    def tombstone() -> int:
        position = _position() if positional else None
        latest = _read(run, lambda: store.get_memory(scope_name, scope_id, key))
        if latest is None or latest.deleted:
            return 0
        return _write(store, run, scope_name, scope_id, key, None, position).version

    written: int
    if not positional:
        _refuse_abandoned("delete", key)
    if positional:
        source, recorded = _record("delete", scope_name, scope_id, key, tombstone)
        written = int(recorded)
        if written and source != scope_id:
            written = _copy(store, run, scope_name, source, scope_id, key, written)
    else:
        written = tombstone()
    if written:
        return written
    if missing_ok:
        return None
    raise MemoryKeyError(
        f"memory key {key!r} does not exist in {_describe(scope_name, scope_id)}, so there "
        "is nothing to delete (pass missing_ok=True to allow that)"
    )


def history(
    key: str,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    type: Any = None,
) -> builtins.list[MemoryVersion]:
    """Every version of `key`, oldest first, tombstones included (empty if it never
    existed). Inside a flow the latest version seen is recorded: a resumed flow gets the
    same versions back. `type=` validates each version's value when it is loaded."""
    _check_key(key)
    store, run, positional = _where()
    scope_name, scope_id = _scope(scope, namespace, flow, execution_id, run)
    up_to: int | None = None
    if positional:

        def latest() -> int:
            found = _read(run, lambda: store.get_memory(scope_name, scope_id, key))
            return found.version if found is not None else 0

        scope_id, up_to = _record("history", scope_name, scope_id, key, latest)
        if not up_to:
            return []
    rows = _read(run, lambda: store.memory_versions(scope_name, scope_id, key, up_to=up_to))
    return [_version(store, row, type) for row in reversed(rows)]


def list(
    prefix: str | None = None,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    limit: int = 1000,
) -> builtins.list[str]:
    """The keys that exist (not deleted) in a scope, sorted; only those that start with
    `prefix` when given. Inside a flow the answer is recorded."""
    return [entry.key for entry in _entries(prefix, scope, namespace, flow, execution_id, limit)]


def entries(
    prefix: str | None = None,
    *,
    scope: Scope | None = None,
    namespace: str | None = None,
    flow: str | Flow[..., Any] | None = None,
    execution_id: str | None = None,
    limit: int = 1000,
) -> builtins.list[MemoryVersion]:
    """Like `list()`, with each key's latest version (its value is loaded on access)."""
    return _entries(prefix, scope, namespace, flow, execution_id, limit)


# --- where a call runs ------------------------------------------------------------------------


def _where() -> tuple[Store, Run | None, bool]:
    """The store, the running execution (if any), and whether calls take positions (flow
    code: in a flow and not inside a checkpoint)."""
    run = current_run.get()
    if run is None:
        return store_for(), None, False
    return run.store, run, current_frame.get() is None


def _refuse_abandoned(operation: str, key: str) -> None:
    """A write from a timed-out attempt that runs on after it was abandoned is refused: it
    would otherwise land while a later attempt runs, as if that one had made it."""
    frame = current_frame.get()
    if frame is not None and frame.detached:
        raise CheckpointTimeout(
            f"memory.{operation}({key!r}) in attempt {frame.attempt} of checkpoint "
            f"{frame.name!r}, which timed out and was abandoned: nothing was written (an "
            "abandoned attempt's memory writes are dropped)"
        )


def _position() -> str:
    frame = current_frame.get()
    assert frame is not None, "a recorded memory call runs as a checkpoint body"
    return frame.position


def _record(
    operation: str, scope: str, scope_id: str, subject: str, body: Callable[[], Any]
) -> tuple[str, Any]:
    """Run `body` as a checkpoint call named `memory.<operation>:<subject>` at the flow's
    next position, or take the result recorded there. Returns (the scope id it ran in, its
    result): a fork of an execution replays calls recorded in its source's execution scope.
    """
    # The execution's id is not part of the fingerprint: a fork replaying its source's calls
    # is not calling them with other arguments.
    args = (scope, subject) if scope == "execution" else (scope, scope_id, subject)
    checkpoint: Checkpoint[..., Any] = Checkpoint(
        lambda *_: [scope_id, body()],
        name=f"memory.{operation}:{subject}",
        retries=0,
        backoff=0.0,
        retry_on=Exception,
        timeout=None,
    )
    recorded_scope_id, result = checkpoint(*args)
    return str(recorded_scope_id), result


def _copy(
    store: Store, run: Run | None, scope: str, source_id: str, scope_id: str, key: str, version: int
) -> int:
    """A write replayed by a fork from its source's record: the fork's own execution memory
    gets the same version (once, however often the fork resumes), so what the flow reads
    later is what the source read. Returns the fork's version number."""
    assert run is not None

    def attempt() -> MemoryRow | None:
        source = store.get_memory(scope, source_id, key, version)
        if source is None:
            raise MemoryKeyError(
                f"a replayed write of memory key {key!r} refers to version {version} of "
                f"{_describe(scope, source_id)}, which is not stored"
            )
        row = MemoryRow(
            scope, scope_id, key, 0, deleted=source.deleted, blob=source.blob,
            size=source.size, created_at=time.time(), writer_execution=run.execution_id,
            writer_position=source.writer_position,
            idempotency_key=f"{run.execution_id}:copy:{source_id}:{version}",
        )  # fmt: skip
        if source.items is not None:
            hashes = _blobs.item_hashes(store, source)
            laid = _blobs.list_layout(store, hashes, store.get_memory(scope, scope_id, key))
            row.base_version, row.items, row.length = laid.base_version, laid.items, laid.length
        return store.put_memory(row, (), fence=(run.execution_id, run.token))

    stored = _read(run, attempt)
    if stored is None:
        run.lease_lost = True
        raise LeaseLost(run.execution_id)
    return stored.version


def _read(run: Run | None, operation: Callable[[], T]) -> T:
    """A store call from a flow: an unavailable store is ridden out while the lease lasts,
    then the run unwinds (released for the store fault, to continue later), rather than
    recording the outage as the call's result."""
    if run is None:
        return operation()
    try:
        try:
            return operation()
        except StoreUnavailable:
            return persist(operation)
    except (StoreUnavailable, StoreCorrupt) as exc:
        raise run.store_fault(exc) from exc


def _write(
    store: Store,
    run: Run | None,
    scope: str,
    scope_id: str,
    key: str,
    prepared: _blobs.Prepared | None,
    position: str | None,
    if_version: int | None = None,
) -> MemoryRow:
    """Write a version (a tombstone when `prepared` is None), fenced by the run's lease and,
    at a flow position, idempotent."""

    def attempt() -> MemoryRow | None:
        row = MemoryRow(scope, scope_id, key, 0, created_at=time.time())
        blobs: builtins.list[tuple[str, str]] = []
        if prepared is None:
            row.deleted = True
        else:
            latest = store.get_memory(scope, scope_id, key)
            laid = _blobs.layout(store, prepared, latest)
            row.blob, row.base_version, row.items, row.length = (
                laid.blob,
                laid.base_version,
                laid.items,
                laid.length,
            )
            row.size = prepared.size
            blobs = laid.blobs
        if run is not None and position is not None:
            row.writer_execution, row.writer_position = run.execution_id, position
            row.idempotency_key = memory_write_key(run.execution_id, position)
        fence = (run.execution_id, run.token) if run is not None else None
        return store.put_memory(row, blobs, fence=fence, if_version=if_version)

    stored = _read(run, attempt)
    if stored is None:
        assert run is not None
        run.lease_lost = True
        raise LeaseLost(run.execution_id)
    if (stored.scope, stored.scope_id, stored.key, stored.deleted) != (
        scope,
        scope_id,
        key,
        prepared is None,
    ):
        # The version written at this position before a crash is another key's (or a
        # delete's): the flow's code changed between the crash and the resume.
        assert run is not None and position is not None
        done = f"memory.{'delete' if stored.deleted else 'set'}:{stored.key}"
        now = f"memory.{'delete' if prepared is None else 'set'}:{key}"
        raise run.diverge(
            DivergenceError(
                position,
                done,
                now,
                detail=f"position {position} wrote {done!r} "
                f"({_describe(stored.scope, stored.scope_id)}) before the process died, but "
                f"the resumed flow calls {now!r} ({_describe(scope, scope_id)}) there: the "
                "flow's code changed",
            )
        )
    return stored


def _entries(
    prefix: str | None,
    scope: Scope | None,
    namespace: str | None,
    flow: Any,
    execution_id: str | None,
    limit: int,
) -> builtins.list[MemoryVersion]:
    if prefix is not None and not isinstance(prefix, str):
        raise UsageError(f"a key prefix is a string, not {prefix!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(f"limit is a whole number from 1, not {limit!r}")
    store, run, positional = _where()
    scope_name, scope_id = _scope(scope, namespace, flow, execution_id, run)

    def listing() -> builtins.list[MemoryRow]:
        return _read(
            run,
            lambda: store.list_memory(
                scope=scope_name, scope_id=scope_id, prefix=prefix, limit=limit
            ),
        )

    if not positional:
        rows = listing()
    else:
        found: builtins.list[builtins.list[MemoryRow]] = []

        def seen() -> builtins.list[builtins.list[Any]]:
            found.append(listing())
            return [[r.key, r.version] for r in found[0]]

        source, recorded = _record("list", scope_name, scope_id, prefix or "", seen)
        if found:
            rows = found[0]
        else:
            # Each key at the version recorded: what the flow saw before it was resumed.
            def versions() -> builtins.list[MemoryRow]:
                rows = (store.get_memory(scope_name, source, k, v) for k, v in recorded)
                return [row for row in rows if row is not None]

            rows = _read(run, versions)
    return [_version(store, row, None) for row in sorted(rows, key=lambda r: r.key)]


# --- scopes, keys, values ---------------------------------------------------------------------


def _scope(
    scope: str | None, namespace: str | None, flow: Any, execution_id: str | None, run: Run | None
) -> tuple[str, str]:
    """(scope, scope id) from what a call was given and where it runs."""
    flow_name = _flow_name(flow)
    for label, given in (("namespace", namespace), ("execution_id", execution_id)):
        if given is not None and (not isinstance(given, str) or not given or "\x00" in given):
            raise MemoryScopeError(f"{label} is a non-empty string, not {given!r}")
    named = [
        name
        for name, given in (
            ("namespace", namespace),
            ("flow", flow_name),
            ("execution", execution_id),
        )
        if given is not None
    ]
    explicit = scope is not None
    if scope is None:
        if len(named) > 1:
            raise MemoryScopeError(
                f"{' and '.join(_ARGUMENT[n] for n in named)} name different scopes; pass one "
                "of them (or scope=... with the one it needs)"
            )
        scope = named[0] if named else "execution"
    if scope not in SCOPES:
        raise MemoryScopeError(f"scope is 'execution', 'flow' or 'namespace', not {scope!r}")
    extra = [n for n in named if n != scope]
    if extra:
        raise MemoryScopeError(
            f"{_ARGUMENT[extra[0]]} does not apply to scope {scope!r}; "
            f"{_ARGUMENT[scope]} names which {scope} is meant"
        )
    if scope == "namespace":
        return scope, namespace or DEFAULT_NAMESPACE
    if scope == "flow":
        if flow_name is not None:
            return scope, flow_name
        if run is not None:
            return scope, run.flow
        raise MemoryScopeError(
            "scope 'flow' outside a flow needs the flow: pass flow=my_flow (or its name, "
            "flow='my_flow')"
        )
    if execution_id is not None:
        return scope, execution_id
    if run is not None:
        return scope, run.execution_id
    if explicit:
        raise MemoryScopeError("scope 'execution' outside a flow needs execution_id='...'")
    raise MemoryScopeError(
        "outside a flow, tether.memory needs to know whose memory is meant: pass "
        "namespace='...' (or scope='namespace' for namespace 'default'), flow=my_flow, or "
        "execution_id='...'"
    )


_ARGUMENT = {"namespace": "namespace=", "flow": "flow=", "execution": "execution_id="}


def _flow_name(flow: Any) -> str | None:
    if flow is None:
        return None
    name = flow if isinstance(flow, str) else getattr(flow, "name", None)
    if not isinstance(name, str) or not name:
        raise MemoryScopeError(f"flow= is a @tether.flow or a flow's name, not {flow!r}")
    return name


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise UsageError(f"a memory key is a non-empty string, not {key!r}")
    if "\x00" in key:
        raise UsageError(f"a memory key cannot contain a NUL character: {key!r}")


def _describe(scope: str, scope_id: str) -> str:
    return f"{scope} {scope_id!r}"


def _version(store: Store, row: MemoryRow, tp: Any) -> MemoryVersion:
    cache: builtins.list[Any] = []

    def load() -> Any:
        if not cache:
            value = None if row.deleted else _validated(_blobs.load(store, row), tp, row.key)
            cache.append(value)
        return cache[0]

    def load_json() -> str | None:
        return None if row.deleted else _blobs.load_json(store, row)

    return MemoryVersion(
        key=row.key,
        version=row.version,
        scope=row.scope,
        scope_id=row.scope_id,
        deleted=row.deleted,
        created_at=dt.datetime.fromtimestamp(row.created_at, dt.UTC),
        size=row.size,
        length=row.length,
        execution_id=row.writer_execution,
        position=row.writer_position,
        _load=load,
        _load_json=load_json,
    )


def _find(
    key: str,
    *,
    version: int | None,
    scope: Scope | None,
    namespace: str | None,
    flow: Any,
    execution_id: str | None,
) -> MemoryVersion | None:
    """One version (the latest by default) with its details, outside a flow (the CLI)."""
    _check_key(key)
    store = store_for()
    scope_name, scope_id = _scope(scope, namespace, flow, execution_id, None)
    row = store.get_memory(scope_name, scope_id, key, version)
    return None if row is None else _version(store, row, None)


def _stored_json(version: MemoryVersion) -> str | None:
    """A version's value as stored JSON text (None for a tombstone), without decoding it."""
    return version._load_json()


def _validated(value: Any, tp: Any, key: str) -> Any:
    if tp is None:
        return value
    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as exc:
        raise MemoryValidationError(
            f"the value of memory key {key!r} does not match {_type_name(tp)}: "
            f"{exc.error_count()} error(s), the first at {_path(exc.errors()[0]['loc'])}: "
            f"{exc.errors()[0]['msg']}",
            _schema.errors_of(exc),
        ) from exc


def _path(loc: tuple[int | str, ...]) -> str:
    return "value" + "".join(f"[{part!r}]" for part in loc)


def _type_name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, builtins.type) else repr(tp)


@lru_cache(maxsize=128)
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _adapter(tp: Any) -> TypeAdapter[Any]:
    try:
        return _cached_adapter(tp)
    except TypeError:  # an unhashable type expression: not cached
        return TypeAdapter(tp)
