"""A fleet of worker processes on one store: dedup keys, queue limits, priorities, a
database restart, and chaos (workers killed with SIGKILL all the time)."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

import fleet_flows
import tether
from backend import postgres_only
from helpers import ProcessPool, retry_until, run_child, spawn_python
from tether import Status

WORKER = "import sys, fleet_flows; fleet_flows.run_worker(sys.argv[1:])"


class Fleet(ProcessPool):
    """Worker processes for one test."""

    def __init__(self, db_url: str, effects: Path) -> None:
        super().__init__()
        self.db_url = db_url
        self.effects = effects

    def start(self, *queues: str) -> subprocess.Popen[str]:
        proc = spawn_python(
            ["-c", WORKER, *queues], self.db_url, stderr=subprocess.DEVNULL,
            SIDE_EFFECTS=str(self.effects),
        )  # fmt: skip
        return self.add(proc)


@pytest.fixture
def fleet(db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    pool = Fleet(db_url, tmp_path / "effects.log")
    yield pool
    pool.kill_all()


def events(path: Path) -> list[tuple[str, str, int, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, execution, position, pid, at = line.split()
        rows.append((kind, execution, int(position), int(pid), float(at)))
    return rows


def client_only() -> None:
    tether.configure(executor=False)


# --- deduplication ---------------------------------------------------------------------------


def test_a_key_gives_one_execution_under_concurrent_starts(db_url: str) -> None:
    client_only()
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def start() -> None:
        barrier.wait()
        ids.append(fleet_flows.limited_job.options(key="order-42").enqueue(0.0).id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 8
    code = "import fleet_flows; print(fleet_flows.limited_job.enqueue(0.0, key='order-42').id)"
    others = [run_child(code, db_url, TETHER_EXECUTOR="off") for _ in range(2)]
    assert {o.stdout.strip() for o in others} == set(ids), [o.stderr for o in others]
    assert len(tether.Client().list()) == 1


def test_a_key_is_per_flow(db_url: str) -> None:
    client_only()
    a = fleet_flows.limited_job.enqueue(0.0, key="k")
    b = fleet_flows.throttled_job.options(key="k").enqueue()
    assert a.id != b.id


# --- limits and priorities -------------------------------------------------------------------


def test_a_queue_concurrency_limit_holds_across_the_fleet(db_url: str, fleet: Fleet) -> None:
    client_only()
    handles = [fleet_flows.limited_job.enqueue(0.3) for _ in range(8)]
    for _ in range(3):
        fleet.start("limited")  # each worker could run 4 at once
    for handle in handles:
        assert handle.result(timeout=60) == "done"
    spans = {}
    for kind, execution, _, _, at in events(fleet.effects):
        spans.setdefault(execution, [at, at])[0 if kind == "start" else 1] = at
    moments = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    running = peak = 0
    for _, delta in moments:
        running += delta
        peak = max(peak, running)
    assert peak == 2, f"at most 2 at once across 3 workers, saw {peak}"


def test_a_queue_per_worker_limit_holds_within_one_worker(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effects = tmp_path / "effects.log"
    monkeypatch.setenv("SIDE_EFFECTS", str(effects))
    client_only()
    handles = [fleet_flows.solo_job.enqueue(0.2) for _ in range(4)]
    tether.configure(executor=True)
    worker = tether.Worker(concurrency=4, queues=["solo"])  # solo: worker_concurrency=1
    runner = threading.Thread(target=worker.run, kwargs={"grace": 5})
    runner.start()
    try:
        assert [h.result(timeout=30) for h in handles] == ["done"] * 4
    finally:
        worker.stop()
        runner.join(timeout=30)
    starts = sorted(at for kind, _, _, _, at in events(effects) if kind == "start")
    assert len(starts) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert min(gaps) >= 0.2, f"two ran at once on one worker: {gaps}"


def test_a_queue_rate_limit_spaces_starts(db_url: str, fleet: Fleet) -> None:
    client_only()
    handles = [fleet_flows.throttled_job.enqueue() for _ in range(5)]
    fleet.start("throttled")
    fleet.start("throttled")
    for handle in handles:
        assert handle.result(timeout=60) == "done"
    starts = sorted(
        tether.Client().get(h.id).started_at.timestamp()  # type: ignore[union-attr]
        for h in handles
    )
    for i, first in enumerate(starts):
        in_window = [s for s in starts[i:] if s < first + 1.0]
        assert len(in_window) <= 2, f"more than 2 starts within 1 s: {starts}"


def test_higher_priority_runs_first(db_url: str) -> None:
    client_only()
    low = [fleet_flows.work_flow.options(queue="prio").enqueue(i) for i in range(3)]
    high = fleet_flows.work_flow.options(queue="prio", priority=10).enqueue(99)
    tether.configure(executor=True)
    worker = tether.Worker(concurrency=1, queues=["prio"])
    (first,) = worker.run_once()
    assert first == high.id
    high.result(timeout=10)
    for handle in low:
        # The slot frees a moment after the previous execution's end is visible: claim once
        # it has (run_once claims nothing while the worker is full).
        retry_until(worker.run_once, what=f"the worker to claim {handle.id}")
        handle.result(timeout=10)
    starts = [tether.Client().get(h.id).started_at for h in (high, *low)]
    assert starts == sorted(starts)  # type: ignore[type-var]


def test_the_worker_command_serves_only_the_queues_it_is_given(db_url: str) -> None:
    from tether._core.config import store_for

    client_only()
    other = fleet_flows.work_flow.options(queue="other").enqueue(3)
    mine = [fleet_flows.work_flow.options(queue="mine").enqueue(i) for i in range(3)]
    argv = ["-m", "tether", "worker", "--import", "fleet_flows", "--queue", "mine",
            "--queue", "limited", "--poll", "0.01"]  # fmt: skip
    worker = spawn_python(argv, db_url, stderr=subprocess.PIPE)
    try:
        assert [h.result(timeout=30) for h in mine] == [0, 1, 4]
        time.sleep(0.3)  # time enough to have taken the other queue's execution, had it served it
        assert other.status() is Status.QUEUED
        # `limited` is declared in the imported module: its fleet-wide limit was published.
        published = store_for()._all("SELECT concurrency FROM queue_limits WHERE name = 'limited'")
        assert published == [(2,)]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr


# --- failures of the fleet and the database --------------------------------------------------


@postgres_only
def test_workers_ride_out_a_postgres_restart(
    db_url: str, fleet: Fleet, request: pytest.FixtureRequest
) -> None:
    client_only()
    cluster = request.getfixturevalue("pg_cluster")
    handles = [fleet_flows.chaos_job.enqueue(n, 60, -1, -1) for n in range(12)]
    fleet.start()
    fleet.start()
    retry_until(lambda: len(events(fleet.effects)) > 40, what="work under way")
    cluster.restart()  # pg_ctl restart -m fast: every connection is cut
    expected = sum(i * i for i in range(60))
    for n, handle in enumerate(handles):
        assert handle.result(timeout=120) == {"n": n, "total": expected, "answer": None}
    assert tether.Client().list(status="running") == []
    commits = Counter((e, p) for kind, e, p, _, _ in events(fleet.effects) if kind == "commit")
    assert set(commits.values()) == {1}, "a checkpoint committed twice"


@postgres_only
@pytest.mark.slow
def test_chaos_workers_killed_all_the_time(db_url: str, fleet: Fleet) -> None:
    """3 workers on one PostgreSQL; many executions of 20 checkpoints with waits and sleeps;
    a random worker is SIGKILLed every ~0.5 s and restarted."""
    count = int(os.environ.get("TETHER_CHAOS_EXECUTIONS", "500"))
    steps = 20
    client_only()
    rng = random.Random(7)
    plans = [(n, rng.choice([-1, -1, 5]), rng.choice([-1, -1, 10])) for n in range(count)]
    handles = [fleet_flows.chaos_job.enqueue(n, steps, w, s) for n, w, s in plans]
    workers = [fleet.start() for _ in range(3)]
    client = tether.Client()
    kills = 0
    deadline = time.monotonic() + 600
    unfinished = {h.id for h in handles}
    while unfinished:
        assert time.monotonic() < deadline, f"{len(unfinished)} executions never finished"
        time.sleep(0.5)
        victim = rng.randrange(len(workers))
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=10)
        kills += 1
        workers[victim] = fleet.start()
        for wait in client.pending_waits(limit=1000):
            n = int(client.get(wait.execution_id).args[0][0])
            with contextlib.suppress(tether.WaitAlreadyResolved, tether.InvalidStateError):
                client.input(wait.execution_id, "go", n)
        finished = client.list(status=["succeeded", "failed", "cancelled"], limit=count + 10)
        unfinished -= {r.id for r in finished}
    assert kills >= 3

    expected = sum(i * i for i in range(steps))
    for (n, wait_at, _), handle in zip(plans, handles, strict=True):
        answer = n if wait_at >= 0 else None
        assert handle.result(timeout=5) == {"n": n, "total": expected, "answer": answer}

    # No committed checkpoint ran again; nothing was committed twice (fencing held).
    starts: dict[tuple[str, int], list[float]] = defaultdict(list)
    commits: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for kind, execution, position, pid, at in events(fleet.effects):
        if kind == "start":
            starts[(execution, position)].append(at)
        else:
            commits[(execution, position)].append((at, pid))
    # The store is the reference: a worker can be killed between a commit and its log line.
    recorded = 0
    for handle in handles:
        for cp in client.get(handle.id).checkpoints:
            recorded += 1
            key = (handle.id, cp.position)
            assert len(commits[key]) <= 1, f"{key} committed {len(commits[key])} times"
            done = cp.finished_at.timestamp()
            assert not [s for s in starts[key] if s > done], f"{key} ran again after its commit"
    assert recorded == count * steps
    reran = sum(1 for s in starts.values() if len(s) > 1)
    print(f"chaos: {count} executions, {kills} kills, {reran} in-flight checkpoints re-run")


def test_fleet_flows_module_is_importable_by_workers() -> None:
    assert fleet_flows.limited.concurrency == 2
    assert Status.SUCCEEDED.finished


# --- the worker's claims ---------------------------------------------------------------------


def test_a_worker_hands_back_an_execution_whose_flow_it_cannot_import(db_url: str) -> None:
    from tether._core.config import store_for
    from tether.store import ExecutionRow

    client_only()
    store = store_for()
    now = time.time()
    store.create_execution(
        ExecutionRow(
            id="stranger", flow="stranger", import_path="no_such_module:stranger", script=None,
            args='{"args":[],"kwargs":{}}', status="queued", created_at=now - 60,
            updated_at=now - 60,
        )
    )  # fmt: skip
    known = fleet_flows.work_flow.enqueue(1)
    tether.configure(executor=True)
    worker = tether.Worker(concurrency=1)
    # The older execution is claimed first, handed straight back, and the next one runs.
    assert worker.run_once() == [known.id]
    assert known.result(timeout=10) == 1
    stranger = tether.Client().get("stranger")
    assert stranger.status == Status.QUEUED
    assert stranger.owner is None
    warnings = [e.message for e in store.get_events("stranger") if e.kind == "worker"]
    assert any("cannot run it" in m for m in warnings)
    # The worker leaves that flow alone from now on.
    assert worker.run_once() == []
    assert tether.Client().get("stranger").status == Status.QUEUED


def test_a_worker_thread_runs_the_next_execution_itself(db_url: str) -> None:
    client_only()
    handles = [fleet_flows.work_flow.enqueue(i) for i in range(6)]
    tether.configure(executor=True)
    worker = tether.Worker(concurrency=2)
    runner = threading.Thread(target=worker.run, kwargs={"grace": 5})
    runner.start()
    try:
        assert [h.result(timeout=30) for h in handles] == [i * i for i in range(6)]
    finally:
        worker.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert worker._executor.refill is None  # the hook ends with the loop
    assert worker._executor.held_count() == 0


def test_a_worker_takes_over_dead_local_owners_only_in_the_queues_it_serves(
    db_url: str,
) -> None:
    from tether._core.config import store_for
    from tether._runtime.owners import host_prefix
    from tether.store import ExecutionRow

    client_only()
    store = store_for()
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = time.time()
    for queue in ("a", "b"):
        store.create_execution(
            ExecutionRow(
                id=f"orphan-{queue}", flow="work_flow", import_path="fleet_flows:work_flow",
                script=None, args='{"args":[7],"kwargs":{}}', status="running",
                created_at=now - 60, updated_at=now - 60, queue=queue,
                owner=f"{host_prefix()}{gone.pid}:dead", lease_token="old",
                lease_expires=now + 600,  # the lease would last: only the dead pid tells
            )
        )  # fmt: skip
    tether.configure(executor=True)
    assert tether.Worker(concurrency=2, queues=["a"]).run_once() == ["orphan-a"]
    assert tether.Client().handle("orphan-a").result(timeout=10) == 49
    assert tether.Client().get("orphan-b").status == Status.RUNNING  # not this worker's queue


def test_take_overs_count_against_a_queues_per_worker_limit(db_url: str) -> None:
    from tether._core.config import store_for
    from tether._runtime.owners import host_prefix
    from tether.store import ExecutionRow

    client_only()
    store = store_for()
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = time.time()
    for i in range(3):
        store.create_execution(
            ExecutionRow(
                id=f"orphan-{i}", flow="work_flow", import_path="fleet_flows:work_flow",
                script=None, args=f'{{"args":[{i}],"kwargs":{{}}}}', status="running",
                created_at=now - 60 + i, updated_at=now - 60, queue="solo",
                owner=f"{host_prefix()}{gone.pid}:dead", lease_token="old",
                lease_expires=now + 600,
            )
        )  # fmt: skip
    tether.configure(executor=True)
    # solo: worker_concurrency=1; recover_every=0: look for dead owners on every pass
    worker = tether.Worker(concurrency=4, queues=["solo"], recover_every=0.0)
    taken = worker.run_once()
    assert len(taken) == 1, taken
    tether.Client().handle(taken[0]).result(timeout=10)
    # Once that one is done, the queue has room for the next (and only the next) one.
    retry_until(lambda: len(worker.run_once()) == 1 or None, what="the next take-over")


def test_a_worker_serving_every_queue_publishes_every_declared_limit(db_url: str) -> None:
    from tether._core.config import store_for

    client_only()
    tether.Worker(concurrency=1)  # queues=None: all of them; fleet_flows declares some
    published = dict(store_for()._all("SELECT name, concurrency FROM queue_limits"))
    assert published["limited"] == 2
    assert "throttled" in published
