#!/usr/bin/env python3
"""CPU cost per row of the SQLite store's group-commit writer, against an unfenced floor.

Usage:
    python benchmarks/writer_rows.py [--batch 200] [--rounds 30]

What one batch of the writer costs the thread that writes it, per row, in CPU microseconds
(`time.thread_time`: the machine may be loaded, so wall time would measure the neighbours):

    * floor: `BEGIN; executemany(INSERT, unfenced); COMMIT` of the same checkpoint rows;
    * checkpoints: the store's batch of checkpoint commits (one statement, each row fenced
      on its own execution's lease token, with its cancel request returned);
    * ends, one by one: what a burst of executions' ends cost before they were group
      committed (a fenced UPDATE and its own commit each);
    * ends, batched: the store's batch of ends (one statement, fenced per row).

Each figure is the median over `--rounds` batches, each on fresh rows of a fresh set of
executions held by a lease, in one database file (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tether.store import CheckpointRow, Claim, ExecutionRow
from tether.store._group_commit import CheckpointCommit, Finish
from tether.store._sql import CHECKPOINT_FIELDS, SqlStore, checkpoint_values
from tether.store.sqlite import SQLiteStore

RESULT = '{"answer": "' + "x" * 200 + '"}'


def held(store: SQLiteStore, n: int) -> list[tuple[str, str]]:
    """n running executions, each with its lease token."""
    out = []
    now = time.time()
    for _ in range(n):
        eid, token = uuid.uuid4().hex, uuid.uuid4().hex
        store.create_execution(
            ExecutionRow(
                id=eid,
                flow="f",
                import_path="m:f",
                script=None,
                args="{}",
                status="queued",
                created_at=now,
                updated_at=now,
            )
        )
        assert store.claim(
            eid,
            Claim("me", token, now + 600),
            from_statuses=("queued",),
            expected_token=None,
            now=now,
        )
        out.append((eid, token))
    return out


def row(position: int) -> CheckpointRow:
    now = time.time()
    return CheckpointRow(
        position=str(position), name="step", fingerprint="fp", status="succeeded",
        result=RESULT, started_at=now, finished_at=now,
    )  # fmt: skip


def cpu_per_row(write: Callable[[], object], rows: int) -> float:
    began = time.thread_time()
    write()
    return (time.thread_time() - began) * 1e6 / rows


def floor(conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    conn.execute("BEGIN")
    conn.executemany(FLOOR_SQL, rows)
    conn.execute("COMMIT")


def one_by_one(store: SQLiteStore, ends: list[Finish]) -> None:
    for end in ends:
        SqlStore.finish(
            store, end.execution_id, end.token, status=end.status, result=end.result,
            error=end.error, now=end.now,
        )  # fmt: skip


FLOOR_SQL = (
    f"INSERT INTO checkpoints (execution_id, {', '.join(CHECKPOINT_FIELDS)}) "
    f"VALUES ({', '.join('?' * (1 + len(CHECKPOINT_FIELDS)))})"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200, help="rows per batch")
    parser.add_argument("--rounds", type=int, default=30, help="batches per figure")
    args = parser.parse_args()
    b, half = args.batch, args.batch // 2
    figures: dict[str, list[float]] = {
        "floor": [], "checkpoints": [], "ends, one by one": [], "ends, batched": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(f"sqlite:///{tmp}/bench.db")
        for r in range(args.rounds):
            executions = held(store, b)
            # The floor's rows go to other positions: its unfenced insert must not collide.
            plain = [(eid, *checkpoint_values(row(-1 - r))) for eid, _ in executions]
            commits: list[CheckpointCommit | Finish] = [
                CheckpointCommit(eid, token, row(r), ()) for eid, token in executions
            ]
            ends = [Finish(eid, token, "succeeded", '"done"', None, time.time())
                    for eid, token in executions]  # fmt: skip
            batched: list[CheckpointCommit | Finish] = list(ends[half:])
            figures["floor"].append(cpu_per_row(partial(floor, store._conn(), plain), b))
            figures["checkpoints"].append(cpu_per_row(partial(store._write_group, commits), b))
            figures["ends, one by one"].append(
                cpu_per_row(partial(one_by_one, store, ends[:half]), half)
            )
            figures["ends, batched"].append(
                cpu_per_row(partial(store._write_group, batched), b - half)
            )
        store.close()
    print(f"SQLite group-commit writer, CPU µs per row (median of {args.rounds} batches of {b})")
    base = statistics.median(figures["floor"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"  {name:<18} {median:7.1f} µs/row  ({median / base:.2f}x the floor)")


if __name__ == "__main__":
    main()
