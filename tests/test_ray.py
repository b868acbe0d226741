"""Executions and checkpoint bodies on a real local Ray cluster (the `ray` extra).

One cluster per module (2 CPUs, no dashboard): the machine is small and shared. The
dispatcher is a real `tether worker --ray ADDRESS` process; flows and checkpoint bodies run
in Ray's own worker processes, which a test kills with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import tether
from backend import BACKEND
from helpers import SRC, TESTS, retry_until, run_cli, spawn_python
from tether._core.config import store_for
from tether._core.status import Status
from tether._runtime import ray as _ray
from tether._runtime.executor import Executor

ray = pytest.importorskip(
    "ray", reason="the `ray` extra is not installed (pip install -e '.[ray]'); CI installs it"
)

import ray_flows  # noqa: E402 - after the skip: its flows are what the Ray tasks import


class RayCluster:
    """A local Ray cluster of node processes: the head (2 CPUs, resource `tether_node`) and,
    for the tests that ask for it (`second_node`), a second node (1 CPU, resource `second`)
    with a raylet of its own that a test can SIGKILL. Small: the machine has 2 cores and is
    shared. (A SQLite store is refused for a cluster of two nodes, so the dispatcher tests
    on SQLite run while the head is the only node.)"""

    def __init__(self, env: dict[str, str]) -> None:
        from ray.cluster_utils import Cluster

        self.env = env
        # The nodes' processes (and so Ray's worker processes) get the environment of the
        # process that starts them: this one's.
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2, "resources": {"tether_node": 1}, "include_dashboard": False,
            },
        )  # fmt: skip

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_second(self) -> Any:
        node = self.cluster.add_node(num_cpus=1, resources={"second": 1})
        self.cluster.wait_for_nodes()
        return node

    def remove(self, node: Any) -> None:
        """Stop a node's processes (what is left of them after a kill) and forget it."""
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


def raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, their children, and so on (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (in parentheses) may hold spaces: the fields after it are
            # state, then the parent's pid.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_node(node: Any) -> list[int]:
    """SIGKILL a node's raylet and, at the same moment, the Ray worker processes it started,
    as when its machine dies. (A raylet killed alone leaves its workers running on for a
    while, finishing what they run under their leases.) Returns the pids killed."""
    raylet = raylet_pid(node)
    victims = [raylet, *descendants(raylet)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victims


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """The module's Ray cluster (see `RayCluster`); this process is a driver of it. Ray's
    worker processes have the environment of the process that started the nodes, so the
    file the flows note their calls in is set here, once (see `effects`)."""
    path = os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    effects = tmp_path_factory.mktemp("ray") / "effects.log"
    os.environ["SIDE_EFFECTS"] = str(effects)
    cluster = RayCluster({"PYTHONPATH": path})
    try:
        ray.init(
            address=cluster.address,
            runtime_env={"env_vars": cluster.env},
            logging_level="warning",
        )
        yield cluster
    finally:
        # Whatever a test did: no node process of this module outlives it.
        ray.shutdown()
        cluster.shutdown()
        del os.environ["SIDE_EFFECTS"]


@pytest.fixture(scope="module")
def ray_address(ray_cluster: RayCluster) -> str:
    return ray_cluster.address


@pytest.fixture
def second_node(ray_cluster: RayCluster) -> Iterator[Any]:
    """A second node process in the cluster for the test, removed after it (killed or not)."""
    node = ray_cluster.add_second()
    try:
        yield node
    finally:
        ray_cluster.remove(node)


@pytest.fixture
def effects(ray_address: str) -> Path:
    """The calls noted by the flows (`<position> <label> <pid>`), this test's only."""
    path = Path(os.environ["SIDE_EFFECTS"])
    path.write_text("")
    return path


class Dispatchers:
    """`tether worker --ray` processes, SIGKILLed at teardown whatever happens."""

    def __init__(self, db_url: str, address: str, effects: Path) -> None:
        self.db_url, self.address, self.effects = db_url, address, effects
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[IO[str]] = []
        # Ray worker processes a test orphaned (by killing their raylet alone).
        self.orphans: list[int] = []

    def start(
        self, *extra: str, lease: float | None = None, concurrency: int = 2, log: Path | None = None
    ) -> subprocess.Popen[str]:
        """`log`: its stderr goes to that file, not a pipe (a pipe nobody reads while many
        executions run would fill and block it)."""
        if lease is None:
            argv = ["-m", "tether", "worker", "--import", "ray_flows", "--ray", self.address]
            argv += ["--poll", "0.05", "--concurrency", str(concurrency), *extra]
        else:
            # Short leases, so that a killed task's execution is taken over soon.
            code = (
                f"import sys, tether; tether.configure(lease_seconds={lease!r}); "
                "tether.Worker(imports=['ray_flows'], ray=sys.argv[1], "
                f"concurrency={concurrency}, poll=0.05).run()"
            )
            argv = ["-c", code, self.address]
        if log is None:
            stderr = subprocess.PIPE
        else:
            self.logs.append(log.open("w"))
            stderr = self.logs[-1].fileno()
        proc = spawn_python(argv, self.db_url, stderr=stderr, SIDE_EFFECTS=str(self.effects))
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str]) -> str:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        return err

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        for log in self.logs:
            log.close()
        for pid in self.orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dispatchers(db_url: str, ray_address: str, effects: Path) -> Iterator[Dispatchers]:
    # The test process starts executions and gives input; only the dispatchers' tasks run them.
    tether.configure(executor=False)
    pool = Dispatchers(db_url, ray_address, effects)
    yield pool
    pool.kill_all()


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_gathered_branches_run_to_completion_as_ray_tasks(
    dispatchers: Dispatchers, tmp_path: Path
) -> None:
    handles = [ray_flows.gathered.enqueue(3) for _ in range(3)]
    sized = ray_flows.sized.enqueue()
    proc = dispatchers.start()
    for handle in handles:
        assert handle.result(timeout=120) == [f"b{i}-then-b{i}-first done done" for i in range(3)]
    # The flow's resources= are its task's.
    ran = sized.result(timeout=120)
    assert ran["resources"] == {"CPU": 0.25, "tether_node": 0.25}
    assert ran["pid"] not in (proc.pid, os.getpid())
    err = dispatchers.stop(proc)
    lines = _lines(dispatchers.effects)
    # Each branch's two calls ran once per execution, in Ray worker processes only.
    assert len(lines) == 3 * 3 * 2
    assert {pid for *_, pid in lines}.isdisjoint({str(proc.pid), str(os.getpid())})
    assert err.count("its Ray task ended (succeeded)") == 4, err


def test_an_execution_that_waits_ends_its_task_and_input_starts_a_new_one(
    dispatchers: Dispatchers,
) -> None:
    handle = ray_flows.approval.enqueue("essay")
    proc = dispatchers.start()
    retry_until(lambda: handle.status() is Status.WAITING, timeout=120, what="the wait")
    row = tether.Client().get(handle.id)
    assert row.owner is None, "a waiting execution holds no lease, so no task"
    tether.Client().input(handle.id, "approve", True)
    assert handle.result(timeout=120) == "draft-essay done / publish-essay done / True"
    err = dispatchers.stop(proc)
    # The first task ended at the wait: the worker reads the status then, and input given
    # at once may have made it `queued` again already.
    assert re.search(r"its Ray task ended \((waiting|queued)\)", err), err
    assert err.count("running as a Ray task") == 2, err
    assert "its Ray task ended (succeeded)" in err, err
    labels = [label for _, label, _ in _lines(dispatchers.effects)]
    assert labels == ["draft-essay", "publish-essay"], "the recorded draft did not run again"


def test_sigkill_of_the_ray_worker_running_an_execution_is_taken_over(
    dispatchers: Dispatchers, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    handle = ray_flows.killable.enqueue(str(release))
    dispatchers.start(lease=2.0)

    def holding() -> str | None:
        held = [pid for _, label, pid in _lines(dispatchers.effects) if label == "hold"]
        return held[0] if held else None

    victim = int(retry_until(holding, timeout=120, what="the call to hold"))
    os.kill(victim, signal.SIGKILL)
    release.write_text("go")
    assert handle.result(timeout=120) == ["side0 done", "side1 done", "released", "after done"]
    ran = [label for _, label, _ in _lines(dispatchers.effects)]
    assert ran.count("side0") == ran.count("side1") == 1, "committed calls never run again"
    assert ran.count("hold") == 2, "the call in flight at the kill runs once more"
    assert ran.count("after") == 1
    pids = {pid for _, label, pid in _lines(dispatchers.effects) if label in ("hold", "after")}
    assert str(victim) in pids and len(pids) == 2, "a new task finished it"


def test_a_ray_checkpoint_runs_on_a_ray_worker_and_is_not_run_again_on_resume(
    db_url: str, effects: Path, tmp_path: Path
) -> None:
    handle = ray_flows.offloaded.run(21, str(tmp_path / "marker"))
    retry_until(lambda: handle.status() is Status.WAITING, timeout=120, what="the wait")
    tether.Client().input(handle.id, "go", True)
    result = handle.result(timeout=120)
    assert result["flow_pid"] == os.getpid()
    heavy = result["heavy"]
    assert heavy["value"] == 42
    assert heavy["pid"] != os.getpid(), "the body ran in a Ray worker process"
    assert heavy["resources"] == {"CPU": 0.5, "tether_node": 0.5}
    assert result["flaky"] == "ok" and result["approved"] is True
    ran = [line[-2] for line in _lines(effects)]
    assert ran.count("heavy") == 1, "the resume after the wait returned the recorded result"
    assert ran.count("flaky") == 2, "the checkpoint's own retry, not Ray's"
    calls = {c.name: c for c in tether.Client().get(handle.id).checkpoints}
    assert len(calls["flaky"].attempts) == 2


def test_a_ray_checkpoint_that_outlives_its_timeout_is_retried_by_tether(
    db_url: str, effects: Path, tmp_path: Path
) -> None:
    handle = ray_flows.timed.run(str(tmp_path / "marker"))
    assert handle.result(timeout=120) != os.getpid()
    (call,) = tether.Client().get(handle.id).checkpoints
    assert [a.error is not None for a in call.attempts] == [True, False]
    assert "CheckpointTimeout" in str(call.attempts[0].error)
    assert [line[-2] for line in _lines(effects)] == ["slow_once", "slow_once"]


def test_concurrency_counts_the_ray_tasks_in_flight(
    dispatchers: Dispatchers, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    first, second = (ray_flows.killable.enqueue(str(release)) for _ in range(2))
    dispatchers.start("--concurrency", "1")

    def holding() -> list[str]:
        return [pid for _, label, pid in _lines(dispatchers.effects) if label == "hold"]

    retry_until(holding, timeout=120, what="one execution to hold")
    statuses = sorted([first.status(), second.status()])
    assert statuses == sorted([Status.RUNNING, Status.QUEUED]), "one task at a time"
    release.write_text("go")
    assert first.result(timeout=120) == second.result(timeout=120)


def test_a_task_started_twice_for_one_claim_runs_it_once(db_url: str, effects: Path) -> None:
    """As if Ray ran the task again: the second finds the lease moved on and runs nothing."""
    tether.configure(executor=False)
    handle = ray_flows.gathered.enqueue(2)
    store = store_for(db_url)
    claim = Executor().claim()
    assert store.claim_runnable(claim, now=time.time(), due=time.time()) is not None
    spec = {
        "execution_id": handle.id, "token": claim.token, "db": db_url,
        "settings": _ray.task_settings(), "imports": ["ray_flows"], "scripts": [],
    }  # fmt: skip
    task = ray.remote(_ray.run_execution).options(max_retries=0, num_cpus=0.5)
    first = ray.get(task.remote(spec), timeout=120)
    second = ray.get(task.remote(spec), timeout=120)
    assert (first, second) == ("succeeded", "lost")
    assert len(_lines(effects)) == 2 * 2, "each call ran once"
    assert tether.Client().get(handle.id).attempt == 1


def test_sqlite_is_refused_for_a_cluster_that_is_not_one_local_node(db_url: str) -> None:
    if BACKEND == "postgres":
        pytest.skip("the refusal is of a SQLite store")
    done = run_cli(
        db_url, "worker", "--import", "ray_flows", "--ray", "ray://cluster:10001", "--create"
    )
    assert done.returncode == 2, done.stderr
    assert "SQLite" in done.stderr and "PostgreSQL" in done.stderr, done.stderr
    with pytest.raises(tether.ConfigurationError, match="not a single node"):
        tether.Worker(imports=["ray_flows"], ray="ray://cluster:10001")


def test_resources_are_checked_when_a_flow_or_checkpoint_is_declared() -> None:
    with pytest.raises(tether.UsageError, match="unknown resource 'gpus'"):
        tether.flow(resources={"gpus": 1})(ray_flows.gathered.fn)
    with pytest.raises(tether.UsageError, match="num_cpus must be 0 or more"):
        tether.checkpoint(runtime="ray", resources={"num_cpus": -1})(ray_flows._note)
    with pytest.raises(tether.UsageError, match="runtime is 'local' or 'ray'"):
        tether.checkpoint(runtime="spark")(ray_flows._note)  # type: ignore[call-overload]
    with pytest.raises(tether.UsageError, match="resources= goes with runtime='ray'"):
        tether.checkpoint(resources={"num_cpus": 1})(ray_flows._note)


def test_a_ray_checkpoint_with_a_custom_resource_runs_on_the_node_that_has_it(
    db_url: str, effects: Path, second_node: Any
) -> None:
    # The flow runs in this process (on the head's machine); only the second node has the
    # resource `second` that the checkpoint's body asks for.
    handle = ray_flows.placed.run()
    assert handle.result(timeout=120) == second_node.node_id
    assert second_node.node_id != ray.get_runtime_context().get_node_id()
    assert [line[-2] for line in _lines(effects)] == ["on_second"]


# Executions of `ray_flows.scaled` run by one dispatcher while a node dies: 200 take about a
# minute on a 2-core machine; TETHER_RAY_SCALE makes it fewer for a quick look.
SCALED = int(os.environ.get("TETHER_RAY_SCALE", "200"))


@pytest.mark.parametrize("kill", ["node", "raylet"])
def test_executions_on_a_two_node_cluster_survive_a_raylet_killed_mid_run(
    dispatchers: Dispatchers, second_node: Any, tmp_path: Path, kill: str
) -> None:
    """Many executions of ten calls, with waits answered by the test and short sleeps mixed
    in, run as Ray tasks on both nodes; the second node's raylet is SIGKILLed while some of
    them run there: with its Ray workers (`node`, a machine that dies: what ran there is
    taken over), or alone (`raylet`: Ray gives the tasks up while their orphaned workers
    still hold the leases and commit). Every execution finishes with its result, a call ran
    again only if it was in flight on the dead node, and the commits of each execution come
    from one lease holder after another, never two at once."""
    if BACKEND != "postgres":
        pytest.skip("a cluster of two nodes needs a store every node reaches: run with "
                    "TETHER_TEST_DB=postgres")  # fmt: skip
    count = SCALED if kill == "node" else min(SCALED, 60)
    client = tether.Client()
    handles = {ray_flows.scaled.enqueue(n).id: n for n in range(count)}
    dispatchers.start(lease=5.0, concurrency=8, log=tmp_path / "dispatcher.log")
    second = second_node.node_id

    def answer() -> None:
        for wait in client.pending_waits(flow="scaled", limit=1000):
            if wait.kind == "input":
                client.input(
                    wait.execution_id,
                    wait.name,
                    ray_flows.scaled_answer(handles[wait.execution_id]),
                )

    def running_on_second() -> set[str]:
        """Executions running now, with calls still to make, whose latest call ran on the
        second node."""
        latest: dict[str, str] = {}
        made: dict[str, set[str]] = {}
        for key, _, node in _lines(dispatchers.effects):
            latest[key.split(":")[0]] = node
            made.setdefault(key.split(":")[0], set()).add(key)
        running = {r.id for r in client.list(status=Status.RUNNING, limit=1000)}
        return {
            eid for eid in running
            if latest.get(eid) == second and len(made[eid]) < ray_flows.SCALED_STEPS
        }  # fmt: skip

    def mid_run() -> set[str] | None:
        answer()
        done = client.status_counts(flow="scaled")[Status.SUCCEEDED]
        return running_on_second() if done >= count // 4 else None

    victims = retry_until(mid_run, timeout=300, what="executions to run on the second node")
    if kill == "node":
        kill_node(second_node)
    else:
        # Its workers, orphaned, are killed at the end (the cluster no longer knows them).
        dispatchers.orphans += descendants(raylet_pid(second_node))
        os.kill(raylet_pid(second_node), signal.SIGKILL)

    def all_done() -> bool:
        answer()
        return client.status_counts(flow="scaled")[Status.SUCCEEDED] == count

    retry_until(all_done, timeout=600, what=f"all {count} executions to succeed")
    lines = _lines(dispatchers.effects)
    ran: dict[str, list[tuple[str, str]]] = {}
    for key, token, node in lines:
        ran.setdefault(key, []).append((token, node))
    suspends = {3: lambda n: n % 3 == 0, 6: lambda n: n % 2 == 0}
    taken_over = 0
    for execution_id, n in handles.items():
        result = client.handle(execution_id).result(timeout=0)
        assert result["total"] == ray_flows.scaled_expected(n), execution_id
        keys = [key for key, _ in result["calls"]]
        tokens: list[str] = [token for _, token in result["calls"]]
        committed_on: dict[str, str] = {}
        for key, token in zip(keys, tokens, strict=True):
            calls = ran[key]
            # The committed call ran once, under the lease that committed it; any other
            # run of it was in flight on the dead node.
            assert [t for t, _ in calls].count(token) == 1, (key, calls)
            assert all(node == second for t, node in calls if t != token), (key, calls)
            committed_on[key] = next(node for t, node in calls if t == token)
        holders = [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]
        # One holder after another: a lease that stopped committing never commits again.
        assert len(holders) == len(set(holders)), (execution_id, tokens)
        assert len(holders) <= client.get(execution_id).attempt
        for i in range(1, len(tokens)):
            if tokens[i] != tokens[i - 1] and not suspends.get(i - 1, lambda n: False)(n):
                # A new holder mid-way without a wait or sleep: a takeover from the dead node.
                assert committed_on[keys[i - 1]] == second, (execution_id, tokens)
                taken_over += 1
    if kill == "raylet":
        # Orphaned, the dead raylet's workers finished what they ran, under their leases.
        assert taken_over == 0, "nothing was taken over"
        assert all(len(calls) == 1 for calls in ran.values()), "no call ran again"
    else:
        # The kill hit executions in flight, and their tasks failed. A takeover counted above
        # is one mid-way; a victim killed just before a wait or sleep is taken over there,
        # where a new holder is expected anyway, so the count may be 0 (seen in CI).
        assert victims, "the kill hit executions in flight"
        assert "its Ray task failed" in (tmp_path / "dispatcher.log").read_text()
