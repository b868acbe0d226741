"""tether.testing.crash_test: a flow killed with SIGKILL at every checkpoint boundary (real
processes, real SQLite files) and resumed must end as it does uninterrupted; flows that do
not are caught, naming where.

The fixture `tether_crash` comes from the pytest plugin (the `pytest11` entry point
`tether`); it is imported here as well, so these tests also run where tether is installed
from a checkout older than the entry point.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

import crash_test_flows as flows
import tether
from tether.errors import CrashTestFailed, UsageError
from tether.testing import Boundary, CrashReport, crash_test
from tether.testing.pytest_plugin import tether_crash as tether_crash  # the plugin's fixture

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent


def _calls(report: CrashReport) -> set[tuple[str, str]]:
    return {(b.position, b.name) for b in report.boundaries}


def _phases(report: CrashReport) -> dict[tuple[str, str], list[str]]:
    phases: dict[tuple[str, str], list[str]] = {}
    for boundary in report.boundaries:
        phases.setdefault((boundary.position, boundary.name), []).append(boundary.phase)
    return phases


def test_a_straight_flow_survives_a_kill_at_every_boundary() -> None:
    report = crash_test(flows.straight, 3)

    assert report.result == 6 + 8 + 10
    assert report.error is None
    assert _calls(report) == {("0", "double"), ("1", "double"), ("2", "double")}
    # Every call is killed before it runs, inside it and after its commit, in that order.
    assert all(p == ["before", "inside", "after"] for p in _phases(report).values())
    assert [o.boundary for o in report.outcomes] == report.boundaries
    assert report.ok and not report.failures
    text = str(report)
    assert "9 of 9 boundaries tried, 0 failed" in text
    assert "ok   after 1 double" in text


def test_gathered_branches_are_killed_at_each_call_of_each_branch() -> None:
    report = crash_test(flows.gathered, "x")

    assert report.result == ["x-a1+x-a2", "x-b1+x-b2"]
    assert _calls(report) == {(p, "describe") for p in ("0.0", "0.1", "1.0", "1.1")}
    assert len(report.outcomes) == 12 and report.ok


@pytest.mark.parametrize(("answer", "expected"), [(True, "published 8"), (False, "rejected")])
def test_waits_are_answered_from_the_mapping(answer: bool, expected: str) -> None:
    report = crash_test(flows.approved, 2, waits={"approve": answer})

    assert report.result == expected
    positions = {b.position for b in report.boundaries}
    # The wait took position 1: after it, only the approved path calls a checkpoint.
    assert positions == ({"0", "2"} if answer else {"0"})
    assert report.ok


def test_a_durable_timer_is_skipped_rather_than_waited_out() -> None:
    # The flow sleeps an hour; each case's clock moves to the timer's end instead (a case
    # that waited would end, unfinished, after the harness's 60 s limit).
    report = crash_test(flows.reminds, 2)

    assert report.result == 4 + 8
    assert {b.position for b in report.boundaries} == {"0", "2"}
    assert report.ok


def test_a_wait_the_mapping_does_not_answer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"waits for input 'approve'.*waits=\{'approve': \.\.\.\}"):
        crash_test(flows.approved, 2, waits={"other": True})


def test_a_durable_agent_with_a_function_model_survives_every_kill() -> None:
    pytest.importorskip("pydantic_ai")
    import ai_flows

    report = crash_test(ai_flows.mirror_calls, "mirror")

    assert report.result == "got 0 put 1"
    names = {name for _, name in _calls(report)}
    assert {"model_request", "tool:web_get", "tool:web_put"} <= names
    assert report.ok


def test_a_flow_that_fails_must_fail_the_same_way_after_every_kill() -> None:
    report = crash_test(flows.refuses, 4)

    assert report.result is None
    assert report.error == "ValueError: refused 8"
    assert "uninterrupted: error ValueError: refused 8" in str(report)
    assert len(report.outcomes) == 3 and report.ok


def test_a_side_effect_in_flow_code_fails_naming_the_boundary() -> None:
    with pytest.raises(CrashTestFailed) as caught:
        crash_test(flows.counts_visits)

    failed = caught.value
    # Killed before position 1 runs, the counter file was written already: the resumed
    # flow counts a second visit.
    assert failed.boundary == "before 1 double"
    assert failed.difference == "the result is 6; uninterrupted it is 4"
    assert "counts_visits killed at before 1 double and resumed" in str(failed)
    report = failed.report
    assert isinstance(report, CrashReport)
    assert [str(o.boundary) for o in report.outcomes if o.ok] == [
        "before 0 double", "inside 0 double", "after 0 double",
    ]  # fmt: skip
    assert report.failures[0].boundary == Boundary("before", "counts_visits", "1", "double")
    assert "FAIL before 1 double: the result is 6" in str(report)


def test_a_result_from_an_unrecorded_random_number_fails() -> None:
    with pytest.raises(CrashTestFailed) as caught:
        crash_test(flows.lucky, 1)

    assert caught.value.boundary == "before 0 double"
    assert "uninterrupted it is" in caught.value.difference


def test_a_committed_call_that_runs_again_fails_naming_it() -> None:
    # The flow deletes its recorded calls after the first one; resumed after that, tether
    # finds no record of call 0 and runs it again. The result is the same: only the count of
    # calls run, by idempotency key, shows it.
    with pytest.raises(CrashTestFailed) as caught:
        crash_test(flows.forgets_its_record)

    assert caught.value.boundary == "before 1 double"
    assert caught.value.difference == (
        "checkpoint calls committed before the kill ran again after the resume (at 0 double)"
    )
    (failure,) = caught.value.report.failures
    assert failure.ran_again == ("0 double",)


def test_the_calls_of_a_child_flow_are_boundaries_too() -> None:
    report = crash_test(flows.order, 5)

    assert report.result == 11 + 10
    assert [str(b) for b in report.boundaries if not b.root] == [
        "before 0 double (child flow bill)",
        "inside 0 double (child flow bill)",
        "after 0 double (child flow bill)",
    ]
    assert report.ok


def test_flows_no_other_process_can_load_are_refused() -> None:
    @tether.flow
    def nested() -> int:
        return 1

    with pytest.raises(UsageError, match="defined inside a function"):
        crash_test(nested)
    with pytest.raises(UsageError, match=r"takes a @tether\.flow"):
        crash_test(flows.double, 1)  # type: ignore[arg-type]


def test_a_module_that_starts_threads_when_imported_is_warned_about() -> None:
    import threaded_crash_flows

    with pytest.warns(RuntimeWarning, match=r"starts threads \(exporter\)"):
        report = crash_test(threaded_crash_flows.exported, 1)
    assert report.result == 2


def test_arguments_that_cannot_be_stored_are_refused() -> None:
    with pytest.raises(UsageError, match="cannot be stored"):
        crash_test(flows.straight, object())  # type: ignore[arg-type]


def test_the_fixture_runs_a_crash_test(tether_crash: Any) -> None:
    report = tether_crash(flows.approved, 1, waits={"approve": True})

    assert report.result == "published 4"
    assert report.ok


def test_the_plugin_gives_the_fixture_to_a_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user=textwrap.dedent(
            f"""
            import sys

            sys.path.insert(0, {str(TESTS)!r})
            import crash_test_flows as flows
            import pytest
            from tether.errors import CrashTestFailed


            def test_correct(tether_crash):
                assert tether_crash(flows.straight, 1).result == 12


            def test_broken(tether_crash):
                with pytest.raises(CrashTestFailed, match="before 1 double"):
                    tether_crash(flows.counts_visits)
            """
        )
    )
    # `no:tether` first: where the entry point is installed, the plugin is not loaded twice.
    result = pytester.runpytest_subprocess("-p", "no:tether", "-p", "tether.testing.pytest_plugin")

    result.assert_outcomes(passed=2)
