"""Durable agents gathered in one flow: each run is its own branch, so on resume no run gets
another's recorded model responses or tool results, and no finished call runs again.

The agents are the scout and the critic of gathered_agent_flows.py (scripted async
`FunctionModel`s answering from the messages they see, tools that sleep at random)."""

from __future__ import annotations

import json
import signal
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import gathered_agent_flows as flows
import tether
from helpers import run_child
from tether import Status

PLACE, TEXT, OTHER = "delta", "a short essay", "oslo"


def scout_report(place: str) -> str:
    return f"SCOUT[Scout {place}]: chart({place}-north depth {len(place) + 6}; " + (
        f"{place}-south depth {len(place) + 6})"
    )


CRITIC = "CRITIC[Critique a short essay]: [clarity=13 & rigor=11] (Doe 2024)"

# One expected call: (position, checkpoint name, the $AI_CALLS label of its body or None).
Call = tuple[str, str, str | None]


def scout_run(prefix: str, first: int, place: str) -> list[Call]:
    """The checkpoint calls of one scout run, from slot `first` of branch `prefix`."""
    calls = [
        ("agent_run", None),
        ("model_request", f"a.model:{place}:1"),
        ("tool:survey", f"a.tool:survey:{place}"),
        ("model_request", f"a.model:{place}:2"),
        ("tool:probe", f"a.tool:probe:{place}-north"),  # the model's order, not start order
        ("tool:probe", f"a.tool:probe:{place}-south"),
        ("model_request", f"a.model:{place}:3"),
        ("tool:chart", f"a.tool:chart:{place}"),
        ("model_request", f"a.model:{place}:4"),
    ]
    return [(f"{prefix}{first + i}", name, label) for i, (name, label) in enumerate(calls)]


def critic_run(prefix: str) -> list[Call]:
    calls = [
        ("agent_run", None),
        ("model_request", "b.model:1"),
        ("tool:rate", "b.tool:rate:clarity"),
        ("tool:rate", "b.tool:rate:rigor"),
        ("model_request", "b.model:2"),
        ("tool:cite", "b.tool:cite"),
        ("model_request", "b.model:3"),
    ]
    return [(f"{prefix}{i}", name, label) for i, (name, label) in enumerate(calls)]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    output: dict[str, str]
    calls: list[Call]  # in recorded (program) order
    branches: dict[str, str]  # label prefix -> the branch all its calls sit in

    @property
    def checkpoints(self) -> list[tuple[str, str]]:
        return [(position, name) for position, name, _ in self.calls]

    @property
    def logged(self) -> set[tuple[str, str]]:
        return {(position, label) for position, _, label in self.calls if label is not None}


_after = f"after {scout_report(PLACE)}"
CASES = {
    "pair": Case(
        (PLACE, TEXT),
        {"a": scout_report(PLACE), "b": CRITIC},
        scout_run("0.", 0, PLACE) + critic_run("1."),
        {"a.": "0", "b.": "1"},
    ),
    "trio": Case(
        (PLACE, TEXT, OTHER),
        {"a": scout_report(PLACE), "b": CRITIC, "c": scout_report(OTHER)},
        scout_run("0.", 0, PLACE) + critic_run("1.") + scout_run("2.", 0, OTHER),
        {
            f"a.model:{PLACE}": "0",
            f"a.tool:survey:{PLACE}": "0",
            f"a.tool:probe:{PLACE}": "0",
            f"a.tool:chart:{PLACE}": "0",
            "b.": "1",
            f"a.model:{OTHER}": "2",
            f"a.tool:survey:{OTHER}": "2",
            f"a.tool:probe:{OTHER}": "2",
            f"a.tool:chart:{OTHER}": "2",
        },
    ),
    "nested": Case(
        (PLACE, TEXT),
        {
            "a": f"noted(before {PLACE}) | {scout_report(PLACE)} | noted({_after})",
            "b": CRITIC,
            "closing": "noted(closing)",
        },
        [
            ("0.0", "note", f"step:before {PLACE}"),
            *scout_run("0.", 1, PLACE),
            ("0.10", "note", f"step:{_after}"),
            *critic_run("1."),
            ("2", "note", "step:closing"),
        ],
        {"step:before": "0", "a.": "0", "step:after": "0", "b.": "1", "step:closing": ""},
    ),
}

START = textwrap.dedent(
    """
    import json, sys
    import gathered_agent_flows as flows
    handle = getattr(flows, sys.argv[1]).run(*json.loads(sys.argv[2]))
    print(handle.id, flush=True)
    print(json.dumps(handle.result(timeout=60)), flush=True)
    """
)
RESUME = textwrap.dedent(
    """
    import json, sys, tether
    import gathered_agent_flows  # a process runs the flows it loaded
    print(json.dumps(tether.Client().resume(sys.argv[1]).result(timeout=60)), flush=True)
    """
)
RECOVER = textwrap.dedent(
    """
    import json, sys, tether
    import gathered_agent_flows  # a process runs the flows it loaded
    client = tether.Client()
    assert client.recover() == [sys.argv[1]]
    print(json.dumps(client.handle(sys.argv[1]).result(timeout=60)), flush=True)
    """
)


def _calls(log: Path) -> list[tuple[str, str]]:
    """(position, label) of every model request, tool call and step body that really ran."""
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        position, label = line.split(" ", 1)
        calls.append((position, label))
    return calls


def _branch(position: str) -> str:
    return position.rpartition(".")[0]


def _branches_by_owner(case: Case, calls: list[tuple[str, str]]) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for position, label in calls:
        (owner,) = [prefix for prefix in case.branches if label.startswith(prefix)]
        owners.setdefault(owner, set()).add(_branch(position))
    return owners


def _warnings(execution_id: str) -> list[str]:
    return [e.message for e in tether.Client().get(execution_id).events if e.kind == "warning"]


# --- uninterrupted -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_gathered_agents_record_their_calls_in_their_own_branches(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    case = CASES[name]
    flow = getattr(flows, name)
    for attempt in range(3):  # the runs interleave differently every time
        log = tmp_path / f"calls-{attempt}.log"
        monkeypatch.setenv("AI_CALLS", str(log))
        handle = flow.run(*case.args)
        assert handle.result(timeout=60) == case.output
        record = tether.Client().get(handle.id)
        assert record.status is Status.SUCCEEDED
        assert [(c.position, c.name) for c in record.checkpoints] == case.checkpoints
        assert all(c.status == "succeeded" for c in record.checkpoints)
        ran = _calls(log)
        # Each call ran once, at the position the flow's program order gives it...
        assert Counter(ran) == Counter(case.logged), ran
        # ...so all of one agent run's model requests and tool calls share one branch, and
        # the runs' branches differ.
        owners = _branches_by_owner(case, ran)
        assert owners == {owner: {branch} for owner, branch in case.branches.items()}
        assert _warnings(handle.id) == []


def test_gathered_agents_answer_as_each_agent_alone(db_url: str) -> None:
    """The expected outputs are what the plain agents answer outside any flow."""
    for place in (PLACE, OTHER):
        assert flows.scout_agent.run_sync(f"Scout {place}").output == scout_report(place)
    assert flows.critic_agent.run_sync(f"Critique {TEXT}").output == CRITIC


# --- killed and resumed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "crash", "how"),
    [
        ("pair", "a.model:2", RESUME),  # inside the scout's second model request
        ("pair", "a.tool:3", RESUME),  # inside the second of the scout's two parallel probes
        ("pair", "b.tool:2", RESUME),  # inside the second of the critic's parallel ratings
        ("pair", "b.tool:3", RECOVER),  # inside the critic's sync tool, in a thread
        ("pair", "a.model:4", RESUME),  # inside the scout's last model request
        ("trio", "a.model:5", RESUME),  # a scout's model request, the other scout running
        ("trio", "b.model:3", RECOVER),  # inside the critic's last model request
        ("nested", "a.model:3", RESUME),  # the scout inside the helper, mid-run
        ("nested", "b.model:2", RECOVER),
        ("nested", "step:2", RESUME),  # inside the helper's checkpoint after its agent run
    ],
    ids=lambda v: "resume" if v is RESUME else "recover" if v is RECOVER else v,
)
def test_killed_gathered_agents_resume_each_with_its_own_recorded_calls(
    db_url: str, tmp_path: Path, name: str, crash: str, how: str
) -> None:
    case = CASES[name]
    log = tmp_path / "calls.log"
    crashed = run_child(
        START, db_url, name, json.dumps(case.args), AI_CALLS=str(log), AI_CRASH=crash
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (execution,) = tether.Client().list()
    recorded_before = {c.position for c in tether.Client().get(execution.id).checkpoints}
    ran_before = _calls(log)
    kind, nth = crash.split(":")
    assert sum(label.startswith(f"{kind}:") for _, label in ran_before) == int(nth), ran_before

    resumed = run_child(how, db_url, execution.id, AI_CALLS=str(log))
    assert resumed.returncode == 0, resumed.stderr
    output: dict[str, Any] = json.loads(resumed.stdout)
    # Each agent's output is the one it gives uninterrupted.
    assert output == case.output

    ran = _calls(log)
    ran_after = ran[len(ran_before) :]
    # No finished (recorded) model request, tool call or step ran again...
    assert not [c for c in ran_after if c[0] in recorded_before], (recorded_before, ran_after)
    # ...what was in flight at the kill ran again, once, at the same position...
    in_flight = {c for c in ran_before if c[0] not in recorded_before}
    assert in_flight, "the crash happened inside a call"
    assert in_flight <= set(ran_after), (in_flight, ran_after)
    repeated = {c for c, n in Counter(ran).items() if n > 1}
    assert repeated == in_flight, (repeated, in_flight)
    assert max(Counter(ran).values()) == 2
    # ...and, together, the two processes made exactly the calls of an uninterrupted run.
    assert set(ran) == case.logged
    owners = _branches_by_owner(case, ran)
    assert owners == {owner: {branch} for owner, branch in case.branches.items()}

    record = tether.Client().get(execution.id)
    assert record.status is Status.SUCCEEDED
    assert [(c.position, c.name) for c in record.checkpoints] == case.checkpoints
    # Every call on resume was made with the arguments recorded at its position.
    assert _warnings(execution.id) == []
