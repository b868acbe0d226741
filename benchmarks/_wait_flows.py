"""tether flows for benchmarks/waits.py.

They live in an importable module (not in the script, which runs as ``__main__``) so that the
process that starts the executions, the worker that resumes them and the process that gives the
input all find the same flow under the same module name (``_wait_flows:approval``). Importing this
module requires tether; the benchmark script only imports it inside its child processes.
"""

from __future__ import annotations

import tether


@tether.checkpoint
def prepare(i: int) -> dict[str, object]:
    return {"i": i, "draft": f"draft {i}"}


@tether.flow
def approval(i: int) -> str:
    prepare(i)
    ok = tether.wait("approve", schema=bool, question=f"publish draft {i}?")
    return "published" if ok else "rejected"
