"""Scheduled flows for tests/test_schedules.py. Worker processes import this module (and so
fire its schedules); the test process itself takes them out of its declared schedules and
fires them only through a `Firer` it is given them to (see the test module)."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import tether
from helpers import record_side_effect


@tether.checkpoint
async def note(label: str) -> None:
    await asyncio.sleep(0.01)  # really awaits, so the branches interleave
    record_side_effect(label, pid=True)


@tether.flow(schedule=timedelta(seconds=1))
async def every_second() -> None:
    # An agent's shape: gathered branches, each a recorded call that awaits.
    run = tether.current().execution_id
    await asyncio.gather(note(f"{run}/a"), note(f"{run}/b"))


@tether.flow(schedule=timedelta(minutes=1), schedule_args=("daily",), schedule_kwargs={"n": 2})
def report(kind: str, n: int = 1) -> str:
    return kind * n


@tether.flow(schedule=timedelta(minutes=1), catchup="all")
def every_minute_all() -> None:
    pass


@tether.flow(schedule=timedelta(minutes=1), catchup="none")
def every_minute_none() -> None:
    pass


@tether.flow(schedule="*/20 * * * * *")
def every_20_seconds() -> None:
    pass


# A deadline on a scheduled flow (ticks a year apart: no test waits for one).
@tether.flow(schedule=timedelta(days=365), deadline=90)
def bounded() -> None:
    pass


ALL = (every_second, report, every_minute_all, every_minute_none, every_20_seconds, bounded)


def run_worker() -> None:
    """`python -c "import schedule_flows; schedule_flows.run_worker()"`"""
    tether.Worker(concurrency=4, poll=0.01).run(grace=5)


if __name__ == "__main__":
    run_worker()
    sys.exit(0)
