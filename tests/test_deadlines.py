"""Deadlines (`@tether.flow(deadline=)`, `.options(deadline=)`) and delayed starts
(`.options(delay=` / `not_before=)`): ends and starts in time, whoever holds the execution.

Real time is used where the promise is about the wall clock ("not before its deadline",
"not before its start"); the injected clock where the order of two timers is the point.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deadline_flows as flows
import tether
from helpers import FakeClock, retry_until, run_child, spawn_child, spawn_python
from tether import Status

ran: Counter[str] = Counter()
held = threading.Event()
release = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    ran.clear()
    held.clear()
    release.clear()


@pytest.fixture
def side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "side_effects.txt"
    monkeypatch.setenv("SIDE_EFFECTS", str(path))
    return path


def lines(path: Path) -> Counter[str]:
    """How often each step ran (its label, the second field of each line)."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines())


@pytest.fixture
def worker(db_url: str) -> Iterator[tether.Worker]:
    """A worker in a thread of this process, in a process that runs nothing itself."""
    tether.configure(executor=False)
    running = tether.Worker(concurrency=4, poll=0.01)
    thread = threading.Thread(target=running.run, kwargs={"grace": 5})
    thread.start()
    try:
        yield running
    finally:
        running.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()


def status_is(handle: tether.Handle[Any], status: Status) -> bool:
    return handle.status() is status


def children_of(client: tether.Client, execution_id: str) -> list[tether.ExecutionRecord]:
    return [r for r in client.list(limit=100) if r.parent_id == execution_id]


# --- deadlines in real time -------------------------------------------------------------------


def test_a_flow_waiting_for_input_ends_timed_out_at_its_deadline_with_its_child(
    client: tether.Client, side_effects: Path
) -> None:
    handle = flows.approval.run("report")
    retry_until(lambda: status_is(handle, Status.WAITING), what="the flow to wait")
    record = client.get(handle.id)
    assert record.deadline is not None
    with pytest.raises(tether.ExecutionTimedOut, match="deadline") as raised:
        handle.result(timeout=30)
    assert isinstance(raised.value, tether.ExecutionCancelled)
    row = client.get(handle.id)
    assert row.status is Status.CANCELLED
    assert row.finished_at is not None and row.finished_at >= record.deadline
    assert row.error is not None and row.error.type.endswith("ExecutionTimedOut")
    (child,) = children_of(client, handle.id)
    assert child.status is Status.CANCELLED
    assert [w.status for w in client.get(handle.id).waits] == ["cancelled"]
    assert lines(side_effects) == Counter({"step-report": 1, "step-report-child": 1})


def test_gathered_children_are_cancelled_with_a_parent_past_its_deadline(
    client: tether.Client,
) -> None:
    handle = flows.gathered.run("plan")
    with pytest.raises(tether.ExecutionTimedOut):
        handle.result(timeout=30)
    kids = children_of(client, handle.id)
    assert len(kids) == 2
    assert {k.status for k in kids} == {Status.CANCELLED}
    # Cancelled with their parent, not timed out themselves: they have no deadline.
    assert all(k.deadline is None for k in kids)


def test_a_parked_execution_nobody_holds_is_ended_by_a_worker(
    client: tether.Client, worker: tether.Worker
) -> None:
    handle = flows.waits_for_input.options(deadline=1.5).enqueue("parked")
    retry_until(lambda: status_is(handle, Status.WAITING), what="the worker to park it")
    record = client.get(handle.id)
    assert record.owner is None and record.deadline is not None  # nobody holds it
    assert record.started_at is not None
    assert record.deadline >= record.started_at + dt.timedelta(seconds=1.5)
    with pytest.raises(tether.ExecutionTimedOut):
        handle.result(timeout=30)
    assert client.get(handle.id).finished_at >= record.deadline  # type: ignore[operator]


def test_a_killed_applications_waiting_execution_is_ended_by_a_tether_worker(
    db_url: str, client: tether.Client
) -> None:
    app = spawn_child(
        "import threading, deadline_flows as f\n"
        "print(f.waits_for_input.options(deadline=4).run('orphan').id, flush=True)\n"
        "threading.Event().wait()\n",
        db_url,
    )
    try:
        assert app.stdout is not None
        execution_id = app.stdout.readline().strip()
        handle = client.handle(execution_id)
        retry_until(lambda: status_is(handle, Status.WAITING), what="the flow to wait")
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait(timeout=30)
    # Its process is gone before its deadline: nothing holds or parks it any more.
    assert handle.status() is Status.WAITING
    worker = spawn_python(
        ["-m", "tether", "worker", "--concurrency", "2", "--import", "deadline_flows"], db_url
    )
    try:
        with pytest.raises(tether.ExecutionTimedOut):
            handle.result(timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    record = client.get(execution_id)
    assert record.deadline is not None and record.finished_at is not None
    assert record.finished_at >= record.deadline


def test_a_deadline_at_an_absolute_time(client: tether.Client) -> None:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    handle = flows.waits_for_input.options(deadline=at).run("absolute")
    deadline = client.get(handle.id).deadline
    assert deadline is not None and abs((deadline - at).total_seconds()) < 0.001
    with pytest.raises(tether.ExecutionTimedOut):
        handle.result(timeout=30)


# --- deadlines on the injected clock ----------------------------------------------------------


@tether.flow(deadline=30)
def short_wait_inside() -> str:
    return str(tether.wait("answer", schema=str, timeout=5, default="no answer"))


@tether.flow(deadline=2)
def long_wait_inside() -> str:
    return str(tether.wait("answer", schema=str, timeout=60, default="no answer"))


def test_a_shorter_wait_timeout_inside_a_deadline_fires_first(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = short_wait_inside.run()
    retry_until(lambda: status_is(handle, Status.WAITING), what="the flow to wait")
    clock.advance(6)
    assert handle.result(timeout=30) == "no answer"


def test_a_deadline_shorter_than_a_wait_timeout_ends_the_flow(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = long_wait_inside.run()
    retry_until(lambda: status_is(handle, Status.WAITING), what="the flow to wait")
    record = client.get(handle.id)
    assert record.waits[0].deadline is not None and record.deadline is not None
    assert record.deadline < record.waits[0].deadline
    clock.advance(3)
    with pytest.raises(tether.ExecutionTimedOut):
        handle.result(timeout=30)


@tether.checkpoint
def counted(label: str) -> str:
    ran[label] += 1
    return label


@tether.checkpoint
def hold() -> str:
    ran["hold"] += 1
    held.set()
    release.wait(30)
    return "held"


@tether.flow(deadline=10)
def busy() -> str:
    counted("before")
    hold()
    return counted("after")


def test_a_running_flow_past_its_deadline_stops_at_its_next_checkpoint(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = busy.run()
    retry_until(held.is_set, what="the flow to be in its checkpoint")
    clock.advance(11)
    release.set()
    with pytest.raises(tether.ExecutionTimedOut):
        handle.result(timeout=30)
    # The call in flight finished and was recorded; the next one never started.
    assert ran == Counter({"before": 1, "hold": 1})
    assert [c.name for c in client.get(handle.id).checkpoints][-1].endswith("hold")


@tether.flow(deadline=5)
def waiting_child() -> str:
    return str(tether.wait("answer", schema=str))


@tether.flow
def awaits_a_child_with_a_deadline() -> str:
    try:
        return waiting_child()
    except tether.ExecutionTimedOut as exc:
        return f"timed out: {type(exc).__name__}"


def test_a_parent_awaiting_a_timed_out_child_gets_execution_timed_out(
    client: tether.Client, clock: FakeClock
) -> None:
    handle = awaits_a_child_with_a_deadline.run()
    retry_until(lambda: status_is(handle, Status.WAITING), what="the parent to wait")
    (child,) = retry_until(lambda: children_of(client, handle.id), what="the child")
    retry_until(lambda: client.get(child.id).status is Status.WAITING, what="the child to wait")
    clock.advance(6)
    assert handle.result(timeout=30) == "timed out: ExecutionTimedOut"
    assert client.get(handle.id).status is Status.SUCCEEDED


# --- delayed starts ---------------------------------------------------------------------------


def test_a_delayed_enqueue_runs_no_earlier_than_its_time(
    client: tether.Client, worker: tether.Worker
) -> None:
    handle = flows.delayed.options(delay=1.0).enqueue("later")
    record = client.get(handle.id)
    assert record.status is Status.QUEUED and record.not_before is not None
    assert handle.result(timeout=30) == "later"
    started = client.get(handle.id).started_at
    assert started is not None and started >= record.not_before


def test_a_delayed_run_is_started_by_this_process_at_its_time(client: tether.Client) -> None:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    handle = flows.delayed.options(not_before=at).run("here")
    assert handle.status() is Status.QUEUED
    assert handle.result(timeout=30) == "here"
    started = client.get(handle.id).started_at
    assert started is not None and started >= at


def test_a_delayed_run_async_is_started_by_this_process_at_its_time(
    client: tether.Client,
) -> None:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    async def start() -> tether.Handle[str]:
        return await flows.delayed.options(not_before=at).run_async("here, async")

    handle = asyncio.run(start())
    assert handle.status() is Status.QUEUED
    assert handle.result(timeout=30) == "here, async"
    started = client.get(handle.id).started_at
    assert started is not None and started >= at


def test_a_delayed_execution_survives_the_process_that_started_it(
    db_url: str, client: tether.Client, side_effects: Path
) -> None:
    started = run_child(
        "import deadline_flows as f\nprint(f.delayed.options(delay=1.5).run('restart').id)\n",
        db_url,
    )
    assert started.returncode == 0, started.stderr
    execution_id = started.stdout.split()[-1]
    assert lines(side_effects) == Counter()  # the process exited before its time
    record = client.get(execution_id)
    assert record.status is Status.QUEUED and record.not_before is not None
    tether.configure(executor=False)
    running = tether.Worker(concurrency=2, poll=0.01)
    thread = threading.Thread(target=running.run, kwargs={"grace": 5})
    thread.start()
    try:
        assert client.handle(execution_id).result(timeout=30) == "restart"
    finally:
        running.stop()
        thread.join(timeout=20)
    row = client.get(execution_id)
    assert row.started_at is not None and row.started_at >= record.not_before
    assert lines(side_effects) == Counter({"step-restart": 1})


# --- bad values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"delay": -1}, "negative"),
        ({"delay": "soon"}, "number of seconds"),
        ({"delay": 1, "not_before": dt.datetime.now(dt.UTC)}, "not both"),
        ({"not_before": dt.datetime(2030, 1, 1)}, "time zone"),
        ({"deadline": dt.datetime(2030, 1, 1)}, "time zone"),
        ({"deadline": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)}, "already past"),
        ({"deadline": 0}, "before it starts"),
        ({"deadline": -5}, "negative"),
    ],
)
def test_bad_times_are_refused_with_what_to_do(
    client: tether.Client, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(tether.UsageError, match=match):
        flows.delayed.options(**options).enqueue("bad")
    assert client.list() == []


def test_a_flow_deadline_is_a_duration() -> None:
    with pytest.raises(tether.UsageError, match="duration"):
        tether.flow(deadline=dt.datetime.now(dt.UTC))(counted)  # type: ignore[arg-type]


# --- what the CLI shows -----------------------------------------------------------------------


def test_executions_list_and_get_show_deadlines_and_delayed_starts(
    client: tether.Client, db_url: str
) -> None:
    from typer.testing import CliRunner

    from tether.cli import app

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, list(args), env={"TETHER_DB": db_url, "COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.stdout

    later = flows.delayed.options(delay=3600, deadline=60).enqueue("later")
    at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    fixed = flows.delayed.options(deadline=at).enqueue("fixed")
    table = cli("executions", "list").splitlines()
    assert "deadline" in table[0].split()
    (later_line,) = [line for line in table if line.startswith(later.id)]
    assert "starts at" in later_line and "after it starts" in later_line
    (fixed_line,) = [line for line in table if line.startswith(fixed.id)]
    assert at.astimezone().strftime("%H:%M:%S") in fixed_line
    shown = cli("executions", "get", later.id)
    assert "not before" in shown and "after it starts" in shown
    listed = {r["id"]: r for r in json.loads(cli("executions", "list", "--json"))}
    assert listed[later.id]["not_before"] is not None
    assert listed[later.id]["deadline_after"] == 60
    assert listed[fixed.id]["deadline"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))
