"""`send`: input that arrives before the flow reaches its wait (a webhook that answers fast).

Across real processes: the flow runs a slow step in one process while the value is sent from
another, with and without a SIGKILL in between; and in one process for the refusals.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import retry_until, run_child, run_cli, spawn_python
from tether import Status

RUN_FLOW = """
import json, sys
import message_flows
flow = getattr(message_flows, sys.argv[1])
handle = flow.run(json.loads(sys.argv[2]))
print(handle.id, flush=True)
print(json.dumps(handle.result(timeout=60)), flush=True)
"""


def side_effects(path: Path) -> Counter[str]:
    """How often each step really ran (labels from $SIDE_EFFECTS)."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines())


def start_flow(
    db_url: str, tmp_path: Path, flow: str, arg: Any
) -> tuple[subprocess.Popen[str], str]:
    """Run `message_flows.<flow>(arg)` in a new process, held in its slow steps until the
    gate file exists; returns the process and the execution id."""
    proc = spawn_python(
        ["-c", RUN_FLOW, flow, json.dumps(arg)],
        db_url,
        GATE_FILE=str(tmp_path / "gate"),
        SIDE_EFFECTS=str(tmp_path / "effects"),
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def slow_started(tmp_path: Path, *labels: str) -> None:
    retry_until(
        lambda: all(side_effects(tmp_path / "effects")[f"slow-{x}"] for x in labels),
        what=f"slow steps {labels} to start",
    )


def suspensions(client: tether.Client, execution_id: str) -> int:
    return sum(1 for e in client.events(execution_id) if e.kind == "suspend")


def test_a_value_sent_before_the_wait_is_taken_when_the_flow_gets_there(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    proc, execution_id = start_flow(db_url, tmp_path, "pay_flow", "order-1")
    try:
        slow_started(tmp_path, "order-1")
        sent = client.send(execution_id, "paid", 1200, by="psp")
        assert sent.status == "sent", "the flow is still in its slow step: the value is kept"
        record = client.get(execution_id)
        assert [(m.name, m.value) for m in record.undelivered_messages] == [("paid", 1200)]
        assert record.waits == ()
        (tmp_path / "gate").touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1]) == "order-1 paid 1200"
    record = client.get(execution_id)
    (wait,) = record.waits
    assert (wait.status, wait.value, wait.resolved_by) == ("resolved", 1200, "psp")
    assert [m.status for m in record.messages] == ["delivered"]
    assert suspensions(client, execution_id) == 0, "the value was there: nothing suspended"
    assert side_effects(tmp_path / "effects") == Counter({"slow-order-1": 1, "finish-order-1": 1})


def test_a_sent_value_survives_a_sigkill_before_the_wait(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    proc, execution_id = start_flow(db_url, tmp_path, "pay_flow", "order-2")
    slow_started(tmp_path, "order-2")
    # Sent from yet another process, by the CLI, while the flow is in its slow step.
    sent = run_cli(db_url, "executions", "send", execution_id, "paid", "--value", "42")
    assert sent.returncode == 0, sent.stderr
    assert "delivered when the flow reaches that wait" in sent.stdout
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert client.get(execution_id).status is Status.RUNNING
    (tmp_path / "gate").touch()
    resumed = run_child(
        "import sys, json, tether, message_flows\n"
        "print(json.dumps(tether.Client().resume(sys.argv[1]).result(timeout=60)))",
        db_url,
        execution_id,
        SIDE_EFFECTS=str(tmp_path / "effects"),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1]) == "order-2 paid 42"
    record = client.get(execution_id)
    assert [(m.status, m.value) for m in record.messages] == [("delivered", 42)]
    assert suspensions(client, execution_id) == 0
    # The slow step was in flight at the kill (it ran again); the rest ran once.
    assert side_effects(tmp_path / "effects") == Counter({"slow-order-2": 2, "finish-order-2": 1})


def test_gathered_branches_each_take_their_own_early_value(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    proc, execution_id = start_flow(db_url, tmp_path, "gathered_pay_flow", ["a", "b"])
    try:
        slow_started(tmp_path, "a", "b")
        client.send(execution_id, "paid-b", 2)
        client.send(execution_id, "paid-a", 1)
        (tmp_path / "gate").touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1]) == ["a paid 1", "b paid 2"]
    record = client.get(execution_id)
    assert sorted((w.name, w.value) for w in record.waits) == [("paid-a", 1), ("paid-b", 2)]
    assert suspensions(client, execution_id) == 0
    assert side_effects(tmp_path / "effects") == Counter(
        {"slow-a": 1, "slow-b": 1, "finish-a": 1, "finish-b": 1}
    )


# --- in one process -----------------------------------------------------------------------------

gate = threading.Event()


@pytest.fixture(autouse=True)
def _closed_gate() -> None:
    gate.clear()


@tether.checkpoint
def held() -> None:
    assert gate.wait(timeout=30)


@tether.checkpoint
def charge(amount: int) -> str:
    return f"charged {amount}"


@tether.flow
def gated(order: str) -> str:
    held()
    amount = tether.wait("paid", schema=int)
    return charge(amount)


@tether.flow
def two_waits() -> str:
    first = tether.wait("first", schema=str)
    return f"{first} {tether.wait('second', schema=str)}"


def waiting(client: tether.Client, execution_id: str) -> None:
    retry_until(
        lambda: client.summary(execution_id).status is Status.WAITING, what="the flow to wait"
    )


def test_an_early_value_that_fails_the_schema_is_rejected_and_the_wait_stays_pending(
    client: tether.Client,
) -> None:
    handle = gated.run("x")
    client.send(handle.id, "paid", "twelve")
    gate.set()
    waiting(client, handle.id)
    record = client.get(handle.id)
    (message,) = record.messages
    assert (message.status, message.value) == ("rejected", "twelve")
    assert message.error is not None and "integer" in message.error
    assert [w.name for w in record.pending_waits] == ["paid"]
    assert any("rejected" in w for w in record.warnings)
    shown = views_of(client, handle.id)
    assert shown["messages"][0]["status"] == "rejected"
    with pytest.raises(tether.InputValidationError):
        client.send(handle.id, "paid", "still not a number")  # pending now: checked at once
    client.input(handle.id, "paid", 12)
    assert handle.result(timeout=10) == "charged 12"


def views_of(client: tether.Client, execution_id: str) -> dict[str, Any]:
    from tether._ops import views

    return views.execution_json(client.get(execution_id), full=True)


def test_a_second_send_before_delivery_is_refused(client: tether.Client) -> None:
    handle = gated.run("x")
    client.send(handle.id, "paid", 1)
    with pytest.raises(tether.MessageAlreadySent, match="one message per wait"):
        client.send(handle.id, "paid", 2)
    with pytest.raises(tether.WaitNotFound, match="a value sent to it is kept"):
        client.input(handle.id, "paid", 2)
    with pytest.raises(tether.UsageError, match="child flow"):
        client.send(handle.id, "child:x", 2)
    with pytest.raises(tether.ExecutionNotFound):
        client.send("no-such-execution", "paid", 2)
    gate.set()
    assert handle.result(timeout=10) == "charged 1"
    with pytest.raises(tether.InvalidStateError, match="no more messages"):
        client.send(handle.id, "paid", 3)


def test_input_to_a_wait_not_reached_yet_is_still_not_found_and_mentions_send(
    client: tether.Client,
) -> None:
    handle = gated.run("x")
    with pytest.raises(tether.WaitNotFound, match="send"):
        client.input(handle.id, "paid", 1)
    assert client.get(handle.id).messages == ()
    gate.set()
    waiting(client, handle.id)
    client.input(handle.id, "paid", 5)
    assert handle.result(timeout=10) == "charged 5"


def test_send_to_a_pending_wait_gives_it_at_once_and_then_is_already_resolved(
    client: tether.Client,
) -> None:
    handle = two_waits.run()
    waiting(client, handle.id)
    sent = client.send(handle.id, "first", "hello", by="me")
    assert sent.status == "delivered"
    # Sent while the execution waits for "first" (or runs again): kept for "second".
    assert client.send(handle.id, "second", "world").status in ("sent", "delivered")
    assert handle.result(timeout=10) == "hello world"
    record = client.get(handle.id)
    assert [(w.name, w.resolved_by) for w in record.waits] == [("first", "me"), ("second", None)]
    with pytest.raises(tether.InvalidStateError):
        client.send(handle.id, "first", "again")


def test_send_to_a_resolved_wait_is_refused(client: tether.Client) -> None:
    handle = two_waits.run()
    waiting(client, handle.id)
    client.input(handle.id, "first", "a")
    retry_until(
        lambda: [w.name for w in client.get(handle.id).pending_waits] == ["second"],
        what="the second wait",
    )
    with pytest.raises(tether.WaitAlreadyResolved):
        client.send(handle.id, "first", "b")
    client.cancel(handle.id)
    with pytest.raises(tether.InvalidStateError, match="cancelled"):
        client.send(handle.id, "second", "c")


def race_send_and_input(client: tether.Client, execution_id: str) -> tuple[list[str], int]:
    """A send and an input to the pending wait "first", released together: who won, and how
    many were refused as WaitAlreadyResolved."""
    barrier = threading.Barrier(2)
    won: list[str] = []
    lost: list[BaseException] = []

    def give(how: str) -> None:
        barrier.wait()
        try:
            if how == "send":
                client.send(execution_id, "first", how)
            else:
                client.input(execution_id, "first", how)
            won.append(how)
        except tether.WaitAlreadyResolved as exc:
            lost.append(exc)

    threads = [threading.Thread(target=give, args=(how,)) for how in ("send", "input")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, len(lost)


def test_of_a_concurrent_send_and_input_exactly_one_wins(client: tether.Client) -> None:
    for _ in range(5):
        handle = two_waits.run()
        waiting(client, handle.id)
        won, lost = race_send_and_input(client, handle.id)
        assert len(won) == 1 and lost == 1, (won, lost)
        (first,) = [w for w in client.get(handle.id).waits if w.name == "first"]
        assert first.value == won[0]
        client.cancel(handle.id)


def test_cli_send_reads_the_value_from_a_file_and_get_shows_it(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    handle = gated.run("x")
    (tmp_path / "v.json").write_text("77")
    sent = run_cli(
        db_url, "executions", "send", handle.id, "paid", "--value", f"@{tmp_path / 'v.json'}"
    )
    assert sent.returncode == 0, sent.stderr
    shown = run_cli(db_url, "executions", "get", handle.id)
    assert "Messages" in shown.stdout and "not delivered yet" in shown.stdout
    again = run_cli(db_url, "executions", "send", handle.id, "paid", "--value", "1")
    assert again.returncode == 1 and "one message per wait" in again.stderr
    gate.set()
    assert handle.result(timeout=10) == "charged 77"
