"""Faults of user code and of the process never strand an execution or take its neighbours
down: BaseExceptions fail the attempt, the loop thread is never silently lost, and an
execution whose processes keep dying is failed after a bounded number of takeovers."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import fault_flows
import tether
from helpers import ProcessPool, retry_until, run_cli, spawn_child, spawn_python
from tether import ExecutionFailed, Status
from tether.errors import ExecutionLocked
from tether.store import open_store

KINDS = ("exit", "interrupt", "cancel", "generator-exit")
RAISED = {
    "exit": "SystemExit",
    "interrupt": "KeyboardInterrupt",
    "cancel": "CancelledError",
    "generator-exit": "GeneratorExit",
}


def _failure(handle: tether.Handle[Any]) -> ExecutionFailed:
    with pytest.raises(ExecutionFailed) as caught:
        handle.result(timeout=60)
    return caught.value


def test_base_exceptions_in_async_checkpoints_fail_only_their_own_execution(
    client: tether.Client,
) -> None:
    good = [fault_flows.good_agent.run(i) for i in range(100)]
    poison = {kind: fault_flows.poison_agent.run(kind) for kind in KINDS}
    body = {kind: fault_flows.poison_body.run(kind) for kind in ("exit", "interrupt")}

    for i, handle in enumerate(good):
        assert handle.result(timeout=60) == [f"a{i}aa{i}", f"b{i}bb{i}"]
    for kind, handle in poison.items():
        failed = _failure(handle)
        assert failed.error_type.endswith(".Interrupted")
        assert f"checkpoint 'explode' raised {RAISED[kind]}" in failed.message
        record = client.get(handle.id)
        assert record.status is Status.FAILED
        call = next(c for c in record.checkpoints if c.name == "explode")
        assert call.status == "failed"
        # The record names what was raised; the default retry_on (Exception) retries none.
        assert [a.error.split(":")[0] for a in call.attempts if a.error] == [RAISED[kind]]
        assert record.attempt == 1  # one claim: nothing spun
    for kind, handle in body.items():
        failed = _failure(handle)
        assert failed.error_type.endswith(".Interrupted")
        assert f"flow {fault_flows.poison_body.name!r} raised {RAISED[kind]}" in failed.message

    # The loop is still there: another async execution runs on it.
    assert fault_flows.good_agent.run(1000).result(timeout=60) == ["a1000aa1000", "b1000bb1000"]


def test_base_exceptions_in_a_sync_flow_fail_only_their_own_execution(
    client: tether.Client,
) -> None:
    good = [fault_flows.good_sync_agent.run(i) for i in range(30)]
    poison = {kind: fault_flows.poison_sync_agent.run(kind) for kind in KINDS}
    for i, handle in enumerate(good):
        assert handle.result(timeout=60) == [i * 2, (i + 1) * 2]
    for kind, handle in poison.items():
        failed = _failure(handle)
        assert failed.error_type.endswith(".Interrupted")
        assert f"checkpoint 'explode_sync' raised {RAISED[kind]}" in failed.message
        record = client.get(handle.id)
        call = next(c for c in record.checkpoints if c.name == "explode_sync")
        assert [a.error.split(":")[0] for a in call.attempts if a.error] == [RAISED[kind]]


def test_retry_on_that_names_a_base_exception_retries_it(client: tether.Client) -> None:
    handle = fault_flows.poison_retried.run("exit")
    failed = _failure(handle)
    assert "raised SystemExit(3)" in failed.message
    call = next(c for c in client.get(handle.id).checkpoints if c.name == "explode_retried")
    assert [a.error for a in call.attempts] == ["SystemExit: 3"] * 3


@pytest.fixture
def procs() -> Iterator[ProcessPool]:
    found = ProcessPool()
    yield found
    found.kill_all()


def _worker(db_url: str, procs: ProcessPool, *extra: str, **env: str) -> subprocess.Popen[str]:
    argv = ["-m", "tether", "worker", "--import", "fault_flows", "--poll", "0.01", *extra]
    return procs.add(spawn_python(argv, db_url, stderr=subprocess.PIPE, **env))


def _finished(client: tether.Client, ids: list[str]) -> bool:
    return all(client.get(i).status.finished for i in ids)


def test_a_worker_fails_poison_after_its_tries_and_runs_the_rest(
    db_url: str, client: tether.Client, procs: ProcessPool
) -> None:
    tether.configure(executor=False)
    poison = [fault_flows.poison_retried.enqueue(kind).id for kind in ("exit", "cancel")]
    good = [fault_flows.good_agent.enqueue(i).id for i in range(20)]
    worker = _worker(db_url, procs, "--concurrency", "1")
    retry_until(lambda: _finished(client, poison + good), timeout=120, what="all to finish")
    for i, execution_id in enumerate(good):
        assert client.get(execution_id).result == [f"a{i}aa{i}", f"b{i}bb{i}"]
    for execution_id, raised in zip(poison, ("SystemExit", "CancelledError"), strict=True):
        record = client.get(execution_id)
        assert record.status is Status.FAILED
        assert record.error is not None and record.error.type.endswith(".Interrupted")
        assert f"raised {raised}" in record.error.message
        assert record.attempt == 1  # claimed once
        call = next(c for c in record.checkpoints if c.name == "explode_retried")
        assert [a.error.split(":")[0] for a in call.attempts if a.error] == [raised] * 3
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err


def test_an_execution_that_kills_its_process_fails_after_the_limit(
    db_url: str, client: tether.Client, procs: ProcessPool
) -> None:
    tether.configure(executor=False)
    limit = 3
    looper = fault_flows.crash_looper.enqueue().id
    good = [fault_flows.good_agent.enqueue(i).id for i in range(10)]
    env = {"TETHER_CRASH_LOOP_LIMIT": str(limit), "TETHER_CRASH_LOOP_BACKOFF": "0.05"}
    kills = 0
    # One slot: a worker dies only while it runs the looper, never with a good one.
    for _ in range(limit + 3):
        worker = _worker(db_url, procs, "--concurrency", "1", **env)
        retry_until(
            lambda: worker.poll() is not None or _finished(client, [looper, *good]),  # noqa: B023
            timeout=120,
            what="the worker to die or everything to finish",
        )
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
            break
        assert worker.returncode == -signal.SIGKILL
        kills += 1
    assert kills == limit
    record = client.get(looper)
    assert record.status is Status.FAILED
    assert record.error is not None and record.error.type.endswith(".CrashLoopError")
    assert f"taken over {limit} times in a row" in record.error.message
    # Each kill was one run; the backoffs handed it back and claimed it again.
    assert record.attempt == limit + (limit - 2) + 1
    assert all(client.get(i).status is Status.SUCCEEDED for i in good)
    events = [e.kind for e in record.events]
    assert events.count("crash_loop") == limit - 2


@pytest.mark.parametrize(
    ("fault", "logged"),
    [
        ("loop_stopper", "the tether event loop thread ended (loop.stop() was called on it)"),
        ("loop_blocker", "the tether event loop has not turned for over 2"),
    ],
)
def test_leases_stop_being_renewed_when_the_loop_thread_ends_or_hangs(
    db_url: str, client: tether.Client, procs: ProcessPool, fault: str, logged: str
) -> None:
    # A process runs five async executions that hold their checkpoint, then one of its
    # checkpoints stops the shared event loop, or blocks it for good.
    code = textwrap.dedent(
        """
        import logging, sys, threading, time
        import tether, fault_flows
        logging.basicConfig(level=logging.INFO)
        tether.configure(lease_seconds=2)
        handles = [fault_flows.parked_agent.run(i) for i in range(5)]
        client = tether.Client()
        while not all(len(client.get(h.id).progress) for h in handles):
            time.sleep(0.01)
        print(" ".join(h.id for h in handles), flush=True)
        getattr(fault_flows, sys.argv[1]).run()
        threading.Event().wait()  # alive: only its leases can let the executions go
        """
    )
    holder = procs.add(
        spawn_python(["-c", code, fault], db_url, stderr=subprocess.PIPE, FAULT_PARK="1")
    )
    assert holder.stdout is not None
    ids = holder.stdout.readline().split()
    assert len(ids) == 5, holder.stderr.read() if holder.stderr else ""

    def taken_over(execution_id: str) -> bool:
        try:
            client.resume(execution_id)
        except ExecutionLocked:
            return False
        return True

    for execution_id in ids:
        retry_until(lambda: taken_over(execution_id), timeout=60, what="a takeover")  # noqa: B023
    for i, execution_id in enumerate(ids):
        result = client.handle(execution_id).result(timeout=60)
        assert result == {"value": i, "pid": os.getpid()}
    holder.kill()
    _, err = holder.communicate(timeout=30)
    assert logged in err


def test_a_worker_whose_loop_thread_ended_stops_at_once_on_sigterm(
    db_url: str, client: tether.Client, procs: ProcessPool
) -> None:
    tether.configure(executor=False)
    parked = [fault_flows.parked_agent.enqueue(i).id for i in range(3)]
    code = textwrap.dedent(
        """
        import logging, tether, fault_flows
        logging.basicConfig(level=logging.INFO)
        # A grace far longer than the test waits: only holds that are let go end it sooner.
        tether.Worker(imports=["fault_flows"], concurrency=8, poll=0.01).run(grace=600)
        """
    )
    worker = procs.add(spawn_child(code, db_url, stderr=subprocess.PIPE, FAULT_PARK="1"))
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(worker.stderr.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    retry_until(lambda: all(client.get(i).progress for i in parked), what="the agents to run")
    fault_flows.loop_stopper.enqueue()
    retry_until(
        lambda: sum("abandoned here" in line for line in lines) >= 3,
        timeout=60,
        what="the worker to let the executions of its ended loop go",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0
    assert any("the tether event loop thread ended" in line for line in lines)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_hands_back_what_it_runs_on_sigint_and_sigterm(
    db_url: str, client: tether.Client, procs: ProcessPool, signum: signal.Signals
) -> None:
    tether.configure(executor=False)
    execution_id = fault_flows.ticker.enqueue(60).id
    argv = ["-m", "tether", "executions", "recover", "--import", "fault_flows"]
    cli = procs.add(spawn_python(argv, db_url, stderr=subprocess.PIPE))
    retry_until(lambda: len(client.get(execution_id).checkpoints) >= 3, what="it to run")
    cli.send_signal(signum)
    _, err = cli.communicate(timeout=60)
    assert cli.returncode == 128 + signum, err
    assert "stays queued" in err and "Traceback" not in err
    record = client.get(execution_id)
    assert record.status is Status.QUEUED and record.owner is None
    done = len(record.checkpoints)
    assert done < 60

    # A hand-back is no crash: the next process runs it on, and nothing counts against it.
    finished = spawn_python(argv, db_url, stderr=subprocess.PIPE)
    _, err = procs.add(finished).communicate(timeout=120)
    assert finished.returncode == 0, err
    record = client.get(execution_id)
    assert record.result == sum(range(60))
    assert record.attempt == 2
    store = open_store(db_url)
    try:
        row = store.get_execution(execution_id)
        assert row is not None and row.takeovers == 0
    finally:
        store.close()


def test_recover_backs_off_a_crash_loop_and_then_fails_it(
    db_url: str, client: tether.Client
) -> None:
    tether.configure(executor=False)
    looper = fault_flows.crash_looper.enqueue().id
    env = {"TETHER_CRASH_LOOP_LIMIT": "3", "TETHER_CRASH_LOOP_BACKOFF": "0.05"}
    codes = []
    for _ in range(4):
        recover = run_cli(
            db_url, "executions", "recover", "--import", "fault_flows", "--json", **env
        )
        codes.append(recover.returncode)
    # Killed; taken over and killed; taken over again, handed back for the pause, which the
    # third recover waits out before it runs it again, killed; taken over a third time: failed.
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, -signal.SIGKILL, 1]
    record = client.get(looper)
    assert record.status is Status.FAILED
    assert record.error is not None and record.error.type.endswith(".CrashLoopError")
    assert "tether executions retry" in record.error.message
    assert [e.kind for e in record.events].count("crash_loop") == 1


def test_cancellations_that_asyncio_starts_stay_cancellations(client: tether.Client) -> None:
    handle = fault_flows.cancelled_by_asyncio.run()
    assert handle.result(timeout=60) == "caught ['first branch failed']"
    calls = {c.name: c for c in client.get(handle.id).checkpoints}
    # The timed-out and the group-cancelled calls recorded nothing (they run again on a
    # resume): only the failure is recorded.
    assert sorted(calls) == ["fail_soon"]
    assert calls["fail_soon"].status == "failed"


def test_a_process_that_takes_over_a_crash_loop_runs_it_after_the_pause(
    db_url: str, client: tether.Client
) -> None:
    tether.configure(executor=False)
    execution_id = fault_flows.crashes_where_told.enqueue().id
    for _ in range(2):  # the first run and one takeover die
        died = run_cli(db_url, "executions", "recover", "--import", "fault_flows", FAULT_KILL="1")
        assert died.returncode == -signal.SIGKILL, died.stderr
    tether.configure(executor=True, crash_loop_backoff=0.2)
    # The second takeover in a row: handed back for the pause, then run by this process.
    handle = client.resume(execution_id)
    assert handle.result(timeout=60) == "survived"
    record = client.get(execution_id)
    assert [e.kind for e in record.events].count("crash_loop") == 1
    assert record.attempt == 4  # two runs killed, the hand-back, the run after the pause
