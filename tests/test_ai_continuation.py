"""Agents run in segments in one flow: the continuation pattern (a run that ends with
`DeferredToolRequests`, then a second run with the `DeferredToolResults`), and a
provider-paused turn, whose requests tether counts as Pydantic AI's `RunUsage` does."""

from __future__ import annotations

import ast
import asyncio
import signal
import textwrap
from pathlib import Path

import pytest

import ai_continuation_flows as flows
import tether
from helpers import run_child
from tether import Status

EXPECTED = (
    "['/data/a.csv', '/data/b.csv', '/data/c.csv'] | deleted /data/a.csv"
    " | deleted /data/c.csv | keep it"
)
NAMES = [
    "agent_run",  # the first run: it ends with DeferredToolRequests
    "model_request",
    "tool:list_files",
    "tool:ask_owner",  # it deferred itself: that outcome is recorded too
    "agent_run",  # the second run, on the first one's messages and the results
    "tool:delete_file",  # the approved calls, in the model's order
    "tool:delete_file",
    "model_request",
]
# What really runs in one continuation (ask_owner only defers itself).
LABELS = [
    "model:1",
    "tool:list_files:/data",
    "tool:delete_file:/data/a.csv",
    "tool:delete_file:/data/c.csv",
    "model:2",
]
START = textwrap.dedent(
    """
    import sys, ai_continuation_flows as flows
    handle = getattr(flows, sys.argv[1]).run("go")
    print(handle.id, flush=True)
    print(repr(handle.result(timeout=60)), flush=True)
    """
)
RESUME = textwrap.dedent(
    """
    import sys, tether, ai_continuation_flows  # runs the flows it loaded
    print(repr(tether.Client().resume(sys.argv[1]).result(timeout=60)), flush=True)
    """
)


def _calls(log: Path) -> list[tuple[str | None, str]]:
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        position, label = line.split(" ", 1)
        calls.append((None if position == "None" else position, label))
    return calls


def _recorded(execution_id: str) -> list[tuple[str, str]]:
    return [(c.position, c.name) for c in tether.Client().get(execution_id).checkpoints]


# --- the continuation pattern ----------------------------------------------------------


def test_outside_a_flow_the_continuation_works_as_without_tether(db_url: str) -> None:
    assert asyncio.run(flows.clean_up_in_two_runs(flows.gatekeeper)) == EXPECTED
    assert asyncio.run(flows.clean_up_in_two_runs(flows.continuing)) == EXPECTED
    assert tether.Client().list() == []


def test_both_runs_of_a_continuation_are_recorded_in_one_flow(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jitter starts the two approved deletions in a random order; their positions hold."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("AI_CALLS", str(log))
    for _ in range(4):
        handle = flows.clean_up_continued.run("go")
        assert handle.result(timeout=60) == EXPECTED
        record = tether.Client().get(handle.id)
        assert [(c.position, c.name) for c in record.checkpoints] == [
            (str(i), name) for i, name in enumerate(NAMES)
        ]
        results = {c.position: c.result for c in record.checkpoints}
        assert results["5"]["result"] == "deleted /data/a.csv"
        assert results["6"]["result"] == "deleted /data/c.csv"
        assert [e.message for e in record.events if e.kind == "warning"] == []
    labels = [label for _, label in _calls(log)]
    # Every model request and tool call ran once per flow.
    assert sorted(labels[:5]) == sorted(LABELS)
    assert len(labels) == 4 * 5


@pytest.mark.parametrize(
    "crash",
    [
        "tool:2",  # inside the first approved deletion to start, in the second run
        "tool:3",  # inside the second one
        "model:2",  # inside the second run's model request, after both deletions
    ],
)
def test_a_continuation_killed_in_its_second_run_resumes_without_repeating_calls(
    db_url: str, tmp_path: Path, crash: str
) -> None:
    log = tmp_path / "calls.log"
    crashed = run_child(START, db_url, "clean_up_continued", AI_CALLS=str(log), AI_CRASH=crash)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    recorded_before = {c.position for c in tether.Client().get(execution.id).checkpoints}
    assert {"0", "1", "2", "3", "4"} <= recorded_before  # the first run and the second's start
    ran_before = _calls(log)

    resumed = run_child(RESUME, db_url, execution.id, AI_CALLS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr(EXPECTED)

    ran_after = _calls(log)[len(ran_before) :]
    # No recorded model request or tool call was made again...
    assert not [c for c in ran_after if c[0] in recorded_before], (recorded_before, ran_after)
    # ...and what ran twice is only what was in flight when the process died.
    in_flight = {c for c in ran_before if c[0] not in recorded_before}
    assert in_flight and in_flight <= set(ran_after), (ran_before, recorded_before, ran_after)
    labels = [label for _, label in _calls(log)]
    assert len(labels) == 5 + len(in_flight)
    assert set(labels) == set(LABELS)

    record = tether.Client().get(execution.id)
    assert record.status is Status.SUCCEEDED
    assert _recorded(execution.id) == [(str(i), name) for i, name in enumerate(NAMES)]
    assert [e.message for e in record.events if e.kind == "warning"] == []


# --- a provider-paused turn: requests counted as Pydantic AI counts them ----------------


def test_a_paused_turn_counts_as_one_request_as_in_run_usage(db_url: str) -> None:
    plain = asyncio.run(flows.pauser.run("go")).usage  # outside a flow: Pydantic AI's count
    handle = flows.paused_turn.run("go")
    result = handle.result(timeout=30)
    assert result == {
        "output": "searched and done",
        "requests": plain.requests,
        "input_tokens": plain.input_tokens,
        "output_tokens": plain.output_tokens,
    }
    assert plain.requests == 1
    record = tether.Client().get(handle.id)
    assert [c.name for c in record.checkpoints] == ["agent_run", "model_request", "model_request"]
    # Both requests were billed and recorded; the pair is one request, as in RunUsage.
    first, second = (c.usage for c in record.checkpoints[1:])
    assert first is not None and (first.requests, first.input_tokens) == (1, 10)
    assert second is not None and (second.requests, second.input_tokens) == (0, 7)
    assert record.usage is not None
    assert record.usage.requests == result["requests"]
    assert (record.usage.input_tokens, record.usage.output_tokens) == (17, 8)
    assert record.usage.by_model["function:pausing_model:"].requests == 1


def test_a_paused_turn_resumed_mid_continuation_still_counts_once(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "calls.log"
    crashed = run_child(START, db_url, "paused_turn", AI_CALLS=str(log), AI_CRASH="model:2")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    resumed = run_child(RESUME, db_url, execution.id, AI_CALLS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    result = ast.literal_eval(resumed.stdout.strip())
    assert result["requests"] == 1
    assert [label for _, label in _calls(log)] == ["model:1", "model:continued", "model:continued"]
    record = tether.Client().get(execution.id)
    assert record.usage is not None
    assert (record.usage.requests, record.usage.input_tokens) == (1, 17)
