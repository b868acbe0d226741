"""Resources a long-running process holds stay bounded however many threads come and go."""

from __future__ import annotations

import json

from backend import BACKEND
from helpers import run_child
from thread_flows import database_connections

REQUESTS = """
import sys, thread_flows
thread_flows.main(int(sys.argv[1]), int(sys.argv[2]))
"""

# The PostgreSQL store's pool (psycopg_pool's max_size), the most connections a store opens.
POOL = 32
BATCH = 20


def test_threads_that_run_executions_and_end_leave_no_connections_behind(db_url: str) -> None:
    others = database_connections(db_url)  # this test process's own, on PostgreSQL
    # 300 request threads, 20 at a time, each starting a (sync or async) execution, waiting
    # for its result and ending; in a process of their own, so that nothing another test
    # left running counts.
    done = run_child(REQUESTS, db_url, "300", str(BATCH), timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["wrong"] == []
    before, after, most = report["before"], report["after"], report["most"]
    if BACKEND == "sqlite":
        # Each thread's connection (two descriptors: the file and its WAL) is closed when the
        # thread ends; left open, 300 threads would leave 600. SQLite itself keeps a closed
        # connection's descriptor while another connection of the process holds a lock on the
        # file (closing it would drop that lock: POSIX locks belong to the process) and reuses
        # it at the next open, so up to one per concurrent thread may stay open.
        assert after["fds"] - before["fds"] <= BATCH, report
        assert most["fds"] - before["fds"] <= BATCH, report
    else:
        # Threads borrow from one bounded pool; nothing is opened per thread.
        assert most["connections"] <= others + POOL, report
        assert after["fds"] - before["fds"] <= POOL + 4, report
