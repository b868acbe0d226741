"""Executions and checkpoint bodies on a real local Ray cluster (the `ray` extra).

One cluster per module (2 CPUs, no dashboard): the machine is small and shared. The
dispatcher is a real `tether worker --ray ADDRESS` process; flows and checkpoint bodies run
in Ray's own worker processes, which a test kills with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray cluster for the module; its tasks find the tests' modules and this tether.
    Ray's worker processes have the environment of the process that started the cluster, so
    the file the flows note their calls in is set here, once (see `effects`)."""
    path = os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    effects = tmp_path_factory.mktemp("ray") / "effects.log"
    os.environ["SIDE_EFFECTS"] = str(effects)
    ray.init(
        address="local",  # its own cluster, even when another runs on this machine
        num_cpus=2,
        resources={"tether_node": 1},
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        logging_level="warning",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        del os.environ["SIDE_EFFECTS"]


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

    def start(self, *extra: str, lease: float | None = None) -> subprocess.Popen[str]:
        if lease is None:
            argv = ["-m", "tether", "worker", "--import", "ray_flows", "--ray", self.address]
            argv += ["--poll", "0.05", "--concurrency", "2", *extra]
        else:
            # Short leases, so that a killed task's execution is taken over soon.
            code = (
                f"import sys, tether; tether.configure(lease_seconds={lease!r}); "
                "tether.Worker(imports=['ray_flows'], ray=sys.argv[1], concurrency=2, "
                "poll=0.05).run()"
            )
            argv = ["-c", code, self.address]
        proc = spawn_python(
            argv, self.db_url, stderr=subprocess.PIPE, SIDE_EFFECTS=str(self.effects)
        )
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
    assert "its Ray task ended (waiting)" in err, err
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
