#!/usr/bin/env python3
"""Per-checkpoint overhead of tether against a raw sqlite3 floor, DBOS and LangGraph.

Usage:
    python benchmarks/checkpoint_overhead.py [--steps 1000] [--runs 5] [--only KEYS] [--json]

One run prints machine info, one table of microseconds per checkpoint (median, min, p90) for a
flow of N sequential steps that each return a ~1 KB dict, the ratios against the floor and tether's
speedup over the peers, then tether's resume timings (SIGKILL at 90% of the steps, resume in a fresh
process).

Method, and why:
    * Every run is a separate child process (this script re-run with a hidden ``--worker`` flag) on
      a fresh database in its own temp dir: no engine shares a process, threads, caches or a file
      with another, and global singletons (DBOS) are launched exactly once per process.
    * Runs are interleaved round-robin across engines, so machine drift hits them all alike.
    * Each child first runs an untimed 20-step warm-up execution (connection pools, statement
      caches, schema creation), then times one N-step execution from start to result.
    * The peers' SQLite is set to the floor's durability (WAL, synchronous=NORMAL); their stock
      settings differ (DBOS: rollback journal + synchronous=FULL, LangGraph: WAL +
      synchronous=FULL), which costs fsyncs, not framework overhead. ``--only ...,stock`` adds
      rows for the stock settings.

Keys for --only (comma separated): raw, dbos, langgraph, tether-sync, tether-async, resume,
dbos-stock, langgraph-stock; aliases: peers = dbos,langgraph; tether =
tether-sync,tether-async,resume; stock = dbos-stock,langgraph-stock. Default: raw,peers,tether.

Peers are optional (pip install -e '.[bench]'); tether rows say "unavailable: <reason>" when
tether cannot be imported, so the script runs before the package exists.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import math
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    Child,
    Unavailable,
    child_env,
    child_main,
    dist_version,
    emit,
    loadavg,
    log,
    machine_info,
    machine_was_busy,
    quantile,
    spawn,
    table,
    tether_source,
    unavailable_on_error,
)
from _payload import payload, payload_size

US = "\u00b5s"  # micro sign, escaped so the source stays ASCII
INSTALL_HINT = "not installed (pip install -e '.[bench]')"
WARMUP_STEPS = 20
KILL_AT_ENV = "TETHER_BENCH_KILL_AT"  # read by _tether_flows; duplicated so tether stays optional
SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
# A Handle.result() timeout, generous: the point is never to hang forever on a broken build.
RESULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Engine:
    key: str
    label: str
    module: str | None  # what must be importable, checked in the parent before spawning
    dist: str | None  # distribution whose version goes next to the label
    peer: bool  # peers may get fewer runs when slow; raw and tether always get --runs
    note: str = ""


ENGINES: tuple[Engine, ...] = (
    Engine("raw", "raw sqlite3 floor", None, None, peer=False),
    Engine("dbos", "DBOS", "dbos", "dbos", peer=True, note="SQLite system db, start_workflow"),
    Engine("langgraph", "LangGraph functional", "langgraph", "langgraph", peer=True,
           note="@entrypoint + @task, durability='async' (default)"),
    Engine("dbos-stock", "DBOS, stock sqlite", "dbos", "dbos", peer=True),
    Engine("langgraph-stock", "LangGraph, stock sqlite", "langgraph", "langgraph", peer=True),
    Engine("tether-sync", "tether", "tether", "tether", peer=False),
    Engine("tether-async", "tether (async)", "tether", "tether", peer=False),
)  # fmt: skip
ENGINE_BY_KEY = {e.key: e for e in ENGINES}
RESUME_KEY = "resume"
ALIASES = {
    "peers": ("dbos", "langgraph"),
    "tether": ("tether-sync", "tether-async", RESUME_KEY),
    "stock": ("dbos-stock", "langgraph-stock"),
}
DEFAULT_ONLY = "raw,peers,tether"
VERSION_DISTS = ("dbos", "langgraph", "langgraph-checkpoint-sqlite", "sqlalchemy", "tether")


# ==================================================================================================
# Worker side: runs inside a child process, prints MARKER + JSON lines, and exits.
# ==================================================================================================


def _sqlite_settings(conn: Any) -> dict[str, str]:
    """journal_mode and synchronous as the connection doing the writes sees them."""
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {"journal_mode": str(journal), "synchronous": SYNC_NAMES.get(int(sync), str(sync))}


def _journal_mode_of(path: Path) -> str | None:
    # journal_mode=WAL is stored in the file, so it can be read afterwards from outside; synchronous
    # is per connection and cannot.
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()  # so a collection owed by the setup is not charged to the timed execution
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _warm_then_time(
    args: argparse.Namespace, execute: Callable[[str, int], Any]
) -> tuple[str, float, Any]:
    """An untimed warm-up execution, then one timed execution under a fresh id: id, s, result."""
    execute("warmup", args.warmup)
    run_id = uuid.uuid4().hex
    elapsed, result = _timed(lambda: execute(run_id, args.steps))
    return run_id, elapsed, result


def _measure_on(
    conn: sqlite3.Connection,
    count_sql: str,
    args: argparse.Namespace,
    execute: Callable[[str, int], Any],
) -> dict[str, Any]:
    """Time execute() as _warm_then_time does; then, on conn (the connection doing the writes),
    count the timed id's rows with count_sql and read its settings. Closes conn."""
    run_id, elapsed, result = _warm_then_time(args, execute)
    rows = conn.execute(count_sql, (run_id,)).fetchone()
    settings = _sqlite_settings(conn)
    conn.close()
    return {"elapsed_s": elapsed, "result": result, "rows": rows[0], **settings}


def _worker_raw(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.db_dir) / "raw.sqlite"
    # Autocommit: each INSERT is its own implicit transaction and commit, as one checkpoint is.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    # The primary key is the index any checkpoint store needs to find a step's result on replay.
    conn.execute(
        "CREATE TABLE checkpoints (run_id TEXT NOT NULL, step INTEGER NOT NULL,"
        " result TEXT NOT NULL, PRIMARY KEY (run_id, step))"
    )
    insert = "INSERT INTO checkpoints (run_id, step, result) VALUES (?, ?, ?)"

    def execute(run_id: str, n: int) -> int:
        for i in range(n):
            conn.execute(insert, (run_id, i, json.dumps(payload(i))))
        return n

    return _measure_on(conn, "SELECT count(*) FROM checkpoints WHERE run_id = ?", args, execute)


def _worker_dbos(args: argparse.Namespace, stock: bool) -> dict[str, Any]:
    import logging

    with unavailable_on_error():
        import sqlalchemy as sa
        from dbos import DBOS, SetWorkflowID

    path = Path(args.db_dir) / "dbos.sqlite"
    seen: dict[str, str] = {}

    # A class-level listener rather than a custom engine: DBOS builds its engine exactly as it
    # always does (its pool, pre-ping, IMMEDIATE transactions), and only the two PRAGMAs change.
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if not stock:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        seen.update(_sqlite_settings(dbapi_conn))

    sa.event.listen(sa.engine.Engine, "connect", on_connect)

    @DBOS.step()
    def bench_step(i: int) -> dict[str, Any]:
        return payload(i)

    @DBOS.workflow()
    def bench_flow(n: int) -> int:
        for i in range(n):
            bench_step(i)
        return n

    DBOS(
        config={
            "name": "tether-bench",
            "system_database_url": f"sqlite:///{path}",
            "log_level": "ERROR",
            "enable_otlp": False,
        }
    )
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.ERROR)  # launch configures it; quiet it after

    def execute(workflow_id: str, n: int) -> Any:
        with SetWorkflowID(workflow_id):
            handle = DBOS.start_workflow(bench_flow, n)
        return handle.get_result()

    try:
        workflow_id, elapsed, result = _warm_then_time(args, execute)
    finally:
        DBOS.destroy()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM operation_outputs WHERE workflow_uuid = ?", (workflow_id,)
        ).fetchone()
    return {"elapsed_s": elapsed, "result": result, "rows": rows[0], **seen}


def _worker_langgraph(args: argparse.Namespace, stock: bool) -> dict[str, Any]:
    with unavailable_on_error():
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.func import entrypoint, task

    path = Path(args.db_dir) / "langgraph.sqlite"
    # Opened as SqliteSaver.from_conn_string opens it; setup() then switches the file to WAL.
    conn = sqlite3.connect(path, check_same_thread=False)
    if not stock:
        conn.execute("PRAGMA synchronous=NORMAL")
    saver = SqliteSaver(conn)
    saver.setup()

    @task
    def bench_step(i: int) -> dict[str, Any]:
        return payload(i)

    @entrypoint(checkpointer=saver)
    def bench_flow(n: int) -> int:
        for i in range(n):
            bench_step(i).result()
        return n

    def execute(thread_id: str, n: int) -> Any:
        return bench_flow.invoke(n, config={"configurable": {"thread_id": thread_id}})

    return _measure_on(conn, "SELECT count(*) FROM writes WHERE thread_id = ?", args, execute)


def _drive(flow: Any, n: int) -> Any:
    # The contract: run() records the execution and starts it in the background, returning a
    # Handle at once; result() blocks until it finishes (for an async flow, with the awaited
    # value), so one code path times sync and async flows alike.
    return flow.run(n).result(timeout=RESULT_TIMEOUT_S)


def _tether_url(args: argparse.Namespace) -> str:
    return args.db or f"sqlite:///{Path(args.db_dir) / 'tether.sqlite'}"


def _tether_version(tether: Any) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("tether")
    version = getattr(tether, "__version__", None)
    return f"{version} (src checkout)" if version else "src checkout"


def _worker_tether(args: argparse.Namespace, is_async: bool) -> dict[str, Any]:
    url = _tether_url(args)
    with unavailable_on_error():
        import tether

        tether.configure(db=url)
        import _tether_flows as flows

        flow = flows.abench_flow if is_async else flows.bench_flow
    _drive(flow, args.warmup)
    elapsed, result = _timed(lambda: _drive(flow, args.steps))
    path = Path(url.removeprefix("sqlite:///"))
    return {
        "elapsed_s": elapsed,
        "result": result,
        "journal_mode": _journal_mode_of(path),
        "version": _tether_version(tether),
    }


def _worker_tether_crash(args: argparse.Namespace) -> dict[str, Any]:
    with unavailable_on_error():
        import tether

        tether.configure(db=_tether_url(args))
        import _tether_flows as flows
    handle = flows.resume_flow.run(args.steps)
    # run() returns at once, so the id is out before the kill; should it ever not be, the resume
    # worker finds the execution with Client.list().
    emit({"id": str(handle.id)})
    handle.result(timeout=RESULT_TIMEOUT_S)
    raise RuntimeError(f"the flow finished: {KILL_AT_ENV} did not kill the process")


def _find_execution_id(client: Any, flow: Any) -> str:
    """The one execution in a fresh db, for when the crashed process could not print its id."""
    records = client.list(flow=flow.name, limit=2)
    if len(records) != 1:
        raise RuntimeError(f"expected one {flow.name} execution in the db, found {len(records)}")
    return str(records[0].id)


def _worker_tether_resume(args: argparse.Namespace) -> dict[str, Any]:
    url = _tether_url(args)
    with unavailable_on_error():
        # Registers the flows under the same module name as in the crashed process.
        import _tether_flows as flows
        import tether

    t0 = time.perf_counter()
    client = tether.Client(db=url)
    open_s = time.perf_counter() - t0
    execution_id = args.exec_id or _find_execution_id(client, flows.resume_flow)
    gc.collect()
    t0 = time.perf_counter()
    result = client.resume(execution_id).result(timeout=RESULT_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    return {
        "elapsed_s": elapsed,
        "open_s": open_s,
        "result": result,
        "live_steps": flows.live_steps,
        "id": execution_id,
    }


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "raw": _worker_raw,
    "dbos": lambda a: _worker_dbos(a, stock=False),
    "dbos-stock": lambda a: _worker_dbos(a, stock=True),
    "langgraph": lambda a: _worker_langgraph(a, stock=False),
    "langgraph-stock": lambda a: _worker_langgraph(a, stock=True),
    "tether-sync": lambda a: _worker_tether(a, is_async=False),
    "tether-async": lambda a: _worker_tether(a, is_async=True),
    "tether-crash": _worker_tether_crash,
    "tether-resume": _worker_tether_resume,
}


# ==================================================================================================
# Parent side: spawns the workers, aggregates and prints.
# ==================================================================================================


@dataclass
class Row:
    engine: Engine
    runs_target: int
    samples_us: list[float] = field(default_factory=list)
    status: str = "ok"  # ok | unavailable | error
    reason: str = ""
    storage: str = ""
    version: str | None = None
    capped: bool = False


@dataclass
class Context:
    steps: int
    warmup: int
    timeout_s: float
    tmp_base: Path | None
    env: dict[str, str]
    progress: bool


# Nothing may leave the machine: no DBOS Conductor / cloud mode or OTLP export, no LangSmith
# tracing, whatever the calling shell has set.
OFFLINE_DROP = (
    "DBOS__CLOUD",
    "DBOS__CONDUCTOR_KEY",
    "DBOS__CONDUCTOR_URL",
    "DBOS__CONDUCTOR_APP_NAME",
    "DBOS__OTLP_TRACES_ENDPOINT",
    "DBOS__OTLP_LOGS_ENDPOINT",
    "DBOS_SYSTEM_DATABASE_URL",
    "DBOS_APP_NAME",
    "LANGCHAIN_API_KEY",
    "LANGSMITH_API_KEY",
    "LANGSMITH_ENDPOINT",
)
OFFLINE_SET = {
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "OTEL_SDK_DISABLED": "true",
}


def _spawn(ctx: Context, worker: str, *extra: str, env: dict[str, str] | None = None) -> Child:
    # Children import _tether_flows by one stable module name from benchmarks/ (child_env).
    args = ["--steps", str(ctx.steps), "--warmup", str(ctx.warmup), *extra]
    return spawn(__file__, worker, args, env={**ctx.env, **(env or {})}, timeout_s=ctx.timeout_s)


@contextlib.contextmanager
def _fresh_dir(ctx: Context) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=ctx.tmp_base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _summary(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "p90": quantile(xs, 9, 10)}


def _storage_text(data: dict[str, Any]) -> str:
    journal = data.get("journal_mode") or "?"
    sync = data.get("synchronous") or "engine default (not visible)"
    return f"journal={journal}, synchronous={sync}"


def _bench_rows(ctx: Context, rows: list[Row], runs: int, peer_budget_s: float) -> None:
    # Round-robin: run k of every engine before run k+1 of any.
    for run_idx in range(runs):
        for row in rows:
            if row.status != "ok" or run_idx >= row.runs_target:
                continue
            key = row.engine.key
            with _fresh_dir(ctx) as tmp:
                child = _spawn(ctx, key, "--db-dir", str(tmp))
            if "unavailable" in child.data:
                reason = str(child.data["unavailable"])
                if row.engine.peer and reason.startswith("ModuleNotFoundError"):
                    reason = f"{INSTALL_HINT}: {reason}"
                row.status, row.reason = "unavailable", reason
                log(ctx, f"[{key}] unavailable: {row.reason}")
                continue
            failure = child.failure("elapsed_s")
            if failure is None and child.data.get("result") != ctx.steps:
                failure = f"flow returned {child.data.get('result')!r}, expected {ctx.steps}"
            if failure is None and child.data.get("rows", ctx.steps) < ctx.steps:
                failure = f"only {child.data['rows']} of {ctx.steps} steps were recorded"
            if failure is not None:
                row.status, row.reason = "error", failure
                log(ctx, f"[{key}] error: {failure}\n{child.stderr.strip()[-2000:]}")
                continue
            row.samples_us.append(child.data["elapsed_s"] * 1e6 / ctx.steps)
            row.storage = _storage_text(child.data)
            row.version = child.data.get("version") or row.version
            log(
                ctx,
                f"[{key} {run_idx + 1}/{row.runs_target}] {row.samples_us[-1]:9.1f} {US}/checkpoint"
                f"  (process {child.wall_s:.1f} s)",
            )
            # A slow peer gets fewer runs so the whole script stays within a few minutes; never
            # below 3, and raw and tether always get all of theirs.
            if run_idx == 0 and row.engine.peer:
                affordable = max(3, math.floor(peer_budget_s / max(child.wall_s, 1e-3)))
                if affordable < row.runs_target:
                    row.runs_target, row.capped = affordable, True


@dataclass
class ResumeVariant:
    label: str
    kill_at: int
    samples_s: list[float] = field(default_factory=list)
    open_s: list[float] = field(default_factory=list)
    live_steps: list[int] = field(default_factory=list)


@dataclass
class ResumeReport:
    status: str = "ok"
    reason: str = ""
    variants: list[ResumeVariant] = field(default_factory=list)


def _resume_once(ctx: Context, variant: ResumeVariant) -> str | None:
    """Crash one execution at variant.kill_at, resume it in a fresh process; None or an error."""
    with _fresh_dir(ctx) as tmp:
        url = f"sqlite:///{tmp / 'tether.sqlite'}"
        crash = _spawn(ctx, "tether-crash", "--db", url, env={KILL_AT_ENV: str(variant.kill_at)})
        if "unavailable" in crash.data:
            raise Unavailable(str(crash.data["unavailable"]))
        if crash.returncode != -signal.SIGKILL:
            detail = crash.data.get("error") or crash.stderr.strip()[-500:]
            return f"crashing process exited with {crash.returncode}, not SIGKILL: {detail}"
        extra = ["--db", url] + (["--exec-id", str(crash.data["id"])] if "id" in crash.data else [])
        child = _spawn(ctx, "tether-resume", *extra)
    if "unavailable" in child.data:
        raise Unavailable(str(child.data["unavailable"]))
    failure = child.failure("elapsed_s")
    if failure is not None:
        return f"resume: {failure}\n{child.stderr.strip()[-2000:]}"
    if child.data.get("result") != ctx.steps:
        return f"resumed flow returned {child.data.get('result')!r}, expected {ctx.steps}"
    variant.samples_s.append(child.data["elapsed_s"])
    variant.open_s.append(child.data["open_s"])
    variant.live_steps.append(int(child.data["live_steps"]))
    return None


def _bench_resume(ctx: Context, runs: int) -> ResumeReport:
    kill_at = ctx.steps * 9 // 10
    report = ResumeReport(
        variants=[
            ResumeVariant(f"killed in step {kill_at}: replay {kill_at} + run {ctx.steps - kill_at}",
                          kill_at),
            ResumeVariant(f"killed after all {ctx.steps} checkpoints: pure replay", ctx.steps),
        ]
    )  # fmt: skip
    try:
        for run_idx in range(runs):
            for variant in report.variants:
                error = _resume_once(ctx, variant)
                if error is not None:
                    report.status, report.reason = "error", error.splitlines()[0]
                    log(ctx, f"[resume] error: {error}")
                    return report
                log(
                    ctx,
                    f"[resume {run_idx + 1}/{runs}] kill at {variant.kill_at}: resume->result"
                    f" {variant.samples_s[-1] * 1e3:8.1f} ms, live steps {variant.live_steps[-1]}",
                )
    except Unavailable as exc:
        report.status, report.reason = "unavailable", str(exc)
        log(ctx, f"[resume] unavailable: {exc}")
    return report


# --- machine info and output ----------------------------------------------------------------------


def _machine_info(tmp_base: Path) -> dict[str, Any]:
    packages = {dist: dist_version(dist) for dist in VERSION_DISTS}
    return machine_info(tmp_base, mem=True, packages=packages)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def _speedup(tether_us: float, peer_us: float) -> str:
    if peer_us >= tether_us:
        return f"{peer_us / tether_us:.1f}x faster"
    return f"{tether_us / peer_us:.1f}x slower"


def _row_label(row: Row, packages: dict[str, str | None]) -> str:
    dist = row.engine.dist
    version = row.version or (packages.get(dist) if dist else None)
    return f"{row.engine.label} {version}" if version and row.status == "ok" else row.engine.label


def _render(
    info: dict[str, Any],
    ctx: Context,
    runs: int,
    rows: list[Row],
    resume: ResumeReport | None,
    elapsed_s: float,
) -> str:
    pkgs: dict[str, str | None] = info["packages"]
    mem = f"{info['mem_gib']:.1f} GiB RAM" if info["mem_gib"] else "RAM ?"
    lines = [
        f"machine:  {info['cpu']} | {info['cores']} cores ({info['usable_cores']} usable) | {mem}",
        f"          {info['os']} | temp dbs in {info['tmp_dir']} ({info['tmp_fs']})",
        f"python:   {info['python']} | sqlite {info['sqlite']}"
        f" | load avg (1 min) at start {info['loadavg_start']}, at end {info['loadavg_end']}",
        "packages: " + " | ".join(f"{d} {v or 'not installed'}" for d, v in pkgs.items()),
        "",
        f"Checkpoint overhead: {ctx.steps} sequential steps per execution, each returning a"
        f" ~{payload_size()} B dict; {US} per checkpoint = (start -> result) / {ctx.steps}.",
        f"Each run: own process, fresh db in its own temp dir, untimed {ctx.warmup}-step warm-up,"
        f" then one timed execution; runs interleaved across engines; runs requested: {runs}.",
        "",
    ]
    raw_median = _medians(rows).get("raw", 0.0)
    header = ["engine", "runs", f"median {US}", f"min {US}", f"p90 {US}", "vs raw", "sqlite"]
    cells_by_row: list[list[str]] = []
    notes: list[str] = []
    for row in rows:
        label = _row_label(row, pkgs)
        if row.status != "ok" or not row.samples_us:
            install = row.reason.startswith(INSTALL_HINT)
            reason = row.reason if install else f"{row.status}: {row.reason}"
            cells_by_row.append([label, "-", reason])  # the reason spans the other columns
            continue
        s = _summary(row.samples_us)
        runs_text = f"{len(row.samples_us)}" + ("*" if row.capped else "")
        vs_raw = _ratio(s["median"], raw_median)
        cells = [f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['p90']:.1f}"]
        cells_by_row.append([label, runs_text, *cells, vs_raw, row.storage])
        if row.capped:
            notes.append(f"* {row.engine.label}: runs capped at {row.runs_target} (slow peer).")
        if row.engine.note:
            notes.append(f"{row.engine.label}: {row.engine.note}.")
    lines += table(header, cells_by_row, numeric={1, 2, 3, 4, 5})
    lines.append("")
    lines += _speedup_lines(rows)
    lines += notes
    if any(r.engine.key in ("dbos", "langgraph") for r in rows):
        lines.append(
            "Peers run at the floor's durability (WAL + synchronous=NORMAL); add ',stock' to"
            " --only for their default settings."
        )
    if resume is not None:
        lines += ["", *_render_resume(ctx, resume, runs)]
    if machine_was_busy(info):
        lines.append(
            "WARNING: the machine was busy with other work during the run (load average above);"
            " expect noisy numbers and compare ratios rather than absolute times."
        )
    lines += ["", f"(benchmark took {elapsed_s:.0f} s)"]
    return "\n".join(lines)


def _medians(rows: list[Row]) -> dict[str, float]:
    # A row that failed part-way keeps its samples for the JSON, but is compared with nothing.
    return {
        r.engine.key: statistics.median(r.samples_us)
        for r in rows
        if r.samples_us and r.status == "ok"
    }


def _speedup_lines(rows: list[Row]) -> list[str]:
    medians = _medians(rows)
    lines: list[str] = []
    for key in ("tether-sync", "tether-async"):
        if key not in {r.engine.key for r in rows}:
            continue
        label = ENGINE_BY_KEY[key].label
        if key not in medians:
            lines.append(f"{label} speedups: n/a ({label} did not run)")
            continue
        parts = [
            f"vs {ENGINE_BY_KEY[peer].label}: {_speedup(medians[key], medians[peer])}"
            for peer in ("dbos", "langgraph", "dbos-stock", "langgraph-stock")
            if peer in medians
        ]
        lines.append(f"{label} speedup (median): " + (", ".join(parts) or "no peer ran"))
    return lines


def _render_resume(ctx: Context, resume: ResumeReport, runs: int) -> list[str]:
    title = "Resume (tether): SIGKILL mid-execution, resume in a fresh process"
    if resume.status != "ok":
        return [f"{title}: {resume.status}: {resume.reason}"]
    lines = [
        f"{title}; Client(db).resume(id).result() timed in the resuming process, excluding"
        f" interpreter start and imports; runs: {runs}.",
    ]
    header = ["execution", "median ms", "min ms", "p90 ms", "live steps"]
    cells_by_row = []
    for v in resume.variants:
        s = _summary([x * 1e3 for x in v.samples_s])
        live = sorted(set(v.live_steps))
        expected = ctx.steps - v.kill_at
        live_text = "/".join(map(str, live)) + ("" if live == [expected] else f" (!={expected})")
        cells = [f"{s['median']:.1f}", f"{s['min']:.1f}", f"{s['p90']:.1f}"]
        cells_by_row.append([v.label, *cells, live_text])
    lines += table(header, cells_by_row, numeric={1, 2, 3, 4})
    crash, replay = resume.variants
    replay_us = statistics.median(replay.samples_s) * 1e6 / replay.kill_at
    bound_us = statistics.median(crash.samples_s) * 1e6 / crash.kill_at
    open_ms = statistics.median(crash.open_s + replay.open_s) * 1e3
    lines += [
        f"replay cost per recorded checkpoint: {replay_us:.1f} {US} (pure replay time /"
        f" {replay.kill_at}); upper bound from the crash run: {bound_us:.1f} {US}"
        f" (its time / {crash.kill_at})",
        f"tether.Client(db) construction, not included above: {open_ms:.1f} ms (median)",
    ]
    return lines


def _to_json(
    info: dict[str, Any],
    ctx: Context,
    runs: int,
    rows: list[Row],
    resume: ResumeReport | None,
    elapsed_s: float,
) -> dict[str, Any]:
    medians = _medians(rows)
    out_rows = []
    for row in rows:
        entry: dict[str, Any] = {
            "key": row.engine.key,
            "label": row.engine.label,
            "version": row.version or (info["packages"].get(row.engine.dist or "")),
            "status": row.status if row.samples_us or row.status != "ok" else "skipped",
            "reason": row.reason or None,
            "runs": len(row.samples_us),
            "runs_capped": row.capped,
            "samples_us": [round(x, 3) for x in row.samples_us],
            "sqlite": row.storage or None,
        }
        if row.samples_us:
            entry.update({f"{k}_us": round(v, 3) for k, v in _summary(row.samples_us).items()})
            if "raw" in medians and row.engine.key in medians:
                entry["vs_raw"] = round(medians[row.engine.key] / medians["raw"], 3)
        out_rows.append(entry)
    speedups = {
        f"{t}/{p}": round(medians[p] / medians[t], 3)
        for t in ("tether-sync", "tether-async")
        for p in ("dbos", "langgraph", "dbos-stock", "langgraph-stock")
        if t in medians and p in medians
    }
    out: dict[str, Any] = {
        "machine": info,
        "config": {"steps": ctx.steps, "runs": runs, "warmup_steps": ctx.warmup},
        "payload_bytes": payload_size(),
        "rows": out_rows,
        "tether_speedup": speedups,
        "elapsed_s": round(elapsed_s, 1),
    }
    if resume is not None:
        out["resume"] = {
            "status": resume.status,
            "reason": resume.reason or None,
            "variants": [
                {
                    "label": v.label,
                    "kill_at": v.kill_at,
                    "samples_ms": [round(x * 1e3, 3) for x in v.samples_s],
                    "client_open_ms": [round(x * 1e3, 3) for x in v.open_s],
                    "live_steps": v.live_steps,
                    **(
                        {f"{k}_ms": round(x, 3) for k, x in
                         _summary([x * 1e3 for x in v.samples_s]).items()}
                        if v.samples_s else {}
                    ),
                }
                for v in resume.variants
            ],
        }  # fmt: skip
    return out


def _selected(only: str) -> list[str]:
    keys: list[str] = []
    for token in (t.strip() for t in only.split(",")):
        if not token:
            continue
        expanded = ALIASES.get(token, (token,))
        for key in expanded:
            if key not in ENGINE_BY_KEY and key != RESUME_KEY:
                valid = sorted([*ENGINE_BY_KEY, RESUME_KEY, *ALIASES])
                raise SystemExit(f"unknown --only key {key!r}; valid: {', '.join(valid)}")
            if key not in keys:
                keys.append(key)
    return keys


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-checkpoint overhead: tether vs raw sqlite3, DBOS and LangGraph.",
        epilog=f"--only keys: {', '.join([*ENGINE_BY_KEY, RESUME_KEY])}; aliases: "
        + "; ".join(f"{k} = {','.join(v)}" for k, v in ALIASES.items()),
    )
    parser.add_argument("--steps", type=int, default=1000, help="checkpoints per execution")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine (>= 5 advised)")
    parser.add_argument(
        "--only", default=DEFAULT_ONLY, help=f"engines to run (default {DEFAULT_ONLY})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temp dbs go")
    parser.add_argument(
        "--peer-budget",
        type=float,
        default=60.0,
        help="seconds per slow peer before its runs are capped (never below 3; default 60)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child process")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Worker mode: how the parent runs each measurement in a child process.
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--db-dir", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--exec-id", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return child_main(lambda: WORKERS[args.worker](args))

    started = time.perf_counter()
    keys = _selected(args.only)
    tmp_base = (args.tmpdir or Path(tempfile.gettempdir())).resolve()
    tether_from_src, tether_missing = tether_source()
    ctx = Context(
        steps=args.steps,
        warmup=min(WARMUP_STEPS, args.steps),
        timeout_s=args.timeout,
        tmp_base=tmp_base,
        env=child_env(tether_from_src, drop=OFFLINE_DROP, set_vars=OFFLINE_SET),
        progress=not args.quiet,
    )
    info = _machine_info(tmp_base)
    if tether_from_src:
        info["packages"]["tether"] = "src checkout, not installed"

    rows: list[Row] = []
    for key in keys:
        if key == RESUME_KEY:
            continue
        engine = ENGINE_BY_KEY[key]
        row = Row(engine, runs_target=args.runs)
        if engine.module == "tether" and tether_missing:
            row.status, row.reason = "unavailable", tether_missing
        elif engine.peer and engine.module and importlib.util.find_spec(engine.module) is None:
            row.status, row.reason = "unavailable", INSTALL_HINT
        rows.append(row)
    if args.runs < 5:
        log(ctx, f"note: --runs {args.runs} is below the 5 runs the medians are meant to use")

    _bench_rows(ctx, rows, args.runs, args.peer_budget)
    resume: ResumeReport | None = None
    if RESUME_KEY in keys:
        if tether_missing:
            resume = ResumeReport(status="unavailable", reason=tether_missing)
        else:
            resume = _bench_resume(ctx, args.runs)

    elapsed = time.perf_counter() - started
    info["loadavg_end"] = loadavg()
    if args.json:
        print(json.dumps(_to_json(info, ctx, args.runs, rows, resume, elapsed), indent=2))
    else:
        print(_render(info, ctx, args.runs, rows, resume, elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
