"""Which runnable executions a process takes over by itself, and the waker's keyset scans.

A process that runs executions (`Executor.parking`: not a worker, which claims everything
itself) *adopts* the stranded executions of the flows it loaded, so that an application
restarted after a crash picks its work back up with no `recover` run by hand:

- `running` on a lease that ran out, or held by a process on this host that is gone (the
  claim counts each such takeover, so a crash loop is bounded as for any takeover);
- `queued`, or `waiting` with its timer due, when the last process that said it would
  continue the execution (the `suspend` note recorded with each suspension, or
  the `handback` note of a process that handed back its adopted work at exit) is gone:
  on this host, its pid is dead; elsewhere, it left the execution runnable for over a
  lease (a live parker claims its woken execution within a waker round).

Never adopted: queued executions nobody parked (`enqueue()`, what a worker suspended,
what a client-only process queued): they are the workers' queue, and a web process must
not take a worker fleet's backlog. Nor a flow this process did not load: nothing a row
names is imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import TetherError
from ..store import ExecutionRow, Store
from .engine import load_flow

# The event that says which process will continue a suspended execution (Client.continuation).
SUSPEND_EVENT = "suspend"
# The same, written by a process that handed back executions it adopted when it exited.
HANDBACK_EVENT = "handback"

# The column each scanned branch is ordered by (then id); see Store.scan_runnable.
_KEYS = {"queued": "created_at", "due": "wake_at", "expired": "lease_expires"}
# A row judged not adoptable is judged again after this long (its parker may die meanwhile).
_RECHECK_SECONDS = 2.0
# At most this many verdicts are remembered per store (a large worker backlog of loaded flows).
_MAX_VERDICTS = 10_000


def flow_loaded(row: ExecutionRow) -> bool:
    """Whether this process loaded the execution's flow (looked up, never imported)."""
    try:
        load_flow(row.import_path, row.script)
    except TetherError:
        return False
    return True


def scan_key(branch: str, row: ExecutionRow) -> tuple[float, str]:
    """Where the next page of a branch's scan starts: after this row."""
    value = getattr(row, _KEYS[branch])
    return (float(value or 0.0), row.id)


@dataclass(slots=True)
class ScanState:
    """One store's scans: where each branch's keyset scan goes on from (None: the start),
    and recent verdicts on rows that were not adoptable (id -> (updated_at, until when))."""

    cursors: dict[str, tuple[float, str] | None] = field(default_factory=dict)
    verdicts: dict[str, tuple[float, float]] = field(default_factory=dict)

    def adoptable(
        self,
        store: Store,
        row: ExecutionRow,
        branch: str,
        *,
        gone: Callable[[str], bool | None],
        lease: float,
        now: float,
        due: float,
    ) -> bool:
        """Whether a runnable row not parked here is stranded work of a flow loaded here.
        `gone(owner)`: True if that process is dead, False if alive, None if it cannot be
        told from here (another host)."""
        if not flow_loaded(row):
            return False
        if branch == "expired":
            return True  # its holder's lease ran out: whoever it was, it is gone
        cached = self.verdicts.get(row.id)
        if cached is not None and cached[0] == row.updated_at and cached[1] > now:
            return False
        # A live parker claims its execution within a waker round of it becoming runnable
        # (by its timer, on the timer clock; else when it was queued).
        since = (due - row.wake_at) if branch == "due" and row.wake_at is not None else (
            now - row.updated_at
        )  # fmt: skip
        verdict = _parker_gone(store, row, gone=gone, stale=since > lease)
        if not verdict:
            if len(self.verdicts) >= _MAX_VERDICTS:
                self.verdicts.clear()
            self.verdicts[row.id] = (row.updated_at, now + _RECHECK_SECONDS)
        else:
            self.verdicts.pop(row.id, None)
        return verdict


def _parker_gone(
    store: Store, row: ExecutionRow, *, gone: Callable[[str], bool | None], stale: bool
) -> bool:
    notes = store.get_events(row.id, kinds=(SUSPEND_EVENT, HANDBACK_EVENT))
    if not notes or not notes[-1].data:
        return False  # nobody parked it: the workers' queue
    try:
        data = json.loads(notes[-1].data)
    except ValueError:
        return False
    owner = data.get("owner") if isinstance(data, dict) else None
    if not isinstance(owner, str) or not data.get("parked"):
        return False  # a worker suspended it: the workers continue it
    state = gone(owner)
    # Another host (no pid to look at): left runnable for a whole lease, it has nobody.
    return stale if state is None else state


def note_data(owner: str) -> str:
    """The data of a suspend or handback note: this process continues the execution."""
    return json.dumps({"owner": owner, "parked": True})
