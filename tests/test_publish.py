"""`tether.publish`: values a flow shows while it runs, read with `Client.get_published`.

Across real processes: read mid-run from another process, and not published twice across a
SIGKILL and a resume elsewhere; in one process: the latest value wins, and the errors.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

import tether
from helpers import retry_until, run_child, run_cli
from test_send import side_effects, slow_started, start_flow
from tether import Status


def publish_calls(client: tether.Client, execution_id: str, key: str) -> list[Any]:
    return [
        (cp.position, cp.finished_at, len(cp.attempts))
        for cp in client.get(execution_id).checkpoints
        if cp.name == f"publish:{key}"
    ]


def test_a_published_value_is_read_from_another_process_mid_run(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    proc, execution_id = start_flow(db_url, tmp_path, "progress_flow", 2)
    try:
        plan = client.get_published(execution_id, "plan", timeout=30)
        assert plan == ["step-0", "step-1"]
        slow_started(tmp_path, "step-0")
        # Mid-run: the plan is out, the first step holds at the gate, no progress yet.
        assert client.summary(execution_id).status is Status.RUNNING
        with pytest.raises(tether.ResultTimeout, match="still running"):
            client.get_published(execution_id, "progress", timeout=0)
        shown = run_cli(db_url, "executions", "get", execution_id, "--json")
        assert json.loads(shown.stdout)["published"] == {"plan": ["step-0", "step-1"]}
        (tmp_path / "gate").touch()
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert client.get_published(execution_id, "progress") == 2, "the latest value wins"
    assert client.get(execution_id).published == {"plan": ["step-0", "step-1"], "progress": 2}
    shown = run_cli(db_url, "executions", "get", execution_id)
    assert "Published" in shown.stdout and "progress" in shown.stdout
    with pytest.raises(tether.NotPublished):
        client.get_published(execution_id, "never")


def test_a_value_is_not_published_twice_across_a_sigkill_and_resume(
    db_url: str, client: tether.Client, tmp_path: Path
) -> None:
    proc, execution_id = start_flow(db_url, tmp_path, "progress_flow", 2)
    slow_started(tmp_path, "step-0")
    before = publish_calls(client, execution_id, "plan")
    assert len(before) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert client.get_published(execution_id, "plan", timeout=0) == ["step-0", "step-1"]
    (tmp_path / "gate").touch()
    resumed = run_child(
        "import sys, tether, message_flows\n"
        "print(tether.Client().resume(sys.argv[1]).result(timeout=60))",
        db_url,
        execution_id,
        SIDE_EFFECTS=str(tmp_path / "effects"),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert publish_calls(client, execution_id, "plan") == before, "replayed, not published again"
    assert [p for p, _, n in publish_calls(client, execution_id, "progress")] == ["2", "4"]
    assert client.get_published(execution_id, "progress") == 2
    effects = side_effects(tmp_path / "effects")
    assert effects == {"slow-step-0": 2, "slow-step-1": 1}, "only the step in flight ran again"


# --- in one process -----------------------------------------------------------------------------


@tether.checkpoint
def step(i: int) -> int:
    return i


@tether.flow
def counter(n: int) -> int:
    for i in range(n):
        tether.publish("count", step(i))
    tether.publish("nothing", None)
    return n


@tether.flow
async def branches() -> list[int]:
    async def one(i: int) -> int:
        await asyncio.sleep(0)
        tether.publish(f"branch-{i}", i * 10)
        return i

    return list(await asyncio.gather(one(1), one(2)))


@tether.flow
def unstorable() -> None:
    tether.publish("lock", asyncio.Lock())


@tether.checkpoint
def publishes_inside() -> None:
    tether.publish("x", 1)


@tether.flow
def misuse() -> None:
    publishes_inside()


def test_the_latest_value_per_key_wins_and_none_is_a_value(client: tether.Client) -> None:
    handle = counter.run(3)
    assert handle.result(timeout=10) == 3
    assert client.get_published(handle.id, "count") == 2
    assert client.get_published(handle.id, "nothing") is None
    assert [cp.name for cp in client.get(handle.id).checkpoints].count("publish:count") == 3


def test_gathered_branches_publish_under_their_own_keys(client: tether.Client) -> None:
    handle = branches.run()
    assert handle.result(timeout=10) == [1, 2]
    assert client.get(handle.id).published == {"branch-1": 10, "branch-2": 20}


def test_publish_mistakes_are_clear_errors(client: tether.Client) -> None:
    with pytest.raises(tether.NotInFlowError):
        tether.publish("x", 1)
    with pytest.raises(tether.ExecutionFailed, match="inside a checkpoint"):
        misuse.run().result(timeout=10)
    with pytest.raises(tether.ExecutionFailed, match="publish:lock"):
        unstorable.run().result(timeout=10)
    handle = counter.run(1)
    handle.result(timeout=10)
    with pytest.raises(tether.UsageError):
        client.get_published(handle.id, "")
    with pytest.raises(tether.ExecutionNotFound):
        client.get_published("no-such-execution", "count")


@tether.flow
def late() -> None:
    tether.wait("go")
    tether.publish("answer", 42)


def test_get_published_waits_for_a_value(client: tether.Client) -> None:
    handle = late.run()
    retry_until(lambda: handle.status() is Status.WAITING, what="the flow to wait")
    with pytest.raises(tether.ResultTimeout, match="waiting"):
        client.get_published(handle.id, "answer", timeout=0.05)
    client.input(handle.id, "go", True)
    assert client.get_published(handle.id, "answer", timeout=30) == 42
