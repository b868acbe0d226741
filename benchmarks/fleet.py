#!/usr/bin/env python3
"""Throughput of a fleet of worker processes on PostgreSQL: tether against DBOS, one table.

Usage:
    python benchmarks/fleet.py [--executions 1000] [--checkpoints 20] [--workers 1,2,4]
                               [--concurrency 8] [--repeat 3] [--dbos-repeat 1] [--json]
                               [--skip-dbos] [--skip-floor]

Needs a PostgreSQL server installed (the one tests/pg_cluster.py finds: Debian's ``postgresql``
package), psycopg 3 (``pip install -e '.[postgres]'``) and, for the DBOS rows, dbos
(``pip install -e '.[bench]'``). Nothing goes over the network: the cluster listens on loopback,
DBOS runs without conductor or telemetry.

Method, and why:
    * One throwaway PostgreSQL cluster for the whole run (tests/pg_cluster.py), restarted without
      the test settings (fsync, synchronous_commit and full_page_writes off) so every engine runs
      at the server's default durability: each commit waits for its WAL to reach the disk. The
      settings in force are read back with SHOW and printed. The cluster is stopped and removed
      at the end, whatever happens.
    * Workload: E executions (1,000 by default) of a flow making C (20) sequential checkpoints,
      each returning a fresh ~200 B dict (_fleet_flows.py holds both engines' versions side by
      side). DBOS rows take about two minutes each at this size.
    * Each row gets a fresh database (CREATE DATABASE). The E executions are enqueued first by a
      client-only process (tether: ``configure(executor=False)`` + ``flow.enqueue``; DBOS:
      ``DBOSClient.enqueue`` on a queue registered with ``DBOSClient.register_queue``), then W
      worker processes are started and run until every execution succeeded (the parent polls a
      COUNT every 50 ms). Between the two, ANALYZE gives the planner the statistics that
      autovacuum keeps on any live database (same for every engine).
    * Each tether and floor row is run ``--repeat`` times (3), DBOS rows ``--dbos-repeat``
      times (1), in rounds over all the rows, each run on a fresh database; a row shows its
      median run and lists every run's rate. A fast row's steady window lasts a few seconds
      and moved by 10-20% run to run on the 2-core VM this was written on; a DBOS row's lasts
      about 100 s, which averages as much by itself.
    * The headline rates are steady-state: the window runs from the moment the 10th percentile
      of all checkpoints was recorded to the moment of the 90th percentile, read afterwards
      from the time each engine stored with each step result (tether: ``finished_at``; DBOS:
      ``completed_at_epoch_ms``; the floor stores ``time.time()`` with its row, as tether
      does); checkpoints/s = the 80 % of checkpoints in between / the window's length. So
      worker start-up (interpreter, imports, connecting) and the tail, when the last
      executions run with slots to spare, are left out alike for every engine. The end-to-end
      time (workers started -> all succeeded, start-up included) is reported beside it, and
      "startup s" says how long it took until the first checkpoint was recorded.
    * tether workers: ``python -m tether worker --db URL --import _fleet_flows --concurrency K``.
      DBOS workers: this script in a child process, ``DBOS.launch()`` with a unique executor id,
      serving the queue with ``worker_concurrency=K``; DBOS drains one queue from several
      processes by claiming rows with FOR UPDATE SKIP LOCKED, so it gets W = 1, 2, 4 as well.
      DBOS queues are polled (no wake-up on new work or a free slot): its polling interval is
      ``--dbos-poll`` (0.05 s by default; DBOS's own default of 1 s measured ~25% slower here,
      0.02 s no faster).
    * The floor: W processes x K threads with raw psycopg committing the same step results
      (one row per checkpoint: text execution id, position, JSON result, time; one INSERT
      each in autocommit, plus one per finished execution; no claims, leases, fencing or
      framework): what this server and machine can do at this durability with one commit per
      step. It is not a ceiling: an engine that commits several steps at once (tether groups
      the concurrent commits of each worker process) needs fewer commits than steps.
    * CPU columns: CPU seconds of the worker processes and of the PostgreSQL server processes
      during the steady window (from /proc samples taken at every poll), per checkpoint
      recorded in it. On a small machine they tell whether the fleet is bound by the client,
      the server, or neither.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from _harness import (
    BENCH_DIR,
    Unavailable,
    child_env,
    child_main,
    dist_version,
    loadavg,
    log,
    machine_info,
    spawn,
    table,
    tether_source,
    unavailable_on_error,
)

if TYPE_CHECKING:
    from pg_cluster import Cluster

US = "\u00b5s"  # micro sign, escaped so the source stays ASCII
TESTS_DIR = BENCH_DIR.parent / "tests"
INSTALL_HINT = "not installed (pip install -e '.[bench]')"
POLL_S = 0.05  # how often the parent counts finished executions
TARGET_CKPT_S = 5000.0  # the target, with TARGET_WORKERS workers
TARGET_WORKERS = 4
BUSY_SHARE = 0.15  # other work above this share of the CPU during a row gets a warning
DBOS_APP = "tether-fleet-bench"
DBOS_VERSION = "fleet-bench"  # one application version for the enqueuer and every worker
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
OTHER_SETTINGS = ("shared_buffers", "max_connections")
# DBOS and OpenTelemetry variables that would send anything anywhere, whatever the shell has set.
OFFLINE_DROP = (
    "DBOS__CLOUD",
    "DBOS__CONDUCTOR_KEY",
    "DBOS__CONDUCTOR_URL",
    "DBOS__CONDUCTOR_APP_NAME",
    "DBOS__OTLP_TRACES_ENDPOINT",
    "DBOS__OTLP_LOGS_ENDPOINT",
    "DBOS_SYSTEM_DATABASE_URL",
    "DBOS_APP_NAME",
    "DBOS__APPVERSION",
    "DBOS__VMID",
    "TETHER_DB",
    "TETHER_EXECUTOR",
)
OFFLINE_SET = {"OTEL_SDK_DISABLED": "true"}


@dataclass(frozen=True)
class Engine:
    key: str
    label: str
    # (succeeded, failed) executions; is any checkpoint committed; committed checkpoints;
    # the time (s since the epoch) each committed checkpoint's step finished, ascending.
    done_sql: str
    first_sql: str
    checkpoints_sql: str
    times_sql: str


ENGINES: dict[str, Engine] = {
    "tether": Engine(
        "tether",
        "tether",
        "SELECT count(*) FILTER (WHERE status = 'succeeded'),"
        " count(*) FILTER (WHERE status IN ('failed', 'cancelled')) FROM executions",
        "SELECT EXISTS (SELECT 1 FROM checkpoints)",
        "SELECT count(*) FROM checkpoints WHERE status = 'succeeded'",
        "SELECT finished_at FROM checkpoints WHERE status = 'succeeded' ORDER BY 1",
    ),
    "dbos": Engine(
        "dbos",
        "DBOS",
        "SELECT count(*) FILTER (WHERE status = 'SUCCESS'),"
        " count(*) FILTER (WHERE status IN ('ERROR', 'CANCELLED',"
        " 'MAX_RECOVERY_ATTEMPTS_EXCEEDED')) FROM dbos.workflow_status",
        "SELECT EXISTS (SELECT 1 FROM dbos.operation_outputs)",
        "SELECT count(*) FROM dbos.operation_outputs WHERE error IS NULL",
        "SELECT completed_at_epoch_ms / 1000.0 FROM dbos.operation_outputs"
        " WHERE error IS NULL AND completed_at_epoch_ms IS NOT NULL ORDER BY 1",
    ),
    "floor": Engine(
        "floor",
        "raw psycopg floor",
        "SELECT count(*), 0 FROM finished",
        "SELECT EXISTS (SELECT 1 FROM checkpoints)",
        "SELECT count(*) FROM checkpoints",
        "SELECT done_at FROM checkpoints ORDER BY 1",
    ),
}


# ==================================================================================================
# Child side: enqueuers (run to their end) and workers (run until SIGTERM, or their share is done).
# ==================================================================================================


def _tether_enqueue(args: argparse.Namespace) -> dict[str, Any]:
    with unavailable_on_error():
        import _fleet_flows
        import tether
    tether.configure(db=args.db, executor=False)
    t0 = time.perf_counter()
    for i in range(args.executions):
        _fleet_flows.fleet_flow.enqueue(i, args.checkpoints)
    return {
        "enqueued": args.executions,
        "enqueue_s": time.perf_counter() - t0,
        "version": dist_version("tether"),
        "payload_bytes": _fleet_flows.payload_size(),
    }


def _dbos_setup(args: argparse.Namespace) -> dict[str, Any]:
    with unavailable_on_error():
        from dbos import DBOS, DBOSClient

        import _fleet_flows
    _quiet_dbos_logs()
    DBOS.migrate(args.db)
    client = DBOSClient(system_database_url=args.db, application_name=DBOS_APP)
    try:
        client.register_queue(
            _fleet_flows.DBOS_QUEUE,
            worker_concurrency=args.concurrency,
            polling_interval_sec=args.dbos_poll,
        )
        t0 = time.perf_counter()
        for i in range(args.executions):
            client.enqueue(
                {
                    "workflow_name": _fleet_flows.DBOS_WORKFLOW,
                    "queue_name": _fleet_flows.DBOS_QUEUE,
                    "app_version": DBOS_VERSION,
                },
                i,
                args.checkpoints,
            )
        elapsed = time.perf_counter() - t0
    finally:
        client.destroy()
    return {"enqueued": args.executions, "enqueue_s": elapsed, "version": dist_version("dbos")}


def _quiet_dbos_logs() -> None:
    import logging

    for name in ("dbos", "sqlalchemy", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _stop_on_sigterm() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _dbos_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One DBOS process serving the queue until SIGTERM."""
    with unavailable_on_error():
        from dbos import DBOS, DBOSConfig

        import _fleet_flows
    stop = _stop_on_sigterm()
    _fleet_flows.dbos_workflow()  # registered before DBOS is configured
    config: DBOSConfig = {
        "name": DBOS_APP,
        "system_database_url": args.db,
        "application_version": DBOS_VERSION,
        "executor_id": f"fleet-{args.index}-{os.getpid()}",  # unique: recovery is per executor
        "log_level": "ERROR",
        "enable_otlp": False,
        "sys_db_pool_size": max(20, 2 * args.concurrency),
    }
    DBOS(config=config)
    _quiet_dbos_logs()
    DBOS.launch()
    while not stop.wait(0.5):
        pass
    DBOS.destroy()
    return {"stopped": True}


def _floor_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Process ``index`` of ``of`` commits its share of the executions, K threads at once."""
    import psycopg

    import _fleet_flows

    # Text ids shaped like tether's (time + random hex), so the primary keys compare.
    prefix = f"{time.time_ns() // 1000:011x}"
    mine = [f"{prefix}-{i:012x}" for i in range(args.index, args.executions, args.of)]
    lock = threading.Lock()
    errors: list[str] = []

    def run() -> None:
        try:
            with psycopg.connect(args.db, autocommit=True) as conn:
                while True:
                    with lock:
                        if not mine:
                            return
                        execution = mine.pop()
                    number = int(execution.rpartition("-")[2], 16)
                    for i in range(args.checkpoints):
                        conn.execute(
                            "INSERT INTO checkpoints (execution_id, position, result, done_at)"
                            " VALUES (%s, %s, %s, %s)",
                            (execution, i, json.dumps(_fleet_flows.payload(number, i)),
                             time.time()),
                        )  # fmt: skip
                    conn.execute("INSERT INTO finished (execution_id) VALUES (%s)", (execution,))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return {"done": True}


FLOOR_SCHEMA = (
    "CREATE TABLE checkpoints (execution_id TEXT NOT NULL, position INTEGER NOT NULL,"
    " result TEXT NOT NULL, done_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (execution_id, position))",
    "CREATE TABLE finished (execution_id TEXT PRIMARY KEY)",
)

CHILDREN: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "tether-enqueue": _tether_enqueue,
    "dbos-setup": _dbos_setup,
    "dbos-worker": _dbos_worker,
    "floor-worker": _floor_worker,
}


# ==================================================================================================
# Parent side
# ==================================================================================================


@dataclass
class Context:
    executions: int
    checkpoints: int
    concurrency: int
    dbos_poll: float
    timeout_s: float
    env: dict[str, str]
    logs: Path
    cluster: Cluster
    progress: bool
    payload_bytes: int | None = None  # JSON size of one step result, reported by an enqueuer


@dataclass
class Row:
    engine: Engine
    workers: int
    status: str = "ok"  # ok | error | unavailable
    reason: str = ""
    seconds: float = 0.0  # end to end: workers started -> all executions succeeded
    startup_s: float | None = None
    window_s: float = 0.0  # the steady window: 10th -> 90th percentile of checkpoint times
    window_checkpoints: int = 0
    enqueue_s: float | None = None
    # CPU seconds per checkpoint in the steady window, of the workers and of the server
    worker_cpu_s: float | None = None
    server_cpu_s: float | None = None
    other_cpu: float | None = None  # share of the machine's CPU used by anything else meanwhile
    checkpoints_recorded: int = 0
    version: str | None = None
    repeat: int = 1  # how many runs this row gets; the row shows the median one
    trials: list[float] = field(default_factory=list)  # checkpoints/s of each run

    def ok(self) -> bool:
        return self.status == "ok" and self.window_s > 0


@dataclass
class Fleet:
    """Worker processes of one row, with their output in log files; all stopped at the end."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)
    cpu: dict[int, float] = field(default_factory=dict)

    def start(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        out = log_path.open("wb")
        self.files.append(out)
        self.logs.append(log_path)
        self.procs.append(
            subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=BENCH_DIR)
        )

    def exited(self, *, finishes: bool = False) -> str | None:
        """Why a worker is gone before the work is done (None: all alive). ``finishes``: the
        workers exit by themselves when their share is done, so only a failure counts."""
        for proc, path in zip(self.procs, self.logs, strict=True):
            code = proc.poll()
            if code is not None and not (finishes and code == 0):
                return f"worker {proc.pid} exited with {code}: {_tail(path)}"
        return None

    def cpu_seconds(self) -> float:
        """CPU seconds of the workers so far (a worker that exited keeps its last reading)."""
        for proc in self.procs:
            seen = _proc_cpu_s(proc.pid)
            if seen is not None:
                self.cpu[proc.pid] = seen
        return sum(self.cpu.values())

    def stop(self, grace_s: float = 10.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for out in self.files:
            out.close()


def _tail(path: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"
    return "(no log)"


# --- CPU accounting from /proc -------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from the state on: ppid is [1]


def _proc_cpu_s(pid: int) -> float | None:
    fields = _proc_stat(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _server_cpu_s(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its live children (backends, WAL writer, ...)
    and, through the postmaster's cutime/cstime, the children it has reaped (closed backends)."""
    fields = _proc_stat(postmaster)
    if fields is None:
        return 0.0
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        child = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if child is not None and int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot: user, nice, system and steal (irq and softirq
    time is left out: loopback traffic of the benchmark itself lands there)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _postmaster_pid(cluster: Cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().splitlines()[0])


# --- the cluster ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _postgres(progress: bool) -> Iterator[tuple[Cluster, dict[str, str]]]:
    """A throwaway cluster at the server's default durability, removed at the end."""
    sys.path.insert(0, str(TESTS_DIR))
    import psycopg

    import pg_cluster

    cluster = pg_cluster.start_cluster()
    try:
        # pg_cluster starts the server with fsync, synchronous_commit and full_page_writes off
        # on its command line, which outranks ALTER SYSTEM; restart without them instead.
        cluster.stop()
        options = (
            f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {cluster.data} "
            "-c max_connections=300"
        )
        done = cluster.ctl("-o", options, "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{cluster.log.read_text()}")
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            settings = {
                name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
                for name in ("server_version", *DURABILITY_SETTINGS, *OTHER_SETTINGS)
            }
        if progress:
            print(f"[postgres] cluster on port {cluster.port}: {settings}", file=sys.stderr)
        yield cluster, settings
    finally:
        pg_cluster.remove(cluster)


def _connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


# --- one row -------------------------------------------------------------------------------------


def _spawn_child(ctx: Context, child: str, url: str) -> dict[str, Any]:
    args = [
        "--db", url, "--executions", str(ctx.executions), "--checkpoints", str(ctx.checkpoints),
        "--concurrency", str(ctx.concurrency), "--dbos-poll", str(ctx.dbos_poll),
    ]  # fmt: skip
    done = spawn(__file__, child, args, env=ctx.env, timeout_s=ctx.timeout_s, cwd=BENCH_DIR)
    if "unavailable" in done.data:
        raise Unavailable(str(done.data["unavailable"]))
    failure = done.failure("enqueued")
    if failure is not None:
        raise RuntimeError(f"{child}: {failure}\n{done.stderr.strip()[-2000:]}")
    return done.data


def _worker_cmd(ctx: Context, engine: Engine, url: str, index: int, of: int) -> list[str]:
    if engine.key == "tether":
        return [
            sys.executable, "-m", "tether", "worker", "--db", url, "--import", "_fleet_flows",
            "--concurrency", str(ctx.concurrency),
        ]  # fmt: skip
    child = "dbos-worker" if engine.key == "dbos" else "floor-worker"
    return [
        sys.executable, str(Path(__file__).resolve()), "--worker", child, "--db", url,
        "--executions", str(ctx.executions), "--checkpoints", str(ctx.checkpoints),
        "--concurrency", str(ctx.concurrency), "--index", str(index), "--of", str(of),
    ]  # fmt: skip


def _prepare(ctx: Context, row: Row, url: str) -> None:
    """Record the executions to run (or, for the floor, the tables), then ANALYZE."""
    if row.engine.key == "floor":
        with _connect(url) as conn:
            for statement in FLOOR_SCHEMA:
                conn.execute(statement)
    else:
        script = "tether-enqueue" if row.engine.key == "tether" else "dbos-setup"
        data = _spawn_child(ctx, script, url)
        row.enqueue_s = float(data["enqueue_s"])
        row.version = data.get("version")
        ctx.payload_bytes = data.get("payload_bytes") or ctx.payload_bytes
    # Table statistics, as autovacuum gathers on any live database: without them the planner
    # treats the freshly filled tables as empty and may scan a whole queue where an index
    # lookup would do. Every engine gets the same.
    with _connect(url) as conn:
        conn.execute("ANALYZE")


@dataclass(frozen=True)
class Sample:
    """CPU counters at one poll (wall time in seconds since the epoch, like the step times)."""

    at: float
    workers: float
    server: float
    machine: float
    own: float


def _sample(fleet: Fleet, postmaster: int) -> Sample:
    return Sample(
        time.time(), fleet.cpu_seconds(), _server_cpu_s(postmaster), _machine_busy_s(), _own_cpu_s()
    )


def _run_row(ctx: Context, row: Row) -> None:
    engine, workers = row.engine, row.workers
    url = ctx.cluster.create_database(f"{engine.key}_w{workers}_{uuid.uuid4().hex[:8]}")
    _prepare(ctx, row, url)
    fleet = Fleet()
    postmaster = _postmaster_pid(ctx.cluster)
    try:
        with _connect(url) as conn:
            samples = [_sample(fleet, postmaster)]
            t0 = time.perf_counter()
            for i in range(workers):
                log_path = ctx.logs / f"{engine.key}-w{workers}-{i}.log"
                fleet.start(_worker_cmd(ctx, engine, url, i, workers), ctx.env, log_path)
            while True:
                succeeded, failed = conn.execute(engine.done_sql).fetchone()
                now = time.perf_counter() - t0
                samples.append(_sample(fleet, postmaster))
                if row.startup_s is None and conn.execute(engine.first_sql).fetchone()[0]:
                    row.startup_s = now
                if succeeded >= ctx.executions:
                    break
                if failed:
                    raise RuntimeError(f"{failed} executions failed; see {fleet.logs[0]}")
                if (gone := fleet.exited(finishes=engine.key == "floor")) is not None:
                    raise RuntimeError(gone)
                if now > ctx.timeout_s:
                    raise RuntimeError(
                        f"timed out after {ctx.timeout_s:.0f} s with {succeeded} of"
                        f" {ctx.executions} executions done"
                    )
                time.sleep(POLL_S)
            row.seconds = time.perf_counter() - t0
            times = [float(t) for (t,) in conn.execute(engine.times_sql).fetchall()]
            row.checkpoints_recorded = int(conn.execute(engine.checkpoints_sql).fetchone()[0])
        expected = ctx.executions * ctx.checkpoints
        if row.checkpoints_recorded != expected:
            raise RuntimeError(
                f"{row.checkpoints_recorded} checkpoints recorded, expected {expected}"
            )
        if len(times) != expected:
            raise RuntimeError(
                f"{len(times)} checkpoints have a recorded time, expected {expected}"
            )
        _steady_window(row, times, samples)
    finally:
        fleet.stop()


def _steady_window(row: Row, times: list[float], samples: list[Sample]) -> None:
    """The rate between the 10th and 90th percentile of the checkpoint times, and the CPU used
    between the polls that enclose that window, per checkpoint recorded between them."""
    lo, hi = times[len(times) // 10], times[(len(times) * 9) // 10]
    row.window_s = hi - lo
    row.window_checkpoints = (len(times) * 9) // 10 - len(times) // 10
    first = max((s for s in samples if s.at <= lo), key=lambda s: s.at, default=samples[0])
    last = min((s for s in samples if s.at >= hi), key=lambda s: s.at, default=samples[-1])
    in_cpu_window = bisect.bisect_right(times, last.at) - bisect.bisect_left(times, first.at)
    span = last.at - first.at
    if in_cpu_window <= 0 or span <= 0:
        return
    row.worker_cpu_s = (last.workers - first.workers) / in_cpu_window
    row.server_cpu_s = (last.server - first.server) / in_cpu_window
    # What neither this benchmark, its workers nor the server used: other work.
    ours = (last.workers - first.workers) + (last.server - first.server) + (last.own - first.own)
    other = max(0.0, last.machine - first.machine - ours)
    row.other_cpu = other / (span * _usable_cores())


def _bench(ctx: Context, rows: list[Row]) -> None:
    """Run every row `row.repeat` times: round after round over all the rows (so drift on the
    machine hits every engine alike), each run on a fresh database. A row then shows its
    median run (by checkpoints/s) and keeps the rate of every run."""
    runs: dict[int, list[Row]] = {id(row): [] for row in rows}
    for round_ in range(max((row.repeat for row in rows), default=1)):
        for row in rows:
            if row.status != "ok" or round_ >= row.repeat:
                continue
            trial = dataclasses.replace(row, trials=[])
            name = f"[{row.engine.key} x{row.workers}" + (
                f" run {round_ + 1}/{row.repeat}]" if row.repeat > 1 else "]"
            )
            try:
                _run_row(ctx, trial)
            except Unavailable as exc:
                row.status, row.reason = "unavailable", str(exc)
                if row.engine.key == "dbos" and "ModuleNotFoundError" in row.reason:
                    row.reason = f"{INSTALL_HINT}: {row.reason}"
                log(ctx, f"{name} unavailable: {row.reason}")
                for other in rows:  # the same engine is unavailable in every row not yet run
                    if other.engine is row.engine and other.status == "ok" and not runs[id(other)]:
                        other.status, other.reason = row.status, row.reason
                continue
            except Exception as exc:
                row.status = "error"
                row.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                row.trials = [_ckpt_rate(r) for r in runs[id(row)]]  # the runs that did finish
                log(ctx, f"{name} error: {exc}")
                continue
            runs[id(row)].append(trial)
            log(
                ctx,
                f"{name} {_ckpt_rate(trial):7.0f} checkpoints/s steady ({trial.window_s:.2f} s"
                f" window), {trial.seconds:6.2f} s end to end (startup {trial.startup_s or 0:.2f}"
                f" s, enqueue {trial.enqueue_s or 0:.2f} s)",
            )
    for row in rows:
        done = sorted(runs[id(row)], key=_ckpt_rate)
        if row.status != "ok" or not done:
            continue
        median = done[(len(done) - 1) // 2]  # the lower middle run of an even count
        for f in dataclasses.fields(Row):
            if f.name not in ("engine", "workers", "repeat", "trials"):
                setattr(row, f.name, getattr(median, f.name))
        row.trials = [_ckpt_rate(r) for r in runs[id(row)]]


# --- output --------------------------------------------------------------------------------------


def _payload_text(ctx: Context) -> str:
    return f"a {ctx.payload_bytes} B" if ctx.payload_bytes else "a ~200 B"


def _ckpt_rate(row: Row) -> float:
    """Checkpoints per second in the steady window (the headline number)."""
    return row.window_checkpoints / row.window_s


def _end_to_end_rate(ctx: Context, row: Row) -> float:
    return ctx.executions * ctx.checkpoints / row.seconds


def _per_ckpt_us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f}"


def _rates(ctx: Context, rows: list[Row], key: str) -> dict[int, float]:
    return {r.workers: _ckpt_rate(r) for r in rows if r.engine.key == key and r.ok()}


def _verdict(ctx: Context, rows: list[Row]) -> tuple[bool | None, str]:
    tether, dbos = _rates(ctx, rows, "tether"), _rates(ctx, rows, "dbos")
    if TARGET_WORKERS not in tether:
        return None, f"n/a: tether did not run with {TARGET_WORKERS} workers"
    rate = tether[TARGET_WORKERS]
    fast = rate >= TARGET_CKPT_S
    parts = [f"tether with {TARGET_WORKERS} workers: {rate:,.0f} checkpoints/s"
             f" ({'>=' if fast else '<'} {TARGET_CKPT_S:,.0f})"]  # fmt: skip
    ahead: bool | None = None
    if TARGET_WORKERS in dbos:
        ahead = rate > dbos[TARGET_WORKERS]
        parts.append(f"{'ahead of' if ahead else 'behind'} DBOS ({dbos[TARGET_WORKERS]:,.0f})")
    else:
        parts.append("DBOS did not run with 4 workers")
    met = fast and ahead is not False
    return met, ("MET" if met else "NOT MET") + ": " + ", ".join(parts)


def _render(
    info: dict[str, Any], ctx: Context, pg: dict[str, str], rows: list[Row], elapsed_s: float
) -> str:
    pkgs: dict[str, str | None] = info["packages"]
    mem = f"{info['mem_gib']:.1f} GiB RAM" if info["mem_gib"] else "RAM ?"
    durability = ", ".join(f"{k}={pg[k]}" for k in DURABILITY_SETTINGS)
    n_ckpt = ctx.executions * ctx.checkpoints
    lines = [
        f"machine:  {info['cpu']} | {info['cores']} cores ({info['usable_cores']} usable) | {mem}",
        f"          {info['os']} | PostgreSQL data in {info['tmp_dir']} ({info['tmp_fs']})",
        f"python:   {info['python']} | load avg (1 min) at start {info['loadavg_start']},"
        f" at end {info['loadavg_end']}",
        "packages: " + " | ".join(f"{d} {v or 'not installed'}" for d, v in pkgs.items()),
        f"postgres: {pg['server_version']}, one local cluster on loopback, {durability},"
        f" shared_buffers={pg['shared_buffers']} (server defaults: tests/pg_cluster.py's"
        " fsync/synchronous_commit/full_page_writes=off were dropped by a restart)",
        "",
        f"Fleet throughput: {ctx.executions} executions x {ctx.checkpoints} sequential checkpoints"
        f" ({_payload_text(ctx)} dict each) = {n_ckpt:,} checkpoints, enqueued before the"
        f" workers start; each worker process runs {ctx.concurrency} executions at once;"
        " fresh database per row;",
        "checkpoints/s and executions/s: steady state, over the window from the 10th to the 90th"
        " percentile of the checkpoints' recorded times (window s; 80% of the checkpoints);"
        " end to end = worker processes started -> all executions succeeded (interpreter start"
        " and imports included; startup s = until the first checkpoint was recorded).",
        "Each row is the median of its runs (runs column, in the order run; rounds over all the"
        " rows, so drift on the machine hits every engine alike): the steady window of a fast"
        " row lasts a few seconds and moves +-10-20% run to run on a small VM; a DBOS row's"
        " window lasts ~100 s.",
        "",
    ]
    header = [
        "engine", "workers", "checkpoints/s", "executions/s", "window s", "end to end s",
        "end to end ckpt/s", "startup s", f"worker CPU {US}/ckpt", f"pg CPU {US}/ckpt",
        "other CPU", "runs: checkpoints/s",
    ]  # fmt: skip
    cells: list[list[str]] = []
    for row in rows:
        label = f"{row.engine.label} {row.version}" if row.version else row.engine.label
        if not row.ok():
            reason = row.reason if row.reason.startswith(INSTALL_HINT) else (
                f"{row.status}: {row.reason}")  # fmt: skip
            cells.append([label, str(row.workers), reason])
            continue
        cells.append([
            label, str(row.workers), f"{_ckpt_rate(row):,.0f}",
            f"{_ckpt_rate(row) / ctx.checkpoints:,.1f}", f"{row.window_s:.2f}",
            f"{row.seconds:.2f}", f"{_end_to_end_rate(ctx, row):,.0f}",
            "-" if row.startup_s is None else f"{row.startup_s:.2f}",
            _per_ckpt_us(row.worker_cpu_s), _per_ckpt_us(row.server_cpu_s),
            "-" if row.other_cpu is None else f"{row.other_cpu:.0%}",
            " / ".join(f"{t:,.0f}" for t in row.trials),
        ])  # fmt: skip
    lines += table(header, cells, numeric=set(range(1, len(header) - 1)))
    lines.append("")
    tether, dbos = _rates(ctx, rows, "tether"), _rates(ctx, rows, "dbos")
    floor = _rates(ctx, rows, "floor")
    ratios = [
        f"{w} worker{'s' if w > 1 else ''}: {tether[w] / dbos[w]:.2f}x"
        for w in sorted(tether) if w in dbos
    ]  # fmt: skip
    lines.append("tether / DBOS (checkpoints/s, equal workers): " + (", ".join(ratios) or "n/a"))
    of_floor = [f"{w}: {tether[w] / floor[w]:.0%}" for w in sorted(tether) if w in floor]
    if of_floor:
        lines.append(
            "tether as a share of the raw psycopg floor, by workers: " + ", ".join(of_floor)
        )
    lines.append(
        f"target (>= {TARGET_CKPT_S:,.0f} checkpoints/s with {TARGET_WORKERS} workers, ahead of"
        f" DBOS): {_verdict(ctx, rows)[1]}"
    )
    lines += [
        "",
        f"DBOS: one queue with worker_concurrency={ctx.concurrency},"
        f" polled every {ctx.dbos_poll:g} s (--dbos-poll; DBOS's default is 1 s); several"
        " processes drain it (FOR UPDATE SKIP LOCKED), each with its own executor id.",
        "raw psycopg floor: W processes x K threads commit the same step results with one INSERT"
        " per checkpoint and one per execution; no claims, leases, fencing or framework.",
        "CPU per checkpoint: worker processes and PostgreSQL server processes during the steady"
        f" window, over {info['usable_cores']} usable cores; other CPU: the share"
        " of the machine used meanwhile by anything outside this benchmark (other processes,"
        " hypervisor steal; from /proc/stat).",
    ]
    busy = [r for r in rows if r.ok() and (r.other_cpu or 0.0) > BUSY_SHARE]
    if busy:
        worst = max(r.other_cpu or 0.0 for r in busy)
        lines.append(
            f"WARNING: other processes used up to {worst:.0%} of the machine's CPU during"
            f" {len(busy)} of the rows (other CPU column); expect noisy numbers and compare"
            " ratios rather than absolute rates."
        )
    lines += ["", f"(benchmark took {elapsed_s:.0f} s)"]
    return "\n".join(lines)


def _to_json(
    info: dict[str, Any], ctx: Context, pg: dict[str, str], rows: list[Row], elapsed_s: float
) -> dict[str, Any]:
    out_rows = []
    for row in rows:
        entry: dict[str, Any] = {
            "engine": row.engine.key,
            "label": row.engine.label,
            "version": row.version,
            "workers": row.workers,
            "status": row.status,
            "reason": row.reason or None,
        }
        if row.ok():
            entry.update(
                checkpoints_per_s=round(_ckpt_rate(row), 1),
                executions_per_s=round(_ckpt_rate(row) / ctx.checkpoints, 2),
                window="10th to 90th percentile of the checkpoints' recorded times",
                window_s=round(row.window_s, 3),
                window_checkpoints=row.window_checkpoints,
                end_to_end_s=round(row.seconds, 3),
                end_to_end_checkpoints_per_s=round(_end_to_end_rate(ctx, row), 1),
                startup_s=None if row.startup_s is None else round(row.startup_s, 3),
                enqueue_s=None if row.enqueue_s is None else round(row.enqueue_s, 3),
                worker_cpu_us_per_checkpoint=_us(row.worker_cpu_s),
                server_cpu_us_per_checkpoint=_us(row.server_cpu_s),
                other_cpu_share=None if row.other_cpu is None else round(row.other_cpu, 3),
                checkpoints_recorded=row.checkpoints_recorded,
                runs_checkpoints_per_s=[round(t, 1) for t in row.trials],
            )
        out_rows.append(entry)
    tether, dbos = _rates(ctx, rows, "tether"), _rates(ctx, rows, "dbos")
    met, verdict = _verdict(ctx, rows)
    return {
        "machine": info,
        "postgres": pg,
        "config": {
            "executions": ctx.executions,
            "checkpoints": ctx.checkpoints,
            "concurrency": ctx.concurrency,
            "dbos_poll_s": ctx.dbos_poll,
            "payload_bytes": ctx.payload_bytes,
        },
        "rows": out_rows,
        "tether_over_dbos": {str(w): round(tether[w] / dbos[w], 3) for w in tether if w in dbos},
        "target": {
            "checkpoints_per_s": TARGET_CKPT_S,
            "workers": TARGET_WORKERS,
            "met": met,
            "verdict": verdict,
        },
        "elapsed_s": round(elapsed_s, 1),
    }


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)


# --- arguments and main --------------------------------------------------------------------------


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--workers takes numbers like 1,2,4, not {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--workers needs at least one count, each >= 1")
    return counts


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fleet throughput on PostgreSQL: tether workers vs DBOS vs a raw floor."
    )
    # 1,000 by default: with 400, four tether workers' steady window lasted about 1.4 s and
    # overlapped the start-up of the slowest workers, so the rate moved by +-20% run to run.
    parser.add_argument("--executions", type=int, default=1000, help="executions per row (1000)")
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints per execution")
    parser.add_argument(
        "--workers", type=_worker_counts, default=[1, 2, 4], help="worker processes (1,2,4)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="executions at once per worker process (8)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="runs of each tether and floor row; the median run is shown (the slower middle"
        " one of an even count) (3)",
    )  # fmt: skip
    parser.add_argument(
        "--dbos-repeat", type=int, default=1,
        help="runs of each DBOS row (1: its steady window is already ~100 s long)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--skip-dbos", action="store_true", help="no DBOS rows")
    parser.add_argument("--skip-floor", action="store_true", help="no raw psycopg floor rows")
    parser.add_argument(
        "--dbos-poll", type=float, default=0.05, help="DBOS queue polling interval, s (0.05)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per row at most")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Child mode: how the parent runs enqueuers and workers in other processes.
    parser.add_argument("--worker", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--of", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.executions, args.checkpoints, args.concurrency, args.repeat, args.dbos_repeat) < 1:
        parser.error(
            "--executions, --checkpoints, --concurrency, --repeat and --dbos-repeat must be at"
            " least 1"
        )
    if args.dbos_poll <= 0:
        parser.error("--dbos-poll must be positive")
    return args


def _rows(args: argparse.Namespace, tether_missing: str | None) -> list[Row]:
    import importlib.util

    engines = [ENGINES["tether"]]
    if not args.skip_dbos:
        engines.append(ENGINES["dbos"])
    if not args.skip_floor:
        engines.append(ENGINES["floor"])
    rows = []
    for workers in args.workers:  # interleaved, so drift on the machine hits every engine alike
        for engine in engines:
            row = Row(
                engine, workers, repeat=args.dbos_repeat if engine.key == "dbos" else args.repeat
            )
            if engine.key == "tether" and tether_missing:
                row.status, row.reason = "unavailable", tether_missing
            elif engine.key == "dbos" and importlib.util.find_spec("dbos") is None:
                row.status, row.reason = "unavailable", INSTALL_HINT
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return child_main(lambda: CHILDREN[args.worker](args))
    # A SIGTERM to this script still stops the workers and removes the cluster (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise SystemExit("fleet.py needs psycopg 3: pip install -e '.[postgres]'") from None

    started = time.perf_counter()
    tether_from_src, tether_missing = tether_source()
    rows = _rows(args, tether_missing)
    with (
        tempfile.TemporaryDirectory(prefix="tether-fleet-") as logs,
        _postgres(not args.quiet) as (cluster, pg),
    ):
        ctx = Context(
            executions=args.executions,
            checkpoints=args.checkpoints,
            concurrency=args.concurrency,
            dbos_poll=args.dbos_poll,
            timeout_s=args.timeout,
            env=child_env(tether_from_src, drop=OFFLINE_DROP, set_vars=OFFLINE_SET),
            logs=Path(logs),
            cluster=cluster,
            progress=not args.quiet,
        )
        packages = {d: dist_version(d) for d in ("tether", "dbos", "psycopg", "psycopg-pool")}
        if tether_from_src:
            packages["tether"] = "src checkout, not installed"
        info = machine_info(cluster.data, mem=True, packages=packages)
        _bench(ctx, rows)
    elapsed = time.perf_counter() - started
    info["loadavg_end"] = loadavg()
    if args.json:
        print(json.dumps(_to_json(info, ctx, pg, rows, elapsed), indent=2))
    else:
        print(_render(info, ctx, pg, rows, elapsed))
    return 0 if all(r.status != "error" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
