"""Execution ids and lease tokens: unique, and made without a system call each.

`uuid.uuid4()` reads the OS's randomness for every id, a system call that lets go of the
GIL; a thread starting executions beside a busy event loop thread then waits up to the
interpreter's switch interval (5 ms) to get the GIL back, each time (two reads per start:
the id and the lease token). A generator seeded from the OS once per process gives ids
that are as unique (48 and 128 random bits); they need not be secret, as anyone who can
read the store reads them there. A forked child seeds its own, or it would repeat its
parent's ids.
"""

from __future__ import annotations

import os
import random
import time

_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_execution_id(now: float | None = None) -> str:
    """`now`: the creation time, when the caller has read the clock already."""
    # Time-ordered prefix so ids sort by creation, random suffix for uniqueness.
    at = time.time() if now is None else now
    return f"{int(at * 1000):011x}-{_random.getrandbits(48):012x}"


def new_token() -> str:
    """A lease's fencing token: a claim never reuses one an execution had."""
    return f"{_random.getrandbits(128):032x}"
