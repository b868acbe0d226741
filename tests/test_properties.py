"""Property tests: generated programs, killed by SIGKILL at random points, resumed elsewhere.

Each case runs a program (see `program_flow`) three ways:

1. uninterrupted, in this process, for the reference result and side-effect counts;
2. in a child process that kills itself at one crash point (`CRASH_AT`, `CRASH_PHASE`,
   `CRASH_ATTEMPT`); the parent then reads what that child logged and committed;
3. resumed in a second, fresh child process with `Client().resume(id).result()`.

The unit of "ran" is one attempt of one checkpoint call: `(position, attempt)`. After the
resume, an attempt committed before the crash ran exactly once, one that started before the
crash but was not committed ran exactly twice, and every other one ran exactly once.
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

import program_flow
import tether
from helpers import run_child
from program_flow import RETRIES, Call
from tether import CheckpointStatus, Status
from tether.errors import InvalidStateError

CRASH_CHILD = """
import json, os
import program_flow
program_flow.install_crash_hook()
flow = program_flow.FLOWS[os.environ["FLAVOR"]]
handle = flow.run(json.loads(os.environ["PROGRAM"]))
print(handle.id, flush=True)
print(json.dumps(handle.result()), flush=True)
"""

RESUME_CHILD = """
import json, os
import tether
import program_flow  # a process runs the flows it loaded
handle = tether.Client().resume(os.environ["EXECUTION_ID"])
print(json.dumps(handle.result()), flush=True)
"""

PHASES = ("before", "inside", "after")
Unit = tuple[str, int]  # (position, attempt)


@dataclass(frozen=True)
class Crash:
    at: int
    phase: str
    attempt: int = 1

    @property
    def position(self) -> str:
        """The recorded position of the call at `at` (the programs call only in the flow body)."""
        return str(self.at)

    def env(self) -> dict[str, str]:
        return {
            "CRASH_AT": self.position,
            "CRASH_PHASE": self.phase,
            "CRASH_ATTEMPT": str(self.attempt),
        }

    def happens(self, calls: list[Call]) -> bool:
        if self.at >= len(calls):
            return False
        return self.phase == "before" or self.attempt <= calls[self.at].attempts


def read_log(path: Path, calls: list[Call]) -> Counter[Unit]:
    """Count the live attempts logged, checking each line names the expected checkpoint."""
    counts: Counter[Unit] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        position, name, attempt_text = line.split()
        # Every call of these programs is made by the flow body: "0", "1", ...
        assert position.isdigit(), f"not a flow-body position: {line!r}"
        index = int(position)
        assert index < len(calls), f"position {position} beyond the program: {line!r}"
        assert name == calls[index].name, f"unexpected checkpoint at {line!r}"
        assert attempt_text.startswith("attempt"), line
        counts[(position, int(attempt_text.removeprefix("attempt")))] += 1
    return counts


def committed_units(record: tether.ExecutionRecord) -> set[Unit]:
    """The attempts whose outcome is in the store (a retrying row holds its failed attempts)."""
    return {(cp.position, a.attempt) for cp in record.checkpoints for a in cp.attempts}


def check_final_record(record: tether.ExecutionRecord, result: Any, calls: list[Call]) -> None:
    assert record.status == Status.SUCCEEDED, record.error
    assert record.result == result
    assert [cp.position for cp in record.checkpoints] == [str(p) for p in range(len(calls))]
    assert [cp.name for cp in record.checkpoints] == [c.name for c in calls]
    assert [cp.status.value for cp in record.checkpoints] == [c.status for c in calls]
    for cp, call in zip(record.checkpoints, calls, strict=True):
        # Attempt numbers count on across crashes: 1..n, each once, in order.
        assert [a.attempt for a in cp.attempts] == list(range(1, call.attempts + 1)), cp


def expected_units(calls: list[Call]) -> set[Unit]:
    return {(str(pos), n) for pos, call in enumerate(calls) for n in range(1, call.attempts + 1)}


def run_reference(flavor: str, steps: list[dict[str, Any]], workdir: Path) -> list[Any]:
    """Run the program uninterrupted in this process (the configured store)."""
    result, calls = program_flow.expected(steps)
    log = workdir / "reference.log"
    handle = program_flow.FLOWS[flavor].run({"log": str(log), "steps": steps})
    got = handle.result(timeout=60)
    assert got == result
    check_final_record(tether.Client().get(handle.id), result, calls)
    counts = read_log(log, calls)
    assert set(counts) == expected_units(calls)
    assert set(counts.values()) <= {1}
    return got


def crash_and_resume(
    flavor: str, steps: list[dict[str, Any]], crash: Crash, workdir: Path
) -> dict[str, Any]:
    """Run the program in a child that dies at `crash`, resume it in another, check all."""
    result, calls = program_flow.expected(steps)
    db = f"sqlite:///{workdir / 'tether.db'}"
    log = workdir / "effects.log"
    program = {"log": str(log), "steps": steps}
    client = tether.Client(db)

    first = run_child(CRASH_CHILD, db, FLAVOR=flavor, PROGRAM=json.dumps(program), **crash.env())
    lines = first.stdout.splitlines()
    # The flow starts on a background thread as run() returns, so a crash at the very first
    # checkpoint can beat the print of the id: the fresh store holds just this execution.
    executions = client.list()
    assert len(executions) == 1, (executions, first.stderr)
    execution_id = executions[0].id
    assert lines[:1] in ([], [execution_id]), (lines, first.stderr)

    if not crash.happens(calls):
        # The crash point is past the program's end: the first child just finishes.
        assert first.returncode == 0, first.stderr
        assert json.loads(lines[1]) == result
        with pytest.raises(InvalidStateError):
            client.resume(execution_id)
        record = client.get(execution_id)
        check_final_record(record, result, calls)
        counts = read_log(log, calls)
        assert set(counts) == expected_units(calls)
        assert set(counts.values()) <= {1}
        return {"crashed": False}

    assert first.returncode == -9, (
        f"expected SIGKILL at {crash}, got {first.returncode}\n{first.stdout}\n{first.stderr}"
    )
    assert len(lines) <= 1, lines  # no result printed
    before = read_log(log, calls)
    snapshot = client.get(execution_id)
    assert snapshot.status == Status.RUNNING, snapshot.status
    committed = committed_units(snapshot)
    # Whatever was committed also ran (and was logged) before the crash, once.
    for unit in committed:
        assert before[unit] == 1, (unit, before)

    second = run_child(RESUME_CHILD, db, EXECUTION_ID=execution_id)
    assert second.returncode == 0, f"resume failed:\n{second.stdout}\n{second.stderr}"
    assert json.loads(second.stdout.splitlines()[-1]) == result

    record = client.get(execution_id)
    check_final_record(record, result, calls)
    assert record.attempt == snapshot.attempt + 1

    total = read_log(log, calls)
    assert set(total) == expected_units(calls), (sorted(total), calls)
    for unit, count in total.items():
        in_flight = before[unit] > 0 and unit not in committed
        assert count == (2 if in_flight else 1), (unit, count, sorted(before), sorted(committed))
    assert max(total.values()) <= 2

    crashed_unit = (crash.position, crash.attempt)
    if crash.phase == "before":
        assert all(before[(crash.position, n)] == 0 for n in range(1, RETRIES + 2)), before
        assert total[(crash.position, 1)] == 1
    elif crash.phase == "inside":
        assert crashed_unit not in committed
        assert total[crashed_unit] == 2
    else:
        assert crashed_unit in committed
        assert total[crashed_unit] == 1
    return {"crashed": True, "snapshot": snapshot, "record": record}


# --- hypothesis ---------------------------------------------------------------------------------

values = st.integers(-5, 20)
steps_strategy = st.one_of(
    st.builds(
        lambda name, value: {"op": "cp", "name": name, "value": value},
        st.sampled_from(["a", "b", "c"]),
        values,
    ),
    st.builds(
        lambda vs, via: {"op": "gather", "values": vs, "via": via},
        st.lists(values, max_size=3),
        st.sampled_from(["map", "submit"]),
    ),
    st.builds(
        lambda fail, value: {"op": "flaky", "fail": fail, "value": value},
        st.integers(0, RETRIES + 1),
        values,
    ),
    st.builds(lambda value: {"op": "raise", "value": value}, values),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]], Crash]:
    flavor = draw(st.sampled_from(["sync", "async"]))
    steps = draw(st.lists(steps_strategy, min_size=1, max_size=6))
    _, calls = program_flow.expected(steps)
    # Mostly a position of the program; sometimes just past it (the run then finishes).
    at = draw(st.integers(0, len(calls)))
    phase = draw(st.sampled_from(PHASES))
    attempt = 1
    if phase != "before" and at < len(calls):
        attempt = draw(st.integers(1, calls[at].attempts))
    return flavor, steps, Crash(at, phase, attempt)


# More examples for a longer hunt: TETHER_PROPERTY_EXAMPLES=300 pytest tests/test_properties.py
EXAMPLES = int(os.environ.get("TETHER_PROPERTY_EXAMPLES", "25"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_crash_anywhere_then_resume(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, scenario: tuple[str, Any, Crash]
) -> None:
    # db_url is the store of the reference run; each example gets its own directory (own
    # store, own log) for the crash and the resume.
    flavor, steps, crash = scenario
    workdir = tmp_path_factory.mktemp("example")
    run_reference(flavor, steps, workdir)
    outcome = crash_and_resume(flavor, steps, crash, workdir)
    event(f"{flavor} {crash.phase} {'crashed' if outcome['crashed'] else 'finished'}")


# --- deterministic cases ------------------------------------------------------------------------

FIXED_STEPS: list[dict[str, Any]] = [
    {"op": "cp", "name": "a", "value": 1},
    {"op": "gather", "values": [2, 3]},
    {"op": "flaky", "fail": 1, "value": 4},
    {"op": "raise", "value": 5},
    {"op": "cp", "name": "b", "value": 6},
    {"op": "cp", "name": "c", "value": 7},
]
FIXED_CALLS = program_flow.expected(FIXED_STEPS)[1]  # 7 checkpoint calls


FIXED_CRASHES = [Crash(at, phase) for at in range(len(FIXED_CALLS)) for phase in PHASES] + [
    Crash(len(FIXED_CALLS), "inside")  # past the end: the first run just finishes
]


def test_fixed_program_every_crash_point(db_url: str, tmp_path: Path) -> None:
    """The async program crashed at every position in every phase (22 crash/resume pairs).

    The pairs are independent (own store, own log), so they run a few at a time: most of
    their cost is starting interpreters. (db_url: closes the stores opened here afterwards.)
    """

    def one(index: int) -> str | None:
        crash = FIXED_CRASHES[index]
        workdir = tmp_path / f"{crash.at}-{crash.phase}"
        workdir.mkdir()
        try:
            outcome = crash_and_resume("async", FIXED_STEPS, crash, workdir)
            assert outcome["crashed"] == (crash.at < len(FIXED_CALLS))
        except Exception:
            return f"{crash}:\n{traceback.format_exc()}"
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(one, range(len(FIXED_CRASHES))) if f]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("flavor", "phase", "expected_before"),
    [
        # Killed right after the commit of attempt 2's failure: attempts 1-2 are stored.
        ("sync", "after", [1, 2]),
        # Killed inside attempt 3: attempts 1-2 are stored, 3 runs again on resume.
        ("async", "inside", [1, 2]),
    ],
)
def test_retries_continue_across_a_crash(
    db_url: str, tmp_path: Path, flavor: str, phase: str, expected_before: list[int]
) -> None:
    """A checkpoint whose retries were partly spent before the crash goes on counting."""
    steps = [{"op": "cp", "name": "a", "value": 1}, {"op": "flaky", "fail": 3, "value": 9}]
    crash = Crash(1, phase, attempt=2 if phase == "after" else 3)
    outcome = crash_and_resume(flavor, steps, crash, tmp_path)
    assert outcome["crashed"]
    flaky_before = outcome["snapshot"].checkpoints[1]
    assert flaky_before.status == CheckpointStatus.RETRYING
    assert [a.attempt for a in flaky_before.attempts] == expected_before
    flaky = outcome["record"].checkpoints[1]
    assert flaky.status == CheckpointStatus.SUCCEEDED
    assert [a.attempt for a in flaky.attempts] == [1, 2, 3, 4]
    assert all(a.error for a in flaky.attempts[:3]) and flaky.attempts[3].error is None
    assert flaky.result == {"value": 109, "attempt": 4}
