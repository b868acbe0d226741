"""Memory as the API and the dashboard read it: any scope, or one scope's keys."""

from __future__ import annotations

from typing import Any

from .._core.config import store_for
from .._memory import api as memory
from .._memory.views import memory_json
from ..errors import UsageError


def where(scope: str, scope_id: str | None) -> dict[str, Any]:
    """The keyword arguments of `tether.memory` that name one scope."""
    if scope_id is None:
        raise UsageError(f"memory of scope {scope!r} needs a scope_id")
    found: dict[str, Any] = {"scope": None, "namespace": None, "flow": None, "execution_id": None}
    found["execution_id" if scope == "execution" else scope] = scope_id
    return found


def entries(
    scope: str | None, scope_id: str | None, prefix: str | None, limit: int
) -> list[memory.MemoryVersion]:
    """The latest version of each key (of one scope, or of every scope when `scope` is
    None), with the value left unread."""
    if scope is not None:
        return memory.entries(prefix, **where(scope, scope_id), limit=limit)
    store = store_for()
    rows = store.list_memory(scope=None, scope_id=None, prefix=prefix, limit=limit)
    return [memory._version(store, row, None) for row in rows]


def history(scope: str, scope_id: str, key: str) -> list[dict[str, Any]]:
    """Every version of a key, newest first, each with its value as data."""
    versions = memory.history(key, **where(scope, scope_id))
    return [memory_json(v, with_value=True) for v in reversed(versions)]
