"""Crash properties of concurrent branches: generated gathers that really await, nested
gathers, `.map()`, durable sleeps and keyed workers, killed by SIGKILL at a random call.

Each case runs a program (see `branch_program`) uninterrupted for reference, then in a child
process that kills itself before, inside or right after one call, then resumed from a fresh
process. After the resume:

- the result equals the uninterrupted one (every call echoes its unique tag, so a call that
  received another call's recorded result would show);
- every call was logged live at the position the model gives it (identity does not depend on
  scheduling), and no "called with different arguments" warning was recorded;
- a call committed before the kill ran exactly once; one that started but was not committed
  ran exactly twice; every other call ran once.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import branch_program
import tether
from helpers import run_child
from tether import Status

CRASH_CHILD = """
import json, os
import branch_program
branch_program.install_crash_hook()
handle = branch_program.branchy.run(json.loads(os.environ["PROGRAM"]))
print(json.dumps(handle.result(timeout=60)), flush=True)
"""

RESUME_CHILD = """
import json, os
import tether
import branch_program  # a process runs the flows it loaded
handle = tether.Client().resume(os.environ["EXECUTION_ID"])
print(json.dumps(handle.result(timeout=60)), flush=True)
"""


@dataclass(frozen=True)
class Crash:
    tag: str
    phase: str  # before | inside | after

    def env(self, positions: dict[str, str]) -> dict[str, str]:
        if self.phase == "after":
            return {"CRASH_PHASE": "after", "CRASH_POSITION": positions[self.tag]}
        return {"CRASH_PHASE": self.phase, "CRASH_TAG": self.tag}


def read_log(path: Path, positions: dict[str, str]) -> Counter[str]:
    """Live attempts per tag, checking each was made at the position the model gives it."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        position, tag = line.split()
        assert positions[tag] == position, f"{tag} ran at {position}, not {positions[tag]}"
        counts[tag] += 1
    return counts


def check_record(record: tether.ExecutionRecord, result: Any, steps: list[Any]) -> None:
    expected, positions, waits = branch_program.model(steps)
    assert record.status is Status.SUCCEEDED, record.error
    assert record.result == result == expected
    recorded = {c.position: c.result for c in record.checkpoints}
    assert recorded == {positions[tag]: f"{tag}!" for tag in positions}
    assert {w.position for w in record.waits} == waits
    # Listed in program order.
    order = [c.position for c in record.checkpoints]
    assert order == sorted(order, key=tether._core.positions.sort_key)
    assert [e.message for e in record.events if e.kind == "warning"] == []


def run_case(steps: list[Any], crash: Crash, workdir: Path) -> str:
    expected, positions, _ = branch_program.model(steps)
    db = f"sqlite:///{workdir / 'tether.db'}"
    log = workdir / "effects.log"
    program = json.dumps({"log": str(log), "steps": steps})
    client = tether.Client(db)

    first = run_child(CRASH_CHILD, db, PROGRAM=program, **crash.env(positions))
    assert first.returncode == -9, (crash, first.returncode, first.stdout, first.stderr)
    (execution,) = client.list()
    before = read_log(log, positions)
    snapshot = client.get(execution.id)
    committed = {c.position for c in snapshot.checkpoints if c.status.value == "succeeded"}
    by_position = {position: tag for tag, position in positions.items()}
    committed_tags = {by_position[p] for p in committed}
    for tag in committed_tags:
        assert before[tag] == 1, (tag, before)

    second = run_child(RESUME_CHILD, db, EXECUTION_ID=execution.id)
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert json.loads(second.stdout.splitlines()[-1]) == expected
    record = client.get(execution.id)
    check_record(record, record.result, steps)

    total = read_log(log, positions)
    assert set(total) == set(positions), (sorted(total), sorted(positions))
    for tag, count in total.items():
        in_flight = before[tag] > 0 and tag not in committed_tags
        assert count == (2 if in_flight else 1), (tag, count, dict(before), committed_tags)
    if crash.phase == "before":
        assert before[crash.tag] == 0 and total[crash.tag] == 1
    elif crash.phase == "inside":
        assert crash.tag not in committed_tags and total[crash.tag] == 2
    else:
        assert crash.tag in committed_tags and total[crash.tag] == 1
    return f"{crash.phase}: {len(committed_tags)} committed, {len(total)} calls"


# --- generated programs -----------------------------------------------------------------------

leaf = st.one_of(
    st.builds(lambda delay: {"cp": None, "delay": delay}, st.integers(0, 3)),
    st.just({"sleep": None}),
    st.builds(lambda n: {"map": [None] * n}, st.integers(1, 3)),
)
cp_item = st.builds(lambda delay: {"cp": None, "delay": delay}, st.integers(0, 3))
nest = st.builds(
    lambda branches: {"nest": branches},
    st.lists(st.lists(cp_item, min_size=1, max_size=2), min_size=2, max_size=2),
)
branch = st.lists(st.one_of(leaf, leaf, nest), min_size=1, max_size=3)
step = st.one_of(
    st.just({"op": "cp", "tag": None}),
    st.builds(
        lambda branches: {"op": "branches", "branches": branches},
        st.lists(branch, min_size=2, max_size=3),
    ),
    st.builds(lambda n: {"op": "keyed", "tags": [None] * n}, st.integers(2, 5)),
)


def tagged(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The program with unique tags put in place of the Nones, in program order."""
    counter = iter(range(10_000))

    def fill(value: Any) -> Any:
        if value is None:
            return f"t{next(counter)}"
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return fill(json.loads(json.dumps(steps)))  # type: ignore[no-any-return]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict[str, Any]], Crash]:
    steps = tagged(draw(st.lists(step, min_size=1, max_size=3)))
    _, positions, _ = branch_program.model(steps)
    if not positions:
        steps.append({"op": "cp", "tag": "last"})
        _, positions, _ = branch_program.model(steps)
    tag = draw(st.sampled_from(sorted(positions)))
    return steps, Crash(tag, draw(st.sampled_from(["before", "inside", "after"])))


EXAMPLES = int(os.environ.get("TETHER_PROPERTY_EXAMPLES", "15"))


def test_reference_runs_record_every_call_at_its_modelled_position(
    client: tether.Client, tmp_path: Path
) -> None:
    steps = tagged(FIXED)
    handle = branch_program.branchy.run({"log": str(tmp_path / "log"), "steps": steps})
    result = handle.result(timeout=60)
    check_record(client.get(handle.id), result, steps)
    _, positions, _ = branch_program.model(steps)
    assert set(read_log(tmp_path / "log", positions).values()) == {1}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_branches_killed_anywhere_resume_with_their_own_results(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, scenario: Any
) -> None:
    steps, crash = scenario
    event(run_case(steps, crash, tmp_path_factory.mktemp("case")))


# A fixed program with every shape, killed at every call in every phase.
FIXED: list[dict[str, Any]] = [
    {"op": "cp", "tag": None},
    {
        "op": "branches",
        "branches": [
            [{"cp": None, "delay": 3}, {"cp": None, "delay": 0}],
            [{"cp": None, "delay": 0}, {"sleep": None}, {"cp": None, "delay": 1}],
            [
                {"nest": [[{"cp": None, "delay": 2}], [{"cp": None, "delay": 0}]]},
                {"map": [None, None]},
            ],
        ],
    },
    {"op": "keyed", "tags": [None, None, None]},
    {"op": "cp", "tag": None},
]


def test_a_fixed_program_killed_at_every_call(db_url: str, tmp_path: Path) -> None:
    steps = tagged(FIXED)
    _, positions, _ = branch_program.model(steps)
    crashes = [
        Crash(tag, phase) for tag in sorted(positions) for phase in ("before", "inside", "after")
    ]

    def one(index: int) -> str | None:
        crash = crashes[index]
        workdir = tmp_path / f"{index}"
        workdir.mkdir()
        try:
            run_case(steps, crash, workdir)
        except Exception:
            return f"{crash}:\n{traceback.format_exc()}"
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(one, range(len(crashes))) if f]
    assert not failures, "\n".join(failures)
