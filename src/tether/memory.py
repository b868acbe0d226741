"""Durable memory: versioned values that outlive a crash, an execution, or a process.

```python
import tether

@tether.flow
def assistant(user: str, question: str) -> str:
    notes = tether.memory.get("notes", scope="namespace", namespace=user, default=[])
    answer = ask_model(question, notes)
    tether.memory.set("notes", [*notes, answer], scope="namespace", namespace=user)
    return answer
```

A key lives in a **scope**:

- `"execution"`: one execution's own memory (the default inside a flow). Outside a flow,
  pass `execution_id=`.
- `"flow"`: shared by every execution of one flow. Outside a flow, pass `flow=` (the flow,
  or its name).
- `"namespace"`: shared by whoever names the namespace (`namespace="default"` unless
  given): per user, per conversation, per tenant.

The scope can be left out when `namespace=`, `flow=` or `execution_id=` says it. Outside a
flow with none of them, a call raises MemoryScopeError saying what to pass.

**Every write is a new version**; `delete()` writes a tombstone, and `history()` lists them
all. `latest()` gives the latest version with its number, and `set(..., if_version=n)`
writes only over that version (MemoryConflictError otherwise): a read-modify-write that
concurrent executions cannot interleave.

**Inside a flow** (in flow code, not inside a checkpoint) each call takes a position like a
checkpoint call (named `memory.set:<key>`, `memory.get:<key>`, ...), so a resumed
flow does not write twice, reads exactly the versions it read before the crash (even if
another writer has written since), and a changed flow is caught as a divergence. A write
carries its execution and position as an idempotency key: if the process dies after the
write but before its position is recorded, the resumed write finds its own version instead
of writing a second one (the value written first is kept, even if the resumed flow computed
a slightly different one, e.g. with new timestamps). A read records only the version number
it read, not the value.
Inside a checkpoint, memory calls are plain calls that belong to that checkpoint (they run
again if the checkpoint does).

Values are JSON through the same rules as checkpoint results (dataclasses, Pydantic models,
tuples and dates come back as themselves). `type=` validates what is read with Pydantic,
e.g. `get("chat", type=list[ModelMessage])` for a Pydantic AI message history. Values are
stored by content hash, and a list that extends the key's previous version is stored as
that version plus the appended items: writing a growing chat history after every turn costs
the new messages, not the whole history again (see `benchmarks/history_growth.py`).
"""

# The public module. The code lives in tether._memory (the memory layer); this name stays
# importable (`from tether.memory import MemoryVersion`) as it was before the layout step.
from ._memory.api import (
    SCOPES,
    MemoryVersion,
    Scope,
    delete,
    entries,
    get,
    history,
    latest,
    list,
    set,
)

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
