"""Waits across processes, and the worker: input from anywhere, SIGKILL, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from helpers import ProcessPool, retry_until, run_child, run_cli, spawn_python
from tether import Status


def _ran(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines())


def _pids(path: Path) -> set[str]:
    return {line.split()[2] for line in path.read_text().splitlines()}


class Workers(ProcessPool):
    """`tether worker` processes started by a test."""

    def __init__(self, db_url: str, **env: str) -> None:
        super().__init__()
        self.db_url = db_url
        self.env = env

    def start(self, *extra: str) -> subprocess.Popen[str]:
        argv = ["-m", "tether", "worker", "--import", "approval_flows", "--poll", "0.01", *extra]
        proc = spawn_python(argv, self.db_url, stderr=subprocess.PIPE, **self.env)
        return self.add(proc)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(db_url, SIDE_EFFECTS=str(tmp_path / "effects.log"))
    yield pool
    pool.kill_all()


def test_approval_across_processes_with_a_worker(
    db_url: str, tmp_path: Path, workers: Workers
) -> None:
    effects = tmp_path / "effects.log"
    # 1. A process starts the agent; it suspends at the wait; the process exits.
    started = run_child(
        textwrap.dedent(
            """
            import time, approval_flows, tether
            handle = approval_flows.approval_flow.run("tides")
            while handle.status() != "waiting":
                time.sleep(0.01)
            print(handle.id)
            """
        ),
        db_url,
        SIDE_EFFECTS=str(effects),
    )
    assert started.returncode == 0, started.stderr
    execution_id = started.stdout.strip()
    client = tether.Client()
    assert client.get(execution_id).status is Status.WAITING
    assert client.get(execution_id).owner is None

    # 2. A worker is up; 3. another process gives the input through the CLI.
    workers.start()
    given = run_cli(db_url, "executions", "input", execution_id, "--value", "true", "--by", "alice")
    assert given.returncode == 0, given.stderr
    assert client.handle(execution_id).result(timeout=30) == "published draft on tides"
    assert _ran(effects) == Counter(write_draft=1, publish=1)
    assert client.get(execution_id).waits[0].resolved_by == "alice"


def test_cli_input_errors_exit_with_their_codes(db_url: str, workers: Workers) -> None:
    handle = approval_flows_run(db_url)
    bad = run_cli(db_url, "executions", "input", handle, "--value", '"maybe"')
    assert bad.returncode == 1
    assert "does not match its schema" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli(db_url, "executions", "input", "nope", "--value", "true")
    assert missing.returncode == 3 and "no execution nope" in missing.stderr
    listed = run_cli(db_url, "executions", "waits", "--json")
    assert listed.returncode == 0
    import json

    (wait,) = json.loads(listed.stdout)
    assert wait["execution_id"] == handle and wait["json_schema"] == {"type": "boolean"}


def approval_flows_run(db_url: str) -> str:
    """Start approval_flow in a client-only child process (a worker-less enqueue)."""
    tether.configure(executor=False)
    import approval_flows

    handle = approval_flows.approval_flow.enqueue("x")
    tether.configure(executor=True)
    tether.Worker(poll=0.01).run_once()
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    return handle.id


def test_a_running_process_resumes_its_own_execution_on_input_from_elsewhere(
    db_url: str, tmp_path: Path
) -> None:
    import approval_flows

    handle = approval_flows.approval_flow.run("local")
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    given = run_child(
        f"import tether; tether.Client().input({handle.id!r}, 'approve', True)", db_url
    )
    assert given.returncode == 0, given.stderr
    # No worker and no resume call: the process that started it picks it up again.
    assert handle.result(timeout=10) == "published draft on local"


def test_sigkill_a_worker_mid_execution_and_another_finishes_it(
    db_url: str, tmp_path: Path, workers: Workers
) -> None:
    effects = tmp_path / "effects.log"
    tether.configure(executor=False)
    import approval_flows

    handle = approval_flows.slow_flow.enqueue(4, 0.3)
    first = workers.start()
    retry_until(lambda: _ran(effects)["slow_step-1"] == 1, what="step 1 to start")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert handle.status() is Status.RUNNING  # its lease is still there, its owner dead
    workers.start()
    assert handle.result(timeout=60) == 0 + 1 + 2 + 3
    ran = _ran(effects)
    assert ran["slow_step-0"] == 1, "a committed step never runs again"
    assert ran["slow_step-1"] == 2, "the step in flight at the kill runs once more"
    assert ran["slow_step-2"] == ran["slow_step-3"] == 1
    assert len(_pids(effects)) == 2
    assert tether.Client().get(handle.id).attempt == 2


def test_sigterm_stops_a_worker_cleanly_and_hands_work_back(
    db_url: str, tmp_path: Path, workers: Workers
) -> None:
    effects = tmp_path / "effects.log"
    tether.configure(executor=False)
    import approval_flows

    handle = approval_flows.slow_flow.enqueue(3, 0.5)
    worker = workers.start("--grace", "10")
    retry_until(lambda: _ran(effects)["slow_step-0"] == 1, what="step 0 to start")
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    record = tether.Client().get(handle.id)
    assert record.status is Status.QUEUED, "handed back, not left running"
    assert record.owner is None
    assert [c.name for c in record.checkpoints] == ["slow_step"]  # step 0 finished, recorded
    workers.start()
    assert handle.result(timeout=60) == 0 + 1 + 2
    assert _ran(effects)["slow_step-0"] == 1


def test_client_only_process_from_the_environment_runs_nothing(
    db_url: str, tmp_path: Path, workers: Workers
) -> None:
    effects = tmp_path / "effects.log"
    started = run_child(
        textwrap.dedent(
            """
            import approval_flows
            handle = approval_flows.approval_flow.run("remote")
            print(handle.id, handle.status())
            """
        ),
        db_url,
        TETHER_EXECUTOR="off",
        SIDE_EFFECTS=str(effects),
    )
    assert started.returncode == 0, started.stderr
    execution_id, status = started.stdout.split()
    assert status == "queued" and not effects.exists(), "a client-only process runs nothing"
    workers.start()
    client = tether.Client()
    retry_until(lambda: client.get(execution_id).status is Status.WAITING, what="the wait")
    client.input(execution_id, "approve", True)
    assert client.handle(execution_id).result(timeout=30) == "published draft on remote"


def test_a_worker_fires_a_due_timer(db_url: str, tmp_path: Path, workers: Workers) -> None:
    tether.configure(executor=False)
    import approval_flows

    handle = approval_flows.nap_flow.enqueue(0.3)
    workers.start()
    retry_until(lambda: handle.status() is not Status.QUEUED, what="the worker to start it")
    assert handle.result(timeout=30) == "draft on nap then woke"
    record = tether.Client().get(handle.id)
    assert record.waits[0].kind == "sleep" and record.waits[0].status == "slept"
    assert _ran(tmp_path / "effects.log")["write_draft"] == 1
