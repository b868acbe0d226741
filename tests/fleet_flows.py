"""Flows for fleet tests: worker processes import this module.

Side effects go to the file named by $SIDE_EFFECTS, one line per event, appended with
O_APPEND (atomic for short lines, ordered across processes):
`start <execution> <position> <pid> <time>` when a checkpoint body starts, and
`commit <execution> <position> <pid> <time>` right after its result is committed (the
`after_commit` hook, installed by `run_worker`).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import tether
from tether._core import checkpoint as _checkpoint

limited = tether.Queue("limited", concurrency=2)
throttled = tether.Queue("throttled", rate_limit=2, rate_period=1.0)
solo = tether.Queue("solo", worker_concurrency=1)


def _write(kind: str, execution: str, position: int | None) -> None:
    path = os.environ.get("SIDE_EFFECTS")
    if not path:
        return
    line = f"{kind} {execution} {position} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def after_commit(run: Any, position: int) -> None:
    _write("commit", run.execution_id, position)


@tether.checkpoint
def work(i: int, seconds: float) -> int:
    now = tether.current()
    _write("start", now.execution_id, now.position)
    time.sleep(seconds)
    return i * i


@tether.flow
def work_flow(i: int) -> int:
    return work(i, 0.0)


@tether.flow(queue=limited)
def limited_job(seconds: float) -> str:
    work(0, seconds)
    return "done"


@tether.flow(queue=solo)
def solo_job(seconds: float) -> str:
    work(0, seconds)
    return "done"


@tether.flow(queue=throttled)
def throttled_job() -> str:
    work(0, 0.0)
    return "done"


@tether.flow
def chaos_job(n: int, steps: int, wait_at: int, sleep_at: int) -> dict[str, Any]:
    """`steps` checkpoints; a wait for input before step `wait_at` and a short durable
    sleep before step `sleep_at` (-1: none)."""
    total = 0
    answer = None
    for step in range(steps):
        if step == wait_at:
            answer = tether.wait("go", schema=int)
        if step == sleep_at:
            tether.sleep(0.2)
        total += work(step, 0.002)
    return {"n": n, "total": total, "answer": answer}


def run_worker(argv: list[str]) -> None:
    """`python -c "import fleet_flows; fleet_flows.run_worker(sys.argv[1:])" [queue...]`"""
    _checkpoint._after_commit = after_commit
    queues = argv or None
    tether.Worker(concurrency=4, poll=0.01, queues=queues).run(grace=5)


if __name__ == "__main__":
    run_worker(sys.argv[1:])
