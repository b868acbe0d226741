#!/usr/bin/env python3
"""Executions as Ray tasks (`tether worker --ray`) against the PostgreSQL fleet, one run.

Usage:
    python benchmarks/on_ray.py [--executions 200] [--checkpoints 10] [--concurrency 16]
                             [--overhead-executions 20] [--lease 5]

Needs PostgreSQL installed (tests/pg_cluster.py starts a throwaway cluster on loopback),
psycopg (``pip install -e '.[postgres]'``) and Ray (``pip install -e '.[ray]'``).

Method:
    * One PostgreSQL cluster and one local 2-node Ray cluster (``ray.cluster_utils.Cluster``:
      a head and a second node, each a real raylet with 1 CPU; the second also has the custom
      resource ``victim``) for the whole run; a fresh database per row.
    * Throughput rows: E executions of an async flow making C sequential checkpoints
      (``_ray_flows.bench_flow``) are enqueued by this process, then one worker process is
      started, ``tether worker --import _ray_flows --concurrency K`` (the fleet) or the same
      with ``--ray ADDRESS`` (each execution a Ray task on either node); the row's time runs
      from the worker's start to the last execution succeeding (start-up included, the same
      for both). executions/s and checkpoints/s are E and E x C over that time.
    * Overhead per execution: N executions of a flow with no checkpoint, one at a time
      (``--concurrency 1``), fleet and Ray; (Ray time - fleet time) / N is what starting,
      taking over and ending a Ray task adds to one execution.
    * Node death: an execution pinned to the second node (``_ray_flows.pinned``) is held in
      a checkpoint; the node is removed (its raylet and workers killed) and a new node with
      the resource added; the time from the removal to the execution running again (its next
      call recorded by another process) is reported, with the lease used (``--lease``: the
      dispatcher's ``lease_seconds``; a dead owner on the same host is seen at once by pid,
      so on one machine this is mostly Ray noticing the death and starting a task).
Not named ray.py: benchmarks/ is on the path of every process here, Ray's workers included,
where a ray.py would stand in for the `ray` package. Figures from a 2-core VM shared with
other work move a lot between runs; compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests"), str(ROOT / "src")]


def _env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TETHER_DB"] = url
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _worker(url: str, concurrency: int, ray_address: str | None, lease: float) -> Any:
    code = (
        "import sys, tether; tether.configure(lease_seconds=float(sys.argv[1])); "
        "tether.Worker(imports=['_ray_flows'], concurrency=int(sys.argv[2]), "
        "ray=sys.argv[3] or None).run(grace=5)"
    )
    argv = [sys.executable, "-c", code, str(lease), str(concurrency), ray_address or ""]
    return subprocess.Popen(argv, env=_env(url), stderr=subprocess.DEVNULL)


def _stop(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _fresh(cluster: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return str(cluster.url(name))


def _run_row(url: str, flow: Any, args: list[tuple[Any, ...]], concurrency: int,
             ray_address: str | None, lease: float) -> float:  # fmt: skip
    import tether

    tether.configure(db=url, executor=False)
    handles = [flow.enqueue(*a) for a in args]
    started = time.perf_counter()
    proc = _worker(url, concurrency, ray_address, lease)
    try:
        for handle in handles:
            handle.result(timeout=600)
        return time.perf_counter() - started
    finally:
        _stop(proc)


def _node_death(url: str, ray_cluster: Any, victim: Any, address: str, lease: float) -> float:
    import _ray_flows
    import tether

    tether.configure(db=url, executor=False)
    work = Path(tempfile.mkdtemp())
    marks, release = work / "marks", work / "release"
    handle = _ray_flows.pinned.enqueue(str(marks), str(release))
    proc = _worker(url, 4, address, lease)
    try:
        while not marks.exists() or not marks.read_text().strip():
            time.sleep(0.01)
        release_later = marks.read_text()
        removed = time.perf_counter()
        ray_cluster.remove_node(victim)
        ray_cluster.add_node(num_cpus=1, resources={"victim": 1})
        release.write_text("go")
        while marks.read_text() == release_later:
            time.sleep(0.01)
        taken = time.perf_counter() - removed
        handle.result(timeout=600)
        return taken
    finally:
        _stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overhead-executions", type=int, default=20)
    parser.add_argument("--lease", type=float, default=5.0)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    import _ray_flows
    import pg_cluster

    os.environ["PYTHONPATH"] = _env("")["PYTHONPATH"]  # the raylets' workers inherit it
    pg = pg_cluster.start_cluster()
    ray_cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    victim = ray_cluster.add_node(num_cpus=1, resources={"victim": 1})
    ray_cluster.wait_for_nodes()
    address = ray_cluster.address
    rows: list[tuple[str, str]] = []
    try:
        e, c, k = args.executions, args.checkpoints, args.concurrency
        work = [(i, c) for i in range(e)]
        fleet = _run_row(_fresh(pg, "fleet"), _ray_flows.bench_flow, work, k, None, args.lease)
        on_ray = _run_row(_fresh(pg, "ray"), _ray_flows.bench_flow, work, k, address, args.lease)
        for name, seconds in (("fleet worker", fleet), ("--ray, 2 nodes", on_ray)):
            rows.append((
                name, f"{seconds:7.2f} s  {e / seconds:8.1f} executions/s  "
                f"{e * c / seconds:9.1f} checkpoints/s",
            ))  # fmt: skip
        n = args.overhead_executions
        empty = [(i, 0) for i in range(n)]
        base = _run_row(_fresh(pg, "base"), _ray_flows.bench_flow, empty, 1, None, args.lease)
        task = _run_row(_fresh(pg, "task"), _ray_flows.bench_flow, empty, 1, address, args.lease)
        rows.append(("overhead/execution", f"{(task - base) / n * 1000:7.1f} ms (one at a time)"))
        death = _node_death(_fresh(pg, "death"), ray_cluster, victim, address, args.lease)
        rows.append(("node death -> running", f"{death:7.2f} s (lease {args.lease:g} s)"))
    finally:
        ray.shutdown()
        ray_cluster.shutdown()
        pg_cluster.remove(pg)
    print(f"{args.executions} executions x {args.checkpoints} checkpoints, concurrency "
          f"{args.concurrency}, PostgreSQL on loopback, Ray {ray.__version__}")  # fmt: skip
    for name, value in rows:
        print(f"  {name:<24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
