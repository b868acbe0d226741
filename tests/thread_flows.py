"""Short-lived threads that each start an execution and wait for its result, as a threaded web
server's request threads do. `main(threads, batch)` prints JSON with
the process's open file descriptors and (on PostgreSQL) the database's connections, before
and after, and the most seen meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import tether


@tether.checkpoint
def double(n: int) -> int:
    return 2 * n


@tether.flow
def sync_job(n: int) -> int:
    return double(n) + 1


@tether.checkpoint
async def triple(n: int) -> int:
    await asyncio.sleep(0)
    return 3 * n


@tether.flow
async def async_job(n: int) -> int:
    return await triple(n) + 1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def database_connections(url: str) -> int:
    """Connections to this database now, the one asking excluded (0 on SQLite)."""
    if not url.startswith("postgres"):
        return 0
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return int(row[0])


def request(n: int, wrong: list[str]) -> None:
    """One request thread: start an execution, wait for its result, end."""
    job, expected = (sync_job, 2 * n + 1) if n % 2 else (async_job, 3 * n + 1)
    got = job.run(n).result(timeout=120)
    if got != expected:
        wrong.append(f"{n}: {got} != {expected}")


def batch(numbers: range, wrong: list[str]) -> None:
    threads = [threading.Thread(target=request, args=(n, wrong)) for n in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(total: int, size: int) -> None:
    url = os.environ["TETHER_DB"]
    # A small pool of execution threads: they live as long as the process (each with its own
    # connection), as do the executor's other helper threads, started as load first needs
    # them; warm-up batches of the same shape start them all.
    tether.configure(db=url, max_workers=4)
    wrong: list[str] = []
    for start in range(-3 * size, 0, size):
        batch(range(start, start + size), wrong)
    before = {"fds": open_fds(), "connections": database_connections(url)}
    most = dict(before)
    for start in range(size, size + total, size):
        batch(range(start, start + size), wrong)
        most = {
            "fds": max(most["fds"], open_fds()),
            "connections": max(most["connections"], database_connections(url)),
        }
    after = {"fds": open_fds(), "connections": database_connections(url)}
    print(json.dumps({"before": before, "after": after, "most": most, "wrong": wrong}))
