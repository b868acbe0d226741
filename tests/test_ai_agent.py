"""tether.ai.durable(agent): Pydantic AI agents whose model requests and tool calls are
checkpoints. Offline only: the models are scripted `FunctionModel`s (see ai_flows.py)."""

from __future__ import annotations

import json
import signal
import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage

import ai_flows
import tether
import tether.ai
from helpers import retry_until, run_child
from tether import Status

EXPECTED = (
    "REPORT: summary of (page 1 + page 2 + ['crash recovery result 0', 'crash recovery result 1'])"
)
NAMES = [
    "agent_run",
    "model_request",
    "tool:search",
    "model_request",
    "tool:fetch",  # the turn with three calls at once: positions in the model's order
    "tool:fetch",
    "tool:search",
    "model_request",
    "tool:summarize",
    "model_request",
]
START = textwrap.dedent(
    """
    import ai_flows
    handle = ai_flows.research.run("durability")
    print(handle.id, flush=True)
    print(repr(handle.result(timeout=60)), flush=True)
    """
)
RESUME = textwrap.dedent(
    """
    import sys, tether, ai_flows  # runs the flows it loaded
    print(repr(tether.Client().resume(sys.argv[1]).result(timeout=60)), flush=True)
    """
)
GIVE_INPUT = textwrap.dedent(
    """
    import json, sys, tether
    tether.Client().input(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), by="test")
    """
)


def _calls(log: Path) -> list[tuple[str | None, str]]:
    """(position, label) of every model request and tool call that really ran."""
    if not log.exists():
        return []
    calls: list[tuple[str | None, str]] = []
    for line in log.read_text().splitlines():
        position, label = line.split(" ", 1)
        calls.append((None if position == "None" else position, label))
    return calls


def numbered(names: Sequence[str]) -> list[tuple[str, str]]:
    """(position, name) of calls the flow body makes one after another: "0", "1", ..."""
    return [(str(position), name) for position, name in enumerate(names)]


def _recorded(execution_id: str) -> list[tuple[str, str]]:
    return [(c.position, c.name) for c in tether.Client().get(execution_id).checkpoints]


# --- crash and resume ------------------------------------------------------------------


@pytest.mark.parametrize(
    "crash",
    [
        "tool:3",  # inside the second of three concurrent tool calls to start
        "model:3",  # inside a model request, after a turn of tools was recorded
        "tool:5",  # inside the last tool call
    ],
)
def test_killed_agent_resumes_without_repeating_recorded_calls(
    db_url: str, tmp_path: Path, crash: str
) -> None:
    log = tmp_path / "calls.log"
    crashed = run_child(START, db_url, AI_CALLS=str(log), AI_CRASH=crash)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    recorded_before = {c.position for c in tether.Client().get(execution.id).checkpoints}
    ran_before = _calls(log)
    assert ran_before and all(position is not None for position, _ in ran_before)

    resumed = run_child(RESUME, db_url, execution.id, AI_CALLS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == repr(EXPECTED)

    ran = _calls(log)
    ran_after = ran[len(ran_before) :]
    # No recorded model request or tool call was issued again...
    assert not [c for c in ran_after if c[0] in recorded_before], (recorded_before, ran_after)
    # ...and what ran again is only what was in flight when the process died.
    in_flight = {c for c in ran_before if c[0] not in recorded_before}
    assert in_flight, "the crash happened inside a call"
    counts = Counter(label.split(":")[0] for _, label in ran)
    uninterrupted = Counter(label.split(":")[0] for _, label in set(ran))
    assert counts["model"] == 4 + sum(1 for _, label in in_flight if label.startswith("model"))
    assert uninterrupted == {"model": 4, "tool": 5}
    assert counts["model"] + counts["tool"] == 9 + len(in_flight)

    record = tether.Client().get(execution.id)
    assert record.status is Status.SUCCEEDED
    assert [(c.position, c.name) for c in record.checkpoints] == numbered(NAMES)
    # The resumed run made every call with the arguments recorded (same run id, same prompts).
    assert [e.message for e in record.events if e.kind == "warning"] == []
    # The same result as a run that was never interrupted.
    assert ai_flows.research.run("durability").result(timeout=60) == EXPECTED


# --- names and positions ---------------------------------------------------------------


def test_checkpoints_are_named_and_ordered_deterministically(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jitter delays each tool call at random, so the three concurrent calls of turn 2 start
    in a different order from run to run; their positions do not move."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("AI_CALLS", str(log))
    runs = []
    for _ in range(6):
        handle = ai_flows.research.run("durability")
        assert handle.result(timeout=60) == EXPECTED
        runs.append(tether.Client().get(handle.id).checkpoints)
    for checkpoints in runs:
        assert [(c.position, c.name) for c in checkpoints] == numbered(NAMES)
        # Each position holds the result of the call the model made in that place.
        results = {c.position: c.result for c in checkpoints}
        assert results["4"] == {"result": "page 1", "kind": "tool_return"}
        assert results["5"] == {"result": "page 2", "kind": "tool_return"}
        assert results["6"]["result"] == ["crash recovery result 0", "crash recovery result 1"]
        assert all(c.status == "succeeded" for c in checkpoints)
    # The order the concurrent calls actually started in did vary.
    labels = [label for _, label in _calls(log)]
    starts = {tuple(labels[i * 9 + 3 : i * 9 + 6]) for i in range(6)}
    assert len(starts) > 1, starts


@pytest.mark.parametrize("flow", ["research_sync", "research_streamed", "research_iter"])
def test_run_sync_iter_and_run_stream_record_the_same_calls(db_url: str, flow: str) -> None:
    handle = getattr(ai_flows, flow).run("durability")
    assert handle.result(timeout=60) == EXPECTED
    names = NAMES
    if flow == "research_streamed":
        names = [n.replace("model_request", "model_request_stream") for n in NAMES]
    assert _recorded(handle.id) == numbered(names)


def test_tools_of_a_prefixed_toolset_are_named_as_the_model_calls_them(db_url: str) -> None:
    handle = ai_flows.mirror_calls.run("mirror")
    assert handle.result(timeout=30) == "got 0 put 1"
    assert _recorded(handle.id) == [
        ("0", "agent_run"),
        ("1", "model_request"),
        ("2", "tool:web_get"),
        ("3", "tool:web_put"),
        ("4", "model_request"),
    ]


def test_recorded_results_are_plain_json(db_url: str) -> None:
    handle = ai_flows.research.run("durability")
    handle.result(timeout=60)
    checkpoints = tether.Client().get(handle.id).checkpoints
    response = checkpoints[1].result
    assert response["parts"][0]["part_kind"] == "tool-call"
    assert response["parts"][0]["tool_name"] == "search"
    json.dumps([c.result for c in checkpoints])  # nothing pickled, nothing tagged


# --- outside a flow --------------------------------------------------------------------


def _shape(messages: list[ModelMessage]) -> list[Any]:
    """Messages without what differs on every run: wall-clock fields and ids, dropped by name.

    Newer Pydantic AI releases add wall-clock fields (2.78: `request_timestamp`, `duration`);
    they are listed here by name so a comparison never depends on how fast a run was.
    """
    volatile = {
        "timestamp",
        "request_timestamp",
        "duration",
        "run_id",
        "conversation_id",
        "tool_call_id",
    }

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    from pydantic_ai.messages import ModelMessagesTypeAdapter

    return [strip(m) for m in ModelMessagesTypeAdapter.dump_python(messages, mode="json")]


def test_outside_a_flow_it_behaves_like_the_plain_agent(db_url: str, tmp_path: Path) -> None:
    plain = ai_flows.research_agent.run_sync("Research durability")
    durable = ai_flows.durable_research.run_sync("Research durability")
    assert durable.output == plain.output == EXPECTED
    assert _shape(durable.all_messages()) == _shape(plain.all_messages())
    assert tether.Client().list() == []  # nothing recorded anywhere


async def test_outside_a_flow_run_and_iter_work_too(db_url: str) -> None:
    result = await ai_flows.durable_research.run("Research durability")
    assert result.output == EXPECTED
    async with ai_flows.durable_research.iter("Research durability") as run:
        nodes = [type(node).__name__ async for node in run]
    assert run.result is not None and run.result.output == EXPECTED
    assert nodes[-1] == "End"
    assert tether.Client().list() == []


def test_inside_a_checkpoint_the_agent_runs_inline(db_url: str) -> None:
    handle = ai_flows.research_as_one_step.run("durability")
    assert handle.result(timeout=60) == EXPECTED
    assert _recorded(handle.id) == [("0", "research_in_one_step")]


def test_an_agent_built_with_the_capability_needs_no_wrapper(db_url: str) -> None:
    agent = ai_flows.oracle
    assert tether.ai.durable(agent).durability is tether.ai.TetherDurability.from_agent(agent)
    with pytest.raises(tether.UsageError, match="already"):
        tether.ai.durable(agent, tether.ai.TetherDurability())
    durable = ai_flows.durable_research
    assert tether.ai.durable(durable) is durable
    with pytest.raises(tether.UsageError, match="durable already"):
        tether.ai.durable(durable, tether.ai.TetherDurability())
    with pytest.raises(tether.UsageError, match="unknown checkpoint options"):
        tether.ai.TetherDurability(tool_checkpoint={"retry": 3})  # type: ignore[typeddict-unknown-key]
    handle = ai_flows.ask_oracle.run("?")
    assert handle.result(timeout=30) == "42"
    assert _recorded(handle.id) == [("0", "agent_run"), ("1", "model_request")]


# --- human in the loop -----------------------------------------------------------------


@pytest.mark.parametrize("approve", [True, False])
def test_approval_suspends_the_flow_until_input_arrives_from_another_process(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, approve: bool
) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("AI_CALLS", str(log))
    client = tether.Client()
    handle = ai_flows.clean_up.run("/data")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to wait")

    (wait,) = client.pending_waits()
    assert wait.execution_id == handle.id
    assert wait.name.startswith("approve:")
    assert wait.question == {
        "kind": "approval",
        "tool": "delete_file",
        "args": {"path": "/data/old.csv"},
        "tool_call_id": wait.name.removeprefix("approve:"),
    }
    # The tool that needed no approval ran; the one that did did not.
    assert [label for _, label in _calls(log)] == ["model:1", "tool:list_files:/data"]

    given = run_child(GIVE_INPUT, db_url, handle.id, wait.name, json.dumps(approve))
    assert given.returncode == 0, given.stderr
    output = handle.result(timeout=30)

    listing = "['/data/old.csv', '/data/new.csv']"
    labels = [label for _, label in _calls(log)]
    if approve:
        assert output == f"deleted /data/old.csv | {listing}"
        assert labels == [
            "model:1",
            "tool:list_files:/data",
            "tool:delete_file:/data/old.csv",
            "model:2",
        ]
    else:
        assert output == f"The tool call was denied. | {listing}"
        assert labels == ["model:1", "tool:list_files:/data", "model:2"]
    record = client.get(handle.id)
    assert record.status is Status.SUCCEEDED
    assert [e.message for e in record.events if e.kind == "warning"] == []
    (resolved,) = record.waits
    assert resolved.status == "resolved" and resolved.resolved_by == "test"


def test_a_tool_that_raises_approval_required_runs_once_approved(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("AI_CALLS", str(log))
    client = tether.Client()
    handle = ai_flows.pay.run("pay the invoices")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to wait")
    (wait,) = client.pending_waits()
    assert wait.question is not None
    assert wait.question["args"] == {"amount": 5000}
    assert wait.question["metadata"] == {"reason": "large transfer"}

    client.input(handle.id, wait.name, {"approved": True, "override_args": {"amount": 4000}})
    assert handle.result(timeout=30) == "sent 50 | sent 4000"
    assert [label for _, label in _calls(log) if label.startswith("tool")] == [
        "tool:transfer:50",
        "tool:transfer:4000",
    ]
    names = [name for _, name in _recorded(handle.id)]
    assert names == ["agent_run", "model_request", "tool:transfer", "tool:transfer",
                     "tool:transfer", "model_request"]  # fmt: skip


def test_a_denial_can_tell_the_model_why(db_url: str) -> None:
    client = tether.Client()
    handle = ai_flows.pay.run("pay the invoices")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to wait")
    client.input(handle.id, value={"approved": False, "message": "Over budget"})
    assert handle.result(timeout=30) == "sent 50 | Over budget"


def test_an_approval_that_does_not_come_in_time_is_a_denial(db_url: str) -> None:
    handle = ai_flows.clean_up_now.run("/data")
    output = handle.result(timeout=30)
    assert output.startswith("The tool call was not approved within 0s. | ")
    (wait,) = tether.Client().get(handle.id).waits
    assert wait.status == "timed_out"


def test_bad_approval_input_is_refused_and_changes_nothing(db_url: str) -> None:
    client = tether.Client()
    handle = ai_flows.pay.run("pay the invoices")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to wait")
    with pytest.raises(tether.InputValidationError):
        client.input(handle.id, value="yes please")
    assert client.get(handle.id).status is Status.WAITING
    client.cancel(handle.id)


def test_an_external_call_waits_for_its_result(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("AI_CALLS", str(log))
    monkeypatch.setenv("AI_FLAKY", "1")
    client = tether.Client()
    handle = ai_flows.run_errands.run("errands")
    retry_until(lambda: client.get(handle.id).status is Status.WAITING, what="the flow to wait")
    (wait,) = client.pending_waits()
    assert wait.name.startswith("result:")
    assert wait.question == {
        "kind": "external",
        "tool": "ask_accountant",
        "args": {"question": "Can we afford it?"},
        "tool_call_id": wait.name.removeprefix("result:"),
        "metadata": {"team": "finance"},
    }
    client.input(handle.id, wait.name, {"answer": "yes", "budget": 1200})
    assert handle.result(timeout=30) == "value of k | noon | {'answer': 'yes', 'budget': 1200}"

    labels = [label for _, label in _calls(log)]
    # The flaky tool was retried inside its checkpoint, twice, and never again after that.
    assert labels.count("tool:flaky_lookup") == 3
    # The tool opted out of recording runs again when the flow resumes after the input.
    assert labels.count("tool:clock") == 2
    assert _recorded(handle.id) == [
        ("0", "agent_run"),
        ("1", "model_request"),
        ("2", "tool:flaky_lookup"),
        ("3", "tool:ask_accountant"),  # it deferred itself: that outcome is recorded too
        ("5", "model_request"),  # position 4 is the wait
    ]
    assert wait.position == "4"
    (lookup,) = [c for c in client.get(handle.id).checkpoints if c.name == "tool:flaky_lookup"]
    assert [a.error is not None for a in lookup.attempts] == [True, True, False]


def test_a_control_signal_is_unwrapped_from_an_exception_group() -> None:
    from tether.ai._agent import _first_signal
    from tether.errors import Suspended

    signal_ = Suspended("exec", "approve:1", None)
    group = BaseExceptionGroup("run", [ValueError("x"), BaseExceptionGroup("inner", [signal_])])
    assert _first_signal(group) is signal_
    assert _first_signal(ExceptionGroup("run", [ValueError("x")])) is None
