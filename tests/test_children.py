"""Child flows: a flow started from flow code is a recorded call of its parent, started once
per (parent, position) whatever the crashes; the parent waits for it holding nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import child_flows
import tether
from helpers import (
    child_env,
    recover_until_finished,
    retry_until,
    run_child,
    run_cli,
    spawn_child,
)
from tether import Status
from tether._runtime.executor import executor
from tether.store import ExecutionRow, WaitRow, open_store


def _ran(side_effects: Path) -> Counter[str]:
    if not side_effects.exists():
        return Counter()
    return Counter(line.split()[1] for line in side_effects.read_text().splitlines())


def _children(client: tether.Client, parent: str) -> list[tether.ExecutionRecord]:
    return client.list(parent=parent)


# --- calling a child ---------------------------------------------------------------------------


@pytest.mark.parametrize("parent", [child_flows.order, child_flows.order_via_handle])
def test_a_sync_parent_gets_its_childs_result(
    client: tether.Client, parent: tether.Flow[[int], int]
) -> None:
    handle = parent.run(4)
    assert handle.result(timeout=20) == 82
    (child,) = _children(client, handle.id)
    assert child.flow == "pay" and child.status is Status.SUCCEEDED
    assert child.parent_id == handle.id
    record = client.get(handle.id)
    assert [c.id for c in record.children] == [child.id]
    start = record.checkpoints[0]
    assert (start.position, start.name, start.result) == ("0", "child:pay", child.id)
    (wait,) = record.waits
    assert (wait.position, wait.kind, wait.status) == ("1", "child", "resolved")
    assert wait.metadata == {"execution": child.id}


def test_an_async_parent_awaits_gathers_and_awaits_handles(client: tether.Client) -> None:
    handle = child_flows.aorder.run(1)
    assert handle.result(timeout=20) == [12, 22, 32, 41]
    children = _children(client, handle.id)
    assert sorted(c.flow for c in children) == ["apay", "apay", "apay", "pay"]
    assert all(c.status is Status.SUCCEEDED for c in children)
    record = client.get(handle.id)
    # Each call takes its start and its await in program order, when it is made (the two
    # gathered children are both started before either is awaited); the gather's two tasks
    # take slots 6 and 7.
    assert [(c.position, c.name) for c in record.checkpoints] == [
        ("0", "child:apay"), ("2", "child:apay"), ("4", "child:apay"), ("8", "child:pay"),
    ]  # fmt: skip
    assert [w.position for w in record.waits] == ["1", "3", "5", "9"]


def test_a_failing_child_raises_execution_failed_the_parent_can_catch(
    client: tether.Client,
) -> None:
    handle = child_flows.order_catching.run("no funds")
    assert handle.result(timeout=20) == "caught ValueError: no funds"
    (child,) = _children(client, handle.id)
    assert child.status is Status.FAILED


def test_an_uncaught_child_failure_fails_the_parent_and_retry_retries_the_child(
    client: tether.Client, tmp_path: Path
) -> None:
    flag = tmp_path / "ready"
    handle = child_flows.order_failing.run(str(flag))
    with pytest.raises(tether.ExecutionFailed, match="ExecutionFailed") as raised:
        handle.result(timeout=20)
    assert "not yet" in str(raised.value)
    (child,) = _children(client, handle.id)
    assert child.status is Status.FAILED
    flag.write_text("go")
    assert client.retry(handle.id).result(timeout=20) == "child says ok"
    (again,) = _children(client, handle.id)  # the same child, retried: not a second one
    assert again.id == child.id and again.status is Status.SUCCEEDED


def test_a_parent_holds_nothing_while_a_worker_runs_its_child(client: tether.Client) -> None:
    handle = child_flows.order_enqueued.run(3)
    retry_until(lambda: handle.status() is Status.WAITING, what="the parent to wait")
    record = client.get(handle.id)
    assert record.owner is None and record.lease_expires is None
    assert not executor().holds(tether.Client()._store, handle.id)
    (child,) = _children(client, handle.id)
    assert child.status is Status.QUEUED  # enqueued: nothing runs it in this process
    worker = subprocess.Popen(
        [sys.executable, "-m", "tether", "worker", "--concurrency", "2", "--import", "child_flows"],
        env=child_env(client.db),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert handle.result(timeout=30) == 62
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert client.get(child.id).status is Status.SUCCEEDED


def test_a_child_started_in_flow_code_keeps_its_parent_link_in_the_cli(
    client: tether.Client,
) -> None:
    handle = child_flows.order.run(2)
    assert handle.result(timeout=20) == 42
    (child,) = _children(client, handle.id)
    listed = run_cli(client.db, "executions", "list", "--parent", handle.id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [child.id]
    got = run_cli(client.db, "executions", "get", handle.id, "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert [c["id"] for c in data["children"]] == [child.id]
    assert data["children"][0]["parent_id"] == handle.id
    shown = run_cli(client.db, "executions", "get", handle.id)
    assert "Children" in shown.stdout and child.id in shown.stdout
    assert "child:pay" in shown.stdout


# --- cancel -------------------------------------------------------------------------------------


def test_cancelling_a_parent_cancels_its_running_child_and_grandchild(
    client: tether.Client,
) -> None:
    handle = child_flows.grand_order.run(10_000)
    retry_until(lambda: handle.status() is Status.WAITING, what="the parent to wait")

    def grandchild() -> tether.ExecutionRecord | None:
        (child,) = _children(client, handle.id) or [None]
        if child is None:
            return None
        found = _children(client, child.id)
        return found[0] if found and found[0].status is Status.RUNNING else None

    running = retry_until(grandchild, what="the grandchild to run")
    assert client.cancel(handle.id) is Status.CANCELLED
    with pytest.raises(tether.ExecutionCancelled):
        handle.result(timeout=10)
    retry_until(
        lambda: client.get(running.id).status is Status.CANCELLED, what="the grandchild to stop"
    )
    (child,) = _children(client, handle.id)
    assert client.get(child.id).status is Status.CANCELLED


# --- crashes ------------------------------------------------------------------------------------

START = textwrap.dedent(
    """
    import sys, child_flows
    handle = getattr(child_flows, sys.argv[1]).run(int(sys.argv[2]))
    print(handle.id, flush=True)
    print(repr(handle.result(timeout=60)), flush=True)
    """
)
# Resume everything that is runnable until the parent has finished: the child is taken over
# from the dead process, and the parent becomes runnable when the child ends.
RECOVER = recover_until_finished("child_flows")


def _parent_id(client: tether.Client, flow: str) -> str:
    (parent,) = [r for r in client.list() if r.flow == flow]
    return parent.id


def _resume_and_check(
    client: tether.Client, parent: str, side_effects: Path, expected: int
) -> None:
    resumed = run_child(RECOVER, client.db, parent, SIDE_EFFECTS=str(side_effects))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr(expected)
    (child,) = _children(client, parent)
    assert child.status is Status.SUCCEEDED
    assert _ran(side_effects) == Counter({"charge-5": 1})
    assert len(client.list()) == 2


@pytest.mark.parametrize("flow", ["order", "order_via_handle"])
def test_kill_after_the_child_started_then_recover_elsewhere(
    client: tether.Client, tmp_path: Path, flow: str
) -> None:
    side_effects = tmp_path / "effects.log"
    crashed = run_child(
        START, client.db, flow, "5",
        SIDE_EFFECTS=str(side_effects), CRASH_AFTER_COMMIT="pay:0",
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    parent = _parent_id(client, flow)
    (child,) = _children(client, parent)
    assert child.status is Status.RUNNING  # its charge committed, then the process died
    _resume_and_check(client, parent, side_effects, 102)


def test_kill_after_the_child_ended_before_the_parent_awaited_it(
    client: tether.Client, tmp_path: Path
) -> None:
    side_effects = tmp_path / "effects.log"
    crashed = run_child(
        START, client.db, "order_after_child_ended", "5",
        SIDE_EFFECTS=str(side_effects), CRASH_WHEN_CHILD_ENDED="1",
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    parent = _parent_id(client, "order_after_child_ended")
    (child,) = _children(client, parent)
    assert child.status is Status.SUCCEEDED
    assert [w.kind for w in client.get(parent).waits] == []  # not awaited yet
    _resume_and_check(client, parent, side_effects, 102)


def test_kill_when_the_child_ended_while_the_parent_waited(
    client: tether.Client, tmp_path: Path
) -> None:
    side_effects = tmp_path / "effects.log"
    code = textwrap.dedent(
        """
        import os, signal, tether, child_flows
        handle = child_flows.order.run(5)
        client = tether.Client()
        while True:  # the moment the child's end is committed: before the parent runs again
            children = client.list(parent=handle.id)
            if children and children[0].status.finished:
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    crashed = run_child(code, client.db, SIDE_EFFECTS=str(side_effects))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    parent = _parent_id(client, "order")
    record = client.get(parent)
    # The child's end recorded its outcome in the parent, in the same transaction.
    (wait,) = record.waits
    assert wait.status == "resolved" and json.loads(wait.value_json or "")["status"] == (
        "succeeded"
    )
    assert record.status in (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
    if record.status is not Status.SUCCEEDED:
        _resume_and_check(client, parent, side_effects, 102)


def test_a_parent_and_its_child_in_a_killed_worker_are_taken_over(
    client: tether.Client, tmp_path: Path
) -> None:
    side_effects = tmp_path / "effects.log"
    worker = spawn_child(
        "import tether, child_flows; tether.Worker(concurrency=4, poll=0.01).run()",
        client.db,
        SIDE_EFFECTS=str(side_effects),
        CRASH_AFTER_COMMIT="pay:0",
    )
    try:
        tether.configure(executor=False)
        handle = child_flows.order.enqueue(5)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == -signal.SIGKILL
    tether.configure(executor=True)
    _resume_and_check(client, handle.id, side_effects, 102)


def test_concurrent_children_of_many_parents_all_wake_their_parents(
    client: tether.Client,
) -> None:
    handles = [child_flows.aorder.run(i) for i in range(6)]
    threads = [threading.Thread(target=h.result, kwargs={"timeout": 60}) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, h in enumerate(handles):
        assert h.result(timeout=1) == [
            10 * i + 2,
            10 * (i + 1) + 2,
            10 * (i + 2) + 2,
            10 * (i + 3) + 1,
        ]


# --- replay -------------------------------------------------------------------------------------


def test_a_fork_reuses_child_outcomes_before_the_fork_point_and_starts_new_children_after(
    client: tether.Client,
) -> None:
    source = child_flows.aorder.run(1)
    assert source.result(timeout=20) == [12, 22, 32, 41]
    before = {c.id for c in _children(client, source.id)}
    fork = client.replay(source.id, from_="child:apay#2")
    assert fork.result(timeout=20) == [12, 22, 32, 41]
    children = _children(client, fork.id)
    # The first child's start and outcome were copied: the fork did not start it again.
    assert sorted(c.flow for c in children) == ["apay", "apay", "pay"]
    assert not before & {c.id for c in children}
    assert {c.id for c in _children(client, source.id)} == before
    first = client.get(fork.id).checkpoints[0]
    assert first.name == "child:apay" and first.result in before


# --- the store: a child's end resolves its parent's wait, in the batch or alone ---------------


def _leased(execution_id: str, parent: str | None = None) -> ExecutionRow:
    now = time.time()
    return ExecutionRow(
        id=execution_id, flow="f", import_path="m:f", script=None, args="{}",
        status="running", owner="o", lease_token=f"tok-{execution_id}",
        lease_expires=now + 60, created_at=now, updated_at=now, parent_id=parent,
    )  # fmt: skip


def test_ends_of_children_and_others_finished_together_all_land(db_url: str) -> None:
    store = open_store(db_url)
    try:
        for i in range(4):
            store.create_execution(_leased(f"p{i}"))
            store.create_execution(_leased(f"c{i}", parent=f"p{i}"))
            store.create_execution(_leased(f"e{i}"))
            wait = WaitRow(f"p{i}", f"child:c{i}", "1", "child", "pending", created_at=1.0)
            assert store.await_child(f"tok-p{i}", wait, f"c{i}") is not None
            assert store.suspend(f"p{i}", f"tok-p{i}", wait=f"child:c{i}", wake_at=None, now=1)
        ids = [f"{k}{i}" for i in range(4) for k in "ce"]
        done: dict[str, bool] = {}

        def end(execution_id: str) -> None:
            done[execution_id] = store.finish(
                execution_id, f"tok-{execution_id}", status="succeeded", result='"r"',
                error=None, now=time.time(),
            )  # fmt: skip

        threads = [threading.Thread(target=end, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert done == dict.fromkeys(ids, True)
        for i in range(4):
            parent = store.get_execution(f"p{i}")
            assert parent is not None and parent.status == "queued"
            (wait,) = store.get_waits(f"p{i}")
            assert wait.status == "resolved" and wait.resolved_by == f"c{i}"
            assert json.loads(wait.value or "") == {
                "status": "succeeded", "result": '"r"', "error": None,
            }  # fmt: skip
        # A finish under a stale token writes nothing, child or not.
        assert not store.finish("c0", "stale", status="failed", result=None, error=None, now=2)
    finally:
        store.close()
