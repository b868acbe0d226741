#!/usr/bin/env python3
"""tether.wait() at scale: many executions waiting at once, what they cost, how fast they resume.

Usage:
    python benchmarks/waits.py [--count 10000] [--samples 200] [--json]

One run, on a fresh SQLite store in its own temp dir, measures:

1. Start --count executions of ``_wait_flows.approval`` (one checkpoint, then
   ``tether.wait("approve", schema=bool)``) until every one is ``waiting``: time and rate.
   Then the storage each waiting execution costs: (db + -wal) bytes / count, after
   ``PRAGMA wal_checkpoint(TRUNCATE)`` from a plain sqlite3 connection, with a per-table and
   per-index breakdown from SQLite's ``dbstat`` virtual table when it is compiled in, and the
   size the -wal file had reached before that checkpoint (its high-water mark, for reference).
2. Listing what needs input: ``Client(db).pending_waits(limit=100)`` and ``limit=10000``
   (median of --list-runs), and one ``tether executions waits --json --limit 100`` subprocess.
3. Input-to-running latency with a worker up: ``python -m tether worker --concurrency 8`` in a
   subprocess; then, one at a time for --samples of the waiting executions, ``Client.input(id,
   "approve", True)`` and a tight poll (every 0.5 ms, one ``SELECT status`` on a plain sqlite3
   connection) until the execution is past ``waiting``/``queued`` (input -> running) and then
   ``succeeded`` (input -> succeeded). Finally SIGTERM to the worker: exit code and time to exit.

Method, and why:
    * Each phase runs in its own child process (this script re-run with a hidden ``--worker``
      flag), so no phase inherits another's connections, threads or parked executions. The
      parent never imports tether; it owns the temp dir and the worker process and removes or
      kills them in ``finally`` blocks, whatever fails.
    * Starting: ``approval.run(i)`` in one process with ``configure(max_workers=4)``, the fastest
      of the ways tried on a 2-core machine (``enqueue()`` + a worker, and two starting processes
      at once, were slower: SQLite serializes the writes either way).
    * Latency: the process giving input is a client only (``configure(executor=False)``), so the
      worker is what resumes the executions. Samples are separated by a random 0-25 ms gap so an
      input lands at a random point of the worker's poll cycle (sending the next input right
      after the previous execution finished would always land at the start of its idle sleep).
      One untimed sample first warms both sides up (connections, schema validators).
    * Everything has a timeout: a phase that hangs or breaks is reported as an error row, and
      the phases that need it are skipped.

Targets (printed as ok/MISS): < 2 KB of storage per waiting execution; input -> running
under 50 ms (median) with a worker up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    Child,
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

FLOW_MODULE = "_wait_flows"
WAIT_NAME = "approve"

STORAGE_TARGET_B = 2048
LATENCY_TARGET_MS = 50.0
START_THREADS = 4  # max_workers of the starting process; measured faster than the default 32
POLL_S = 0.0005  # how often the latency driver looks at the execution's status
GAP_MAX_S = 0.025  # random pause between latency samples
SAMPLE_TIMEOUT_S = 10.0  # one input -> succeeded; longer means the worker is not picking it up
WORKER_READY_TIMEOUT_S = 30.0
WORKER_EXIT_TIMEOUT_S = 45.0  # SIGTERM -> exit; the worker's own grace period is 30 s
CLI_TIMEOUT_S = 60.0
LIST_TIMEOUT_S = 300.0
WORKER_CONCURRENCY = 8


# ==================================================================================================
# Child side: runs inside a child process, prints MARKER + JSON lines, and exits.
# ==================================================================================================


def _db_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _plain_conn(url: str) -> sqlite3.Connection:
    """A plain autocommit sqlite3 connection: reads here never hold a transaction open."""
    conn = sqlite3.connect(_db_path(url), isolation_level=None, timeout=60)
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def _status_counts(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM executions GROUP BY status").fetchall()
    return {str(s): int(n) for s, n in rows}


def _child_start(args: argparse.Namespace) -> dict[str, Any]:
    import tether

    tether.configure(db=args.db, max_workers=START_THREADS)
    import _wait_flows as flows

    deadline = time.monotonic() + args.phase_timeout
    t0 = time.perf_counter()
    for i in range(args.count):
        flows.approval.run(i)
    submitted_s = time.perf_counter() - t0
    conn = _plain_conn(args.db)
    waiting = 0
    while True:
        waiting = int(
            conn.execute("SELECT count(*) FROM executions WHERE status = 'waiting'").fetchone()[0]
        )
        if waiting >= args.count:
            break
        counts = _status_counts(conn)
        broken = {s: n for s, n in counts.items() if s in ("failed", "cancelled", "succeeded")}
        if broken:
            return {"error": f"executions ended instead of waiting: {broken}", "statuses": counts}
        if time.monotonic() > deadline:
            return {
                "error": f"only {waiting} of {args.count} executions were waiting after "
                f"{args.phase_timeout:.0f} s",
                "statuses": counts,
            }
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    counts = _status_counts(conn)
    conn.close()
    return {"elapsed_s": elapsed, "submitted_s": submitted_s, "statuses": counts}


def _child_list(args: argparse.Namespace) -> dict[str, Any]:
    import tether

    tether.configure(db=args.db, executor=False)
    client = tether.Client(args.db)
    out: dict[str, Any] = {}
    for limit in (100, 10_000):
        n = len(client.pending_waits(limit=limit))  # untimed warm-up
        samples: list[float] = []
        for _ in range(args.list_runs):
            t0 = time.perf_counter()
            waits = client.pending_waits(limit=limit)
            samples.append(time.perf_counter() - t0)
            n = len(waits)
        out[str(limit)] = {"samples_s": samples, "rows": n}
    return out


@dataclass
class Sample:
    input_call_s: float  # Client.input() returned
    running_s: float  # first status seen past waiting/queued
    succeeded_s: float
    saw_running: bool  # 'running' itself was caught between two polls


def _one_input(client: Any, conn: sqlite3.Connection, execution_id: str) -> Sample | str:
    """Give one execution its input and poll its status to the end: times, or what went wrong."""
    select = "SELECT status FROM executions WHERE id = ?"
    t0 = time.perf_counter()
    client.input(execution_id, WAIT_NAME, True)
    t_input = time.perf_counter()
    t_running: float | None = None
    statuses: list[str] = []
    while True:
        status = str(conn.execute(select, (execution_id,)).fetchone()[0])
        now = time.perf_counter()
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if t_running is None and status not in ("waiting", "queued"):
            t_running = now
        if status == "succeeded" and t_running is not None:
            break
        if status in ("failed", "cancelled"):
            error = client.get(execution_id).error
            return f"execution {execution_id} ended {status} after its input: {error}"
        if now - t0 > SAMPLE_TIMEOUT_S:
            return (
                f"execution {execution_id} still {status} {SAMPLE_TIMEOUT_S:.0f} s after its "
                f"input (statuses seen: {' -> '.join(statuses)}); is the worker picking up input?"
            )
        time.sleep(POLL_S)
    result = client.handle(execution_id).result(timeout=5)
    if result != "published":
        return f"execution {execution_id} returned {result!r}, expected 'published'"
    return Sample(t_input - t0, t_running - t0, now - t0, "running" in statuses)


def _child_latency(args: argparse.Namespace) -> dict[str, Any]:
    import tether

    tether.configure(db=args.db, executor=False)  # a client only: the worker resumes them
    client = tether.Client(args.db)
    conn = _plain_conn(args.db)
    query = "SELECT id FROM executions WHERE status = 'waiting'"
    ids = [str(r[0]) for r in conn.execute(query).fetchall()]
    rng = random.Random(20240601)
    chosen = rng.sample(ids, min(len(ids), args.samples + 1))  # +1: the untimed warm-up
    samples: list[Sample] = []
    error: str | None = None
    for idx, execution_id in enumerate(chosen):
        time.sleep(rng.uniform(0.0, GAP_MAX_S))
        outcome = _one_input(client, conn, execution_id)
        if isinstance(outcome, str):
            error = outcome
            break
        if idx > 0:
            samples.append(outcome)
    conn.close()
    out: dict[str, Any] = {
        "running_s": [x.running_s for x in samples],
        "succeeded_s": [x.succeeded_s for x in samples],
        "input_call_s": [x.input_call_s for x in samples],
        "seen_running": sum(x.saw_running for x in samples),
    }
    if error is not None:
        out["error"] = error
    return out


CHILDREN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "start": _child_start,
    "list": _child_list,
    "latency": _child_latency,
}


# ==================================================================================================
# Parent side: owns the temp dir and the worker process, spawns the phases, prints.
# ==================================================================================================


@dataclass
class Report:
    count: int
    samples: int
    start: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)
    cli: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class Context:
    url: str
    tmp: Path
    env: dict[str, str]
    progress: bool


def _spawn(ctx: Context, child: str, timeout_s: float, *extra: str) -> Child:
    # Every process imports the flows as _wait_flows from benchmarks/ (child_env).
    args = ["--db", ctx.url, *extra]
    return spawn(__file__, child, args, env=ctx.env, timeout_s=timeout_s, cwd=ctx.tmp)


def _fail(ctx: Context, report: Report, phase: str, message: str, stderr: str = "") -> None:
    report.errors.append(f"{phase}: {message}")
    detail = f"\n{stderr.strip()[-3000:]}" if stderr.strip() else ""
    log(ctx, f"[{phase}] error: {message}{detail}")


# --- phase 1: start, storage ----------------------------------------------------------------------


def _phase_start(ctx: Context, report: Report, timeout_s: float) -> bool:
    log(ctx, f"[start] starting {report.count} executions until all are waiting ...")
    extra = ["--count", str(report.count), "--phase-timeout", str(timeout_s)]
    child = _spawn(ctx, "start", timeout_s + 60, *extra)
    report.start = {"wall_s": child.wall_s, **child.data}
    failure = child.failure()
    if failure is not None:
        _fail(ctx, report, "start", failure, child.stderr)
        return False
    rate = report.count / child.data["elapsed_s"]
    report.start["rate_per_s"] = rate
    log(ctx, f"[start] {report.count} waiting after {child.data['elapsed_s']:.1f} s ({rate:.0f}/s)")
    return True


def _phase_storage(ctx: Context, report: Report) -> None:
    path = _db_path(ctx.url)
    wal = Path(f"{path}-wal")
    shm = Path(f"{path}-shm")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=60)) as conn:
        wal_before = wal.stat().st_size if wal.exists() else 0
        busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        objects = {
            str(name): (str(kind), str(table))
            for name, kind, table in conn.execute(
                "SELECT name, type, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"
            )
        }
        rows = {
            name: int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
            for name, (kind, _) in objects.items()
            if kind == "table"
        }
        breakdown: list[dict[str, Any]] | None
        dbstat_error = None
        try:
            stat = conn.execute(
                "SELECT name, count(*), sum(pgsize), sum(payload) FROM dbstat "
                "GROUP BY name ORDER BY sum(pgsize) DESC"
            ).fetchall()
            breakdown = []
            for name, npages, size, payload in stat:
                kind, table = objects.get(str(name), ("schema", str(name)))
                breakdown.append(
                    {
                        "name": str(name),
                        "kind": kind,
                        "table": table,
                        "pages": int(npages),
                        "bytes": int(size),
                        "payload_bytes": int(payload or 0),
                        "rows": rows.get(str(name)),
                    }
                )
        except sqlite3.Error as exc:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
            breakdown, dbstat_error = None, f"{type(exc).__name__}: {exc}"
        # Sized while this connection is open: closing the last one deletes -wal and -shm.
        db_bytes = path.stat().st_size
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        shm_bytes = shm.stat().st_size if shm.exists() else 0
    total = db_bytes + wal_bytes
    report.storage = {
        "db_bytes": db_bytes,
        "wal_bytes": wal_bytes,
        "wal_bytes_before_checkpoint": wal_before,
        "shm_bytes": shm_bytes,
        "checkpoint": {"busy": busy, "log_frames": log_frames, "checkpointed": done},
        "page_size": page_size,
        "page_count": pages,
        "freelist_pages": free,
        "bytes_per_execution": total / report.count,
        "target_bytes": STORAGE_TARGET_B,
        "rows": rows,
        "breakdown": breakdown,
        "dbstat_error": dbstat_error,
    }
    if busy:
        _fail(
            ctx, report, "storage", "wal_checkpoint(TRUNCATE) was busy: another connection is open"
        )
    log(ctx, f"[storage] {total:,} B in db + wal: {total / report.count:.0f} B per execution")


# --- phase 2: listing -----------------------------------------------------------------------------


def _phase_list(ctx: Context, report: Report, runs: int) -> None:
    log(ctx, f"[list] Client.pending_waits(), {runs} runs per limit ...")
    child = _spawn(ctx, "list", LIST_TIMEOUT_S, "--list-runs", str(runs))
    failure = child.failure()
    if failure is not None:
        _fail(ctx, report, "list", failure, child.stderr)
        return
    report.listing = child.data
    for limit, entry in child.data.items():
        median_ms = statistics.median(entry["samples_s"]) * 1e3
        log(ctx, f"[list] limit={limit}: {entry['rows']} rows, median {median_ms:.1f} ms")
    expected = min(100, report.count)
    if child.data["100"]["rows"] != expected:
        got = child.data["100"]["rows"]
        _fail(ctx, report, "list", f"pending_waits(limit=100) returned {got} rows, not {expected}")


def _run_timed(
    ctx: Context, cmd: list[str], *, check: bool
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of one CLI process, from spawn to exit, and its outcome."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=ctx.env,
        cwd=ctx.tmp,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=check,
    )
    return time.perf_counter() - t0, proc


def _phase_cli(ctx: Context, report: Report) -> None:
    cmd = [sys.executable, "-m", "tether", "executions", "waits", "--json", "--limit", "100"]
    cmd += ["--db", ctx.url]
    baseline = [sys.executable, "-c", "import tether.cli"]
    out: dict[str, Any] = {"command": "tether executions waits --json --limit 100 --db URL"}
    try:
        out["import_wall_s"], _ = _run_timed(ctx, baseline, check=True)
        out["wall_s"], proc = _run_timed(ctx, cmd, check=False)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        _fail(ctx, report, "cli", f"{type(exc).__name__}: {exc}")
        report.cli = out
        return
    out["returncode"] = proc.returncode
    try:
        out["rows"] = len(json.loads(proc.stdout))
    except json.JSONDecodeError as exc:
        out["rows"] = None
        _fail(ctx, report, "cli", f"output is not JSON ({exc}): {proc.stdout[:200]!r}", proc.stderr)
    if proc.returncode != 0:
        _fail(ctx, report, "cli", f"exit code {proc.returncode}", proc.stderr)
    report.cli = out
    log(ctx, f"[cli] {out['wall_s'] * 1e3:.0f} ms wall, {out.get('rows')} rows")


# --- phase 3: latency with a worker up ------------------------------------------------------------


def _start_worker(ctx: Context, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tether", "worker", "--db", ctx.url]
    cmd += ["--concurrency", str(WORKER_CONCURRENCY), "--import", FLOW_MODULE]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd, env=ctx.env, cwd=ctx.tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> str | None:
    """None once the worker logged that it runs, else why not."""
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if "tether.worker worker" in text:
            return None
        if proc.poll() is not None:
            return f"the worker exited with code {proc.returncode} before it ran"
        time.sleep(0.05)
    return f"the worker did not log that it runs within {WORKER_READY_TIMEOUT_S:.0f} s"


def _stop_worker(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    if proc.poll() is not None:
        return {"exited_before_sigterm": True, "returncode": proc.returncode}
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=WORKER_EXIT_TIMEOUT_S)
        return {"returncode": code, "exit_s": time.perf_counter() - t0, "killed": False}
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return {"returncode": None, "exit_s": None, "killed": True}


def _phase_latency(ctx: Context, report: Report) -> None:
    log_path = ctx.tmp / "worker.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.perf_counter()
        proc = _start_worker(ctx, log_path)
        problem = _wait_ready(proc, log_path)
        report.worker["ready_s"] = time.perf_counter() - t0
        if problem is not None:
            _fail(ctx, report, "worker", problem, log_path.read_text(errors="replace"))
            return
        log(ctx, f"[latency] worker up; {report.samples} inputs, one at a time ...")
        timeout_s = 60 + (report.samples + 1) * (SAMPLE_TIMEOUT_S / 4)
        child = _spawn(ctx, "latency", timeout_s, "--samples", str(report.samples))
        report.latency = child.data
        failure = child.failure()
        if failure is not None:
            worker_log = log_path.read_text(errors="replace")[-2000:]
            _fail(ctx, report, "latency", failure, child.stderr + "\nworker log:\n" + worker_log)
        if child.data.get("running_s"):
            run_ms = [x * 1e3 for x in child.data["running_s"]]
            log(ctx, f"[latency] input -> running: median {statistics.median(run_ms):.1f} ms")
    finally:
        if proc is not None:
            report.worker.update(_stop_worker(proc))
            report.worker["log_tail"] = (
                log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            )
    w = report.worker
    if w.get("killed"):
        _fail(ctx, report, "worker", f"did not exit {WORKER_EXIT_TIMEOUT_S:.0f} s after SIGTERM")
    elif w.get("returncode") != 0:
        message = f"exit code {w.get('returncode')} after SIGTERM"
        _fail(ctx, report, "worker", message, w.get("log_tail", ""))
    else:
        log(ctx, f"[worker] exited 0, {w['exit_s'] * 1e3:.0f} ms after SIGTERM")


# --- output ---------------------------------------------------------------------------------------


def _ms_summary(xs_s: list[float]) -> dict[str, float]:
    xs = [x * 1e3 for x in xs_s]
    return {
        "median_ms": statistics.median(xs),
        "p99_ms": quantile(xs, 99, 100),
        "min_ms": min(xs),
        "max_ms": max(xs),
    }


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _missing(report: Report, phase: str) -> str:
    return "error" if any(e.startswith(f"{phase}:") for e in report.errors) else "skipped"


def _main_rows(report: Report) -> list[list[str]]:
    n = report.count
    rows: list[list[str]] = []
    s = report.start
    if "elapsed_s" in s:
        rows.append(
            [
                f"start {n:,} executions -> all waiting",
                f"{s['elapsed_s']:.1f} s",
                f"{s['rate_per_s']:.0f}/s",
                f"run() in 1 process, {START_THREADS} threads",
                "",
            ]
        )
    else:
        rows.append([f"start {n:,} executions -> all waiting", "error", "", "", ""])
    st = report.storage
    if st:
        per = st["bytes_per_execution"]
        rows.append(
            [
                "storage per waiting execution",
                f"{per:,.0f} B",
                f"{(st['db_bytes'] + st['wal_bytes']) / 2**20:.1f} MiB total",
                f"(db {st['db_bytes']:,} + wal {st['wal_bytes']:,}) / {n:,}",
                f"< {STORAGE_TARGET_B} B {_verdict(per < STORAGE_TARGET_B)}",
            ]
        )
        before = st["wal_bytes_before_checkpoint"]
        rows.append(
            [
                "-wal left by the starting process",
                f"{before / 2**20:,.1f} MiB",
                f"{before / n:,.0f} B/exec",
                "before wal_checkpoint(TRUNCATE); not counted above",
                "",
            ]
        )
    for limit in ("100", "10000"):
        entry = report.listing.get(limit)
        label = f"Client.pending_waits(limit={limit})"
        if entry is None:
            rows.append([label, _missing(report, "list"), "", "", ""])
            continue
        ms = [x * 1e3 for x in entry["samples_s"]]
        rows.append(
            [
                label,
                f"{statistics.median(ms):.1f} ms",
                f"min {min(ms):.1f} ms",
                f"{entry['rows']:,} rows, median of {len(ms)}",
                "",
            ]
        )
    c = report.cli
    if "wall_s" in c:
        rows.append(
            [
                "CLI executions waits --json --limit 100",
                f"{c['wall_s'] * 1e3:.0f} ms",
                f"{c.get('rows')} rows",
                f"1 process; `import tether.cli` alone: {c['import_wall_s'] * 1e3:.0f} ms",
                "",
            ]
        )
    lat = report.latency
    for key, label, target in (
        ("running_s", "input -> running (worker up)", True),
        ("succeeded_s", "input -> succeeded (worker up)", False),
        ("input_call_s", "Client.input() call itself", False),
    ):
        xs = lat.get(key) or []
        if not xs:
            rows.append([label, _missing(report, "latency"), "", "", ""])
            continue
        m = _ms_summary(xs)
        verdict = (
            f"< {LATENCY_TARGET_MS:.0f} ms {_verdict(m['median_ms'] < LATENCY_TARGET_MS)}"
            if target
            else ""
        )
        rows.append(
            [
                label,
                f"{m['median_ms']:.1f} ms",
                f"p99 {m['p99_ms']:.1f} ms",
                f"{len(xs)} samples, max {m['max_ms']:.1f} ms",
                verdict,
            ]
        )
    w = report.worker
    if "returncode" in w or w.get("killed"):
        code = w.get("returncode")
        exit_s = w.get("exit_s")
        rows.append(
            [
                "worker SIGTERM -> exit",
                f"{exit_s * 1e3:.0f} ms" if exit_s is not None else "-",
                f"exit code {code}" if not w.get("killed") else "SIGKILLed",
                f"worker up in {w.get('ready_s', 0):.2f} s",
                _verdict(code == 0),
            ]
        )
    return rows


def _storage_rows(report: Report) -> list[list[str]]:
    st = report.storage
    rows: list[list[str]] = []
    n = report.count
    for b in st.get("breakdown") or []:
        rows.append(
            [
                b["name"],
                b["kind"] if b["kind"] != "index" else f"index on {b['table']}",
                "" if b["rows"] is None else f"{b['rows']:,}",
                f"{b['pages']:,}",
                f"{b['bytes'] / 1024:,.0f}",
                f"{b['bytes'] / n:,.0f}",
                f"{b['payload_bytes'] / n:,.0f}",
            ]
        )
    if st.get("freelist_pages"):
        free = st["freelist_pages"] * st["page_size"]
        rows.append(
            [
                "(free pages)",
                "",
                "",
                f"{st['freelist_pages']:,}",
                f"{free / 1024:,.0f}",
                f"{free / n:,.0f}",
                "",
            ]
        )
    return rows


def _render(info: dict[str, Any], report: Report, elapsed_s: float) -> str:
    lines = [
        f"machine: {info['cpu']} | {info['cores']} cores ({info['usable_cores']} usable)",
        f"         {info['os']} | temp db in {info['tmp_dir']} ({info['tmp_fs']})",
        f"python:  {info['python']} | sqlite {info['sqlite']} | tether {info['tether']}"
        f" | load avg (1 min) at start {info['loadavg_start']}, at end {info['loadavg_end']}",
        "",
        f"tether.wait() at scale: {report.count:,} executions of _wait_flows.approval (1"
        " checkpoint, then wait('approve', schema=bool)) on one SQLite file; latency over"
        f" {report.samples} inputs given one at a time to a `tether worker --concurrency"
        f" {WORKER_CONCURRENCY}` (default --poll 0.02 s), status polled every"
        f" {POLL_S * 1e3:.1f} ms.",
        "",
    ]
    header = ["measurement", "value", "spread", "detail", "target"]
    lines += table(header, _main_rows(report), numeric={1, 2})
    st = report.storage
    if st:
        lines.append("")
        if st.get("breakdown") is not None:
            lines.append(
                f"Storage by table and index (dbstat; page size {st['page_size']} B; payload ="
                " bytes of row data, the rest is page headers, cell pointers and free space):"
            )
            header = ["object", "kind", "rows", "pages", "KiB", "B/exec", "payload B/exec"]
            lines += table(header, _storage_rows(report), numeric={2, 3, 4, 5, 6})
        else:
            rows = ", ".join(f"{k} {v:,}" for k, v in st["rows"].items())
            lines.append(f"Storage breakdown unavailable ({st['dbstat_error']}); rows: {rows}")
        lines.append(
            "The -wal file keeps its high-water mark until a checkpoint truncates it (tether"
            " sets no journal_size_limit); the storage target counts db + -wal after"
            f" wal_checkpoint(TRUNCATE). -shm ({st['shm_bytes']:,} B) is not counted."
        )
    lat = report.latency
    if lat.get("running_s"):
        lines.append(
            f"'running' was caught between polls in {lat['seen_running']} of"
            f" {len(lat['running_s'])} samples; otherwise the first status seen after"
            " 'waiting'/'queued' was already 'succeeded'."
        )
    if report.errors:
        lines += ["", "FAILURES:", *(f"  - {e}" for e in report.errors)]
    if machine_was_busy(info):
        lines.append(
            "WARNING: the machine was busy with other work during the run (load average"
            " above); expect noisy numbers."
        )
    lines += ["", f"(benchmark took {elapsed_s:.0f} s)"]
    return "\n".join(lines)


def _to_json(info: dict[str, Any], report: Report, elapsed_s: float) -> dict[str, Any]:
    latency: dict[str, dict[str, Any]] = {
        key: {
            **_ms_summary(report.latency[key]),
            "samples_ms": [round(x * 1e3, 3) for x in report.latency[key]],
        }
        for key in ("running_s", "succeeded_s", "input_call_s")
        if report.latency.get(key)
    }
    listing = {
        f"limit_{limit}": {
            "rows": e["rows"],
            "median_ms": statistics.median(e["samples_s"]) * 1e3,
            "samples_ms": [round(x * 1e3, 3) for x in e["samples_s"]],
        }
        for limit, e in report.listing.items()
    }
    return {
        "machine": info,
        "config": {
            "count": report.count,
            "samples": report.samples,
            "start_threads": START_THREADS,
            "worker_concurrency": WORKER_CONCURRENCY,
            "poll_ms": POLL_S * 1e3,
        },
        "start": report.start,
        "storage": report.storage,
        "pending_waits": listing,
        "cli": report.cli,
        "latency": {**latency, "seen_running": report.latency.get("seen_running")},
        "worker": report.worker,
        "targets": {
            "storage_bytes": STORAGE_TARGET_B,
            "storage_ok": bool(report.storage)
            and report.storage["bytes_per_execution"] < STORAGE_TARGET_B,
            "latency_ms": LATENCY_TARGET_MS,
            "latency_ok": "running_s" in latency
            and latency["running_s"]["median_ms"] < LATENCY_TARGET_MS,
        },
        "errors": report.errors,
        "elapsed_s": round(elapsed_s, 1),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="tether.wait() at scale: storage per waiting execution, listing pending "
        "waits, input-to-running latency with a worker up."
    )
    parser.add_argument("--count", type=int, default=10_000, help="executions left waiting")
    parser.add_argument("--samples", type=int, default=200, help="inputs timed, one at a time")
    parser.add_argument("--list-runs", type=int, default=7, help="timed pending_waits() calls")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temp db goes")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for the start phase (default 300)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (path on stderr)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Child mode: how the parent runs each phase in a child process.
    parser.add_argument("--worker", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--phase-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.list_runs < 1:
        parser.error("--list-runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return child_main(lambda: CHILDREN[args.worker](args))

    started = time.perf_counter()
    tmp_base = (args.tmpdir or Path(tempfile.gettempdir())).resolve()
    tether_from_src, tether_missing = tether_source()
    if tether_missing:
        print(f"tether is unavailable: {tether_missing}", file=sys.stderr)
        return 1
    info = machine_info(tmp_base, tether=dist_version("tether") or "src checkout, not installed")
    samples = min(args.samples, args.count - 1)  # one more execution is the warm-up sample
    report = Report(count=args.count, samples=samples)
    tmp = Path(tempfile.mkdtemp(prefix="tether-waits-", dir=tmp_base))
    ctx = Context(
        url=f"sqlite:///{tmp / 'tether.db'}",
        tmp=tmp,
        # The store and the executor mode come from the command lines here, never the shell.
        env=child_env(tether_from_src, drop=("TETHER_DB", "TETHER_EXECUTOR")),
        progress=not args.quiet,
    )
    if samples < args.samples:
        log(ctx, f"note: --samples lowered to {samples} (--count {args.count} minus 1 warm-up)")
    try:
        if _phase_start(ctx, report, args.timeout):
            _phase_storage(ctx, report)
            _phase_list(ctx, report, args.list_runs)
            _phase_cli(ctx, report)
            _phase_latency(ctx, report)
    except KeyboardInterrupt:
        report.errors.append("interrupted")
        raise
    finally:
        if args.keep:
            log(ctx, f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - started
    info["loadavg_end"] = loadavg()
    if args.json:
        print(json.dumps(_to_json(info, report, elapsed), indent=2, default=str))
    else:
        print(_render(info, report, elapsed))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
