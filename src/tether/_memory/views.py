"""A memory version as plain JSON data, the one shape the CLI's `memory --json`, the HTTP
API, the dashboard and the MCP server show (beside the record views of `_ops.views`, which
this layer does not import). The value follows the same rule: the stored text as data
(`serde.to_data`), never restored, imported or unpickled."""

from __future__ import annotations

from typing import Any

from .._core import serde as _serde
from .._core.positions import display
from .api import MemoryVersion, _stored_json


def memory_json(version: MemoryVersion, *, with_value: bool = False) -> dict[str, Any]:
    """One version of a key; `with_value` reads its value too (None for a tombstone)."""
    shown: dict[str, Any] = {
        "key": version.key,
        "scope": version.scope,
        "scope_id": version.scope_id,
        "version": version.version,
        "deleted": version.deleted,
        "created_at": version.created_at.isoformat(),
        "size": version.size,
        "length": version.length,
        "execution_id": version.execution_id,
        "position": None if version.position is None else display(version.position),
    }
    if with_value:
        shown["value"] = _serde.to_data(_stored_json(version))
    return shown
