"""The step result every engine in the checkpoint benchmark records.

Kept in its own dependency-free module so that the peers (in checkpoint_overhead.py) and the
tether flows (in _tether_flows.py) checkpoint byte-for-byte the same data.
"""

from __future__ import annotations

import json
from typing import Any

# Sized so one serialized result is ~1 KB (1006-1012 bytes of JSON, depending on the step number).
_TEXT = "x" * 945


def payload(i: int) -> dict[str, Any]:
    """Return a fresh ~1 KB JSON-serializable dict for step ``i``."""
    # A new list per call: a real step builds its result; sharing one object could let an engine
    # memoize or skip copying it.
    return {"step": i, "text": _TEXT, "tags": [f"tag-{i % 7}", "bench", "checkpoint"]}


def payload_size(i: int = 999) -> int:
    """Bytes of JSON one step result takes (what the raw sqlite3 floor stores)."""
    return len(json.dumps(payload(i)))
