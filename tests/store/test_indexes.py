"""Schema v8's indexes (migrations/*/0008_indexes.sql): claims and timer lookups read a few
index entries however many executions sleep or run, and a database with data migrates.

Unlike the conformance suites, these tests reach under the `Store` interface: thousands of
rows are written in one transaction (`_transaction` / `_executemany`), the statements a
store runs are captured from its `_one` / `_all` / `_run` helpers, and their plans are read
with the database's own EXPLAIN.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
from _rows import LEASE, NOW, T0, execution, get, lease, race, start

import tether
from backend import BACKEND, postgres_only
from helpers import retry_until
from tether import Status
from tether._core import config as _config
from tether.store import (
    CheckpointRow,
    EventRow,
    ExecutionRow,
    Store,
    WaitRow,
    _sql_migrations,
    open_store,
)
from tether.store._sql import CLAIM_WINDOW, EXECUTION_COLUMNS, RELEASED, to_format_style
from tether.store._sql_checkpoints import program_order
from tether.store.sqlite import path_from_url

sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's query plans")

SLEEPING = 5_000  # waiting executions whose timer is far from due
RUNNING = 1_000  # running executions with live leases
LATER = T0 + 1e6  # when the sleepers wake up, and when the live leases expire
FINAL = ("succeeded", "failed", "cancelled")

# The indexes of the two tables v8 changes, and the one v10 adds (SQLite names its primary key
# indexes otherwise).
INDEXES = {
    "executions": {
        "executions_pkey",
        "executions_by_status",
        "executions_by_flow",
        "executions_by_created",
        "executions_by_queue",
        "executions_dedup",
        "executions_queued",
        "executions_due",
        "executions_lease_expiry",
        "executions_finished",
        "executions_by_parent",  # v10: children of an execution (partial: only children)
        "executions_cancel_requests",  # v17: running ones with a cancel pending (partial)
    },
    "checkpoints": {"checkpoints_pkey"},
}
DROPPED = {
    "executions_claim_order",
    "executions_runnable",
    "executions_by_finished",
    "checkpoints_by_execution_status",
}


# --- helpers ----------------------------------------------------------------------------------


def row(
    execution_id: str,
    status: str,
    *,
    priority: int = 0,
    created_at: float = T0,
    wake_at: float | None = None,
    lease_expires: float | None = None,
) -> ExecutionRow:
    found = execution(execution_id, status=status, created_at=created_at)
    found.priority, found.wake_at = priority, wake_at
    if lease_expires is not None:
        found.owner, found.lease_token = "host:1:a", f"tok-{execution_id}"
        found.lease_expires = lease_expires
        found.started_at = created_at
    return found


def insert(store: Store, rows: Sequence[ExecutionRow]) -> None:
    """Many executions in one transaction (create_execution would commit each one)."""
    names = [c.strip() for c in EXECUTION_COLUMNS.split(",")]
    values = [
        [int(getattr(r, n)) if n == "cancel_requested" else getattr(r, n) for n in names]
        for r in rows
    ]
    sql_store: Any = store
    with sql_store._transaction() as conn:
        sql_store._executemany(
            conn,
            f"INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({', '.join('?' * len(names))})",
            values,
        )


def crowd(store: Store) -> None:
    """Thousands of sleeping executions and of running ones with live leases, at priorities
    above anything runnable, none of them runnable at NOW (clocks: now=NOW, due=NOW)."""
    insert(
        store,
        [
            row(f"sleep{n:05d}", "waiting", priority=9 - n % 10, created_at=T0 - 100 + n / 1e3,
                wake_at=LATER + n)
            for n in range(SLEEPING)
        ]
        + [row(f"input{n:03d}", "waiting", priority=9, created_at=T0 - 100) for n in range(100)]
        + [
            row(f"busy{n:04d}", "running", priority=9, created_at=T0 - 100 + n / 1e3,
                lease_expires=LATER + n)
            for n in range(RUNNING)
        ],
    )  # fmt: skip


def claim_next(store: Store, n: int = 0, *, now: float = NOW, due: float = NOW) -> str | None:
    found = store.claim_runnable(lease(f"new-{n}", expires=now + LEASE), now=now, due=due)
    return None if found is None else found.id


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """Every (sql, params) the store runs meanwhile, as written in the _sql_* modules."""
    seen: list[tuple[str, Any]] = []
    target: Any = store

    def recording(name: str) -> Callable[..., Any]:
        run = getattr(target, name)
        if name == "_run":
            return lambda conn, sql, params=(): seen.append((sql, params)) or run(conn, sql, params)
        return lambda sql, params=(): seen.append((sql, params)) or run(sql, params)

    for name in ("_one", "_all", "_run"):
        setattr(target, name, recording(name))
    try:
        yield seen
    finally:
        for name in ("_one", "_all", "_run"):
            delattr(target, name)


def captured(store: Store, call: Callable[[], object], start: str) -> tuple[str, Any]:
    """The statement beginning with `start` that `call` runs."""
    with statements(store) as seen:
        call()
    found = [(sql, params) for sql, params in seen if sql.lstrip().startswith(start)]
    assert found, f"no statement starting {start!r} among {[s[:60] for s, _ in seen]}"
    return found[0]


def claim_statement(store: Store) -> tuple[str, Any]:
    return captured(store, lambda: claim_next(store), "UPDATE executions SET status = 'running'")


def analyze(store: Store) -> None:
    """Statistics, as autovacuum (Postgres) or an ANALYZE (SQLite) would leave them."""
    sql_store: Any = store
    with sql_store._connection() as conn:
        conn.execute("ANALYZE")


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_statistics", [False, True])
def test_claims_among_thousands_of_sleeping_and_running_take_the_runnable_in_priority_order(
    store: Store, with_statistics: bool
) -> None:
    crowd(store)
    insert(
        store,
        [
            row("queued-old", "queued", priority=0, created_at=T0),
            row("queued-high", "queued", priority=5, created_at=T0 + 5),
            row("queued-leased", "queued", priority=9, created_at=T0, lease_expires=LATER),
            # Due timers: the highest priority fell due last.
            row("due-low", "waiting", priority=0, created_at=T0 + 1, wake_at=NOW - 30),
            row("due-mid", "waiting", priority=3, created_at=T0 + 3, wake_at=NOW - 20),
            row("due-high", "waiting", priority=7, created_at=T0 + 7, wake_at=NOW),
            row("due-later", "waiting", priority=9, created_at=T0, wake_at=NOW + 1),
            # Dead owners: the higher priority expired last.
            row("expired-low", "running", priority=1, created_at=T0 + 2, lease_expires=NOW - 9),
            row("expired-high", "running", priority=4, created_at=T0 + 4, lease_expires=NOW - 1),
            row("expires-now", "running", priority=9, created_at=T0, lease_expires=NOW),
        ],
    )
    if with_statistics:
        analyze(store)
    untouched = ["queued-leased", "due-later", "expires-now", "sleep00000", "input000", "busy0000"]
    before = {eid: get(store, eid) for eid in untouched}

    taken = [claim_next(store, n) for n in range(7)]

    assert taken == [
        "due-high", "queued-high", "expired-high", "due-mid", "expired-low", "queued-old",
        "due-low",
    ]  # fmt: skip
    assert claim_next(store, 99) is None
    assert {eid: get(store, eid) for eid in untouched} == before
    assert store.runnable(now=NOW, due=NOW, limit=10_000) == []
    assert store.next_due() == NOW + 1


def test_more_due_timers_than_the_window_are_each_claimed_once_by_racing_claimers(
    store: Store,
) -> None:
    crowd(store)
    due = [f"due{n:04d}" for n in range(CLAIM_WINDOW * 2 + 7)]
    insert(
        store,
        [
            row(eid, "waiting", priority=n % 4, created_at=T0 + n, wake_at=NOW - 1000 + n)
            for n, eid in enumerate(due)
        ]
        + [
            row(f"dead{n}", "running", priority=n % 4, created_at=T0 + n, lease_expires=NOW - n)
            for n in range(CLAIM_WINDOW + 3)
        ],
    )
    expected = set(due) | {f"dead{n}" for n in range(1, CLAIM_WINDOW + 3)}
    claimers = 4
    taken: dict[int, list[str]] = {i: [] for i in range(claimers)}

    def contend(i: int) -> None:
        n = 0
        while (eid := claim_next(store, n * claimers + i)) is not None:
            taken[i].append(eid)
            n += 1

    race(claimers, contend)
    everything = [eid for ids in taken.values() for eid in ids]
    assert sorted(everything) == sorted(expected)
    assert get(store, "dead0").lease_token == "tok-dead0"  # expires at NOW: still live
    assert store.runnable(now=NOW, due=NOW, limit=10) == []


def test_the_highest_priority_of_the_due_timers_goes_first_however_late_it_fell_due(
    store: Store,
) -> None:
    # Within the window the claim order is exact: priority, then age, not time fallen due.
    insert(
        store,
        [
            row(f"due{n:03d}", "waiting", priority=0, created_at=T0 + n, wake_at=NOW - 500 + n)
            for n in range(CLAIM_WINDOW - 1)
        ]
        + [row("urgent", "waiting", priority=1, created_at=T0 + 999, wake_at=NOW)],
    )
    assert claim_next(store) == "urgent"
    assert claim_next(store, 1) == "due000"


def test_the_window_holds_the_earliest_due_timers(store: Store) -> None:
    # More due than the window, all alike but for when they fell due (and were created): the
    # claim takes the first to fall due, not one of the latest.
    insert(
        store,
        [
            row(f"due{n:03d}", "waiting", created_at=T0 + n, wake_at=NOW - 500 + n)
            for n in range(CLAIM_WINDOW + 50)
        ],
    )
    assert claim_next(store) == "due000"


@postgres_only
def test_postgres_a_claim_in_flight_holds_one_due_timer_not_the_window(
    store: Store, store_url: str
) -> None:
    # Another claimer's transaction holds the row it picked, and only that row: a concurrent
    # claim takes the next due timer instead of finding the window locked.
    import psycopg

    insert(
        store,
        [
            row(f"due{n:02d}", "waiting", created_at=T0 + n, wake_at=NOW - 100 + n)
            for n in range(20)
        ],
    )
    sql, params = claim_statement(store)  # took due00, committed
    with closing(psycopg.connect(store_url)) as other:
        other.execute("SET lock_timeout = '5s'")
        held = other.execute(to_format_style(sql), params).fetchone()  # due01, not committed
        assert held is not None and held[0] == "due01"
        assert claim_next(store, 7) == "due02"
        other.rollback()
    assert claim_next(store, 8) == "due01"


# --- plans: PostgreSQL ------------------------------------------------------------------------

_PG_TYPES = {str: "text", float: "double precision", int: "bigint"}


def pg_buffers(url: str, sql: str, params: dict[str, Any], *, generic: bool) -> int:
    """Shared buffers the statement reads when run (EXPLAIN ANALYZE, rolled back): with the
    parameters' values (a custom plan), or as a prepared statement's generic plan, which is
    what a worker runs once psycopg has prepared its claim."""
    import psycopg

    text = to_format_style(sql)
    with closing(psycopg.connect(url)) as conn:
        try:
            if generic:
                names: list[str] = []

                def number(match: re.Match[str]) -> str:
                    if match[1] not in names:
                        names.append(match[1])
                    return f"${names.index(match[1]) + 1}"

                positional = re.sub(r"%\((\w+)\)s", number, text).replace("%%", "%")
                types = [_PG_TYPES[type(params[n])] for n in names]
                declared = f"({', '.join(types)})" if types else ""
                conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                conn.execute(f"PREPARE picked {declared} AS {positional}")
                arguments = f"({', '.join(f'%s::{t}' for t in types)})" if types else ""
                found = psycopg.ClientCursor(conn).execute(
                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE picked {arguments}",
                    [params[n] for n in names],
                )
            else:
                found = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + text, params)
            plan = found.fetchone()[0][0]["Plan"]
        finally:
            conn.rollback()
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


@postgres_only
@pytest.mark.parametrize("with_statistics", [False, True])
def test_postgres_claim_reads_a_few_buffers_however_many_executions_sleep_or_run(
    store: Store, store_url: str, with_statistics: bool
) -> None:
    crowd(store)
    if with_statistics:
        analyze(store)
    claim = claim_statement(store)
    listing = captured(store, lambda: store.runnable(now=NOW, due=NOW, limit=1000), "SELECT")
    due = captured(store, store.next_due, "SELECT")
    # Measured: 6 buffers each (v7: the generic plan of the claim walked every sleeper in
    # priority order looking for a due one, 285 buffers with 5,000 of them). Reading the
    # sleepers or the running rows takes well over a hundred.
    for sql, params in (claim, listing, due):
        for generic in (False, True):
            buffers = pg_buffers(store_url, sql, params, generic=generic)
            assert buffers <= 30, (generic, sql[:80], buffers)


@postgres_only
def test_postgres_heartbeat_statements_read_a_few_buffers_however_many_executions_run(
    store: Store, store_url: str
) -> None:
    crowd(store)
    for name, ((sql, params), _) in heartbeat_statements(store, primary_key="").items():
        buffers = pg_buffers(store_url, sql, params, generic=False)
        assert buffers <= 30, (name, buffers)


@postgres_only
def test_postgres_claim_locks_the_picked_rows_of_executions(store: Store, store_url: str) -> None:
    # FOR UPDATE SKIP LOCKED reaches the window's rows: a row another transaction holds is
    # skipped, and the next best due timer is taken instead.
    import psycopg

    insert(
        store,
        [
            row("first", "waiting", priority=5, created_at=T0, wake_at=NOW - 2),
            row("second", "waiting", priority=1, created_at=T0, wake_at=NOW - 1),
        ],
    )
    with closing(psycopg.connect(store_url)) as other:
        other.execute("SELECT 1 FROM executions WHERE id = 'first' FOR UPDATE")
        assert claim_next(store) == "second"
        assert claim_next(store, 1) is None
        other.rollback()
    assert claim_next(store, 2) == "first"


def heartbeat_statements(
    store: Store, *, primary_key: str
) -> dict[str, tuple[tuple[str, Any], set[str]]]:
    """A beat's statements: the renewal (rows by primary key from its JSON parameter) and the
    read of pending cancels (its partial index, migration 0017), with what they search."""
    store.request_cancel("busy0002", now=NOW)
    ids = ["busy0001", "busy0002"]
    return {
        "renew": (
            captured(
                store,
                lambda: store.renew(ids, dict.fromkeys(ids, "tok"), NOW + 1, {"busy0001": None}),
                "UPDATE",
            ),
            {primary_key},
        ),
        "cancel_requests": (
            captured(store, store.cancel_requests, "SELECT"),
            {"executions_cancel_requests"},
        ),
    }


# --- plans: SQLite ----------------------------------------------------------------------------


def sqlite_plan(store_url: str, sql: str, params: Any) -> list[str]:
    with closing(sqlite3.connect(path_from_url(store_url))) as conn:
        return [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


@sqlite_only
@pytest.mark.parametrize("with_statistics", [False, True])
def test_sqlite_claim_and_timer_queries_search_the_partial_indexes(
    store: Store, store_url: str, with_statistics: bool
) -> None:
    crowd(store)
    if with_statistics:
        analyze(store)
    # Timers and leases must be found by a range of their index, not by walking every row
    # of a status (v7 walked the running ones, and without statistics v8's indexes lose to
    # executions_by_status unless they lead with the status too).
    timers = "executions_due (status=? AND wake_at<?)"
    leases = "executions_lease_expiry (status=? AND lease_expires<?)"
    wanted = {
        "claim": (claim_statement(store), {timers, leases}),
        "runnable": (
            captured(store, lambda: store.runnable(now=NOW, due=NOW, limit=1000), "SELECT"),
            {timers, leases},
        ),
        "next_due": (captured(store, store.next_due, "SELECT"), {"executions_due"}),
        "prune": (
            captured(
                store,
                lambda: store.prune(before=NOW, statuses=FINAL, dry_run=True),
                "SELECT count(*)",
            ),
            {"executions_finished (status=? AND finished_at<?)"},
        ),
    }
    wanted.update(heartbeat_statements(store, primary_key="sqlite_autoindex_executions_1 (id=?)"))
    renewal = sqlite_plan(store_url, *wanted["renew"][0])
    # The JSON rows are the outer loop, read once; each finds its execution by key (the other
    # way round reads the whole JSON parameter once per execution: quadratic).
    assert [p.split(" ")[:2] for p in renewal] == [["SCAN", "r"], ["SEARCH", "executions"]], renewal
    for name, ((sql, params), searches) in wanted.items():
        plan = sqlite_plan(store_url, sql, params)
        on_executions = [p for p in plan if re.match(r"(SCAN|SEARCH) (e|executions)\b", p)]
        # A SCAN of executions reads every row (a SCAN ... USING INDEX executions_queued walks
        # the queued ones in claim order, and stops at the first it can take).
        scans = [p for p in on_executions if p.startswith("SCAN") and "executions_queued" not in p]
        assert scans == [], (name, plan)
        for search in searches:
            assert any(search in p for p in on_executions), (name, search, plan)
        assert not any("executions_by_status" in p for p in on_executions), (name, plan)


@sqlite_only
@pytest.mark.parametrize("with_statistics", [False, True])
def test_sqlite_executions_list_finds_each_rows_pending_wait_by_its_execution(
    store: Store, store_url: str, with_statistics: bool
) -> None:
    crowd(store)
    sql_store: Any = store
    with sql_store._transaction() as conn:
        sql_store._executemany(
            conn,
            "INSERT INTO waits (execution_id, name, position, kind, status, created_at) "
            "VALUES (?, 'approve', '0', 'input', 'pending', ?)",
            [(f"sleep{n:05d}", T0) for n in range(SLEEPING)],
        )
    if with_statistics:
        analyze(store)
    sql, params = captured(
        store, lambda: store.list_executions(statuses=None, flow=None, limit=51), "SELECT"
    )
    plan = sqlite_plan(store_url, sql, params)
    # v12 walked waits_pending (every pending wait of the store) once per row listed.
    on_waits = [p for p in plan if re.match(r"(SCAN|SEARCH) w\b", p)]
    assert on_waits and all("waits_pending_input (execution_id=?)" in p for p in on_waits), plan


def test_the_outline_of_calls_is_in_program_order_and_counts_them_all(store: Store) -> None:
    insert(store, [row("e1", "succeeded"), row("e2", "succeeded")])
    positions = ["10", "2.1", "[a].0", "0", "2", "2.0", "1"]
    usage = '{"tether.usage": {"requests": %d}}'
    sql_store: Any = store
    with sql_store._transaction() as conn:
        sql_store._executemany(
            conn,
            "INSERT INTO checkpoints (execution_id, position, name, fingerprint, status, "
            "started_at, finished_at, metadata) VALUES (?, ?, 'step', 'f', ?, ?, ?, ?)",
            [("e1", p, "failed" if p == "1" else "succeeded", T0, T0,
              usage % int(p) if p in ("2", "10") else f'{{"p": "{p}"}}')
             for p in positions] + [("e2", "0", "succeeded", T0, T0, usage % 0)],
        )  # fmt: skip
    order = ["0", "1", "2", "2.0", "2.1", "10", "[a].0"]
    outline = store.checkpoint_outline("e1")
    assert outline.positions == order
    # Only the metadata that holds usage is read, in program order.
    assert (outline.succeeded, outline.usage) == (6, [usage % 2, usage % 10])
    assert store.checkpoint_outline("e2").positions == ["0"]
    empty = store.checkpoint_outline("nowhere")
    assert (empty.positions, empty.succeeded, empty.usage) == ([], 0, [])
    window = store.get_checkpoints_at("e1", ["[a].0", "2.1", "10", "nowhere"])
    assert [c.position for c in window] == ["2.1", "10", "[a].0"]
    assert store.get_checkpoints_at("e1", []) == []
    assert [c.position for c in store.get_checkpoints_at("e2", order)] == ["0"]


def test_program_order_of_the_flow_body_sorts_by_number() -> None:
    positions = [str(n) for n in (10, 2, 0, 100, 9, 11)]
    program_order(positions)
    assert positions == ["0", "2", "9", "10", "11", "100"]
    mixed = ["10", "2.1", "2", "[b].0", "[a].0", "1"]
    program_order(mixed)
    assert mixed == ["1", "2", "2.1", "10", "[a].0", "[b].0"]


def test_status_counts_stop_at_the_cap(store: Store) -> None:
    insert(store, [row(f"done{n:03d}", "succeeded") for n in range(30)])
    insert(store, [row(f"wait{n:03d}", "waiting") for n in range(3)])
    found = store.count_by_status(["succeeded", "waiting", "queued"], cap=10)
    assert found == {"succeeded": 10, "waiting": 3, "queued": 0}
    assert store.count_by_status(["succeeded"], cap=1000) == {"succeeded": 30}


# --- migrating a database with data -----------------------------------------------------------


class _Before:
    """The migrations folder as an older tether shipped it: without `first` and later."""

    def __init__(self, inner: Any, first: str) -> None:
        self.inner, self.first = inner, first

    def joinpath(self, *parts: str) -> _Before:
        return _Before(self.inner.joinpath(*parts), self.first)

    def iterdir(self) -> Iterator[Any]:
        return (entry for entry in self.inner.iterdir() if entry.name < self.first)


def migrations_before(monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    """Stores opened from now on (until `monkeypatch.undo()`) stop before migration `first`."""
    monkeypatch.setattr(
        _sql_migrations,
        "resources",
        SimpleNamespace(files=lambda pkg: _Before(resources.files(pkg), first)),
    )


LATEST = 17  # migrations/*/0017_cancel_requests.sql

# Columns of executions that this code writes and schemas before v11 (v15) lack. A test that has
# this code write data into an older database adds them for the writes and drops them again
# before the database migrates, so it migrates as that version left it.
V11_COLUMNS = {
    "takeovers": "INTEGER NOT NULL DEFAULT 0",
    "progress_mark": "INTEGER NOT NULL DEFAULT 0",
    "not_before": "DOUBLE PRECISION",
    "deadline": "DOUBLE PRECISION",  # v15
}


# The table of messages (v13), which this code reads whenever a flow reaches a wait.
V13_MESSAGES = (
    "CREATE TABLE messages (execution_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT "
    "NULL, status TEXT NOT NULL, sent_by TEXT, sent_at DOUBLE PRECISION NOT NULL, error TEXT, "
    "delivered_at DOUBLE PRECISION, PRIMARY KEY (execution_id, name))"
)


def v11_columns(store_url: str, *, add: bool) -> None:
    """Add (or drop again) what this code writes or reads and older schemas lack: the v11
    columns of executions and the v13 table of messages."""
    statements = [
        f"ALTER TABLE executions ADD COLUMN {name} {kind}" if add
        else f"ALTER TABLE executions DROP COLUMN {name}"
        for name, kind in V11_COLUMNS.items()
    ]  # fmt: skip
    statements.append(V13_MESSAGES if add else "DROP TABLE messages")
    if BACKEND == "postgres":
        import psycopg

        with closing(psycopg.connect(store_url, autocommit=True)) as pg:
            for statement in statements:
                pg.execute(statement)  # type: ignore[arg-type]
        return
    with closing(sqlite3.connect(path_from_url(store_url))) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def index_names(store_url: str) -> set[str]:
    tables = ("executions", "checkpoints")
    if BACKEND == "postgres":
        import psycopg

        with closing(psycopg.connect(store_url)) as conn:
            found = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = ANY(%s)", [list(tables)]
            ).fetchall()
    else:
        with closing(sqlite3.connect(path_from_url(store_url))) as conn:
            found = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN (?, ?) "
                "AND name NOT LIKE 'sqlite_autoindex_%'",
                tables,
            ).fetchall()
    return {str(name) for (name,) in found}


def schema_versions(store: Store) -> list[int]:
    sql_store: Any = store
    return [int(v) for (v,) in sql_store._all("SELECT version FROM tether_schema ORDER BY 1")]


def everything(store: Store, ids: Sequence[str]) -> dict[str, tuple[object, ...]]:
    return {
        eid: (
            store.get_execution(eid),
            store.get_checkpoints(eid),
            store.get_waits(eid),
            store.get_events(eid),
        )
        for eid in ids
    }


def as_text(found: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """`everything` as v9 reads it back: each integer position as the same digits in text."""

    def text(row: Any) -> Any:
        if isinstance(row.position, int):
            return dataclasses.replace(row, position=str(row.position))
        return row

    return {
        eid: (execution, *([text(r) for r in rows] for rows in lists))
        for eid, (execution, *lists) in found.items()
    }


def test_a_database_with_data_at_schema_7_migrates_to_8_and_keeps_working(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations_before(monkeypatch, "0008")
    old = open_store(store_url)
    v11_columns(store_url, add=True)
    try:
        assert schema_versions(old)[-1] == 7
        assert index_names(store_url) >= DROPPED
        old.create_execution(execution("queued", created_at=T0))
        start(old, "running", "t-run", created_at=T0 + 1, expires=NOW + 500)
        # Positions as v7 wrote them: integers (v9 makes them text). Inserted as rows: this
        # code's own checkpoint commit (PostgreSQL's batch) sends positions as text.
        sql_old: Any = old
        with sql_old._transaction() as conn:
            for position in range(3):
                sql_old._run(
                    conn,
                    "INSERT INTO checkpoints (execution_id, position, name, fingerprint, status, "
                    "result, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    ("running", position, "step", "fp", "succeeded", '"x"', T0, T0),
                )
        old.add_event(EventRow("running", 0, T0, "info", "log", "hello"))  # type: ignore[arg-type]
        for eid, wake_at in (("sleeper", NOW + 50), ("asker", None)):
            held = start(old, eid, f"t-{eid}", created_at=T0 + 2)
            wait = WaitRow(eid, "w", 0, "sleep", "pending", created_at=T0)  # type: ignore[arg-type]
            assert old.create_wait(held, wait)
            assert old.suspend(eid, held, wait="w", wake_at=wake_at, now=T0 + 3)
        start(old, "orphan", "t-orphan", created_at=T0 + 4, expires=NOW + 10)
        for eid in FINAL:
            start(old, eid, f"t-{eid}", created_at=T0 + 5)
        # Finished as rows too: this code's PostgreSQL finish is the group commit's statement,
        # which writes checkpoint positions as text (into v7's INTEGER column).
        with sql_old._transaction() as conn:
            for eid in FINAL:
                sql_old._run(
                    conn,
                    "UPDATE executions SET status = ?, finished_at = ?, updated_at = ?, "
                    f"{RELEASED} WHERE id = ?",
                    (eid, T0 + 6, T0 + 6, eid),
                )
        ids = ["queued", "running", "sleeper", "asker", "orphan", *FINAL]
        before = everything(old, ids)
    finally:
        old.close()
    v11_columns(store_url, add=False)
    monkeypatch.undo()

    store = open_store(store_url)
    try:
        assert schema_versions(store) == list(range(1, LATEST + 1))
        assert everything(store, ids) == as_text(before)
        assert [c.position for c in store.get_checkpoints("running")] == ["0", "1", "2"]
        assert len(store.list_executions(statuses=None, flow=None, limit=100)) == len(ids)
        names = index_names(store_url)
        assert names & DROPPED == set()
        assert INDEXES["executions"] - {"executions_pkey"} <= names

        assert store.next_due() == NOW + 50
        later = NOW + 100  # the sleeper is due, the orphan's lease expired
        taken = [claim_next(store, n, now=later, due=later) for n in range(4)]
        assert taken == ["queued", "sleeper", "orphan", None]
        step = CheckpointRow("3", "step", "fp", "succeeded", '"y"', None, None, T0, T0)
        assert store.record_checkpoint("running", "t-run", step)
        assert [c.position for c in store.get_checkpoints("running")] == ["0", "1", "2", "3"]
        assert store.prune(before=T0 + 7, statuses=FINAL, dry_run=False) == 3
        assert get(store, "asker").status == "waiting"
    finally:
        store.close()


def test_a_new_database_has_the_v8_indexes_only(store: Store, store_url: str) -> None:
    names = index_names(store_url)
    expected = INDEXES["executions"] | INDEXES["checkpoints"]
    if BACKEND == "sqlite":  # SQLite's primary keys are its automatic indexes, left out here
        expected -= {"executions_pkey", "checkpoints_pkey"}
    assert names == expected


# --- schema v9: positions become text ---------------------------------------------------------

v8_ran: Counter[int] = Counter()


@tether.checkpoint
def v8_step(n: int) -> int:
    v8_ran[n] += 1
    print(f"step {n}")  # a log event at the call's position
    return n * 10


@tether.flow
def v8_flow() -> int:
    total = v8_step(1) + v8_step(2)  # positions 0 and 1
    tether.memory.set("total", total)  # 2 (a recorded call too)
    answer = tether.wait("go", schema=int)  # 3
    return total + answer + v8_step(3)  # 4


def position_types(path: str) -> dict[str, list[tuple[object, str]]]:
    """Each table's stored positions and their SQLite storage class."""
    columns = {
        "checkpoints": "position",
        "waits": "position",
        "events": "position",
        "memory": "writer_position",
    }
    with closing(sqlite3.connect(path)) as conn:
        return {
            table: conn.execute(
                f"SELECT {column}, typeof({column}) FROM {table} "
                f"WHERE {column} IS NOT NULL ORDER BY 1"
            ).fetchall()
            for table, column in columns.items()
        }


@sqlite_only
def test_a_database_at_schema_8_with_integer_positions_migrates_to_9_and_resumes(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(path_from_url(store_url))
    v8_ran.clear()
    # The flow runs until it waits, on a database at schema 8: its INTEGER columns store the
    # positions as integers, as tether v8 wrote them.
    migrations_before(monkeypatch, "0009")
    _config.reset()
    try:
        open_store(store_url).close()  # at schema 8
        v11_columns(store_url, add=True)
        tether.configure(db=store_url)
        handle = v8_flow.run()
        retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
        old = open_store(store_url)
        try:
            assert schema_versions(old)[-1] == 8
            before = everything(old, [handle.id])
        finally:
            old.close()
    finally:
        _config.reset()
    v11_columns(store_url, add=False)
    monkeypatch.undo()
    assert v8_ran == Counter({1: 1, 2: 1})
    stored = position_types(path)
    assert stored["checkpoints"] == [(0, "integer"), (1, "integer"), (2, "integer")]
    assert stored["waits"] == [(3, "integer")]
    assert stored["memory"] == [(2, "integer")]
    assert {p for p, _ in stored["events"]} >= {0, 1}
    assert {kind for _, kind in stored["events"]} == {"integer"}

    store = open_store(store_url)  # migrates to 9
    try:
        assert schema_versions(store) == list(range(1, LATEST + 1))
        stored = position_types(path)
        assert stored["checkpoints"] == [("0", "text"), ("1", "text"), ("2", "text")]
        assert stored["waits"] == [("3", "text")]
        assert stored["memory"] == [("2", "text")]
        assert {kind for _, kind in stored["events"]} == {"text"}
        assert everything(store, [handle.id]) == as_text(before)
        assert [c.position for c in store.get_checkpoints(handle.id)] == ["0", "1", "2"]
        assert [(w.name, w.position) for w in store.get_waits(handle.id)] == [("go", "3")]
    finally:
        store.close()

    # Resumed on v9, the flow replays its recorded calls, wait and memory write, and goes on.
    try:
        tether.configure(db=store_url)
        client = tether.Client(store_url)
        client.input(handle.id, "go", 5)
        resumed = client.resume(handle.id)
        assert resumed.result(timeout=20) == 10 + 20 + 5 + 30
        assert v8_ran == Counter({1: 1, 2: 1, 3: 1}), "the recorded calls were not run again"
        record = client.get(handle.id)
        assert [(c.position, c.name, c.result) for c in record.checkpoints] == [
            ("0", "v8_step", 10),
            ("1", "v8_step", 20),
            ("2", "memory.set:total", [handle.id, 1]),
            ("4", "v8_step", 30),
        ]
        assert [(w.position, w.status, w.value) for w in record.waits] == [("3", "resolved", 5)]
        assert position_types(path)["memory"] == [("2", "text")], "the write was not repeated"
        assert not [e for e in record.events if e.kind == "divergence"]
    finally:
        _config.reset()
