#!/usr/bin/env python3
"""Many async agents in one process: tether against DBOS and LangGraph, one table.

Usage:
    python benchmarks/concurrent_agents.py [--n 100,1000,10000] [--only tether,dbos,langgraph]
                                           [--timeout 300] [--json]

Workload: N agents, each an async durable flow making 10 checkpoint calls in sequence; each call
is a simulated 50 ms model round trip (``await asyncio.sleep(0.05)``) returning a small dict, and
the flow returns the sum of their values. With unlimited concurrency all N would finish in 10 x
50 ms = 0.5 s, but no program reaches that at large N (CPython runs one task at a time), so the
yardstick is the **floor**, measured in the same run: a hand-written asyncio program with the
durability tether records (start, 10 steps, finish) and nothing else. Its execution rows are
inserted first; each step's JSON result is inserted as a row and awaited before the next step;
each finish is a row too; one writer thread group-commits whatever is queued (``BEGIN;
executemany; COMMIT``, WAL, ``synchronous=NORMAL``) and resolves each batch's futures with one
``call_soon_threadsafe``. Beside it, **pure asyncio**: the same tasks with no store at all.

Method, and why:
    * Every (engine, N) is a separate child process (this script re-run with a hidden
      ``--worker`` flag) on a fresh SQLite database in its own temp dir: no engine shares a
      process, threads or a file with another, and DBOS is launched once per process.
    * Each engine runs at its default settings; only the database location is given:
        - tether: ``tether.configure(db=sqlite:///...)``, the embedded executor with its
          defaults, two ways: ``run_async`` (every agent started with ``await
          _agent_flows.agent.run_async(i)``, gathered: the starts are group committed, then
          every handle awaited, gathered) and a ``run()`` loop (``agent.run(i)`` for each i,
          each durable before it returns, then ``handle.result()`` for each in start order).
          One more row is not at default settings, and has no target: ``run_async`` again
          with ``configure(gc_threshold=(50000, 20, 100))``, what `tether worker` sets in the
          processes tether owns, to show what the collector costs at each N.
        - DBOS: SQLite system database, ``@DBOS.workflow()`` async workflow calling an
          ``@DBOS.step()`` async step; started with ``await DBOS.start_workflow_async(...)``
          one after another on one event loop, then ``await handle.get_result()`` for all
          (gathered). Stock SQLite settings (no PRAGMAs changed).
        - LangGraph: functional API, ``@entrypoint(checkpointer=AsyncSqliteSaver)`` async
          entrypoint calling an async ``@task``; each agent is ``asyncio.create_task(
          agent.ainvoke(i, config={thread_id}))`` on one event loop, all gathered. The async
          flavour of the SqliteSaver the other benchmarks use (SqliteSaver has no async
          methods), stock settings, default durability.
    * Before the timed part each child runs one untimed agent (imports, schema, connections,
      thread pools), then ``gc.collect()`` and reads VmRSS from /proc/self/status. The clock
      runs from the first start call to the last result. Peak RSS per agent = (ru_maxrss of
      the child at the end - that VmRSS) / N, in KB (KiB as Linux counts them).
    * Every result is checked against the value the agent must return, and the checkpoint rows
      recorded in the engine's database are counted (tether ``checkpoints``, DBOS
      ``operation_outputs``, LangGraph ``writes``): "right" needs both.
    * Each engine-run has ``--timeout`` seconds (300) for its agents, counted from the first
      start; a run still going then is reported as "timed out" with how many agents were done,
      and its process is ended without cleanup (``os._exit``) so it cannot hang in shutdown.
      The parent kills a child that overruns the timeout by more than the setup allowance.

Reported per row: wall time, its ratio to the floor at the same N, checkpoints/s, peak RSS per
agent, and the process's CPU time (all threads) per checkpoint.

Targets (printed as MET / NOT MET): tether with ``run_async`` within 1.5x the floor at N=1,000
and N=10,000, a ``run()`` loop within 3x at N=10,000, under 50 KB of peak RSS per agent (at the
largest N that finished), and a shorter wall time than both peers at every N where both ran.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import importlib.util
import json
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import (
    Child,
    child_env,
    child_main,
    dist_version,
    emit,
    loadavg,
    log,
    machine_info,
    machine_was_busy,
    spawn,
    table,
    tether_source,
    unavailable_on_error,
)

STEPS = 10  # checkpoint calls per agent; _agent_flows.STEPS matches
MODEL_S = 0.05  # one simulated model round trip; _agent_flows.MODEL_S matches
IDEAL_S = STEPS * MODEL_S
SETUP_ALLOWANCE_S = 120.0  # imports, launch, warm-up and counting, on top of --timeout
INSTALL_HINT = "not installed (pip install -e '.[bench]')"

# Wall time as a multiple of the floor's at the same N: (tether variant, N) -> at most.
TARGET_RATIO = {
    ("tether-async", 1_000): 1.5,
    ("tether-async", 10_000): 1.5,
    ("tether", 10_000): 3.0,
}
TARGET_KB = 50.0


@dataclass(frozen=True)
class Engine:
    key: str
    label: str
    module: str  # what must be importable, checked in the parent before spawning
    dist: str
    durable: bool = True  # records every step (pure asyncio does not)


ENGINES: tuple[Engine, ...] = (
    Engine("floor", "floor (hand-written)", "sqlite3", ""),
    Engine("asyncio", "pure asyncio (not durable)", "asyncio", "", durable=False),
    Engine("tether-async", "tether run_async gathered", "tether", "tether"),
    Engine("tether", "tether run() loop", "tether", "tether"),
    # Not default settings: what the collector's thresholds (a tether setting) buy.
    Engine("tether-async-gc", "tether run_async, gc_threshold 50000", "tether", "tether"),
    Engine("dbos", "DBOS", "dbos", "dbos"),
    Engine("langgraph", "LangGraph functional", "langgraph", "langgraph"),
)
ENGINE_BY_KEY = {e.key: e for e in ENGINES}
TETHER_KEYS = ("tether-async", "tether", "tether-async-gc")
VERSION_DISTS = ("tether", "dbos", "langgraph", "langgraph-checkpoint-sqlite", "aiosqlite")

# Nothing may leave the machine: no DBOS Conductor / cloud mode or OTLP export, no LangSmith
# tracing, whatever the calling shell has set (as in checkpoint_overhead.py).
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
    # tether's store and executor mode come from configure() here, never the shell.
    "TETHER_DB",
    "TETHER_EXECUTOR",
)
OFFLINE_SET = {
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "OTEL_SDK_DISABLED": "true",
}


# ==================================================================================================
# Worker side: runs inside a child process, prints MARKER + JSON lines, and exits.
# ==================================================================================================


def expected(agent_id: int) -> int:
    return sum(agent_id * STEPS + step for step in range(STEPS))


def _vm_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _peak_rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _baseline() -> int:
    gc.collect()
    return _vm_rss_kb()


def _count(path: Path, sql: str) -> int | None:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(sql).fetchone()[0])
    return None


@dataclass(frozen=True)
class _Start:
    """Where the timed part began: wall clock, the process's CPU time, RSS before it."""

    wall: float
    cpu: float
    base_kb: int


def _start_clock() -> _Start:
    base_kb = _baseline()
    return _Start(time.perf_counter(), time.process_time(), base_kb)


def _outcome(
    n: int,
    start: _Start,
    results: list[Any] | None,
    done: int,
) -> dict[str, Any]:
    """The measurement once every agent finished (``results``) or the deadline passed (None)."""
    wall = time.perf_counter() - start.wall
    out: dict[str, Any] = {
        "n": n,
        "rss_before_kb": start.base_kb,
        "peak_rss_kb": _peak_rss_kb(),
        "cpu_s": time.process_time() - start.cpu,  # every thread of the process
        "done": done,
    }
    if results is None:
        out.update({"timed_out": True, "elapsed_s": wall})
        # Emitted here and the process ended at once: agents are still in flight, and neither
        # asyncio.run()'s cleanup nor the engines' threads may hold the exit up.
        emit(out)
        sys.stdout.flush()
        os._exit(0)
    wrong = [i for i, r in enumerate(results) if r != expected(i)]
    out.update(
        {
            "elapsed_s": wall,
            "wrong": len(wrong),
            "wrong_sample": [[i, results[i]] for i in wrong[:3]],
        }
    )
    return out


def _setup_tether(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    path = Path(args.db_dir) / "tether.sqlite"
    with unavailable_on_error():
        import tether

        tether.configure(db=f"sqlite:///{path}")
        import _agent_flows as flows
    if (flows.STEPS, flows.MODEL_S) != (STEPS, MODEL_S):
        raise RuntimeError("_agent_flows.STEPS / MODEL_S differ from the script's")
    warm = flows.agent.run(-1).result(timeout=60)  # untimed: schema, executor threads
    if warm != expected(-1):
        raise RuntimeError(f"warm-up agent returned {warm!r}, expected {expected(-1)}")
    return tether, flows, path


def _tether_done(tether: Any, path: Path, out: dict[str, Any]) -> dict[str, Any]:
    rows = _count(path, "SELECT count(*) FROM checkpoints")
    out["checkpoints"] = None if rows is None else rows - STEPS  # minus the warm-up agent
    out["version"] = dist_version("tether") or f"{getattr(tether, '__version__', '?')} (src)"
    out["tether_file"] = tether.__file__
    return out


def _tether_finished(path: Path) -> int:
    done = _count(path, "SELECT count(*) FROM executions WHERE status = 'succeeded'")
    return (done or 1) - 1  # minus the warm-up agent


def _worker_tether(args: argparse.Namespace) -> dict[str, Any]:
    """A loop of ``flow.run(i)`` (each durable before it returns), then each result."""
    tether, flows, path = _setup_tether(args)
    n = args.n
    start = _start_clock()
    deadline = time.monotonic() + args.timeout
    handles = [flows.agent.run(i) for i in range(n)]
    # The loop of starts apart from the wait for results: where a run() row's time goes.
    starts_s = time.perf_counter() - start.wall
    results: list[Any] = []
    for handle in handles:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise tether.ResultTimeout("deadline")
            results.append(handle.result(timeout=remaining))
        except tether.ResultTimeout:
            _outcome(n, start, None, _tether_finished(path))
    out = _outcome(n, start, results, n)
    out["starts_s"] = starts_s
    return _tether_done(tether, path, out)


def _worker_tether_async(args: argparse.Namespace) -> dict[str, Any]:
    """``await flow.run_async(i)`` for every agent, gathered on one event loop (the starts
    are group committed), then every handle awaited, gathered."""
    tether, flows, path = _setup_tether(args)
    n = args.n

    async def body() -> dict[str, Any]:
        start = _start_clock()

        async def run_all() -> list[Any]:
            handles = await asyncio.gather(*(flows.agent.run_async(i) for i in range(n)))
            return list(await asyncio.gather(*handles))

        try:
            results = await asyncio.wait_for(run_all(), args.timeout)
        except TimeoutError:
            return _outcome(n, start, None, _tether_finished(path))
        return _outcome(n, start, results, n)

    return _tether_done(tether, path, asyncio.run(body()))


def _worker_tether_async_gc(args: argparse.Namespace) -> dict[str, Any]:
    """`tether-async` with the collector's thresholds raised through tether's setting
    (`configure(gc_threshold=)`, as `tether worker` does by default): not the default
    settings of a user's process, so no target applies to it."""
    with unavailable_on_error():
        import tether

        tether.configure(gc_threshold=(50_000, 20, 100))
    return _worker_tether_async(args)


# --- the floor: what a hand-written program with the same durability costs ---------------------


class _FloorWriter:
    """One thread that group-commits whatever is queued: ``BEGIN``, one ``executemany`` per
    statement, ``COMMIT`` (WAL, ``synchronous=NORMAL``), then one ``call_soon_threadsafe``
    per batch resolves the batch's futures on the loop."""

    STATEMENTS = (
        "INSERT INTO executions (id, args, status) VALUES (?, ?, 'running')",
        "INSERT INTO steps (execution, step, result) VALUES (?, ?, ?)",
        "UPDATE executions SET status = 'succeeded', result = ? WHERE id = ?",
    )
    START, STEP, FINISH = range(3)

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS executions "
            "(id INTEGER PRIMARY KEY, args TEXT, status TEXT, result TEXT)"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS steps "
            "(execution INTEGER, step INTEGER, result TEXT, PRIMARY KEY (execution, step))"
        )
        self.loop = loop
        self.queue: collections.deque[tuple[int, tuple[Any, ...], asyncio.Future[None]]] = (
            collections.deque()
        )
        self.wake = threading.Event()
        self.batches = 0
        threading.Thread(target=self._write_forever, name="floor-writer", daemon=True).start()

    def commit(self, kind: int, params: tuple[Any, ...]) -> asyncio.Future[None]:
        """On the loop: queue a row; the future is done once it is committed."""
        future = self.loop.create_future()
        self.queue.append((kind, params, future))
        if not self.wake.is_set():
            self.wake.set()
        return future

    def _write_forever(self) -> None:
        queue = self.queue
        while True:
            self.wake.wait()
            self.wake.clear()
            batch = []
            while queue:
                batch.append(queue.popleft())
            if not batch:
                continue
            by_kind: list[list[tuple[Any, ...]]] = [[], [], []]
            for kind, params, _ in batch:
                by_kind[kind].append(params)
            self.conn.execute("BEGIN")
            for sql, rows in zip(self.STATEMENTS, by_kind, strict=True):
                if rows:
                    self.conn.executemany(sql, rows)
            self.conn.execute("COMMIT")
            self.batches += 1
            self.loop.call_soon_threadsafe(_resolve_all, [f for _, _, f in batch])


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _worker_floor(args: argparse.Namespace, *, durable: bool = True) -> dict[str, Any]:
    """The floor (``durable``): the execution rows inserted through the writer before the
    tasks start, each step's JSON result a row, each task awaiting its row's commit before
    its next step, each finish committed too. Without ``durable``: pure asyncio."""
    path = Path(args.db_dir) / "floor.sqlite"

    async def body() -> dict[str, Any]:
        writer = _FloorWriter(path, asyncio.get_running_loop()) if durable else None

        async def agent(agent_id: int) -> int:
            total = 0
            for step in range(STEPS):
                await asyncio.sleep(MODEL_S)
                result = {"agent": agent_id, "step": step, "value": agent_id * STEPS + step}
                if writer is not None:
                    await writer.commit(writer.STEP, (agent_id, step, json.dumps(result)))
                total += result["value"]
            if writer is not None:
                await writer.commit(writer.FINISH, (json.dumps(total), agent_id))
            return total

        async def run(ids: range) -> list[int]:
            if writer is not None:
                starts = (writer.commit(writer.START, (i, json.dumps([i]))) for i in ids)
                await asyncio.gather(*starts)
            return list(await asyncio.gather(*(agent(i) for i in ids)))

        if await run(range(-1, 0)) != [expected(-1)]:  # untimed: the file, the thread
            raise RuntimeError("the floor's warm-up agent returned a wrong result")
        n = args.n
        start = _start_clock()
        try:
            results = await asyncio.wait_for(run(range(n)), args.timeout)
        except TimeoutError:
            return _outcome(n, start, None, 0)
        out = _outcome(n, start, results, n)
        if writer is not None:
            out["batches"] = writer.batches
        return out

    out = asyncio.run(body())
    if durable and not out.get("timed_out"):
        out["checkpoints"] = _count(path, "SELECT count(*) FROM steps WHERE execution >= 0")
    if durable:
        out["version"] = f"sqlite {sqlite3.sqlite_version}"
    return out


def _worker_asyncio(args: argparse.Namespace) -> dict[str, Any]:
    return _worker_floor(args, durable=False)


def _worker_dbos(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    with unavailable_on_error():
        from dbos import DBOS

    path = Path(args.db_dir) / "dbos.sqlite"

    @DBOS.step()
    async def model_call(agent_id: int, step: int) -> dict[str, int]:
        await asyncio.sleep(MODEL_S)
        return {"agent": agent_id, "step": step, "value": agent_id * STEPS + step}

    @DBOS.workflow()
    async def agent(agent_id: int) -> int:
        total = 0
        for step in range(STEPS):
            total += (await model_call(agent_id, step))["value"]
        return total

    DBOS(
        config={
            "name": "tether-bench-agents",
            "system_database_url": f"sqlite:///{path}",
            "log_level": "ERROR",
            "enable_otlp": False,
        }
    )
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.ERROR)  # launch configures it; quiet it after

    async def body() -> dict[str, Any]:
        warm = await (await DBOS.start_workflow_async(agent, -1)).get_result()
        if warm != expected(-1):
            raise RuntimeError(f"warm-up agent returned {warm!r}, expected {expected(-1)}")
        n = args.n
        start = _start_clock()

        async def run_all() -> list[Any]:
            handles = [await DBOS.start_workflow_async(agent, i) for i in range(n)]
            tasks.extend(asyncio.ensure_future(h.get_result()) for h in handles)
            return list(await asyncio.gather(*tasks))

        tasks: list[asyncio.Future[Any]] = []
        try:
            results = await asyncio.wait_for(run_all(), args.timeout)
        except TimeoutError:
            return _outcome(n, start, None, sum(t.done() for t in tasks))
        return _outcome(n, start, results, n)

    out = asyncio.run(body())
    if not out.get("timed_out"):
        rows = _count(path, "SELECT count(*) FROM operation_outputs")
        out["checkpoints"] = None if rows is None else rows - STEPS
    out["version"] = dist_version("dbos")
    return out


def _worker_langgraph(args: argparse.Namespace) -> dict[str, Any]:
    with unavailable_on_error():
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
        from langgraph.func import entrypoint, task

    path = Path(args.db_dir) / "langgraph.sqlite"

    @task
    async def model_call(agent_id: int, step: int) -> dict[str, int]:
        await asyncio.sleep(MODEL_S)
        return {"agent": agent_id, "step": step, "value": agent_id * STEPS + step}

    async def body() -> dict[str, Any]:
        async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:

            @entrypoint(checkpointer=saver)
            async def agent(agent_id: int) -> int:
                total = 0
                for step in range(STEPS):
                    total += (await model_call(agent_id, step))["value"]
                return total

            def start(i: int) -> asyncio.Task[Any]:
                config = {"configurable": {"thread_id": f"agent-{i}"}}
                return asyncio.create_task(agent.ainvoke(i, config=config))

            warm = await start(-1)
            if warm != expected(-1):
                raise RuntimeError(f"warm-up agent returned {warm!r}, expected {expected(-1)}")
            n = args.n
            clock = _start_clock()
            tasks = [start(i) for i in range(n)]
            _, pending = await asyncio.wait(tasks, timeout=args.timeout)
            if pending:
                return _outcome(n, clock, None, n - len(pending))
            return _outcome(n, clock, [t.result() for t in tasks], n)

    out = asyncio.run(body())
    if not out.get("timed_out"):
        out["checkpoints"] = _count(path, LANGGRAPH_TASKS_SQL)
    out["version"] = dist_version("langgraph")
    return out


# One row per write; a task's result is one write under its task id. The warm-up agent's thread
# is left out, as the entrypoint's own task would be counted too: >= 10 per agent is the check.
LANGGRAPH_TASKS_SQL = "SELECT count(DISTINCT task_id) FROM writes WHERE thread_id != 'agent--1'"


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "floor": _worker_floor,
    "asyncio": _worker_asyncio,
    "tether-async": _worker_tether_async,
    "tether-async-gc": _worker_tether_async_gc,
    "tether": _worker_tether,
    "dbos": _worker_dbos,
    "langgraph": _worker_langgraph,
}


# ==================================================================================================
# Parent side: spawns the workers, checks and prints.
# ==================================================================================================


@dataclass
class Context:
    timeout_s: float
    tmp_base: Path
    env: dict[str, str]
    progress: bool


@dataclass
class Result:
    engine: Engine
    n: int
    status: str  # ok | wrong | timeout | error | unavailable
    reason: str = ""
    data: dict[str, Any] | None = None
    process_s: float = 0.0

    @property
    def wall_s(self) -> float | None:
        return float(self.data["elapsed_s"]) if self.status in ("ok", "wrong") else None

    @property
    def cpu_us_per_checkpoint(self) -> float | None:
        if self.wall_s is None or self.data is None or "cpu_s" not in self.data:
            return None
        return float(self.data["cpu_s"]) * 1e6 / (STEPS * self.n)

    @property
    def kb_per_agent(self) -> float | None:
        if self.data is None or "peak_rss_kb" not in self.data:
            return None
        return (self.data["peak_rss_kb"] - self.data["rss_before_kb"]) / self.n


@contextlib.contextmanager
def _fresh_dir(ctx: Context) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-agents-", dir=ctx.tmp_base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _judge(engine: Engine, n: int, child: Child, timeout_s: float) -> Result:
    data = child.data
    if "unavailable" in data:
        reason = str(data["unavailable"])
        if reason.startswith("ModuleNotFoundError"):
            reason = f"{INSTALL_HINT}: {reason}"
        return Result(engine, n, "unavailable", reason, process_s=child.wall_s)
    if data.get("timed_out") or child.returncode == -1:
        done = data.get("done")
        killed = "" if data.get("timed_out") else ", killed"
        done_text = f", {done:,}/{n:,} done" if isinstance(done, int) else ""
        reason = f"timed out (>{timeout_s:.0f} s{done_text}{killed})"
        return Result(engine, n, "timeout", reason, data, child.wall_s)
    failure = child.failure("elapsed_s")
    if failure is not None:
        return Result(engine, n, "error", failure, data, child.wall_s)
    problems = []
    if data.get("wrong"):
        problems.append(f"{data['wrong']} wrong results, e.g. {data['wrong_sample']}")
    rows = data.get("checkpoints")
    if not engine.durable:
        pass  # nothing recorded by design
    elif rows is None:
        problems.append("checkpoint rows not counted")
    elif rows < STEPS * n:
        problems.append(f"only {rows} of {STEPS * n} checkpoints recorded")
    if problems:
        return Result(engine, n, "wrong", "; ".join(problems), data, child.wall_s)
    return Result(engine, n, "ok", "", data, child.wall_s)


def _run_one(ctx: Context, engine: Engine, n: int) -> Result:
    with _fresh_dir(ctx) as tmp:
        args = ["--n", str(n), "--timeout", str(ctx.timeout_s), "--db-dir", str(tmp)]
        child = spawn(
            __file__,
            engine.key,
            args,
            env=ctx.env,
            timeout_s=ctx.timeout_s + SETUP_ALLOWANCE_S,
            cwd=tmp,
        )
    result = _judge(engine, n, child, ctx.timeout_s)
    if result.status in ("ok", "wrong"):
        ratio = (result.wall_s or 0) / IDEAL_S
        log(
            ctx,
            f"[{engine.key} N={n}] {result.wall_s:.2f} s ({ratio:.1f}x the ideal {IDEAL_S} s),"
            f" {result.kb_per_agent:.1f} KB/agent, {result.status}"
            f"{_starts_note(result)}"
            f"{': ' + result.reason if result.reason else ''} (process {child.wall_s:.1f} s)",
        )
    else:
        detail = f"\n{child.stderr.strip()[-2000:]}" if result.status == "error" else ""
        log(ctx, f"[{engine.key} N={n}] {result.status}: {result.reason}{detail}")
    return result


def _starts_note(result: Result) -> str:
    starts_s = (result.data or {}).get("starts_s")
    return "" if starts_s is None else f", its starts {starts_s:.2f} s"


# --- output ---------------------------------------------------------------------------------------


def _label(result: Result, packages: dict[str, str | None]) -> str:
    version = (result.data or {}).get("version") or packages.get(result.engine.dist)
    return f"{result.engine.label} {version}" if version else result.engine.label


def _floors(results: list[Result]) -> dict[int, float]:
    return {r.n: r.wall_s for r in results if r.engine.key == "floor" and r.wall_s is not None}


def _x_floor(result: Result, floors: dict[int, float]) -> float | None:
    floor = floors.get(result.n)
    return None if result.wall_s is None or floor is None else result.wall_s / floor


def _rows(results: list[Result], packages: dict[str, str | None]) -> list[list[str]]:
    floors = _floors(results)
    rows: list[list[str]] = []
    for r in results:
        head = [_label(r, packages), f"{r.n:,}"]
        wall = r.wall_s
        if wall is None:
            rows.append([*head, r.reason if r.status != "error" else f"error: {r.reason}"])
            continue
        kb, cpu, ratio = r.kb_per_agent, r.cpu_us_per_checkpoint, _x_floor(r, floors)
        rows.append(
            [
                *head,
                f"{wall:.2f}",
                "-" if ratio is None else f"{ratio:.2f}x",
                f"{STEPS * r.n / wall:,.0f}",
                "-" if kb is None else f"{kb:.1f}",
                "-" if cpu is None else f"{cpu:.0f}",
                "yes" if r.status == "ok" else f"NO: {r.reason}",
            ]
        )
    return rows


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def _targets(results: list[Result], timeout_s: float) -> list[str]:
    floors = _floors(results)
    by = {(r.engine.key, r.n): r for r in results}
    lines = ["Targets (against the floor measured in the same run):"]
    for (key, n), limit in TARGET_RATIO.items():
        label = f"{ENGINE_BY_KEY[key].label} at N={n:,} within {limit}x the floor"
        r = by.get((key, n))
        if r is None or n not in floors:
            lines.append(f"  {label}: n/a (not run{'' if r is None else ': no floor'})")
            continue
        ratio = _x_floor(r, floors)
        ok = ratio is not None and r.status == "ok" and ratio <= limit
        got = f"{ratio:.2f}x" if ratio is not None else r.reason
        lines.append(f"  {label}: {_verdict(ok)} ({got})")
    tether = [r for r in results if r.engine.key in TETHER_KEYS]
    measured = [r for r in tether if r.kb_per_agent is not None]
    if measured:
        # At the largest N that finished (a timed-out run's peak is partial), the worse one.
        big_n = (
            max(r.n for r in measured if r.status == "ok")
            if any(r.status == "ok" for r in measured)
            else max(r.n for r in measured)
        )
        worst = max((r for r in measured if r.n == big_n), key=lambda r: r.kb_per_agent or 0.0)
        kb = worst.kb_per_agent or 0.0
        ok = kb < TARGET_KB and worst.status == "ok"
        lines.append(
            f"  tether < {TARGET_KB:.0f} KB peak RSS per agent (N={big_n:,}): {_verdict(ok)}"
            f" ({kb:.1f} KB, {worst.engine.label}"
            f"{'' if worst.status == 'ok' else ', ' + worst.status})"
        )
    else:
        lines.append(f"  tether < {TARGET_KB:.0f} KB peak RSS per agent: n/a (tether did not run)")
    for key in ("dbos", "langgraph"):
        label = ENGINE_BY_KEY[key].label
        peer = {r.n: r for r in results if r.engine.key == key}
        pairs = [(t, peer[t.n]) for t in tether if t.n in peer]
        pairs = [(t, p) for t, p in pairs if p.status in ("ok", "wrong", "timeout")]
        if not pairs:
            lines.append(f"  tether ahead of {label}: n/a (no N where both ran)")
            continue
        detail = []
        all_ok = True
        for t, p in pairs:
            tw, pw = t.wall_s, p.wall_s
            if tw is None or t.status != "ok":
                ok, text = False, f"tether {t.status}"
            elif pw is None:  # the peer timed out, tether finished
                ok, text = True, f"{tw:.1f} s vs >{timeout_s:.0f} s (timed out)"
            else:
                ok, text = tw < pw, f"{tw:.1f} s vs {pw:.1f} s"
            all_ok = all_ok and ok
            detail.append(f"{t.engine.key} N={t.n:,} {text}")
        lines.append(f"  tether ahead of {label}: {_verdict(all_ok)} ({'; '.join(detail)})")
    return lines


def _render(
    info: dict[str, Any], ctx: Context, ns: list[int], results: list[Result], elapsed_s: float
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
        f"Concurrent agents: N async agents in one process, each {STEPS} sequential checkpoint"
        f" calls of await asyncio.sleep({MODEL_S}) (at best {IDEAL_S} s). Default settings,"
        " SQLite, one process per engine and N; timeout"
        f" {ctx.timeout_s:.0f} s per run.",
        "",
    ]
    header = [
        "engine",
        "N",
        "wall s",
        "x floor",
        "checkpoints/s",
        "KB/agent",
        "CPU us/ckpt",
        "right",
    ]
    lines += table(header, _rows(results, pkgs), numeric={1, 2, 3, 4, 5, 6})
    lines += [
        "",
        "floor = a hand-written asyncio program with tether's durability: the N execution rows"
        " inserted first, each step's JSON result a row awaited before the next step, each"
        " finish a row; one writer thread group-commits whatever is queued (BEGIN; executemany;"
        " COMMIT; WAL, synchronous=NORMAL) and resolves each batch's futures with one"
        " call_soon_threadsafe. pure asyncio = the same tasks with no store.",
        "x floor = wall / the floor's wall at the same N. KB/agent = (peak RSS of the process"
        " - its RSS just before the first start) / N. CPU us/ckpt = CPU time of the whole"
        " process (all threads) during the timed part / (10 N). right = every result as"
        " expected and >= 10 N checkpoints recorded.",
        "tether run_async: await gather(flow.run_async(i) x N), then gather the handles; tether"
        " run(): flow.run() x N, then handle.result() each; DBOS: await start_workflow_async()"
        " x N, then gather get_result(); LangGraph: create_task(entrypoint.ainvoke()) x N,"
        " gathered (AsyncSqliteSaver). gc_threshold 50000: run_async with tether's setting"
        " for the collector's thresholds (as tether worker sets them), not a default.",
        "",
        *_targets(results, ctx.timeout_s),
    ]
    if machine_was_busy(info):
        lines.append(
            "WARNING: the machine was busy with other work during the run (load average above);"
            " expect noisy numbers."
        )
    lines += ["", f"(benchmark took {elapsed_s:.0f} s)"]
    return "\n".join(lines)


def _to_json(
    info: dict[str, Any], ctx: Context, ns: list[int], results: list[Result], elapsed_s: float
) -> dict[str, Any]:
    return {
        "machine": info,
        "config": {"n": ns, "steps": STEPS, "model_s": MODEL_S, "timeout_s": ctx.timeout_s},
        "rows": [
            {
                "engine": r.engine.key,
                "n": r.n,
                "status": r.status,
                "reason": r.reason or None,
                "wall_s": r.wall_s,
                "x_floor": _x_floor(r, _floors(results)),
                "cpu_us_per_checkpoint": r.cpu_us_per_checkpoint,
                "checkpoints_per_s": None if r.wall_s is None else STEPS * r.n / r.wall_s,
                "kb_per_agent": r.kb_per_agent,
                "process_s": r.process_s,
                "data": r.data,
            }
            for r in results
        ],
        "targets": _targets(results, ctx.timeout_s)[1:],
        "elapsed_s": round(elapsed_s, 1),
    }


def _parse_ns(text: str) -> list[int]:
    try:
        ns = [int(t.replace("_", "")) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--n takes comma-separated whole numbers, not {text!r}") from None
    if not ns or min(ns) < 1:
        raise SystemExit("--n needs at least one N >= 1")
    return ns


def _parse_only(text: str) -> list[str]:
    keys = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [k for k in keys if k not in ENGINE_BY_KEY]
    if unknown or not keys:
        raise SystemExit(f"unknown --only key(s) {unknown}; valid: {', '.join(ENGINE_BY_KEY)}")
    return list(dict.fromkeys(keys))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Many async agents in one process: tether vs DBOS and LangGraph."
    )
    parser.add_argument("--n", default="100,1000,10000", help="agent counts (default %(default)s)")
    parser.add_argument(
        "--only", default=",".join(ENGINE_BY_KEY), help="engines to run (default %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds per engine-run (default 300)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the temp dbs go")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Worker mode: how the parent runs each measurement in a child process.
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--db-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        args.n = int(args.n)
        rc = child_main(lambda: WORKERS[args.worker](args))
        # No interpreter shutdown: a run that timed out still has agents in flight, and the
        # engines' threads (tether's executor pool, DBOS's) could keep the process alive.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)

    started = time.perf_counter()
    ns = _parse_ns(args.n)
    keys = _parse_only(args.only)
    tmp_base = (args.tmpdir or Path(tempfile.gettempdir())).resolve()
    tether_from_src, tether_missing = tether_source()
    ctx = Context(
        timeout_s=args.timeout,
        tmp_base=tmp_base,
        env=child_env(tether_from_src, drop=OFFLINE_DROP, set_vars=OFFLINE_SET),
        progress=not args.quiet,
    )
    packages = {dist: dist_version(dist) for dist in VERSION_DISTS}
    if tether_from_src:
        packages["tether"] = "src checkout, not installed"
    info = machine_info(tmp_base, mem=True, packages=packages)

    results: list[Result] = []
    for n in ns:
        for key in keys:
            engine = ENGINE_BY_KEY[key]
            if key in TETHER_KEYS and tether_missing:
                results.append(Result(engine, n, "unavailable", tether_missing))
            elif key not in TETHER_KEYS and importlib.util.find_spec(engine.module) is None:
                results.append(Result(engine, n, "unavailable", INSTALL_HINT))
            else:
                log(ctx, f"[{key} N={n}] running ...")
                results.append(_run_one(ctx, engine, n))

    elapsed = time.perf_counter() - started
    info["loadavg_end"] = loadavg()
    if args.json:
        print(json.dumps(_to_json(info, ctx, ns, results, elapsed), indent=2, default=str))
    else:
        print(_render(info, ctx, ns, results, elapsed))
    return 0 if all(r.status in ("ok", "timeout", "unavailable") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
