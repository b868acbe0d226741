"""The SQL store's claims and leases: who runs what (claim, renew, runnable, queue limits)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._base import (
    Claim,
    ExecutionRow,
)
from ._sql_common import (
    EXECUTION_COLUMNS,
    Connection,
    SqlBase,
    execution_row,
    marks,
)


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# Runnable: queued and not (validly) leased, waiting and due, or running with a dead lease.
# Queries take the three branches one by one, each on its own partial index (migration 0008),
# rather than as one OR. The status is a literal so that the planner can prove the index's
# WHERE. Each branch: its condition, and the time its index orders it by (None: the index is
# in claim order).
RUNNABLE_BRANCHES = (
    (
        "status = 'queued' AND (lease_token IS NULL OR lease_expires < :now) "
        "AND (not_before IS NULL OR not_before <= :now)",
        None,
    ),
    ("status = 'waiting' AND wake_at <= :due", "wake_at"),
    ("status = 'running' AND lease_expires < :now", "lease_expires"),
)
# The keyset scans of scan_runnable: each branch's condition and the column it is ordered by
# (then id), on an index that starts with the status and that column (executions_by_status,
# executions_due, executions_lease_expiry), so a page seeks to its start instead of reading
# the rows before it.
SCAN_BRANCHES = {
    "queued": (RUNNABLE_BRANCHES[0][0], "created_at"),
    "due": (RUNNABLE_BRANCHES[1][0], "wake_at"),
    "expired": (RUNNABLE_BRANCHES[2][0], "lease_expires"),
}
# Ids per statement of execution_states.
_STATES_BATCH = 500

# Due timers and expired leases are found by time, not in claim order, so a claim takes the
# CLAIM_WINDOW earliest of them and the best of those (priority, then oldest): a backlog of
# thousands costs a claim this many rows, not the backlog. The order is exact while no more
# are due (or expired) at once; past that, timers are served about in the order they fell due.
CLAIM_WINDOW = 100

# Whether an execution (the row of an UPDATE ... RETURNING) has checkpoint calls or waits.
HAS_HISTORY = (
    "(EXISTS (SELECT 1 FROM checkpoints c WHERE c.execution_id = executions.id) "
    "OR EXISTS (SELECT 1 FROM waits w WHERE w.execution_id = executions.id))"
)

# What a holder's checkpoint calls and waits add up to: their count. A takeover that finds it
# changed since the last one saw progress in between.
_PROGRESS = (
    "((SELECT count(*) FROM checkpoints c WHERE c.execution_id = executions.id) "
    "+ (SELECT count(*) FROM waits w WHERE w.execution_id = executions.id))"
)
# Set by every claim: taking a `running` execution from another holder is a takeover (its
# process died, or its lease ran out). Takeovers in a row with no progress between them are
# counted (the engine backs off and, past `crash_loop_limit`, fails the execution); any
# progress starts the count again. Only takeovers read the counts (CASE evaluates lazily).
TAKEOVER = (
    "takeovers = CASE WHEN status <> 'running' THEN takeovers "
    f"WHEN {_PROGRESS} <> progress_mark THEN 1 ELSE takeovers + 1 END, "
    f"progress_mark = CASE WHEN status = 'running' THEN {_PROGRESS} ELSE progress_mark END, "
    "not_before = CASE WHEN status = 'running' THEN NULL ELSE not_before END"
)

# A queue's limits (if any) allow one more start: fewer running than its concurrency, and
# fewer starts in the last rate period than its rate limit. `+r.lease_expires` keeps the
# running count off the lease-expiry index (which holds every queue's running rows): SQLite
# would otherwise read them all per candidate instead of the queue's through executions_by_queue.
UNDER_LIMITS = (
    "NOT EXISTS (SELECT 1 FROM queue_limits q WHERE q.name = e.queue AND ("
    "(q.concurrency IS NOT NULL AND (SELECT count(*) FROM executions r WHERE r.queue = e.queue "
    "AND r.status = 'running' AND +r.lease_expires >= :now) >= q.concurrency) OR "
    "(q.rate_limit IS NOT NULL AND (SELECT count(*) FROM executions s WHERE s.queue = e.queue "
    "AND s.started_at >= :now - q.rate_period) >= q.rate_limit)))"
)


class Pick(NamedTuple):
    """Which runnable executions a claim may take (see Store.claim_runnable)."""

    ids: Sequence[str] | None
    queues: set[str] | None
    exclude_queues: tuple[str, ...]
    exclude_flows: tuple[tuple[str, str | None], ...]


class ClaimsSql(SqlBase):
    """The SQL store's claims and leases: who runs what (claim, renew, runnable, queue limits)."""

    def next_due(self) -> float | None:
        found = self._one(
            "SELECT min(wake_at) FROM executions WHERE status = 'waiting' AND wake_at IS NOT NULL"
        )
        return None if found is None or found[0] is None else float(found[0])

    def claim(
        self,
        execution_id: str,
        claim: Claim,
        *,
        from_statuses: Sequence[str],
        expected_token: str | None,
        now: float,
        status: str = "running",
    ) -> bool:
        running = status == "running"
        token_test = "lease_token IS NULL" if expected_token is None else "lease_token = ?"
        params: list[Any] = [
            status, claim.owner, claim.token, claim.expires, int(running), running, now, now,
            execution_id, *from_statuses,
        ]  # fmt: skip
        if expected_token is not None:
            params.append(expected_token)
        return (
            self._count(
                "UPDATE executions SET status = ?, owner = ?, lease_token = ?, lease_expires = ?, "
                f"attempt = attempt + ?, {TAKEOVER}, started_at = CASE WHEN ? "
                "THEN coalesce(started_at, CAST(? AS DOUBLE PRECISION)) "
                "ELSE started_at END, updated_at = ? "
                f"WHERE id = ? AND status IN ({marks(from_statuses)}) AND {token_test}",
                params,
            )
            == 1
        )

    def hand_over(self, execution_id: str, token: str, claim: Claim, *, now: float) -> bool:
        return (
            self._count(
                "UPDATE executions SET owner = ?, lease_token = ?, lease_expires = ?, "
                "updated_at = ? WHERE id = ? AND status = 'running' AND lease_token = ?",
                [claim.owner, claim.token, claim.expires, now, execution_id, token],
            )
            == 1
        )

    def renew(
        self,
        execution_ids: Sequence[str],
        token_by_id: dict[str, str],
        expires: float,
        progress: dict[str, str | None] | None = None,
        *,
        refresh_before: float | None = None,
    ) -> list[tuple[str, bool]]:
        if not execution_ids:
            return []
        progress = progress or {}
        # lease_expires is indexed (the claim's expired-lease branch): an UPDATE that leaves
        # it alone stays HOT (no index writes), so it is moved only when due.
        # (A lease beyond `expires`, after the clock jumped back, is brought back to it.)
        expiry = ":expires" if refresh_before is None else (
            "CASE WHEN lease_expires IS NULL OR lease_expires < :refresh "
            "OR lease_expires > :expires THEN :expires ELSE lease_expires END"
        )  # fmt: skip
        # Every lease as one JSON parameter: one statement per heartbeat whatever the number
        # of leases, and each row found by primary key. Progress is written only for the
        # ids given one (`shows`), so a beat rewrites no row whose calls did not change.
        batch = [
            [i, token_by_id[i], "y" if i in progress else "", progress.get(i)]
            for i in execution_ids
        ]
        params = {"expires": expires, "refresh": refresh_before, "rows": json_text(batch)}
        with self._connection() as conn:
            rows = self._run(
                conn,
                f"UPDATE executions SET lease_expires = {expiry}, progress = CASE "
                "WHEN b.shows = 'y' THEN b.progress ELSE executions.progress END "
                f"FROM {self._json_rows(('id', 'token', 'shows', 'progress'), 'rows')} b "
                "WHERE executions.id = b.id AND executions.lease_token = b.token "
                f"{self._json_keys('executions.id', 'rows')} "
                "RETURNING executions.id, executions.cancel_requested",
                params,
            ).fetchall()
        found = {str(r[0]): bool(r[1]) for r in rows}
        return [(i, found[i]) for i in execution_ids if i in found]

    def cancel_requests(self) -> list[tuple[str, str]]:
        # The partial index of migration 0017 holds only these rows: a read per heartbeat
        # costs what is cancelled, not what runs.
        rows = self._all(
            "SELECT id, lease_token FROM executions "
            "WHERE status = 'running' AND cancel_requested = 1"
        )
        return [(str(r[0]), str(r[1])) for r in rows if r[1] is not None]

    def leased_on_host(
        self, *, prefix: str, now: float, other_than: str | None = None
    ) -> list[ExecutionRow]:
        rows = self._all(
            f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE status IN ('queued', 'running') "
            "AND lease_expires >= ? AND substr(owner, 1, ?) = ? AND owner <> ? "
            "ORDER BY created_at",
            (now, len(prefix), prefix, "" if other_than is None else other_than),
        )
        return [execution_row(r) for r in rows]

    def claim_runnable(
        self,
        claim: Claim,
        *,
        now: float,
        due: float,
        ids: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        exclude_queues: Sequence[str] = (),
        exclude_flows: Sequence[tuple[str, str | None]] = (),
    ) -> ExecutionRow | None:
        if ids is not None and not ids:
            return None
        wanted = None if queues is None else set(queues) - set(exclude_queues)
        pick = Pick(ids, wanted, tuple(exclude_queues), tuple(exclude_flows))
        # Queues without limits need no coordination: one atomic statement claims (and
        # leaves the limited queues out by itself, so the usual claim is one round trip).
        found = self._claim(claim, now, due, pick, unlimited=True)
        if found is not None:
            return found
        # A limited queue is claimed from under a per-queue lock, so that concurrent
        # claimers count each other's claims against its concurrency and rate limits.
        limited = {name for (name,) in self._all("SELECT name FROM queue_limits")}
        limited -= set(exclude_queues)
        for name in sorted(limited if wanted is None else limited & wanted):
            with self._transaction() as conn:
                self._lock_queue(conn, name)
                found = self._claim(claim, now, due, pick._replace(queues={name}), conn=conn)
            if found is not None:
                return found
        return None

    def _claim(
        self,
        claim: Claim,
        now: float,
        due: float,
        pick: Pick,
        *,
        unlimited: bool = False,
        conn: Connection | None = None,
    ) -> ExecutionRow | None:
        params: dict[str, Any] = {
            "owner": claim.owner, "token": claim.token, "expires": claim.expires, "now": now,
            "due": due,
        }  # fmt: skip
        where: list[str] = []
        if unlimited:
            where.append("queue NOT IN (SELECT name FROM queue_limits)")
        for label, column, values, negate in (
            ("id", "id", pick.ids, False), ("q", "queue", pick.queues, False),
            ("xq", "queue", pick.exclude_queues, True),
        ):  # fmt: skip
            if values is None or (negate and not values):
                continue
            if not values:
                return None
            names = [f":{label}{i}" for i in range(len(values))]
            params.update(zip((n[1:] for n in names), values, strict=True))
            where.append(f"{column} {'NOT ' if negate else ''}IN ({', '.join(names)})")
        for i, (import_path, script) in enumerate(pick.exclude_flows):
            params[f"xp{i}"], params[f"xs{i}"] = import_path, script or ""
            where.append(f"NOT (import_path = :xp{i} AND coalesce(script, '') = :xs{i})")
        if not unlimited:
            where.append(UNDER_LIMITS)  # the unlimited claim leaves limited queues out
        # One branch per way of being runnable, each on its partial index: queued rows are
        # walked in claim order and the first row it can take is locked (Postgres: skipping
        # rows other claimers hold); due timers and expired leases are taken from a window of
        # the earliest ones. So a claim never scans or sorts the whole table, nor every
        # waiting or running row; the best of the (at most three) rows is taken. One
        # statement: the row is picked and taken atomically (SQLite serializes writers).
        # RETURNING says whether anything is recorded for the execution, so its first run
        # need not load its (no) checkpoint calls and waits.
        filters = " AND ".join(where)
        picks = []
        for i, (branch, by_time) in enumerate(RUNNABLE_BRANCHES):
            rows = f"executions e WHERE {branch} AND {filters}"
            if by_time is not None:
                # The window (see CLAIM_WINDOW) is read without locking anything; then its
                # best row that no other claimer holds is locked (and the branch's condition
                # checked again on it, in case it changed meanwhile). Locking inside the
                # window would lock all its rows and leave concurrent claimers nothing.
                window = (
                    f"SELECT e.id FROM {rows} ORDER BY {by_time} LIMIT {CLAIM_WINDOW}"
                )  # fmt: skip
                rows = f"executions e WHERE {self.in_window.format(window)} AND {branch}"
            picks.append(
                f"SELECT * FROM (SELECT id, priority, created_at FROM {rows} "
                f"ORDER BY priority DESC, created_at LIMIT 1{self.skip_locked}) AS b{i}"
            )
        branches = " UNION ALL ".join(picks)
        sql = (
            "UPDATE executions SET status = 'running', owner = :owner, lease_token = :token, "
            f"lease_expires = :expires, attempt = attempt + 1, wake_at = NULL, {TAKEOVER}, "
            "started_at = coalesce(started_at, :now), updated_at = :now "
            f"WHERE id = (SELECT id FROM ({branches}) AS c "
            "ORDER BY priority DESC, created_at LIMIT 1) "
            f"RETURNING {EXECUTION_COLUMNS}, {HAS_HISTORY}"
        )
        if conn is not None:
            found = self._run(conn, sql, params).fetchone()
        else:
            found = self._one(sql, params)
        if not found:
            return None
        row = execution_row(found[:-1])
        row.has_history = bool(found[-1])
        return row

    def set_queue_limits(
        self,
        name: str,
        *,
        concurrency: int | None,
        rate_limit: int | None,
        rate_period: float | None,
        now: float,
    ) -> None:
        with self._connection() as conn:
            if concurrency is None and rate_limit is None:
                self._run(conn, "DELETE FROM queue_limits WHERE name = ?", (name,))
                return
            self._run(
                conn,
                "INSERT INTO queue_limits (name, concurrency, rate_limit, rate_period, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, "
                "rate_period = excluded.rate_period, updated_at = excluded.updated_at",
                (name, concurrency, rate_limit, rate_period, now),
            )

    def runnable(
        self, *, now: float, due: float, limit: int, queues: Sequence[str] | None = None
    ) -> list[ExecutionRow]:
        params: dict[str, Any] = {"now": now, "due": due, "limit": limit}
        among = ""
        if queues is not None:
            if not queues:
                return []
            names = [f":q{i}" for i in range(len(queues))]
            params.update(zip((n[1:] for n in names), queues, strict=True))
            among = f"AND queue IN ({', '.join(names)})"
        # One branch per way of being runnable, each ordered and limited on its own index,
        # instead of one OR that makes the database scan and sort every execution.
        union = " UNION ALL ".join(
            f"SELECT * FROM (SELECT {EXECUTION_COLUMNS} FROM executions WHERE {branch} {among} "
            f"ORDER BY priority DESC, created_at LIMIT :limit) AS b{i}"
            for i, (branch, _) in enumerate(RUNNABLE_BRANCHES)
        )
        rows = self._all(f"{union} ORDER BY priority DESC, created_at LIMIT :limit", params)
        return [execution_row(r) for r in rows]

    def scan_runnable(
        self,
        branch: str,
        *,
        after: tuple[float, str] | None,
        now: float,
        due: float,
        limit: int,
    ) -> list[ExecutionRow]:
        condition, column = SCAN_BRANCHES[branch]
        params: dict[str, Any] = {"now": now, "due": due, "limit": limit}
        where = condition
        if after is not None:
            # Written so that the index seeks on `column >= :key` (a row value comparison
            # is not used for a seek by every SQLite version).
            params["key"], params["id"] = after
            where += (
                f" AND {column} >= :key AND ({column} > :key OR id > :id)"
            )  # fmt: skip
        rows = self._all(
            f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE {where} "
            f"ORDER BY {column}, id LIMIT :limit",
            params,
        )
        return [execution_row(r) for r in rows]

    def execution_states(self, ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        found: dict[str, tuple[str, str | None]] = {}
        for start in range(0, len(ids), _STATES_BATCH):
            batch = list(ids[start : start + _STATES_BATCH])
            rows = self._all(
                f"SELECT id, status, owner FROM executions WHERE id IN ({marks(batch)})", batch
            )
            found.update((str(r[0]), (str(r[1]), r[2])) for r in rows)
        return found
