"""tether flows for benchmarks/checkpoint_overhead.py.

They live in an importable module (not in the script, which runs as ``__main__``) so that a fresh
process resuming an execution finds the same flow under the same module name. Importing this module
requires tether; the benchmark script only imports it inside guarded worker processes.

Environment:
    TETHER_BENCH_KILL_AT: if set to K, ``resume_flow`` SIGKILLs its own process inside step K, or,
        when K equals the flow's step count, right after the last checkpoint was recorded and before
        the flow returns. Read once at import so the check costs nothing per step, and set only in
        the crashing process, so the process that resumes runs through.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import tether
from _payload import payload

KILL_AT_ENV = "TETHER_BENCH_KILL_AT"
_KILL_AT = int(os.environ.get(KILL_AT_ENV, "-1"))

# Step bodies that actually ran in this process. A resume must not run recorded steps again, so
# after a crash at K of N it should count N - K, and 0 when every checkpoint was recorded.
live_steps = 0


def _die() -> None:
    # SIGKILL, not an exception or sys.exit: no cleanup handler, atexit or finally may run, as when
    # a machine loses power or the OOM killer strikes.
    os.kill(os.getpid(), signal.SIGKILL)


# --- overhead benchmark: the contract's shape, nothing extra per step -----------------------------


@tether.checkpoint
def step(i: int) -> dict[str, Any]:
    return payload(i)


@tether.flow
def bench_flow(n: int) -> int:
    for i in range(n):
        step(i)
    return n


@tether.checkpoint
async def astep(i: int) -> dict[str, Any]:
    return payload(i)


@tether.flow
async def abench_flow(n: int) -> int:
    for i in range(n):
        await astep(i)
    return n


# --- resume benchmark -----------------------------------------------------------------------------


@tether.checkpoint
def resume_step(i: int) -> dict[str, Any]:
    global live_steps
    if i == _KILL_AT:
        _die()
    live_steps += 1
    return payload(i)


@tether.flow
def resume_flow(n: int) -> int:
    for i in range(n):
        resume_step(i)
    if n == _KILL_AT:
        # Every checkpoint is recorded but the flow has not finished: resuming it is pure replay.
        _die()
    return n
