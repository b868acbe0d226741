"""Test agents with what tether records: `crash_test` kills a flow at every checkpoint
boundary and proves its outcome does not change; `replay` runs recorded executions again
against the current code, tool calls answered from the recording, and reports what changed.

```python
from tether.testing import crash_test

report = crash_test(checkout, "order-1", waits={"approve": True})
print(report)  # every boundary tried, and how each case ended
```

With pytest, the plugin (registered as `tether` under the `pytest11` entry point) gives the
fixture `tether_crash`, which calls `crash_test` the same way. Importing `tether` does not
import this package.
"""

from __future__ import annotations

from ..errors import CrashTestFailed, ReplayMiss
from ._crash import Boundary, BoundaryOutcome, CrashReport, crash_test
from ._replay import export, replay
from ._replay_report import CallDiff, Outcome, ReplayCase, ReplayReport, Sample

__all__ = [
    "Boundary",
    "BoundaryOutcome",
    "CallDiff",
    "CrashReport",
    "CrashTestFailed",
    "Outcome",
    "ReplayCase",
    "ReplayMiss",
    "ReplayReport",
    "Sample",
    "crash_test",
    "export",
    "replay",
]
