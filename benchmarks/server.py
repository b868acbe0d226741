#!/usr/bin/env python3
"""tether server with a full store: the executions list and an execution page, p50/p99.

Usage:
    python benchmarks/server.py [--executions 100000] [--checkpoints 5000] [--requests 200]
                                [--db sqlite,postgres] [--json] [--quiet]

For each database (SQLite; PostgreSQL in a throwaway cluster, tests/pg_cluster.py's way, or the
empty database named by TETHER_BENCH_PG_URL):

1. Fill. Three seed flows run for real (``_server_flows``: ``research`` succeeds after three
   ~1 KB checkpoints, ``broken`` fails after one, ``approval`` waits for input), so the rows
   copied are exactly what tether writes. Then --executions copies of their rows (executions,
   checkpoints, waits, events; 80 % succeeded, 10 % failed, 10 % waiting) go in by
   ``executemany`` through the store's own connection, with new ids and creation times spread
   over 30 days; plus one succeeded execution with --checkpoints checkpoint calls. Nothing runs
   100,000 flows.
2. Serve. ``tether.server.create_app`` under a real uvicorn on a loopback port, in its own
   process (what ``tether server`` runs), with one ASGI wrapper added here that puts the time
   the app took to produce the response head into a ``Server-Timing`` header.
3. Measure. From another process, httpx sends sequential requests (after --warmup untimed
   ones per route) to: the API list (``GET /api/v1/executions``, its first page and a page deep
   in by cursor, and ``?status=failed``), the dashboard list (``/``), and for a typical
   execution and for the one with --checkpoints calls the API record
   (``GET /api/v1/executions/{id}``) and the dashboard page (``/executions/{id}``).

Reported per route: the round trip httpx sees (request sent to body read, loopback), the
app's own time and the server process's CPU time for it (both in the ``Server-Timing``
header), p50 and p99. Target: round-trip p99 under 50 ms (printed MET / NOT MET). The
machine's load average is printed: other work on a small machine inflates every figure here,
the CPU time least (requests are sequential, so it is this request's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    BENCH_DIR,
    child_env,
    child_main,
    dist_version,
    loadavg,
    log,
    machine_info,
    machine_was_busy,
    quantile,
    spawn,
    table,
    tether_source,
)

TESTS_DIR = BENCH_DIR.parent / "tests"
TARGET_MS = 50.0
DAYS = 30  # creation times of the copies spread over this many days
FILL_BATCH = 5000  # executions per transaction while filling
SERVE_READY_S = 60.0
FILL_TIMEOUT_S = 3600.0
MEASURE_TIMEOUT_S = 1800.0


# ==================================================================================================
# Child side
# ==================================================================================================


def _seed_rows(store: Any, flows: Any) -> dict[str, Any]:
    """Run each seed flow once and read back what it stored."""
    done = flows.research.run(0)
    done.result(timeout=120)
    failed = flows.broken.run(0)
    with contextlib.suppress(Exception):
        failed.result(timeout=120)
    waiting = flows.approval.run(0)
    deadline = time.monotonic() + 120
    while store.get_execution(waiting.id).status != "waiting":
        if time.monotonic() > deadline:
            raise RuntimeError("the approval seed never reached its wait")
        time.sleep(0.01)
    seeds = {}
    for kind, handle in (("succeeded", done), ("failed", failed), ("waiting", waiting)):
        row = store.get_execution(handle.id)
        seeds[kind] = {
            "row": row,
            "checkpoints": store.get_checkpoints(handle.id),
            "waits": store.get_waits(handle.id),
            "events": store.get_events(handle.id),
        }
    return seeds


def _new_id(created: float) -> str:
    return f"{int(created * 1000):011x}-{uuid.uuid4().hex[:12]}"


def _child_fill(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    import tether
    from tether.store import CheckpointRow
    from tether.store._sql_common import (
        CHECKPOINT_COLUMNS,
        EXECUTION_COLUMNS,
        INSERT_EVENT,
        WAIT_COLUMNS,
        checkpoint_values,
        event_params,
    )

    tether.configure(db=args.db)
    import _server_flows as flows

    store = tether.Client(args.db)._store
    seeds = _seed_rows(store, flows)
    columns = [c.strip() for c in EXECUTION_COLUMNS.split(",")]
    insert_execution = (
        f"INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({', '.join('?' * len(columns))})"
    )
    insert_checkpoint = (
        f"INSERT INTO checkpoints (execution_id, {CHECKPOINT_COLUMNS}) "
        f"VALUES ({', '.join('?' * 11)})"
    )
    insert_wait = f"INSERT INTO waits ({WAIT_COLUMNS}) VALUES ({', '.join('?' * 14)})"
    now = time.time()
    t0 = time.perf_counter()

    def copy(kind: str, created: float, execution_id: str, batch: dict[str, list[Any]]) -> None:
        seed = seeds[kind]
        base = seed["row"].created_at
        shift = created - base

        def at(value: float | None) -> float | None:
            return None if value is None else value + shift

        row = dataclasses.replace(
            seed["row"],
            id=execution_id,
            created_at=created,
            updated_at=at(seed["row"].updated_at),
            started_at=at(seed["row"].started_at),
            finished_at=at(seed["row"].finished_at),
        )
        values = [getattr(row, c) for c in columns]
        values[columns.index("cancel_requested")] = int(row.cancel_requested)
        batch["executions"].append(values)
        for cp in seed["checkpoints"]:
            moved = dataclasses.replace(
                cp, started_at=at(cp.started_at), finished_at=at(cp.finished_at)
            )
            batch["checkpoints"].append((execution_id, *checkpoint_values(moved)))
        for w in seed["waits"]:
            batch["waits"].append(
                (execution_id, w.name, w.position, w.kind, w.status, w.schema_ref,
                 w.json_schema, w.question, w.metadata, w.deadline, w.value, w.resolved_by,
                 at(w.created_at), at(w.resolved_at))
            )  # fmt: skip
        for e in seed["events"]:
            moved_event = dataclasses.replace(e, execution_id=execution_id, at=at(e.at))
            batch["events"].append(event_params(moved_event))

    def flush(batch: dict[str, list[Any]]) -> None:
        with store._transaction() as conn:
            store._executemany(conn, insert_execution, batch["executions"])
            if batch["checkpoints"]:
                store._executemany(conn, insert_checkpoint, batch["checkpoints"])
            if batch["waits"]:
                store._executemany(conn, insert_wait, batch["waits"])
            if batch["events"]:
                store._executemany(conn, INSERT_EVENT, batch["events"])
        for rows in batch.values():
            rows.clear()

    span = DAYS * 86400.0
    typical = ""
    batch: dict[str, list[Any]] = {"executions": [], "checkpoints": [], "waits": [], "events": []}
    for i in range(args.executions):
        created = now - span + span * i / max(args.executions, 1)
        kind = "failed" if i % 10 == 3 else "waiting" if i % 10 == 7 else "succeeded"
        execution_id = _new_id(created)
        if i == args.executions // 2:
            typical = execution_id
        copy(kind, created, execution_id, batch)
        if len(batch["executions"]) >= FILL_BATCH:
            flush(batch)
    if batch["executions"]:
        flush(batch)

    # One long execution: --checkpoints calls of the seed's first checkpoint, in sequence.
    big = _new_id(now - span / 3)
    seed = seeds["succeeded"]
    first: CheckpointRow = seed["checkpoints"][0]
    start = now - span / 3
    copy("succeeded", start, big, batch)
    batch["checkpoints"].clear()
    for n in range(args.checkpoints):
        step = dataclasses.replace(
            first, position=str(n), started_at=start + n * 0.5, finished_at=start + n * 0.5 + 0.4
        )
        batch["checkpoints"].append((big, *checkpoint_values(step)))
    flush(batch)
    if not args.db.startswith("sqlite"):
        # What a long-lived PostgreSQL database has (autovacuum analyzes it). Not on SQLite:
        # tether never runs ANALYZE there, so its stores have no statistics.
        with store._connection() as conn:
            store._run(conn, "ANALYZE")
    fill_s = time.perf_counter() - t0
    total = store._one("SELECT count(*) FROM executions")[0]
    checkpoints = store._one("SELECT count(*) FROM checkpoints")[0]
    return {
        "fill_s": round(fill_s, 1),
        "executions": total,
        "checkpoints": checkpoints,
        "typical": typical,
        "big": big,
    }


class _ServerTiming:
    """ASGI wrapper: the app's time to its response head, and the CPU time the server
    process spent meanwhile, in a Server-Timing header. The routes measured build their whole
    body before the head is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, cpu0 = time.perf_counter(), time.process_time()

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                cpu = (time.process_time() - cpu0) * 1000
                headers = list(message.get("headers", []))
                timing = f"app;dur={ms:.3f}, cpu;dur={cpu:.3f}"
                headers.append((b"server-timing", timing.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)


def _child_serve(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import uvicorn

    import tether
    from tether.server._app import create_app

    tether.configure(db=args.db, executor=False)
    app = create_app(tether.Client(args.db))
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    uvicorn.run(_ServerTiming(app), host="127.0.0.1", port=args.port, access_log=False)
    return {}


def _routes(typical: str, big: str, deep_cursor: str | None) -> list[tuple[str, str]]:
    routes = [
        ("API list", "/api/v1/executions"),
        ("API list ?status=failed", "/api/v1/executions?status=failed"),
    ]
    if deep_cursor:
        routes.append(("API list, page deep in", f"/api/v1/executions?cursor={deep_cursor}"))
    routes += [
        ("dashboard list", "/"),
        ("API execution", f"/api/v1/executions/{typical}"),
        ("dashboard execution", f"/executions/{typical}"),
        ("API execution, big", f"/api/v1/executions/{big}"),
        ("dashboard execution, big", f"/executions/{big}"),
    ]
    return routes


def _child_measure(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    base = f"http://127.0.0.1:{args.port}"
    with httpx.Client(base_url=base, timeout=120) as http:
        deadline = time.monotonic() + SERVE_READY_S
        while True:
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /healthz in {SERVE_READY_S:.0f} s")
            time.sleep(0.05)
        # A cursor half way down the list: keyset pages cost the same at any depth, or not.
        page = http.get("/api/v1/executions", params={"limit": 1000}).json()
        for _ in range(args.deep_pages):
            if not page["next"]:
                break
            page = http.get(
                "/api/v1/executions", params={"limit": 1000, "cursor": page["next"]}
            ).json()
        results: dict[str, Any] = {}
        for name, path in _routes(args.typical, args.big, page["next"]):
            for _ in range(args.warmup):
                response = http.get(path)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{path}: HTTP {response.status_code}: {response.text[:300]}"
                    )
            trips: list[float] = []
            apps: list[float] = []
            cpus: list[float] = []
            size = 0
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = http.get(path)
                trips.append((time.perf_counter() - t0) * 1000)
                timing = _timing(response.headers.get("server-timing", ""))
                apps.append(timing.get("app", float("nan")))
                cpus.append(timing.get("cpu", float("nan")))
                size = len(response.content)
            results[name] = {
                "path": path, "bytes": size, "trip_ms": trips, "app_ms": apps, "cpu_ms": cpus
            }  # fmt: skip
    return {"routes": results}


def _timing(header: str) -> dict[str, float]:
    """`app;dur=1.2, cpu;dur=0.9` as {"app": 1.2, "cpu": 0.9}."""
    found = {}
    for entry in header.split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if duration:
            found[name] = float(duration)
    return found


CHILDREN = {"fill": _child_fill, "serve": _child_serve, "measure": _child_measure}


# ==================================================================================================
# Parent side
# ==================================================================================================


@dataclass
class Context:
    env: dict[str, str]
    tmp: Path
    progress: bool
    args: argparse.Namespace
    errors: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _postgres_url(ctx: Context) -> Iterator[str]:
    """The database to fill: TETHER_BENCH_PG_URL, else a throwaway cluster's."""
    given = os.environ.get("TETHER_BENCH_PG_URL")
    if given:
        yield given
        return
    sys.path.insert(0, str(TESTS_DIR))
    import pg_cluster

    cluster = pg_cluster.start_cluster()
    try:
        yield cluster.create_database("tether_server_bench")
    finally:
        pg_cluster.remove(cluster)


def _serve(ctx: Context, url: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "serve"]
    return subprocess.Popen(
        [*cmd, "--db", url, "--port", str(port)],
        env=ctx.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _measure_db(ctx: Context, name: str, url: str) -> dict[str, Any]:
    a = ctx.args
    log(ctx, f"[{name}] filling: {a.executions:,} executions, one with {a.checkpoints:,} calls")
    fill = spawn(
        __file__,
        "fill",
        ["--db", url, "--executions", str(a.executions), "--checkpoints", str(a.checkpoints)],
        env=ctx.env,
        timeout_s=FILL_TIMEOUT_S,
        cwd=ctx.tmp,
    )
    if (why := fill.failure("typical")) is not None:
        return {"error": f"fill: {why}"}
    log(ctx, f"[{name}] filled in {fill.data['fill_s']} s; serving and measuring")
    port = _free_port()
    server = _serve(ctx, url, port)
    try:
        measured = spawn(
            __file__,
            "measure",
            ["--port", str(port), "--typical", fill.data["typical"], "--big", fill.data["big"],
             "--requests", str(a.requests), "--warmup", str(a.warmup),
             "--deep-pages", str(max(0, a.executions // 2000))],
            env=ctx.env,
            timeout_s=MEASURE_TIMEOUT_S,
            cwd=ctx.tmp,
        )  # fmt: skip
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    if (why := measured.failure("routes")) is not None:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        return {"error": f"measure: {why}" + (f" (server: {' | '.join(tail)})" if tail else "")}
    routes = {
        route: {
            "path": r["path"],
            "bytes": r["bytes"],
            "trip_p50_ms": round(quantile(r["trip_ms"], 1, 2), 2),
            "trip_p99_ms": round(quantile(r["trip_ms"], 99, 100), 2),
            "app_p50_ms": round(quantile(r["app_ms"], 1, 2), 2),
            "app_p99_ms": round(quantile(r["app_ms"], 99, 100), 2),
            "cpu_p50_ms": round(quantile(r["cpu_ms"], 1, 2), 2),
            "cpu_p99_ms": round(quantile(r["cpu_ms"], 99, 100), 2),
        }
        for route, r in measured.data["routes"].items()
    }
    for r in routes.values():
        r["met"] = r["trip_p99_ms"] < TARGET_MS
    return {"fill": fill.data, "routes": routes}


def _render(info: dict[str, Any], results: dict[str, dict[str, Any]], a: Any) -> str:
    lines = [
        f"tether server: {a.executions:,} executions in the store, one with {a.checkpoints:,} "
        f"checkpoint calls; {a.requests} sequential requests per route after {a.warmup} warm-up",
        f"machine: {info['cpu']}, {info['usable_cores']} usable cores, Python {info['python']}, "
        f"SQLite {info['sqlite']}; load average {info['loadavg_start']} at the start, "
        f"{info['loadavg_end']} at the end",
    ]
    if machine_was_busy(info):
        lines.append("note: the machine was busy (load above half its cores): figures are high")
    lines.append(
        f"round trip: httpx on loopback, request to body; app: Server-Timing; cpu: the "
        f"server process's CPU time per request. "
        f"Target: round-trip p99 < {TARGET_MS:.0f} ms\n"
    )
    header = [
        "db", "route", "bytes", "trip p50", "trip p99", "app p50", "app p99", "cpu p50",
        "cpu p99", "target",
    ]  # fmt: skip
    rows: list[list[str]] = []
    for db, result in results.items():
        if "error" in result:
            rows.append([db, result["error"]])
            continue
        for route, r in result["routes"].items():
            rows.append([
                db, route, f"{r['bytes']:,}", f"{r['trip_p50_ms']:.1f} ms",
                f"{r['trip_p99_ms']:.1f} ms", f"{r['app_p50_ms']:.1f} ms",
                f"{r['app_p99_ms']:.1f} ms", f"{r['cpu_p50_ms']:.1f} ms",
                f"{r['cpu_p99_ms']:.1f} ms", "MET" if r["met"] else "NOT MET",
            ])  # fmt: skip
    lines += table(header, rows, numeric={2, 3, 4, 5, 6, 7, 8})
    fills = [
        f"{db}: filled {r['fill']['executions']:,} executions and {r['fill']['checkpoints']:,} "
        f"checkpoint calls in {r['fill']['fill_s']} s"
        for db, r in results.items()
        if "fill" in r
    ]
    return "\n".join([*lines, "", *fills])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--checkpoints", type=int, default=5000, help="calls of the big one")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per route")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests per route")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Child mode: how the parent runs each phase in a child process.
    parser.add_argument("--worker", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--typical", help=argparse.SUPPRESS)
    parser.add_argument("--big", help=argparse.SUPPRESS)
    parser.add_argument("--deep-pages", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        if args.executions < 10:
            parser.error("--executions must be at least 10")
        if args.checkpoints < 1 or args.requests < 1 or args.warmup < 0:
            parser.error("--checkpoints and --requests must be at least 1, --warmup 0 or more")
        unknown = set(args.db.split(",")) - {"sqlite", "postgres"}
        if unknown:
            parser.error(f"--db takes sqlite, postgres or both, not {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        if args.worker == "serve":  # runs until terminated; nothing to report
            CHILDREN["serve"](args)
            return 0
        return child_main(lambda: CHILDREN[args.worker](args))
    tether_from_src, missing = tether_source()
    if missing:
        print(f"tether is unavailable: {missing}", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="tether-server-bench-"))
    info = machine_info(tmp, tether=dist_version("tether") or "src checkout, not installed")
    ctx = Context(
        # The store comes from the command lines here, never the shell.
        env=child_env(tether_from_src, drop=("TETHER_DB", "TETHER_EXECUTOR")),
        tmp=tmp,
        progress=not args.quiet,
        args=args,
    )
    results: dict[str, dict[str, Any]] = {}
    try:
        for db in args.db.split(","):
            if db == "sqlite":
                results[db] = _measure_db(ctx, db, f"sqlite:///{tmp / 'tether.db'}")
            else:
                try:
                    with _postgres_url(ctx) as url:
                        results[db] = _measure_db(ctx, db, url)
                except (RuntimeError, ImportError) as exc:
                    results[db] = {"error": f"PostgreSQL unavailable: {exc}"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = loadavg()
    if args.json:
        print(json.dumps({"machine": info, "results": results}, indent=2, default=str))
    else:
        print(_render(info, results, args))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
